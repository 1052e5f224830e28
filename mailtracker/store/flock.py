"""The store's lock files: ``flock(2)`` on a file beside the state file.

Every store transaction takes the write lock, and ``notify`` makes one transaction per mail.
filelock (used for the OAuth2 token cache) spends about 0.3 ms per acquire and release on its
thread, fork and singleton bookkeeping: a fifth of a whole outbox commit. The same
``flock`` done directly costs a few microseconds, and it is the very lock filelock's
``UnixFileLock`` takes, so a process holding the file with filelock excludes this one and the
other way round.

A lock is held through its own open file description, so two threads exclude each other like
two processes do; a thread taking a lock it already holds gets NestedLock at once instead of
waiting for itself.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_local = threading.local()  # the paths this thread holds


class LockTimeout(Exception):
    """The lock stayed taken for the whole timeout."""


class NestedLock(Exception):
    """This thread already holds the lock (waiting would wait for itself)."""


class Lock:
    """An exclusive ``flock`` on ``path`` (created if missing)."""

    def __init__(self, path: Path):
        self.path = path
        self._key = os.path.abspath(path)
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds (0: do not wait). Raises LockTimeout, NestedLock,
        OSError; nothing is held then."""
        held: set[str] = _local.__dict__.setdefault("held", set())
        if self._key in held:
            raise NestedLock(str(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _acquire(fd, timeout)
        except BaseException:
            os.close(fd)
            raise
        held.add(self._key)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the description releases the lock
            self._fd = None
            _local.__dict__.setdefault("held", set()).discard(self._key)


@contextmanager
def locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold the lock on ``path`` for the block (see :meth:`Lock.acquire`)."""
    lock = Lock(path)
    lock.acquire(timeout)
    try:
        yield
    finally:
        lock.release()


def _acquire(fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout from None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
