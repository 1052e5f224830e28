"""The state on disk: a JSON snapshot replaced atomically, plus a journal of small transactions.

Rewriting the whole state for every small change (one outbox document while sending, one
poll batch beside 20,000 handled-message records) costs a full encode, a temp file, two
fsyncs and a rename each time; appending a journal line costs one write and one fsync. So a
transaction whose change is small next to the snapshot is appended to
``<state file>.journal``; a bigger one, or one whose changes are not known document by
document, rewrites the snapshot, which also starts a new, empty journal. Knows bytes and
JSON documents ``{table: {doc_id: doc}}``, not TinyDB.

Guarantees (each transaction is all or nothing, and durable once :meth:`StateFile.commit`
returns):

- The snapshot is written to a temp file, fsynced, ``os.replace``d and the directory fsynced;
  a full disk or a crash leaves the previous snapshot (and journal) intact.
- A journal line is appended and fsynced; if that fails, the file is cut back and nothing
  changed. A line cut short by a crash fails its checksum and is skipped on reading.
- The journal names the snapshot it continues (a random token, also stored in the snapshot's
  ``meta`` document 1), so a journal left over from an older snapshot is never replayed, and a
  reader that raced a rewrite notices and reads again.
- Back up and restore ``<state file>`` and ``<state file>.journal`` together.
- Damaged state is never taken for a new task: a state file that is empty or does not parse,
  or a journal whose state file is missing, stops every command (StoreCorruptError, exit 4)
  before anything is written, and a copy of each file is kept aside as evidence
  (``<name>.damaged-<hash>``). A journal line that fails its checksum is reported in
  :attr:`Loaded.warnings`, never dropped in silence.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from mailtracker.errors import StoreCorruptError, StoreError, StoreFullError

MAGIC = b"mailtracker-journal "
JOURNAL_MIN = 256 * 1024  # rewrite once the journal outgrows this and the snapshot
APPEND_RATIO = 4  # append only a line under a quarter of the snapshot's size
Ops = list[list[Any]]  # [table, doc_id, document or None for a removal]


class Loaded(NamedTuple):
    """The state as read: the files' bytes and the data they make (shared: never change it
    in place). ``live``: the journal continues this snapshot, so appending is allowed."""

    snapshot: bytes | None
    journal: bytes | None
    data: dict[str, Any]
    live: bool
    migrated: bool = False
    warnings: tuple[str, ...] = ()


class StateFile:
    """The state file at ``path`` and its journal. ``migrate`` turns the snapshot's parsed
    data (None when there is none), with the journal replayed (its lines are in the
    snapshot's schema), into current-schema data; it returns its argument itself when no
    migration was needed.

    Keeps the state it last read or wrote, reused as long as both files hold exactly the
    same bytes.
    """

    def __init__(self, path: Path, migrate: Callable[[dict[str, Any] | None], dict[str, Any]]):
        self.path = path
        self.journal_path = path.with_name(path.name + ".journal")
        self._migrate = migrate
        self._last: Loaded | None = None

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> Loaded:
        """The current state. Raises StoreError, StoreCorruptError."""
        for _ in range(20):
            snapshot = self._read(self.path)
            journal = self._read(self.journal_path)
            self._refuse_damaged(snapshot, journal)
            last = self._last
            if (last is not None and snapshot is not None and snapshot == last.snapshot
                    and journal == last.journal):
                return last
            raw = self._parse(snapshot)
            token = _token(raw) if raw is not None else None
            follows = _journal_token(journal)
            if follows is not None and follows != token and self._read(self.path) != snapshot:
                continue  # the snapshot was rewritten while we read: read both again
            live = token is not None and follows == token
            torn: list[int] = []
            if raw is not None and live and journal is not None:
                for ops in _records(journal, torn):  # written in the snapshot's schema
                    _apply(raw, ops)
            data = self._migrate(raw)
            warnings = tuple(
                f"{self.journal_path.name}: line {n} is cut short or damaged and was not "
                "applied (a transaction interrupted by a crash never committed; if this is "
                "not the last line, restore the state file and its journal from a backup)"
                for n in torn)
            # Migrated: the next commit rewrites, never appends new-schema lines to a journal
            # that continues an old-schema snapshot.
            loaded = Loaded(snapshot, journal, data, live, raw is not None and data is not raw,
                            warnings)
            self._last = loaded if snapshot is not None else None
            return loaded
        raise StoreError("the state file keeps changing while being read", path=self.path)

    def _read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path.name}: {exc.strerror}", path=self.path) from None

    def _refuse_damaged(self, snapshot: bytes | None, journal: bytes | None) -> None:
        """Raise StoreCorruptError when the files show a task whose state cannot be read."""
        if snapshot is not None and not snapshot.strip():
            self._damaged(f"the state file is empty ({len(snapshot)} bytes)", snapshot, journal)
        if snapshot is None and journal is not None:
            self._damaged(f"the state file is missing but its journal {self.journal_path.name} "
                          "is there", snapshot, journal)

    def _damaged(self, what: str, snapshot: bytes | None, journal: bytes | None) -> NoReturn:
        kept = [_keep_evidence(path, raw) for path, raw in
                ((self.path, snapshot), (self.journal_path, journal)) if raw is not None]
        evidence = ", ".join(p.name for p in kept if p is not None) or "none (cannot write)"
        raise StoreCorruptError(
            f"{what}: refusing to start a new task over it. Nothing was changed; copies kept: "
            f"{evidence}. Restore {self.path.name} and {self.journal_path.name} together from "
            "your backup (or move both away to really start afresh)", path=self.path)

    def _parse(self, raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            self._damaged(f"the state file is not valid JSON ({exc})", raw,
                          self._read(self.journal_path))
        if not isinstance(data, dict):
            self._damaged("the state file is not a mailtracker store", raw,
                          self._read(self.journal_path))
        return data

    # -- writing ---------------------------------------------------------------------------

    def commit(self, loaded: Loaded, data: dict[str, Any], ops: Ops | None) -> None:
        """Store ``data``: ``loaded.data`` changed by ``ops`` (None: changes not known one by
        one). One journal append when that is small, else a snapshot rewrite. Raises
        StoreFullError or StoreError, and then nothing was changed."""
        token = _token(loaded.data)
        if ops is not None and token is not None and loaded.snapshot and not loaded.migrated:
            line = _encode(ops)
            if len(line) * APPEND_RATIO < len(loaded.snapshot):
                self._append(loaded, token, line, data)
                return
        self.rewrite(data, loaded.journal)

    def _append(self, loaded: Loaded, token: str, line: bytes, data: dict[str, Any]) -> None:
        assert loaded.snapshot is not None
        try:
            # After a rewrite the journal still names the old snapshot: start a new one.
            journal = loaded.journal if loaded.live and loaded.journal else \
                self._start_journal(token)
            _append_line(self.journal_path, line, len(journal))
        except OSError as exc:
            raise _write_error(exc, self.path) from None
        journal += line
        self._last = Loaded(loaded.snapshot, journal, data, True)
        if len(journal) > max(JOURNAL_MIN, len(loaded.snapshot)):
            with contextlib.suppress(StoreError):  # committed already; rewrite another time
                self.rewrite(data, journal)

    def _start_journal(self, token: str) -> bytes:
        journal = MAGIC + token.encode("ascii")
        replace_file(self.journal_path, journal, suffix=".new")
        return journal

    def rewrite(self, data: dict[str, Any], journal: bytes | None) -> None:
        """Write ``data`` as a new snapshot. ``journal``: the journal as last read; one with
        records is emptied (a removed person must not stay on disk there); an empty one is
        left to name the old snapshot, which makes it stale, until the next append."""
        import secrets  # writing only: reading commands start faster without it

        token = secrets.token_hex(8)
        meta = dict(data.get("meta", {}))
        meta["1"] = {**meta.get("1", {}), "journal": token}
        data = {**data, "meta": meta}
        # Keys keep their insertion order: sorting 20,000 handled-message ids took longer
        # than encoding them.
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            replace_file(self.path, payload, suffix=".tmp")
        except OSError as exc:
            raise _write_error(exc, self.path) from None
        self._last = None
        if journal is not None and b"\n" in journal:
            try:
                journal = self._start_journal(token)
            except OSError:
                return  # stale, so ignored; the next commit tries again
        self._last = Loaded(payload, journal, data, journal == MAGIC + token.encode("ascii"))


def _token(data: dict[str, Any]) -> str | None:
    doc = data.get("meta", {}).get("1")
    token = doc.get("journal") if isinstance(doc, dict) else None
    return token if isinstance(token, str) else None


def _journal_token(journal: bytes | None) -> str | None:
    if journal is None or not journal.startswith(MAGIC):
        return None
    return journal.split(b"\n", 1)[0][len(MAGIC):].decode("ascii", "replace").strip() or None


def _records(journal: bytes, torn: list[int]) -> Iterator[Ops]:
    """The committed transactions, oldest first. Each line: ``<digest> <JSON ops>``. The
    numbers of lines that are not whole (cut short by a crash, or damaged) go to ``torn``."""
    for number, line in enumerate(journal.split(b"\n")[1:], start=2):
        if not line:
            continue  # each line starts with a line break, so the first one is empty
        digest, _, payload = line.partition(b" ")
        ops: Any = None
        if payload and _digest(payload) == digest:
            try:
                ops = json.loads(payload.decode("utf-8"))
            except ValueError:
                ops = None
        if isinstance(ops, list):
            yield ops
        else:
            torn.append(number)


def _keep_evidence(path: Path, raw: bytes) -> Path | None:
    """A copy of ``raw`` beside ``path`` named by its hash (one copy per content), 0600."""
    copy = path.with_name(f"{path.name}.damaged-{hashlib.sha256(raw).hexdigest()[:12]}")
    if copy.exists():
        return copy
    try:
        replace_file(copy, raw, suffix=".tmp")
    except OSError:
        return None
    return copy


def _apply(data: dict[str, Any], ops: Ops) -> None:
    for table, doc_id, doc in ops:
        if doc is None:
            data.get(table, {}).pop(doc_id, None)
        else:
            data.setdefault(table, {})[doc_id] = doc


def _encode(ops: Ops) -> bytes:
    # Each line starts with a line break, so one after a torn line still starts afresh.
    payload = json.dumps(ops, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"\n" + _digest(payload) + b" " + payload


def _digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).hexdigest()[:32].encode("ascii")


def _append_line(path: Path, line: bytes, size_before: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size_before)  # no half line left behind
        raise
    finally:
        os.close(fd)


def replace_file(path: Path, content: bytes, *, suffix: str = ".tmp") -> None:
    """Write ``path`` whole or not at all, mode 0600: a temp file in the same directory,
    fsync, ``os.replace``, fsync the directory. Raises ``OSError``."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # names and addresses: personal data
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
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


def _write_error(exc: OSError, path: Path) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(
            "disk full while saving state; nothing was changed (the previous state is "
            "intact) — free some space and run the command again", path=path)
    return StoreError(f"cannot write state file: {exc.strerror}", path=path)
