"""The handled-message index, stored compactly. Pure.

Every Message-ID a poll has processed is remembered, so a redelivered copy or a rescan after a
UIDVALIDITY change counts once. A busy shared mailbox adds tens of thousands of them a year,
nearly all unrelated noise; one JSON document per message made the state file 3.6 MB at
20,000 and every reader (``status`` too) parse all of it. So the index keeps only a 48-bit
hash of each Message-ID (as hex, the same hash that keys the store's documents; no
Message-ID, which can carry a name, stays on disk), packed into chunk documents of up to
``CHUNK`` hashes: 20,000 handled messages are 20 small documents of one string each.

A chunk document: ``{"keys": "<12 hex> <12 hex> …", "count": n, "first": iso, "last": iso,
"outcomes": {kind: n}}``, keyed "1", "2", … in the order they were filled; only the last one
is ever changed, so a poll batch's journal line holds at most two chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from mailtracker.models import HandledMessage

TABLE = "handled"
CHUNK = 1000


def key_for(message_id: str) -> str:
    """The stored key of a Message-ID: 48 bits of SHA-256 as hex (``store.doc_id_for`` is the
    same number)."""
    return hashlib.sha256(message_id.encode("utf-8")).digest()[:6].hex()


class HandledIndex:
    """The set of handled messages, asked by Message-ID (``message_id in index``)."""

    def __init__(self, keys: Iterable[str] = ()):
        self._keys = set(keys)

    def __contains__(self, message_id: object) -> bool:
        return isinstance(message_id, str) and key_for(message_id) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        """The stored keys (hashes), not Message-IDs."""
        return iter(self._keys)

    def add(self, message_id: str) -> None:
        self._keys.add(key_for(message_id))

    def has_key(self, key: str) -> bool:
        return key in self._keys

    def add_key(self, key: str) -> None:
        self._keys.add(key)


def index_of(table: Mapping[str, Any]) -> HandledIndex:
    return HandledIndex(key for doc in table.values() for key in _keys(doc))


def count_of(table: Mapping[str, Any]) -> int:
    return sum(int(doc.get("count", 0)) for doc in table.values() if isinstance(doc, dict))


def _keys(doc: Any) -> list[str]:
    keys = doc.get("keys") if isinstance(doc, dict) else None
    return keys.split() if isinstance(keys, str) else []


def added_chunks(table: Mapping[str, Any], entries: Iterable[tuple[str, HandledMessage]]
                 ) -> dict[str, dict[str, Any]]:
    """The chunk documents (new or changed, by doc id) that record ``entries`` — pairs of
    (key, message), none of them in ``table`` yet — after the table's last chunk."""
    last = max((int(d) for d in table if d.isdigit()), default=0)
    chunks: dict[str, _Chunk] = {}
    current = _Chunk.of(table[str(last)]) if last else None
    for key, message in entries:
        if current is None or len(current.keys) >= CHUNK:
            last += 1
            current = _Chunk([], message.at.isoformat(), message.at.isoformat(), {})
        chunks[str(last)] = current
        current.keys.append(key)
        current.first = min(current.first, message.at.isoformat())
        current.last = max(current.last, message.at.isoformat())
        current.outcomes[message.outcome] = current.outcomes.get(message.outcome, 0) + 1
    return {doc_id: chunk.doc() for doc_id, chunk in chunks.items()}


class _Chunk:
    def __init__(self, keys: list[str], first: str, last: str, outcomes: dict[str, int]):
        self.keys, self.first, self.last, self.outcomes = keys, first, last, outcomes

    @classmethod
    def of(cls, doc: Any) -> _Chunk:
        outcomes = doc.get("outcomes", {}) if isinstance(doc, dict) else {}
        return cls(_keys(doc), str(doc.get("first", "")), str(doc.get("last", "")),
                   {str(k): int(v) for k, v in outcomes.items()})

    def doc(self) -> dict[str, Any]:
        return {"keys": " ".join(self.keys), "count": len(self.keys), "first": self.first,
                "last": self.last, "outcomes": dict(self.outcomes)}


def from_v1(table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Schema 1 kept one document per message (``message_id``, ``at``, ``outcome``, …):
    the same messages as chunks, oldest first."""
    from mailtracker.store.codec import from_doc

    messages: dict[str, HandledMessage] = {}
    for doc in table.values():
        if isinstance(doc, dict) and isinstance(doc.get("message_id"), str):
            message = from_doc(HandledMessage, dict(doc))
            messages.setdefault(key_for(message.message_id), message)
    ordered = sorted(messages.items(), key=lambda item: item[1].at)
    return added_chunks({}, ordered)
