"""A damaged state file is never taken for a new task: every command stops with exit 4 and
one line, nothing on disk is written over, and a copy of the damaged files is kept aside."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace


def journal_of(ws: Workspace) -> Path:
    return ws.store_path.with_name(ws.store_path.name + ".journal")


@pytest.fixture
def told(smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace]) -> Workspace:
    """A workspace whose three people were told, with a journal beside the state file."""
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    assert ws.cli("notify").exit_code == 0
    assert len(smtp_server.messages) == 3
    assert ws.cli("mark", "webinar_held", "--note", "holdt").exit_code == 0
    assert journal_of(ws).exists(), "small transactions are appended to the journal"
    return ws


def files(ws: Workspace) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ws.store_path.parent.iterdir())
            if p.name.startswith("mailtracker.json") and ".damaged-" not in p.name}


def evidence(ws: Workspace) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in ws.store_path.parent.glob("*.damaged-*")}


def assert_refused(ws: Workspace, smtp_server: SmtpTestServer, reason: str) -> None:
    before = files(ws)
    for args in (["status"], ["status", "--json"], ["notify"], ["recipients", "list"],
                 ["tick"], ["review"]):
        result = ws.cli(*args)
        assert result.exit_code == 4, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], (args, result.output)
        assert "Restore mailtracker.json and mailtracker.json.journal together" in lines[0]
    assert len(smtp_server.messages) == 3, "nobody was told a second time"
    assert files(ws) == before, "the damaged files were left exactly as they were"


def test_an_empty_state_file_with_its_journal_is_refused_not_started_afresh(
        told: Workspace, smtp_server: SmtpTestServer) -> None:
    journal = journal_of(told).read_bytes()
    told.store_path.write_bytes(b"")
    assert_refused(told, smtp_server, "the state file is empty (0 bytes)")
    kept = evidence(told)
    assert sorted(kept.values(), key=len) == [b"", journal]
    assert all(p.stat().st_mode & 0o077 == 0 for p in told.store_path.parent.glob("*.damaged-*"))


def test_a_state_file_without_journal_that_is_empty_is_refused(
        told: Workspace, smtp_server: SmtpTestServer) -> None:
    journal_of(told).unlink()
    told.store_path.write_bytes(b"\n")
    assert_refused(told, smtp_server, "the state file is empty (1 bytes)")


def test_a_missing_state_file_whose_journal_remains_is_refused(
        told: Workspace, smtp_server: SmtpTestServer) -> None:
    told.store_path.unlink()
    assert_refused(told, smtp_server, "the state file is missing but its journal")
    assert not told.store_path.exists()


def test_a_state_file_that_does_not_parse_is_refused_and_kept(
        told: Workspace, smtp_server: SmtpTestServer) -> None:
    damaged = told.store_path.read_bytes()[: 200]
    told.store_path.write_bytes(damaged)
    assert_refused(told, smtp_server, "the state file is not valid JSON")
    assert damaged in evidence(told).values()


def test_check_shows_the_damaged_state_file_as_a_failure(told: Workspace) -> None:
    told.store_path.write_bytes(b"")
    result = told.cli("check")
    assert result.exit_code == 10
    assert "✗ state file" in result.output and "the state file is empty" in result.output


def test_a_journal_line_cut_short_is_reported_not_dropped_in_silence(told: Workspace) -> None:
    with journal_of(told).open("ab") as out:  # a writer killed in the middle of its line
        out.write(b'\n0123456789abcdef0123456789abcdef [["recipients","1",{"ema')
    status = told.status()
    assert [w for w in status["warnings"] if "is cut short or damaged" in w], status["warnings"]
    assert len(status["recipients"]) == 3
    text = told.cli("status").output
    assert "mailtracker.json.journal: line" in text


# ---------------------------------------------------------------- restored from an older backup


def test_a_state_restored_from_an_older_backup_sends_nobody_a_second_copy(
        told: Workspace, smtp_server: SmtpTestServer, tmp_path: Path) -> None:
    """The backup is taken, a fourth person is told, then the older backup is put back (state
    file and journal, as the README says to back up). The sent ledger beside them knows what
    went out since: notify and tick refuse, and say what to do."""
    backup = {name: data for name, data in files(told).items()
              if name in ("mailtracker.json", "mailtracker.json.journal")}
    told.add_recipients([("finance", "Økonomi, Fælles", "okonomi@kommune.example")])
    assert told.cli("notify").exit_code == 0
    assert len(smtp_server.messages) == 4
    for name in ("mailtracker.json", "mailtracker.json.journal"):
        (told.store_path.parent / name).unlink()
    for name, data in backup.items():
        (told.store_path.parent / name).write_bytes(data)
    told.add_recipients([("finance", "Økonomi, Fælles", "okonomi@kommune.example")])

    for args in (["notify"], ["notify", "--dry-run"], ["tick"]):
        refused = told.cli(*args)
        assert refused.exit_code == 4, (args, refused.output)
        assert "1 mail(s) went out that this state file does not record" in refused.output
        assert "restored from an older backup?" in refused.output
        assert "move mailtracker.json.sent aside" in refused.output
    assert len(smtp_server.messages) == 4, "nobody was told a second time"
    # status still shows where things stand, and says it
    status = told.cli("status")
    assert status.exit_code == 0
    assert "Warning: 1 mail(s) went out that this state file does not record" in status.output
    dossier = told.cli("report", "--html", "-")
    assert dossier.exit_code == 0
    assert "1 mail(s) went out that this state file does not record" in dossier.stdout
    # The person in charge compares with the Sent folder and moves the ledger aside: the
    # state is taken as it is (here it would send the fourth mail again, knowingly).
    ledger = told.store_path.with_name("mailtracker.json.sent")
    ledger.rename(tmp_path / "sent.old")
    assert told.cli("notify").exit_code == 0
    assert len(smtp_server.messages) == 5


def test_a_missing_state_file_whose_ledger_shows_mail_went_out_is_not_a_new_task(
        told: Workspace, smtp_server: SmtpTestServer) -> None:
    for name in ("mailtracker.json", "mailtracker.json.journal"):
        (told.store_path.parent / name).unlink()
    result = told.cli("notify")
    assert result.exit_code == 4, result.output
    assert "the state file is missing, but mailtracker.json.sent shows mail was sent" \
        in result.output
    assert len(smtp_server.messages) == 3
    assert not told.store_path.exists()


def test_forget_leaves_no_false_alarm_and_no_line_about_the_person(
        told: Workspace, smtp_server: SmtpTestServer) -> None:
    ledger = told.store_path.with_name("mailtracker.json.sent")
    assert len(ledger.read_text().splitlines()) == 3
    assert told.cli("forget", THREE[0][2], "--yes").exit_code == 0
    assert len(ledger.read_text().splitlines()) == 2
    assert THREE[0][2] not in ledger.read_text()
    assert told.cli("notify").exit_code == 0  # no alarm: the ledger matches the state
    assert len(smtp_server.messages) == 3
