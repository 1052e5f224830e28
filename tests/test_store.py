"""The state file keeps every record through crashes, full disks and concurrent writers."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailtracker.errors import StoreCorruptError, StoreError, StoreFullError, StoreLockedError
from mailtracker.models import HandledMessage, Recipient
from mailtracker.store import Store

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _recipient(i: int) -> Recipient:
    return Recipient(f"person{i}@kommune.dk", f"Person {i}", "system_owner", "da", NOW)


def _fill(store: Store, n: int) -> None:
    with store.transaction() as txn:
        for i in range(n):
            txn.put_recipient(_recipient(i))


def test_records_survive_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    _fill(store, 3)
    reopened = Store(tmp_path / "state.json").snapshot()
    assert [r.email for r in reopened.recipients()] == [
        "person0@kommune.dk", "person1@kommune.dk", "person2@kommune.dk"]
    assert reopened.recipients()[0].added_at == NOW


def test_state_file_is_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    _fill(store, 1)
    assert (tmp_path / "state.json").stat().st_mode & 0o077 == 0


def test_exception_inside_transaction_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    _fill(store, 2)
    before = (tmp_path / "state.json").read_bytes()
    with pytest.raises(RuntimeError), store.transaction() as txn:
        txn.put_recipient(_recipient(99))
        raise RuntimeError("crash in the middle of a batch")
    assert (tmp_path / "state.json").read_bytes() == before


def test_read_only_transaction_does_not_rewrite_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    _fill(store, 1)
    mtime = (tmp_path / "state.json").stat().st_mtime_ns
    with store.transaction() as txn:
        assert txn.recipient("person0@kommune.dk") is not None
    assert (tmp_path / "state.json").stat().st_mtime_ns == mtime


def test_injected_disk_full_keeps_old_state(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "state.json")
    _fill(store, 5)
    before = (tmp_path / "state.json").read_bytes()

    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.path.isfile(f"/proc/self/fd/{fd}") and ".tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StoreFullError, match="disk full"), store.transaction() as txn:
        for i in range(5, 50):
            txn.put_recipient(_recipient(i))
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_bytes() == before
    assert len(Store(tmp_path / "state.json").snapshot().recipients()) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="mounting a tmpfs needs root")
def test_real_full_tmpfs_keeps_old_state(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                            capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {result.stderr.decode().strip()}")
    try:
        store = Store(mnt / "state.json")
        _fill(store, 10)
        before = (mnt / "state.json").read_bytes()
        (mnt / "ballast").write_bytes(b"\0" * (64 * 1024 - 2 * len(before) - 8192))
        with pytest.raises(StoreFullError), store.transaction() as txn:
            for i in range(10, 2000):
                txn.put_recipient(_recipient(i))
        assert (mnt / "state.json").read_bytes() == before
        assert len(Store(mnt / "state.json").snapshot().recipients()) == 10
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_corrupt_state_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"recipients": {"1": {"email": "a@b.dk"', encoding="utf-8")
    store = Store(path)
    with pytest.raises(StoreCorruptError, match="not valid JSON"):
        store.snapshot()
    with pytest.raises(StoreCorruptError), store.transaction() as txn:
        txn.put_recipient(_recipient(1))
    assert path.read_text(encoding="utf-8").startswith('{"recipients"')


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"meta": {"1": {"schema_version": 999}}}), encoding="utf-8")
    with pytest.raises(StoreError, match="upgrade mailtracker"):
        Store(path).snapshot()


def _hold_lock(path: str, suffix: str, ready: multiprocessing.synchronize.Event,
               release: multiprocessing.synchronize.Event) -> None:
    import filelock

    with filelock.FileLock(path + suffix):
        ready.set()
        release.wait(30)


def test_second_writer_gets_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = Store(path, lock_timeout=0.2)
    _fill(store, 2)
    before = path.read_bytes()
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(path), ".lock", ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError, match="another mailtracker process"), \
                store.transaction() as txn:
            txn.put_recipient(_recipient(7))
    finally:
        release.set()
        proc.join(30)
    assert path.read_bytes() == before


def test_second_notify_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = Store(path)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(path), ".notify.lock", ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError, match="already running"), store.exclusive("notify"):
            pass
    finally:
        release.set()
        proc.join(30)


_WRITER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from mailtracker.models import Recipient
from mailtracker.store import Store
store = Store(Path(sys.argv[1]), lock_timeout=60)
for i in range(int(sys.argv[3])):
    with store.transaction() as txn:
        txn.put_recipient(Recipient(f"{sys.argv[2]}{i}@kommune.dk", "X", "finance", "da",
                                    datetime.now(UTC)))
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), prefix, "60"])
             for prefix in ("a", "b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    assert len(Store(path).snapshot().recipients()) == 120


def test_handled_index_deduplicates(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    mid = f"<{uuid.uuid4()}@eg.dk>"
    for _ in range(2):
        with store.transaction() as txn:
            txn.add_handled([HandledMessage(mid, NOW, "milestone", 1, "INBOX")])
    view = store.snapshot()
    assert view.handled_count() == 1
    assert view.is_handled(mid)
