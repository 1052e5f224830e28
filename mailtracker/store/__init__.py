"""The store: typed views and transactions over the state file, through TinyDB (here and in
``store.buffer``, its extension points; nothing else imports TinyDB).

Guarantees:
- Each transaction is written once, atomically and durably, or not at all: a full disk or a
  crash leaves the previous state intact (see ``mailtracker.store.storage`` for the snapshot and
  its journal).
- Writers are serialised by a lock file; a transaction reads the state under the lock, so no
  stale ``_next_id`` or cache survives from an earlier read. Documents are keyed by us (a hash
  of their natural key), never by TinyDB's counter.
- One write per transaction (a poll batch is one transaction), and none if nothing changed.
- ``schema_version`` in the ``meta`` table, with migrations applied on read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tinydb import TinyDB
from tinydb.table import Document, Table

from mailtracker.errors import (
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreRestoredError,
)
from mailtracker.models import (
    DeliveryState,
    DeltaLink,
    HandledMessage,
    MilestoneRecord,
    Notification,
    NotificationState,
    OrientedFact,
    QuarantineEntry,
    Recipient,
    TimelineEntry,
    UnparseableEntry,
    Watermark,
)
from mailtracker.store import handled, ledger
from mailtracker.store.buffer import StateDB, TransactionStorage
from mailtracker.store.codec import from_doc, to_doc
from mailtracker.store.handled import HandledIndex
from mailtracker.store.storage import Loaded, Ops, StateFile

SCHEMA_VERSION = 2
log = logging.getLogger("mailtracker.store")


def _handled_chunks(data: dict[str, Any]) -> dict[str, Any]:
    """1 -> 2: the handled-message index packed into chunks (``mailtracker.store.handled``)."""
    return {**data, handled.TABLE: handled.from_v1(data.get(handled.TABLE, {}))}


# Migrations from version N to N+1, applied in order on read. Each takes and returns the raw
# TinyDB data ({table: {doc_id: doc}}); the first write after a migration rewrites the file.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _handled_chunks}

T = TypeVar("T")


def doc_id_for(key: str) -> int:
    """A stable document id from a natural key (48 bits of SHA-256: no practical collisions);
    the handled-message index stores the same 48 bits as hex (``handled.key_for``)."""
    return int(handled.key_for(key), 16)


def _migrate(data: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    """Current-schema data; ``data`` itself when it is current already."""
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
        meta = dict(data.get("meta", {}))
        meta["1"] = {**meta.get("1", {}), "schema_version": version}
        data = {**data, "meta": meta}
    return data


class StateView:
    """Typed read access to one consistent copy of the state."""

    def __init__(self, db: TinyDB):
        self._db = db
        self._handled: HandledIndex | None = None

    def _table(self, name: str) -> Table:
        return self._db.table(name, cache_size=0)

    def _raw(self, name: str) -> dict[str, Any]:
        """The table's documents as stored, ``{doc_id: doc}`` (read-only use: no copies)."""
        table: dict[str, Any] = (self._db.storage.read() or {}).get(name, {})
        return table

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

    def handled_ids(self) -> HandledIndex:
        """The handled messages (``message_id in …``); a copy, free to change."""
        return HandledIndex(self._handled_index())

    def _handled_index(self) -> HandledIndex:
        if self._handled is None:
            self._handled = handled.index_of(self._raw(handled.TABLE))
        return self._handled

    def handled_count(self) -> int:
        return handled.count_of(self._raw(handled.TABLE))

    def is_handled(self, message_id: str) -> bool:
        return message_id in self._handled_index()

    def watermark(self, account: str, folder: str) -> Watermark | None:
        return self._get("watermarks", Watermark, f"{account}|{folder}")

    def delta_link(self, account: str, folder: str) -> DeltaLink | None:
        return self._get("deltalinks", DeltaLink, f"{account}|{folder}")

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

    def oriented_facts(self, task: str) -> list[OrientedFact]:
        docs = [d for d in self._table("oriented").all() if d.get("task") == task]
        return sorted((from_doc(OrientedFact, dict(d)) for d in docs), key=lambda f: f.sent_at)


class Transaction(StateView):
    """Read and write access under the store's lock; written once when the block ends."""

    # Every write goes through TinyDB's table API (upsert, remove); the store's Table class
    # (``store.buffer``) applies it in place and records the document for the journal.

    def _put(self, table: str, key: str, doc: dict[str, Any]) -> None:
        # TinyDB's upsert: fields of a stored document that ``doc`` lacks are kept.
        self._table(table).upsert(Document(doc, doc_id=doc_id_for(key)))

    def _remove(self, table: str, key: str) -> bool:
        return bool(self._table(table).remove(doc_ids=[doc_id_for(key)]))

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
        index = self._handled_index()
        new: dict[str, HandledMessage] = {}
        for e in entries:
            key = handled.key_for(e.message_id)
            if not index.has_key(key):
                new.setdefault(key, e)
        if new:
            chunks = handled.added_chunks(self._raw(handled.TABLE), new.items())
            table = self._table(handled.TABLE)
            for doc_id, chunk in chunks.items():
                table.upsert(Document(chunk, doc_id=int(doc_id)))
            for key in new:
                index.add_key(key)

    def set_watermark(self, watermark: Watermark) -> None:
        self._put("watermarks", watermark.key, to_doc(watermark))

    def set_delta_link(self, mark: DeltaLink) -> None:
        self._put("deltalinks", mark.key, to_doc(mark))

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
        person = self.recipient(email)
        if person is not None:  # keep that the role was oriented, without the person
            for n in self.notifications():
                if n.recipient == email and n.state is NotificationState.SENT \
                        and n.sent_at is not None and n.delivery is not DeliveryState.BOUNCED:
                    fact = OrientedFact(n.task, person.role, n.template, n.sent_at,
                                        n.acknowledged_at)
                    self._put("oriented", f"{n.task}|{person.role}|{n.template}|"
                              f"{n.sent_at.isoformat()}", to_doc(fact))
        removed = int(self.remove_recipient(email))
        outbox = self._table("outbox")
        ids = [d.doc_id for d in outbox.all() if d.get("recipient") == email]
        outbox.remove(doc_ids=ids) if ids else None
        removed += len(ids)
        timeline = self._table("timeline")
        tl_ids = [d.doc_id for d in timeline.all()
                  if email in json.dumps(d, ensure_ascii=False).lower()]
        timeline.remove(doc_ids=tl_ids) if tl_ids else None
        removed += len(tl_ids)
        if removed:
            storage = self._db.storage
            assert isinstance(storage, TransactionStorage)
            storage.rewrite_all()
        return removed


class Store:
    """The state file at ``path``, with its lock files beside it."""

    def __init__(self, path: Path, *, lock_timeout: float = 10.0):
        self.path = path
        self.lock_timeout = lock_timeout
        self._file = StateFile(path, lambda data: _migrate(data, path))
        self._ledger = ledger.SentLedger(path)
        self.warnings: tuple[str, ...] = ()  # what the last read found wrong but survivable

    def _lock_path(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def snapshot(self) -> StateView:
        """A consistent read-only view (no lock needed: writes replace the snapshot
        atomically, and a reader never replays a journal line that was not committed)."""
        loaded = self._load()
        self.warnings = loaded.warnings
        buffer = TransactionStorage(loaded.data)
        buffer.closed = True
        return StateView(StateDB(storage=lambda: buffer))

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock, read fresh, yield; write once on success, discard on exception."""
        self._ensure_dir()
        with self._locked(".lock", self.lock_timeout, lambda: StoreLockedError(
                f"another mailtracker process has been writing the state for more than "
                f"{self.lock_timeout:g} s; try again when it is done", path=self.path)):
            buffer: TransactionStorage | None = None
            try:
                loaded = self._load()
                buffer = TransactionStorage(loaded.data)
                db = StateDB(storage=lambda: buffer)
                yield Transaction(db)
                if buffer.dirty or loaded.snapshot is None:
                    ops = buffer.ops()
                    self._file.commit(loaded, buffer.data, ops)
                    self._record_sent(loaded.data, buffer.data, ops)
            finally:
                if buffer is not None:
                    buffer.closed = True

    def _load(self) -> Loaded:
        """The state; a missing state file whose ledger shows mail went out is damaged, never
        a new task (everyone would be sent their mail again)."""
        loaded = self._file.load()
        if loaded.snapshot is None and self._ledger.read():
            raise StoreCorruptError(
                f"the state file is missing, but {self._ledger.path.name} shows mail was sent "
                "from it: restore the state file and its journal from your backup (nothing "
                "was written)", path=self.path)
        return loaded

    def _record_sent(self, before: dict[str, Any], after: dict[str, Any],
                     ops: Ops | None) -> None:
        """Keep the sent ledger in step with what the commit marked as gone (or removed)."""
        old, new = before.get("outbox", {}), after.get("outbox", {})
        if ops is not None:
            touched = {str(op[1]) for op in ops if op[0] == "outbox"}
            old = {d: old[d] for d in touched if d in old}
            new = {d: new[d] for d in touched if d in new}
        was, now = ledger.gone(old), ledger.gone(new)
        added = [ledger.Entry(k, str(doc.get("message_id")),
                              str(doc.get("sent_at") or doc.get("updated_at") or ""))
                 for k, doc in now.items() if k not in was]
        dropped = {ledger.key_of(doc) for d, doc in old.items() if d not in new}
        try:
            if added:
                self._ledger.append(added)
            if dropped:
                self._ledger.remove(dropped)
        except OSError as exc:  # committed already: the ledger is a safety net, not the record
            log.warning("could not update %s: %s", self._ledger.path.name,
                        exc.strerror or exc)

    def unrecorded_sends(self) -> list[ledger.Entry]:
        """Mail the ledger says left that the state file does not know: the state is older
        than what happened (restored from an older backup?)."""
        known = ledger.gone(self._load().data.get("outbox", {}))
        return [e for e in self._ledger.read().values() if e.key not in known]

    def refuse_if_restored(self) -> None:
        """Raise StoreRestoredError before sending anything if the state is older than the
        mail that went out (see ``store.ledger``)."""
        missing = self.unrecorded_sends()
        if missing:
            first = min(missing, key=lambda e: e.at)
            raise StoreRestoredError(
                f"{len(missing)} mail(s) went out that this state file does not record (the "
                f"first: {first.message_id} at {first.at[:16].replace('T', ' ')}); was it "
                "restored from an older backup? Nothing was sent. Compare "
                "'mailtracker status' with the Sent folder; if the state is right after all, "
                f"move {self._ledger.path.name} aside and run again", path=self.path)

    @contextmanager
    def _locked(self, suffix: str, timeout: float,
                busy: Callable[[], StoreLockedError]) -> Iterator[None]:
        from filelock import FileLock, Timeout

        # flock(2) through filelock, on a file beside the state file; each FileLock opens its
        # own file, so two threads exclude each other as two processes do.
        lock = FileLock(self._lock_path(suffix), is_singleton=False)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise busy() from None
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {self.path.name}{suffix}: "
                             f"{exc.strerror}", path=self.path) from None
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def exclusive(self, activity: str, what: str | None = None) -> Iterator[None]:
        """Hold the store for a whole run (``notify``, ``poll``/``watch``); refuse a second one.

        ``activity`` names the lock file; ``what`` the commands it stands for, for the error.
        """
        self._ensure_dir()
        with self._locked(f".{activity}.lock", 0, lambda: StoreLockedError(
                f"another {what or repr('mailtracker ' + activity)} is already running on this "
                "state file; stop it first (only one may run at a time)", path=self.path)):
            yield

    def _ensure_dir(self) -> None:
        if not self.path.parent.is_dir():
            raise StoreError("the directory for the state file does not exist", path=self.path)
