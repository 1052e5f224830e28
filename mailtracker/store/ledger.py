"""The sent ledger: one line per mail that left, beside the state file and never rewritten with it.

A state file restored from an older backup does not know the mail sent after that backup,
so ``notify`` would send it again. The ledger (``<state file>.sent``) is appended after each
commit that marks a mail ``sent`` or ``unknown`` and is otherwise left alone; ``notify`` and
``tick`` refuse to send while it lists a mail the state file does not know, and say what to
do. Back up the state file and its journal; restoring them does not restore the ledger.
The ledger is a safety net, not the record: a failure to write it is logged, never fatal.

A line holds a hash of (task, recipient, template), our Message-ID and the time: no address
or name. ``forget`` removes a person's lines with their records. A line cut short by a crash
is ignored (it was never a complete record).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailtracker.store.storage import replace_file

SUFFIX = ".sent"
GONE = ("sent", "unknown")  # an outbox state that means the mail may have left


@dataclass(frozen=True, slots=True)
class Entry:
    key: str  # hash of task|recipient|template
    message_id: str
    at: str  # ISO time it was recorded


def key_of(doc: Mapping[str, Any]) -> str:
    """The ledger key of an outbox document."""
    ident = f"{doc.get('task')}|{str(doc.get('recipient', '')).lower()}|{doc.get('template')}"
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:24]


def gone(outbox: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The outbox documents whose mail may have left, by ledger key."""
    return {key_of(doc): doc for doc in outbox.values()
            if isinstance(doc, Mapping) and doc.get("state") in GONE}


class SentLedger:
    """The ledger file of the state file at ``state_path``."""

    def __init__(self, state_path: Path):
        self.path = state_path.with_name(state_path.name + SUFFIX)

    def read(self) -> dict[str, Entry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        entries: dict[str, Entry] = {}
        for line in raw.splitlines():
            try:
                item = json.loads(line)
                entry = Entry(str(item["k"]), str(item["id"]), str(item["at"]))
            except (ValueError, KeyError, TypeError):
                continue  # cut short by a crash: never a complete record
            entries[entry.key] = entry
        return entries

    def append(self, entries: Iterable[Entry]) -> None:
        lines = _encode(entries)
        if not lines:
            return
        # Not fsynced: the state file's own commit is, and a line lost with the page cache
        # (power cut right after a send) only means that one mail is not double-checked
        # after a restore; an fsync here would double the cost of every send.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, lines)
        finally:
            os.close(fd)

    def remove(self, keys: set[str]) -> None:
        """Drop the lines of ``keys`` (``forget``): the file is rewritten atomically."""
        if not keys or not self.path.exists():
            return
        replace_file(self.path, _encode(e for e in self.read().values() if e.key not in keys))


def _encode(entries: Iterable[Entry]) -> bytes:
    return b"".join(json.dumps({"k": e.key, "id": e.message_id, "at": e.at},
                               separators=(",", ":")).encode("ascii") + b"\n"
                    for e in entries)
