"""The store's lock files: flock, shared with filelock, per thread, never waiting for itself."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import pytest

from mailtracker.store.flock import Lock, LockTimeout, NestedLock, locked


def test_a_lock_held_with_filelock_is_respected_and_the_other_way_round(tmp_path: Path) -> None:
    path = tmp_path / "state.json.lock"
    with filelock.FileLock(str(path)), pytest.raises(LockTimeout):
        Lock(path).acquire(0.05)
    with locked(path, 0), pytest.raises(filelock.Timeout):
        filelock.FileLock(str(path), timeout=0.05).acquire()


def test_another_process_is_kept_out_until_the_lock_is_free(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    script = ("import sys; from pathlib import Path; from mailtracker.store.flock import Lock, "
              "LockTimeout\ntry:\n    Lock(Path(sys.argv[1])).acquire(0)\n"
              "except LockTimeout:\n    sys.exit(3)\n")

    def other_process() -> int:
        return subprocess.run([sys.executable, "-c", script, str(path)], check=False,
                              timeout=60).returncode

    with locked(path, 0):
        assert other_process() == 3
    assert other_process() == 0


def test_the_same_thread_gets_nested_lock_at_once_and_threads_exclude_each_other(
        tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    seen: list[str] = []
    with locked(path, 0):
        started = time.monotonic()
        with pytest.raises(NestedLock):
            Lock(path).acquire(5)
        assert time.monotonic() - started < 1

        def other() -> None:
            try:
                Lock(path).acquire(0.05)
            except LockTimeout:
                seen.append("busy")

        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
    assert seen == ["busy"]
    with locked(path, 0):  # released: free again for this thread
        pass
