"""The state file: TinyDB over an atomic, fsynced JSON storage (the only tinydb importer).

Guarantees:
- A write goes to a temp file in the same directory, is fsynced, ``os.replace``d over the old
  file and the directory is fsynced. A full disk or a crash leaves the previous file intact.
- Writers are serialised by a lock file; a transaction reads the file under the lock, so no
  stale ``_next_id`` or cache survives from an earlier read. Documents are keyed by us (a hash
  of their natural key), never by TinyDB's counter.
- One write per transaction (a poll batch is one transaction), and none if nothing changed.
- ``schema_version`` in the ``meta`` table, with migrations applied on read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import filelock
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from mailtracker.errors import StoreCorruptError, StoreError, StoreFullError, StoreLockedError
from mailtracker.models import (
    HandledMessage,
    MilestoneRecord,
    Notification,
    QuarantineEntry,
    Recipient,
    TimelineEntry,
    UnparseableEntry,
    Watermark,
)
from mailtracker.serialize import from_doc, to_doc

SCHEMA_VERSION = 1

# Migrations from version N to N+1, applied in order on read. Each takes and returns the raw
# TinyDB data ({table: {doc_id: doc}}).
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

T = TypeVar("T")


def doc_id_for(key: str) -> int:
    """A stable document id from a natural key (48 bits of SHA-256: no practical collisions)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:6], "big")


class AtomicJSONStorage(Storage):
    """TinyDB storage that never leaves a half-written file behind."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read state file: {exc.strerror}", path=self.path) from None
        if not text.strip():
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StoreCorruptError(
                f"state file is not valid JSON ({exc}); it was left untouched — restore it from a "
                "backup or move it away", path=self.path) from None
        if not isinstance(data, dict):
            raise StoreCorruptError("state file is not a mailtracker store", path=self.path)
        return data

    def write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        directory = self.path.parent
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                        dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o600)  # names and addresses: personal data
            os.replace(tmp_name, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(
                    "disk full while saving state; nothing was changed (the previous state is "
                    "intact) — free some space and run the command again", path=self.path
                ) from None
            raise StoreError(f"cannot write state file: {exc.strerror}", path=self.path) from None
        _fsync_dir(directory)

    def close(self) -> None:
        pass


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class _BufferStorage(Storage):
    """In-memory TinyDB storage for one transaction; the Store writes it out once."""

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self.dirty = False

    def read(self) -> dict[str, Any]:
        return self.data

    def write(self, data: dict[str, Any]) -> None:
        self.data = data
        self.dirty = True


def _migrate(data: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    if data is None:
        return {"meta": {"1": {"schema_version": SCHEMA_VERSION}}}
    meta = data.get("meta", {}).get("1", {})
    version = meta.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreError(f"state file has schema version {version!r}, this mailtracker "
                         f"understands up to {SCHEMA_VERSION}; upgrade mailtracker", path=path)
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        data.setdefault("meta", {})["1"] = {"schema_version": version}
    return data


class StateView:
    """Typed read access to one consistent copy of the state."""

    def __init__(self, db: TinyDB):
        self._db = db

    def _table(self, name: str) -> Table:
        return self._db.table(name, cache_size=0)

    def _all(self, table: str, cls: type[T]) -> list[T]:
        return [from_doc(cls, dict(doc)) for doc in self._table(table).all()]

    def _get(self, table: str, cls: type[T], key: str) -> T | None:
        doc = self._table(table).get(doc_id=doc_id_for(key))
        return None if doc is None else from_doc(cls, dict(doc))

    def schema_version(self) -> int:
        doc = self._table("meta").get(doc_id=1)
        return int(doc["schema_version"]) if doc else SCHEMA_VERSION

    def recipients(self) -> list[Recipient]:
        return sorted(self._all("recipients", Recipient), key=lambda r: (r.role, r.email))

    def recipient(self, email: str) -> Recipient | None:
        return self._get("recipients", Recipient, email.lower())

    def notifications(self, task: str | None = None) -> list[Notification]:
        items = self._all("outbox", Notification)
        return [n for n in items if task is None or n.task == task]

    def notification(self, key: str) -> Notification | None:
        return self._get("outbox", Notification, key)

    def milestones(self, task: str) -> dict[str, MilestoneRecord]:
        docs = self._table("milestones").all()
        return {d["name"]: from_doc(MilestoneRecord, dict(d)["record"])
                for d in docs if d.get("task") == task}

    def handled_ids(self) -> set[str]:
        return {d["message_id"] for d in self._table("handled").all()}

    def handled_count(self) -> int:
        return len(self._table("handled"))

    def is_handled(self, message_id: str) -> bool:
        return self._table("handled").contains(doc_id=doc_id_for(message_id))

    def watermark(self, account: str, folder: str) -> Watermark | None:
        return self._get("watermarks", Watermark, f"{account}|{folder}")

    def quarantine(self, task: str | None = None) -> list[QuarantineEntry]:
        items = self._all("quarantine", QuarantineEntry)
        return sorted((q for q in items if task is None or q.task == task), key=lambda q: q.at)

    def quarantine_entry(self, entry_id: str) -> QuarantineEntry | None:
        return self._get("quarantine", QuarantineEntry, entry_id)

    def unparseable(self) -> list[UnparseableEntry]:
        return sorted(self._all("unparseable", UnparseableEntry), key=lambda u: u.at)

    def timeline(self, task: str) -> list[TimelineEntry]:
        docs = [d for d in self._table("timeline").all() if d.get("task") == task]
        entries = [from_doc(TimelineEntry, dict(d)["entry"]) for d in docs]
        return sorted(entries, key=lambda e: e.at)


class Transaction(StateView):
    """Read and write access under the store's lock; written once when the block ends."""

    def _put(self, table: str, key: str, doc: dict[str, Any]) -> None:
        self._table(table).upsert(Document(doc, doc_id=doc_id_for(key)))

    def _remove(self, table: str, key: str) -> bool:
        t = self._table(table)
        did = doc_id_for(key)
        if not t.contains(doc_id=did):
            return False
        t.remove(doc_ids=[did])
        return True

    def put_recipient(self, recipient: Recipient) -> None:
        self._put("recipients", recipient.key, to_doc(recipient))

    def remove_recipient(self, email: str) -> bool:
        return self._remove("recipients", email.lower())

    def put_notification(self, notification: Notification) -> None:
        self._put("outbox", notification.key, to_doc(notification))

    def remove_notification(self, key: str) -> bool:
        return self._remove("outbox", key)

    def put_milestone(self, task: str, record: MilestoneRecord) -> None:
        self._put("milestones", f"{task}|{record.name}",
                  {"task": task, "name": record.name, "record": to_doc(record)})

    def remove_milestone(self, task: str, name: str) -> bool:
        return self._remove("milestones", f"{task}|{name}")

    def add_handled(self, entries: list[HandledMessage]) -> None:
        table = self._table("handled")
        docs = [Document(to_doc(e), doc_id=doc_id_for(e.message_id)) for e in entries]
        new = [d for d in docs if not table.contains(doc_id=d.doc_id)]
        if new:
            table.insert_multiple(new)

    def set_watermark(self, watermark: Watermark) -> None:
        self._put("watermarks", watermark.key, to_doc(watermark))

    def put_quarantine(self, entry: QuarantineEntry) -> None:
        self._put("quarantine", entry.id, to_doc(entry))

    def add_unparseable(self, entry: UnparseableEntry) -> None:
        key = entry.message_id or f"{entry.folder}|{entry.uid}|{entry.at.isoformat()}"
        self._put("unparseable", key, to_doc(entry))

    def add_timeline(self, task: str, entry: TimelineEntry) -> None:
        key = f"{task}|{entry.at.isoformat()}|{entry.kind}|{entry.message_id}|{entry.text}"
        self._put("timeline", key, {"task": task, "entry": to_doc(entry)})

    def forget_person(self, email: str) -> int:
        """Remove a recipient and every record that names them. Returns records removed."""
        email = email.lower()
        removed = int(self.remove_recipient(email))
        outbox = self._table("outbox")
        ids = [d.doc_id for d in outbox.all() if d.get("recipient") == email]
        outbox.remove(doc_ids=ids) if ids else None
        removed += len(ids)
        timeline = self._table("timeline")
        tl_ids = [d.doc_id for d in timeline.all()
                  if email in json.dumps(d, ensure_ascii=False).lower()]
        timeline.remove(doc_ids=tl_ids) if tl_ids else None
        return removed + len(tl_ids)


class Store:
    """The state file at ``path``, with its lock files beside it."""

    def __init__(self, path: Path, *, lock_timeout: float = 10.0):
        self.path = path
        self.lock_timeout = lock_timeout
        self._storage = AtomicJSONStorage(path)

    def _lock_path(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _load(self) -> dict[str, Any]:
        return _migrate(self._storage.read(), self.path)

    def snapshot(self) -> StateView:
        """A consistent read-only view (no lock needed: writes replace the file atomically)."""
        buffer = _BufferStorage(self._load())
        return StateView(TinyDB(storage=lambda: buffer))

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock, read fresh, yield; write once on success, discard on exception."""
        self._ensure_dir()
        lock = filelock.FileLock(str(self._lock_path(".lock")), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise StoreLockedError(
                f"another mailtracker process has been writing the state for more than "
                f"{self.lock_timeout:g} s; try again when it is done", path=self.path) from None
        try:
            buffer = _BufferStorage(self._load())
            db = TinyDB(storage=lambda: buffer)
            yield Transaction(db)
            if buffer.dirty or not self.path.exists():
                self._storage.write(buffer.data)
        finally:
            lock.release()

    @contextmanager
    def exclusive(self, activity: str, what: str | None = None) -> Iterator[None]:
        """Hold the store for a whole run (``notify``, ``poll``/``watch``); refuse a second one.

        ``activity`` names the lock file; ``what`` the commands it stands for, for the error.
        """
        self._ensure_dir()
        path = self._lock_path(f".{activity}.lock")
        lock = filelock.FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise StoreLockedError(
                f"another {what or repr('mailtracker ' + activity)} is already running on this "
                "state file; stop it first (only one may run at a time)",
                path=self.path) from None
        try:
            yield
        finally:
            lock.release()

    def _ensure_dir(self) -> None:
        if not self.path.parent.is_dir():
            raise StoreError("the directory for the state file does not exist", path=self.path)
