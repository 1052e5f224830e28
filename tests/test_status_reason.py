"""``status`` says why the KLIK status is what it is, and which sender authentication is used."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from email import policy
from email.parser import BytesParser
from pathlib import Path

from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace


def test_status_explains_fuldfoert_by_the_cards_rule(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    before = ws.status()
    assert before["klik_status_code"] == "not_started"
    assert before["klik_status_reason"].startswith("no orientation sent yet; required roles: ")
    assert ws.cli("notify").exit_code == 0
    after = ws.status()
    assert after["klik_status"] == "fuldført"
    assert re.fullmatch(r"all 3 required roles oriented \(last accepted \d{4}-\d\d-\d\d "
                        r"\d\d:\d\d, no bounce\); acknowledgements 0 of 3",
                        after["klik_status_reason"]), after["klik_status_reason"]
    text = ws.cli("status").output
    assert f"KLIK status: fuldført: {after['klik_status_reason']}" in text


def test_status_names_the_sender_authentication_in_use(
        make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace()
    ws.sections["trust"] = {"sender_auth": "exchange_online",
                            "tenant_id": "3f1c2a9e-7b4d-4e21-9c5a-0d8e6f4b2a17"}
    ws.write()
    assert ws.status()["trust"] == ("exchange_online (Exchange Online's verdict, tenant "
                                    "3f1c2a9e-7b4d-4e21-9c5a-0d8e6f4b2a17)")
    assert "Sender authentication: exchange_online" in ws.cli("status").output


def test_tick_preview_dir_writes_the_mail_due_and_sends_nothing_on_a_dry_run(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace],
        tmp_path: Path) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    assert ws.cli("notify", env={"MAILTRACKER_NOW": "2026-03-02T09:00:00+01:00"}).exit_code == 0
    later = {"MAILTRACKER_NOW": "2026-03-16T10:00:00+01:00"}  # ten working days on
    preview = tmp_path / "preview"
    result = ws.cli("tick", "--dry-run", "--preview-dir", str(preview), env=later)
    assert result.exit_code == 0, result.output
    files = sorted(preview.glob("*.eml"))
    assert len(files) == 3 and all(f.name.startswith("reminder-orientation--") for f in files)
    msg = BytesParser(policy=policy.default).parse(files[0].open("rb"))
    assert str(msg["Subject"]).startswith("Påmindelse")
    assert len(smtp_server.messages) == 3, "a dry run sends nothing"
    sent = ws.cli("tick", "--preview-dir", str(tmp_path / "sent"), env=later)
    assert sent.exit_code == 0, sent.output
    assert len(smtp_server.messages) == 6
    assert len(list((tmp_path / "sent").glob("*.eml"))) == 3


def test_people_see_local_time_and_the_mail_is_dated_in_it(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    winter = {"MAILTRACKER_NOW": "2026-03-02T08:00:00+00:00"}
    assert ws.cli("notify", env=winter).exit_code == 0
    date = str(smtp_server.messages[0].message["Date"])
    assert date.startswith("Mon, 02 Mar 2026 09:00:") and date.endswith("+0100"), date
    marked = ws.cli("mark", "webinar_held", "--by", "Karen", env=winter)
    assert "at 2026-03-02 09:00 CET by Karen" in marked.output, marked.output
    due = ws.cli("tick", "--dry-run", "--json", env=winter)
    assert re.search(r'"next_due_at": "2026-03-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"', due.output)
    now = json.loads(due.output)["now"]
    assert now.startswith("2026-03-02T08:00:0") and "." not in now  # no microseconds


def test_forget_keeps_a_completed_task_complete_without_keeping_the_person(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    assert ws.cli("notify").exit_code == 0
    assert ws.status()["klik_status"] == "fuldført"
    email = THREE[0][2]
    result = ws.cli("forget", email, "--yes")
    assert result.exit_code == 0, result.output
    # The orientation did happen: the task stays complete, and the fact is kept anonymously.
    assert re.search(r"Kept, without name or address: the Accounting-system owner was oriented "
                     r"at \d{4}-\d\d-\d\d \d\d:\d\d \w+, so the KLIK status stays »fuldført«\.",
                     result.output), result.output
    assert "no longer" not in result.output
    after = ws.status()
    assert after["klik_status"] == "fuldført"
    assert "1 of them since forgotten, oriented" in after["klik_status_reason"]
    assert email not in ws.store_path.read_text(encoding="utf-8").lower()
    quiet = ws.cli("recipients", "add", "--role", THREE[0][0], "--name", "Ny Person",
                   "--email", "ny@kommune.example")
    assert quiet.exit_code == 0
    other = ws.cli("forget", "ny@kommune.example", "--yes")
    assert other.exit_code == 0 and "KLIK status" not in other.output
