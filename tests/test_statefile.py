"""The state file's journal: small transactions are appended, and every guarantee of the
snapshot holds for them too (all or nothing, durable, no stale replay, nothing left behind
by ``forget``)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailtracker.errors import StoreFullError
from mailtracker.models import HandledMessage, Recipient
from mailtracker.store import Store

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _person(i: int, name: str = "") -> Recipient:
    return Recipient(f"p{i}@kommune.dk", name or f"Person {i}", "finance", "da", NOW)


def _big(tmp_path: Path, n: int = 60) -> tuple[Store, Path]:
    store = Store(tmp_path / "state.json")
    with store.transaction() as txn:
        for i in range(n):
            txn.put_recipient(_person(i))
    return store, tmp_path / "state.json"


def journal(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def test_small_change_is_appended_and_read_back(tmp_path: Path) -> None:
    store, path = _big(tmp_path)
    before = path.read_bytes()
    with store.transaction() as txn:
        txn.put_recipient(_person(1, "Renamed"))
        txn.remove_recipient("p2@kommune.dk")
    assert path.read_bytes() == before  # the snapshot was not rewritten
    fresh = Store(path).snapshot()
    assert fresh.recipient("p1@kommune.dk").name == "Renamed"
    assert fresh.recipient("p2@kommune.dk") is None
    assert len(fresh.recipients()) == 59


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    store, path = _big(tmp_path)
    with store.transaction() as txn:
        txn.put_recipient(_person(100))
    with journal(path).open("ab") as out:  # a writer killed in the middle of its line
        out.write(b'\n0123456789abcdef0123456789abcdef [["recipients","1",{"email":"x')
    with store.transaction() as txn:
        txn.put_recipient(_person(101))
    emails = {r.email for r in Store(path).snapshot().recipients()}
    assert {"p100@kommune.dk", "p101@kommune.dk"} <= emails and len(emails) == 62


def test_journal_of_an_older_snapshot_is_never_replayed(tmp_path: Path) -> None:
    store, path = _big(tmp_path)
    with store.transaction() as txn:
        txn.put_recipient(_person(1, "Renamed"))
    old_journal = journal(path).read_bytes()
    with store.transaction() as txn:  # big change: a new snapshot and an empty journal
        for i in range(200, 400):
            txn.put_recipient(_person(i))
    journal(path).write_bytes(old_journal)  # as if the journal's replacement never landed
    with store.transaction() as txn:
        txn.put_recipient(_person(1, "Again"))
    view = Store(path).snapshot()
    assert view.recipient("p1@kommune.dk").name == "Again"
    assert len(view.recipients()) == 260


def test_forget_leaves_the_person_nowhere_on_disk(tmp_path: Path) -> None:
    store, path = _big(tmp_path)
    with store.transaction() as txn:
        txn.put_recipient(_person(7, "Søren Særlig"))
    with store.transaction() as txn:
        assert txn.forget_person("p7@kommune.dk") == 1
    for f in (path, journal(path)):
        assert b"p7@kommune.dk" not in f.read_bytes()


def test_disk_full_while_appending_changes_nothing(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store, path = _big(tmp_path)
    with store.transaction() as txn:
        txn.put_recipient(_person(100))
    files = {p: p.read_bytes() for p in (path, journal(path))}
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".journal"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StoreFullError), store.transaction() as txn:
        txn.put_recipient(_person(101))
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in files} == files
    assert Store(path).snapshot().recipient("p101@kommune.dk") is None


def test_other_processes_see_appended_changes_and_add_their_own(tmp_path: Path) -> None:
    store, path = _big(tmp_path)
    code = (f"import sys; sys.path.insert(0, {str(Path.cwd())!r})\n"
            "from datetime import UTC, datetime\nfrom pathlib import Path\n"
            "from mailtracker.models import HandledMessage\nfrom mailtracker.store import Store\n"
            f"s = Store(Path({str(path)!r}))\n"
            "for i in range(30):\n"
            "    with s.transaction() as t:\n"
            "        t.add_handled([HandledMessage(f'<o{i}@x>', datetime.now(UTC), 'noise')])\n")
    child = subprocess.Popen([sys.executable, "-c", code])
    for i in range(30):
        with store.transaction() as txn:
            txn.add_handled([HandledMessage(f"<m{i}@x>", NOW, "noise")])
    assert child.wait(60) == 0
    assert Store(path).snapshot().handled_count() == 60
    with store.transaction() as txn:
        assert txn.handled_count() == 60


def test_state_file_stays_plain_json(tmp_path: Path) -> None:
    _store, path = _big(tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) >= {"meta", "recipients"}
    assert journal(path).stat().st_mode & 0o077 == 0 if journal(path).exists() else True
