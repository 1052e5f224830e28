"""Behaviour that no test guarded before (a mutation check found each gap): a change that
breaks any of these now fails a test."""

from __future__ import annotations

import json
from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from mailtracker.task.verdict import Kind
from tests.inbound_mail import eml
from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace
from tests.test_classify import classify_text


def test_dkim_fail_with_dmarc_none_is_quarantined() -> None:
    result = classify_text("""Authentication-Results: mx.kommune.dk; dkim=fail (bad signature)
 header.d=eg.dk; spf=pass smtp.mailfrom=eg.dk; dmarc=none header.from=eg.dk
From: kundeservice@eg.dk
Subject: Serviceaftale til underskrift
""")
    assert result.kind is Kind.QUARANTINE
    assert "dkim=fail" in (result.reason or "")


def test_mark_remove_takes_back_a_manual_milestone(
        make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace()
    assert ws.cli("mark", "erp_forwarding_configured", "--note", "opsat").exit_code == 0
    assert ws.status()["milestones"]["erp_forwarding_configured"] is not None
    removed = ws.cli("mark", "erp_forwarding_configured", "--remove")
    assert removed.exit_code == 0 and "Removed erp_forwarding_configured" in removed.output
    assert ws.status()["milestones"]["erp_forwarding_configured"] is None


def test_review_all_shows_decided_entries_and_no_body_is_stored(
        dovecot: Any, make_workspace: Callable[..., Workspace]) -> None:
    user, password = dovecot.add_user()
    ws = make_workspace(imap=(dovecot, user, password))
    dovecot.append(user, eml("spoof-no-authres.eml"))
    dovecot.append(user, eml("agreement-eg-pdf.eml"))
    assert ws.cli("poll").exit_code == 0
    (entry,) = json.loads(ws.cli("review", "--json").stdout)
    assert ws.cli("review", "reject", entry["id"]).exit_code == 0
    assert "Nothing in quarantine." in ws.cli("review").output
    everything = ws.cli("review", "--all")
    assert entry["id"] in everything.output and "State: rejected" in everything.output
    # Only metadata is kept: no sentence of the EG mail's body is in the state on disk.
    on_disk = b"".join(p.read_bytes() for p in ws.store_path.parent.glob("mailtracker.json*"))
    assert b"aftaleadministrator" not in on_disk.lower()
    assert "Kære".encode() not in on_disk and b"K=E6re" not in on_disk


def test_tick_exit_codes(smtp_server: SmtpTestServer,
                         make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    assert ws.cli("tick").exit_code == 0  # nothing due
    assert ws.cli("notify", env={"MAILTRACKER_NOW": "2026-03-02T09:00:00+01:00"}).exit_code == 0
    del ws.sections["smtp"]
    ws.write()
    later = {"MAILTRACKER_NOW": "2026-03-16T10:00:00+01:00"}
    no_smtp = ws.cli("tick", env=later)  # reminders due, nothing to send them with
    assert no_smtp.exit_code == 3 and "[smtp]" in no_smtp.output
    assert ws.cli("tick", "--dry-run", env=later).exit_code == 0


def test_a_reminder_due_in_easter_waits_for_the_next_working_day(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    # Thursday 26 March 2026; the fifth working day would be Thursday 2 April without the
    # holidays (skærtorsdag 2/4, langfredag 3/4, 2. påskedag 6/4).
    assert ws.cli("notify", env={"MAILTRACKER_NOW": "2026-03-26T09:00:00+01:00"}).exit_code == 0
    for day in ("2026-04-02", "2026-04-03", "2026-04-06"):
        quiet = ws.cli("tick", "--dry-run", "--json",
                       env={"MAILTRACKER_NOW": f"{day}T11:00:00+02:00"})
        assert quiet.exit_code == 0
        assert json.loads(quiet.output)["results"] == [], day
    due = ws.cli("tick", "--dry-run", "--json",
                 env={"MAILTRACKER_NOW": "2026-04-07T11:00:00+02:00"})
    results = json.loads(due.output)["results"]
    assert results and {r["kind"] for r in results} == {"reminder"}


def test_a_department_is_greeted_by_its_name_or_by_the_given_greeting(
        make_workspace: Callable[..., Workspace], tmp_path: Path) -> None:
    ws = make_workspace()
    people = [("finance", "Økonomi, Fælles", "oekonomi@kommune.example", []),
              ("agreement_admin", "Hansen, Bjørn", "bjoern@kommune.example", []),
              ("system_owner", "IT-drift", "it@kommune.example",
               ["--greeting", "alle i IT-drift"])]
    for role, name, email, extra in people:
        added = ws.cli("recipients", "add", "--role", role, "--name", name, "--email", email,
                       *extra)
        assert added.exit_code == 0, added.output
    preview = tmp_path / "preview"
    assert ws.cli("notify", "--dry-run", "--preview-dir", str(preview)).exit_code == 0
    greetings = {}
    for path in preview.glob("*.eml"):
        msg = BytesParser(policy=policy.default).parse(path.open("rb"))
        text = msg.get_body(preferencelist=("plain",))
        assert text is not None
        greetings[str(msg["To"])] = text.get_content().splitlines()[0]
    by_address = {k.rpartition("<")[2].rstrip(">"): v for k, v in greetings.items()}
    assert by_address["oekonomi@kommune.example"] == "Kære Økonomi, Fælles"
    assert by_address["bjoern@kommune.example"] == "Kære Bjørn"
    assert by_address["it@kommune.example"] == "Kære alle i IT-drift"
    listed = json.loads(ws.cli("recipients", "list", "--json").stdout)
    assert {r["email"]: r["greeting"] for r in listed}["it@kommune.example"] == "alle i IT-drift"
    bad = ws.cli("recipients", "add", "--role", "finance", "--name", "X", "--email",
                 "x@kommune.example", "--greeting", "a\nb")
    assert bad.exit_code == 9 and "invalid greeting" in bad.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_errors_name_the_likely_cause_and_point_to_check(
        dovecot: Any, smtp_server: SmtpTestServer,
        make_workspace: Callable[..., Workspace], tmp_path: Path) -> None:
    import trustme

    user, password = dovecot.add_user()
    ws = make_workspace(smtp=smtp_server, imap=(dovecot, user, password))
    ws.add_recipients(THREE)
    ws.set("smtp", port=_free_port())  # nothing listens there
    refused = ws.cli("notify")
    assert refused.exit_code in (6, 11), refused.output
    assert "Likely cause: nothing accepts connections there" in refused.output
    assert "Run 'mailtracker check' to see what to fix" in refused.output
    ws.set("imap", port=dovecot.port_starttls)  # implicit TLS spoken to a plain port
    wrong_port = ws.cli("poll")
    assert wrong_port.exit_code == 7, wrong_port.output
    assert "Likely cause: the port does not speak the TLS mode configured" in wrong_port.output
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    ws.set("imap", port=dovecot.port_tls, ca_file=str(other_ca))
    untrusted = ws.cli("poll")
    assert untrusted.exit_code == 7, untrusted.output
    assert "Likely cause: the server's certificate is not trusted" in untrusted.output
