"""The mailbox interface the poll pipeline reads through, and what it returns. Plain types:
the IMAP adapter (``inbound/imap.py``), the demo's in-memory mailbox and the Microsoft Graph
reader implement it; importing this module loads no network library.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

HEADER_BATCH = 500


@dataclass(frozen=True)
class FolderState:
    """What SELECT reported. ``uidnext`` is None if the server did not say."""

    uidvalidity: int
    uidnext: int | None
    exists: int


@dataclass(frozen=True)
class HeaderInfo:
    """One message's header block and metadata, as fetched without setting ``\\Seen``."""

    uid: int
    size: int
    flags: tuple[str, ...]
    header_bytes: bytes
    internaldate: datetime | None  # timezone-aware when the server sent a zone


class ChunkSource(Protocol):
    """What one batch of the poll pipeline needs of a mailbox: a :class:`Mailbox` over IMAP
    (or the demo's memory), or a delta page over Microsoft Graph (``inbound/graph.py``)."""

    def fetch_headers(self, uids: Sequence[int], batch: int = HEADER_BATCH, *,
                      lean: bool = False) -> Iterator[HeaderInfo]: ...

    def sizes_and_dates(self, uids: Sequence[int]
                        ) -> dict[int, tuple[int, datetime | None]]: ...

    def fetch_full_many(self, uids: Sequence[int]) -> dict[int, bytes]: ...

    def add_keyword(self, uids: Sequence[int], keyword: str) -> None: ...

    def move(self, uids: Sequence[int], folder: str) -> None: ...


class Mailbox(ChunkSource, Protocol):
    """The mailbox operations the poller needs; implemented over IMAP by
    :class:`~mailtracker.inbound.imap.ImapMailbox` and in memory by the demo."""

    def select(self, folder: str) -> FolderState: ...

    def uids_after(self, last_uid: int, since: date | None = None) -> list[int]: ...

    def wait_for_change(self, timeout: float) -> bool: ...

    def noop(self) -> None: ...

    def close(self) -> None: ...
