"""TinyDB's extension points for one transaction: a ``Storage`` that holds the state read
from the state file, and a ``Table`` that applies each write in place and records it.

TinyDB's own ``Table`` rewrites the whole table, re-keyed, on every upsert or remove: with
20,000 handled-message records that made each write cost milliseconds. ``JournaledTable``
gives TinyDB's updaters the same table through a view keyed by document id, so a write
touches one document, and the storage knows which documents changed: the state file then
appends just those to its journal (``store.storage``).

The data may share its tables with other views of the same file (the store keeps the last
state it read or wrote): a table is copied before its first change, and a document is copied
before TinyDB changes it, never changed where another view can see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from mailtracker.errors import StoreError
from mailtracker.store.storage import Ops


class TransactionStorage(Storage):
    """The state of one transaction, in memory; the store writes it out once at the end."""

    def __init__(self, data: dict[str, Any]):
        self.data = dict(data)
        self.dirty = False
        self.closed = False
        self._copied: set[str] = set()
        self._touched: dict[tuple[str, str], None] = {}  # (table, doc_id), in order
        self._untracked = False  # written whole: the changes are not known one by one

    def read(self) -> dict[str, Any]:
        return self.data

    def write(self, data: dict[str, Any]) -> None:
        self._check_open()
        self.data = data
        self.dirty = True
        self._untracked = True

    def touch(self, table: str, doc_id: str) -> None:
        self._touched[(table, doc_id)] = None

    def rewrite_all(self) -> None:
        """Write the whole state, not a journal line: nothing removed may stay on disk."""
        self._check_open()
        self.dirty = True
        self._untracked = True

    def ops(self) -> Ops | None:
        """The changed documents' final versions (None: removed); None if not known."""
        if self._untracked:
            return None
        return [[t, d, self.data.get(t, {}).get(d)] for t, d in self._touched]

    def table_for_write(self, name: str) -> dict[str, Any]:
        """The table ``name`` (created if missing), safe to change in place."""
        self._check_open()
        self.dirty = True
        if name not in self._copied:
            self.data[name] = dict(self.data.get(name, {}))
            self._copied.add(name)
        table: dict[str, Any] = self.data[name]
        return table

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("write after the end of its transaction (a bug)")


class _ById(MutableMapping[int, Any]):
    """A table as TinyDB's updaters expect it (keyed by int document id), over the storage's
    JSON table (keyed by str): every document written is recorded, every document handed out
    for change is a copy stored in its place."""

    def __init__(self, storage: TransactionStorage, name: str):
        self._storage, self._name = storage, name
        self._docs = storage.table_for_write(name)

    def __getitem__(self, doc_id: int) -> Any:
        key = str(doc_id)
        doc = dict(self._docs[key])  # TinyDB's update changes the document it is given
        self._docs[key] = doc
        self._storage.touch(self._name, key)
        return doc

    def __setitem__(self, doc_id: int, doc: Any) -> None:
        key = str(doc_id)
        self._docs[key] = doc
        self._storage.touch(self._name, key)

    def __delitem__(self, doc_id: int) -> None:
        key = str(doc_id)
        del self._docs[key]
        self._storage.touch(self._name, key)

    def __contains__(self, doc_id: object) -> bool:
        return str(doc_id) in self._docs

    def __iter__(self) -> Iterator[int]:
        return (int(key) for key in self._docs)

    def __len__(self) -> int:
        return len(self._docs)


class JournaledTable(Table):
    """TinyDB's table, writing one document at a time into a :class:`TransactionStorage`."""

    def _update_table(self, updater: Callable[[dict[int, Mapping[str, Any]]], None]) -> None:
        storage = self._storage
        if not isinstance(storage, TransactionStorage):
            raise StoreError("the state is written only inside a transaction (a bug)")
        updater(_ById(storage, self.name))  # type: ignore[arg-type]  # a dict in all it uses
        self.clear_cache()


class StateDB(TinyDB):
    """TinyDB over the state of one transaction (or one read-only snapshot)."""

    table_class = JournaledTable
