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
