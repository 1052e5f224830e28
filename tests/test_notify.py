"""`mailtracker notify` against a real aiosmtpd server (STARTTLS + AUTH, test CA)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from mailtracker.resources import data_dir
from tests.plugins.smtpd import HOLD, SmtpTestServer
from tests.plugins.workspace import THREE, Workspace

MakeWs = Callable[..., Workspace]


def _by_recipient(server: SmtpTestServer) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for m in server.messages:
        for rcpt in m.rcpt_tos:
            out.setdefault(rcpt, []).append(m.message)
    return out


def _parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def _row(status: dict[str, Any], email: str) -> dict[str, Any]:
    return next(r for r in status["recipients"] if r["email"] == email)


@pytest.fixture
def ws(make_workspace: MakeWs, smtp_server: SmtpTestServer) -> Workspace:
    w = make_workspace(smtp=smtp_server)
    w.add_recipients(THREE)
    return w


def test_each_role_receives_its_danish_orientation(ws: Workspace,
                                                   smtp_server: SmtpTestServer) -> None:
    result = ws.cli("notify")
    assert result.exit_code == 0, result.output
    got = _by_recipient(smtp_server)
    assert sorted(got) == sorted(email for _, _, email in THREE)
    assert all(len(v) == 1 for v in got.values())
    assert {c.connection for c in smtp_server.commands} == {1}  # one connection per run

    owner = got["soeren@kommune.example"][0]
    text, html = _parts(owner)
    assert "Kære Søren" in text and "Kære Søren" in html
    assert "EG" in text and "EAN" in text
    assert "kontakt" in text.lower()  # do not contact EG
    assert str(owner["To"]) == "Søren Ærø-Åse <soeren@kommune.example>"
    assert owner["Message-ID"] and owner["Date"]

    admin = got["bjoern.hansen@kommune.example"][0]
    admin_text, _ = _parts(admin)
    assert "Kære Bjørn" in admin_text
    assert "serviceaftale" in admin_text.lower() and "underskrift" in admin_text.lower()
    assert admin["Subject"] != owner["Subject"] or "serviceaftale" in admin["Subject"].lower()

    raw = smtp_server.messages[0].raw
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert header_block.isascii(), "headers must be RFC 2047-encoded"

    status = ws.status()
    assert status["klik_status"] == "fuldført"
    row = _row(status, "soeren@kommune.example")
    assert row["notification"] == "sent"
    assert row["message_id"] == owner["Message-ID"]
    assert row["acknowledged"] is False


def test_second_notify_sends_nothing(ws: Workspace, smtp_server: SmtpTestServer) -> None:
    assert ws.cli("notify").exit_code == 0
    second = ws.cli("notify")
    assert second.exit_code == 0
    assert "already-sent" in second.output
    assert len(smtp_server.messages) == 3


def test_resend_sends_again_and_keeps_old_id_for_replies(ws: Workspace,
                                                         smtp_server: SmtpTestServer) -> None:
    assert ws.cli("notify").exit_code == 0
    first_id = _row(ws.status(), "soeren@kommune.example")["message_id"]
    result = ws.cli("notify", "--resend", "--to", "soeren@kommune.example")
    assert result.exit_code == 0, result.output
    assert len(smtp_server.messages) == 4
    second_id = _row(ws.status(), "soeren@kommune.example")["message_id"]
    assert second_id != first_id
    assert smtp_server.messages[-1].message["Message-ID"] == second_id


def test_temporary_failure_is_retried_with_same_message_id(ws: Workspace,
                                                           smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.after_data("451 4.3.0 Queue full, try later", times=1)
    result = ws.cli("notify", "--role", "system_owner")
    assert result.exit_code == 0, result.output
    assert len(smtp_server.messages) == 1
    row = _row(ws.status(), "soeren@kommune.example")
    assert row["notification"] == "sent"
    assert row["attempts"] == 2
    assert smtp_server.messages[0].message["Message-ID"] == row["message_id"]


def test_permanent_failure_is_failed_with_server_reply(ws: Workspace,
                                                       smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.after_data("554 5.6.0 Message rejected by policy", times=1)
    result = ws.cli("notify", "--role", "system_owner")
    assert result.exit_code == 11
    assert "554" in result.output
    row = _row(ws.status(), "soeren@kommune.example")
    assert row["notification"] == "failed"
    assert "554 5.6.0 Message rejected by policy" in row["last_error"]
    again = ws.cli("notify", "--role", "system_owner")
    assert "already-failed" in again.output
    assert smtp_server.messages == []


def test_refused_recipient_fails_alone(ws: Workspace, smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_rcpt("bjoern.hansen@kommune.example", "550 5.1.1 No such user")
    result = ws.cli("notify")
    assert result.exit_code == 11
    got = _by_recipient(smtp_server)
    assert sorted(got) == ["aase.oeberg@kommune.example", "soeren@kommune.example"]
    status = ws.status()
    assert _row(status, "bjoern.hansen@kommune.example")["notification"] == "failed"
    assert "550 5.1.1" in _row(status, "bjoern.hansen@kommune.example")["last_error"]
    assert status["klik_status"] == "i gang"


def test_late_reply_after_timeout_is_unknown_and_never_resent(
        ws: Workspace, smtp_server: SmtpTestServer) -> None:
    ws.set("smtp", timeout=1)
    smtp_server.faults.after_data(HOLD, times=1)
    result = ws.cli("notify", "--role", "system_owner")
    smtp_server.release()
    assert result.exit_code == 11
    assert "may have been delivered" in result.output
    assert len(smtp_server.messages) == 1  # it was delivered: the server stored it
    assert _row(ws.status(), "soeren@kommune.example")["notification"] == "unknown"
    again = ws.cli("notify", "--role", "system_owner")
    assert "already-unknown" in again.output
    assert len(smtp_server.messages) == 1


def test_temporary_failure_to_exhaustion_is_deferred_then_sent_next_run(
        ws: Workspace, smtp_server: SmtpTestServer) -> None:
    ws.set("smtp", retries=1)
    smtp_server.faults.on_rcpt("soeren@kommune.example", "450 4.2.1 Mailbox busy", times=2)
    first = ws.cli("notify", "--role", "system_owner")
    assert first.exit_code == 11 and "deferred" in first.output
    pending = _row(ws.status(), "soeren@kommune.example")
    assert pending["notification"] == "pending"
    second = ws.cli("notify", "--role", "system_owner")
    assert second.exit_code == 0, second.output
    sent = _row(ws.status(), "soeren@kommune.example")
    assert sent["message_id"] == pending["message_id"]
    assert [m.message["Message-ID"] for m in smtp_server.messages] == [pending["message_id"]]


def test_no_starttls_server_never_gets_the_password(make_workspace: MakeWs,
                                                   make_smtp_server: Any) -> None:
    plain = make_smtp_server(tls="none")
    w = make_workspace(smtp=plain)
    w.set("smtp", tls="starttls")
    w.add_recipients(THREE[:1])
    result = w.cli("notify")
    assert result.exit_code == 6
    assert "does not offer STARTTLS" in result.output
    assert plain.auth_attempts == []
    assert "AUTH" not in plain.verbs and plain.messages == []
    assert _row(w.status(), "soeren@kommune.example")["notification"] == "pending"


def test_untrusted_certificate_is_refused(make_workspace: MakeWs, make_smtp_server: Any,
                                          other_ca: Any) -> None:
    bad = make_smtp_server(cert_ca=other_ca)
    w = make_workspace(smtp=bad)
    w.add_recipients(THREE[:1])
    result = w.cli("notify")
    assert result.exit_code == 6
    assert "certificate" in result.output
    assert bad.auth_attempts == [] and bad.messages == []


def test_dead_server_is_a_clear_error(make_workspace: MakeWs, smtp_server: SmtpTestServer
                                      ) -> None:
    w = make_workspace(smtp=smtp_server)
    w.add_recipients(THREE[:1])
    smtp_server.stop()
    result = w.cli("notify")
    assert result.exit_code == 6
    assert "cannot connect" in result.output and "Traceback" not in result.output


def test_dry_run_connects_to_nothing_and_stores_nothing(ws: Workspace,
                                                        smtp_server: SmtpTestServer,
                                                        tmp_path: Path) -> None:
    preview = tmp_path / "preview"
    result = ws.cli("notify", "--dry-run", "--preview-dir", str(preview))
    assert result.exit_code == 0, result.output
    assert smtp_server.commands == []
    files = sorted(preview.glob("*.eml"))
    assert len(files) == 3
    msg = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
    assert msg["Message-ID"] and msg.get_body(("html",)) is not None
    assert all(r["notification"] == "not-sent" for r in ws.status()["recipients"])


def test_hostile_names_are_escaped_or_refused(make_workspace: MakeWs,
                                              smtp_server: SmtpTestServer) -> None:
    w = make_workspace(smtp=smtp_server)
    crlf = w.cli("recipients", "add", "--role", "finance", "--name", "Eve\r\nBcc: x@evil.example",
                 "--email", "eve@kommune.example")
    assert crlf.exit_code == 9 and "control characters" in crlf.output
    assert w.cli("recipients", "list", "--json").stdout.strip() == "[]"
    w.add_recipients([("finance", "<script>alert(1)</script> Jensen", "jensen@kommune.example")])
    assert w.cli("notify").exit_code == 0
    msg = smtp_server.messages[0].message
    _, html = _parts(msg)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert msg["Bcc"] is None
    assert list(smtp_server.messages[0].rcpt_tos) == ["jensen@kommune.example"]


def test_missing_template_variable_sends_nothing(ws: Workspace, smtp_server: SmtpTestServer,
                                                 tmp_path: Path) -> None:
    custom = tmp_path / "templates"
    src = data_dir("templates") / "efaktura-8b"
    shutil.copytree(src, custom / "efaktura-8b")
    body = custom / "efaktura-8b" / "da" / "orientation-oeir_coordinator.txt"
    body.write_text(body.read_text(encoding="utf-8").replace(
        "Kære {{ first_name }}", "Kære {{ first_name }} {{ no_such_variable }}"),
        encoding="utf-8")
    ws.set("templates", dir=str(custom))
    result = ws.cli("notify")
    assert result.exit_code == 8
    assert "no_such_variable" in result.output
    assert smtp_server.commands == []
    assert all(r["notification"] == "not-sent" for r in ws.status()["recipients"])


def test_json_output_lists_outcomes(ws: Workspace) -> None:
    result = ws.cli("notify", "--json")
    assert result.exit_code == 0
    outcomes = {r["recipient"]: r["outcome"] for r in json.loads(result.stdout)}
    assert outcomes == {email: "sent" for _, _, email in THREE}


def test_kp_owners_copy_lists_everyone_oriented_with_labels_in_their_language(
        ws: Workspace, smtp_server: SmtpTestServer) -> None:
    # The list is built once per run and language (it used to be rebuilt per recipient).
    for lang, name, email in (("da", "Kåre Lønborg", "klo@kommune.example"),
                              ("en", "Kim Owner", "kim@kommune.example")):
        result = ws.cli("recipients", "add", "--role", "kp_owner", "--name", name,
                        "--email", email, "--lang", lang)
        assert result.exit_code == 0, result.output
    result = ws.cli("notify")
    assert result.exit_code == 0, result.output
    got = _by_recipient(smtp_server)
    da_text, da_html = _parts(got["klo@kommune.example"][0])
    en_text, _ = _parts(got["kim@kommune.example"][0])
    assert ("- Systemansvarlig for kommunens bogføringssystem: Søren Ærø-Åse "
            "(soeren@kommune.example)") in da_text
    assert "- Aftaleadministrator: Hansen, Bjørn (bjoern.hansen@kommune.example)" in da_text
    assert "- ØiR-koordinator: Åse Øberg (aase.oeberg@kommune.example)" in da_text
    assert "Åse Øberg" in da_html
    assert "- Accounting-system owner: Søren Ærø-Åse (soeren@kommune.example)" in en_text
    assert "- Agreement administrator: Hansen, Bjørn" in en_text
    assert "- ØiR coordinator: Åse Øberg (aase.oeberg@kommune.example)" in en_text
    for text in (da_text, en_text):  # the KP owners are not in the list
        assert "klo@kommune.example" not in text and "kim@kommune.example" not in text
