"""The demo's in-memory mailboxes, behind the poller's mailbox interface.

The interface is :class:`~mailtracker.inbound.mailbox.Mailbox`, the one the poller uses for IMAP.
:class:`MemoryAccount` is one address's folders (what a server stores); the demo MX delivers
into it, possibly from the SMTP server's thread. :class:`MemoryMailbox` is one session on an
account (what a connection sees): it selects a folder and answers the poller's questions the
way an IMAP server does (UIDs that only grow, a UIDVALIDITY per folder, INTERNALDATE in whole
seconds, header blocks ending with their empty line, CRLF line ends). :class:`MemoryMailboxes`
is the demo's set of accounts when no Dovecot is used; :class:`DemoMailboxes` is what the
demo needs of either.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

from mailtracker.errors import ImapError, ImapFolderError
from mailtracker.inbound.mailbox import HEADER_BATCH, FolderState, HeaderInfo, Mailbox

MEMORY_HOST = "in-memory mailbox"
# UIDVALIDITY differs per folder and per run, as on a real server.
_UIDVALIDITY = itertools.count(int(time.time()) % 1_000_000_000)


class DemoMailboxes(Protocol):
    """Where the demo's MX files mail, and how the demo reads it back: in memory or Dovecot."""

    @property
    def description(self) -> str:
        """What the demo prints, e.g. ``in-memory mailbox (no IMAP)``."""
        ...

    def deliver(self, address: str, raw: bytes, when: datetime) -> bool:
        """File ``raw`` in ``address``'s INBOX; False if there is no such mailbox."""
        ...

    def open(self, address: str) -> Mailbox:
        """A session on ``address``'s mailbox (the caller closes it)."""
        ...

    def poll_connect(self) -> Callable[[], Mailbox] | None:
        """How the poller opens the KP owner's mailbox; None: by the config's ``[imap]``."""
        ...

    def imap_config(self) -> dict[str, object]:
        """Where the workspace's ``[imap]`` finds the mailbox (host, port, TLS, CA)."""
        ...


def normalise_crlf(raw: bytes) -> bytes:
    """Every line ending as CRLF, as on the wire and in IMAP literals."""
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def header_block(raw: bytes) -> bytes:
    """The header block including the empty line that ends it (IMAP's ``BODY[HEADER]``)."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end + 4]


@dataclass
class _Message:
    raw: bytes
    internaldate: datetime
    flags: set[str] = field(default_factory=set)


@dataclass
class _Folder:
    uidvalidity: int = field(default_factory=lambda: next(_UIDVALIDITY))
    uidnext: int = 1
    messages: dict[int, _Message] = field(default_factory=dict)  # by UID, ascending

    def add(self, message: _Message) -> int:
        uid = self.uidnext
        self.messages[uid] = message
        self.uidnext += 1
        return uid


class MemoryAccount:
    """One address's folders. Thread-safe; sessions waiting for news are woken on delivery."""

    def __init__(self, address: str, password: str):
        self.address = address.lower()
        self.password = password
        self.changed = threading.Condition()
        self.folders: dict[str, _Folder] = {"INBOX": _Folder()}

    def deliver(self, raw: bytes, when: datetime, folder: str = "INBOX") -> int:
        """File ``raw`` (line ends made CRLF); its UID. INTERNALDATE keeps whole seconds."""
        with self.changed:
            target = self.folders.setdefault(folder_key(folder), _Folder())
            uid = target.add(_Message(normalise_crlf(raw), when.replace(microsecond=0)))
            self.changed.notify_all()
            return uid

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        """The messages of ``folder``, oldest first."""
        with self.changed:
            found = self.folders.get(folder_key(folder))
            return [m.raw for m in found.messages.values()] if found else []


def folder_key(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501); other names are not."""
    return "INBOX" if name.upper() == "INBOX" else name


class MemoryMailbox:
    """A session on a :class:`MemoryAccount`; see :class:`~mailtracker.inbound.mailbox.Mailbox`."""

    def __init__(self, account: MemoryAccount):
        self._account = account
        self._folder: _Folder | None = None
        self._known_uidnext = 0
        self._news_pending = False
        self._closed = False
        self.folder: str | None = None

    def __enter__(self) -> MemoryMailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _selected(self) -> _Folder:
        if self._closed:
            raise ImapError(f"{MEMORY_HOST}: the session was closed", host=MEMORY_HOST)
        if self._folder is None:
            raise ImapError(f"{MEMORY_HOST}: no folder selected", host=MEMORY_HOST)
        return self._folder

    def select(self, folder: str) -> FolderState:
        """Select ``folder``; ImapFolderError if it does not exist."""
        with self._account.changed:
            if self._closed:
                raise ImapError(f"{MEMORY_HOST}: the session was closed", host=MEMORY_HOST)
            found = self._account.folders.get(folder_key(folder))
            if found is None:
                raise ImapFolderError(f"{MEMORY_HOST}: selecting folder {folder!r} failed: "
                                      "no such folder", host=MEMORY_HOST)
            self._folder, self.folder = found, folder
            self._known_uidnext, self._news_pending = found.uidnext, False
            return FolderState(found.uidvalidity, found.uidnext, len(found.messages))

    def uids_after(self, last_uid: int, since: date | None = None) -> list[int]:
        """UIDs above ``last_uid``, ascending; with ``since``, only those whose INTERNALDATE
        falls on or after that day."""
        with self._account.changed:
            folder = self._selected()
            self._known_uidnext, self._news_pending = folder.uidnext, False
            return [uid for uid, m in folder.messages.items() if uid > last_uid
                    and (since is None or m.internaldate.date() >= since)]

    def fetch_headers(self, uids: Sequence[int], batch: int = HEADER_BATCH, *,
                      lean: bool = False) -> Iterator[HeaderInfo]:
        """Header block (and, unless ``lean``, size, flags and INTERNALDATE) of each UID that
        exists, ascending. ``batch`` only matters to a server: all are read at once here."""
        del batch
        with self._account.changed:
            found = self._found(uids)
        for uid, m in found:
            if lean:
                yield HeaderInfo(uid, 0, (), header_block(m.raw), None)
            else:
                yield HeaderInfo(uid, len(m.raw), tuple(sorted(m.flags)), header_block(m.raw),
                                 m.internaldate)

    def _found(self, uids: Sequence[int]) -> list[tuple[int, _Message]]:
        messages = self._selected().messages
        return [(uid, messages[uid]) for uid in sorted(set(uids)) if uid in messages]

    def sizes_and_dates(self, uids: Sequence[int]
                        ) -> dict[int, tuple[int, datetime | None]]:
        """``(size, INTERNALDATE)`` of each UID that exists."""
        with self._account.changed:
            return {uid: (len(m.raw), m.internaldate) for uid, m in self._found(uids)}

    def fetch_full_many(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The whole messages of ``uids`` that exist, by UID (flags unchanged)."""
        with self._account.changed:
            return {uid: m.raw for uid, m in self._found(uids)}

    def add_keyword(self, uids: Sequence[int], keyword: str) -> None:
        with self._account.changed:
            for _uid, m in self._found(uids):
                m.flags.add(keyword)

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move ``uids`` to ``folder`` (created if missing); they get new UIDs there."""
        with self._account.changed:
            source = self._selected()
            target = self._account.folders.setdefault(folder_key(folder), _Folder())
            for uid, m in self._found(uids):
                target.add(m)
                del source.messages[uid]

    def noop(self) -> None:
        """Collects news, as IMAP's NOOP does."""
        with self._account.changed:
            self._news_pending |= self._news()

    def _news(self) -> bool:
        """True if mail arrived in the selected folder since this session last looked."""
        folder = self._selected()
        news = folder.uidnext != self._known_uidnext
        self._known_uidnext = folder.uidnext
        return news

    def wait_for_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for new mail in the selected folder."""
        with self._account.changed:
            if self._news_pending or self._news():
                self._news_pending = False
                return True
            return self._account.changed.wait_for(self._news, max(0.0, timeout))

    def close(self) -> None:
        """End the session. Safe to call twice."""
        self._closed = True


class MemoryMailboxes:
    """The demo's accounts in memory: no IMAP server, the poller reads them directly."""

    def __init__(self, accounts: dict[str, str], owner: str, why: str = ""):
        """``accounts``: address → password; ``owner``: the address the poller reads;
        ``why``: why no real server is used, for :attr:`description`."""
        self.description = "in-memory mailbox (no IMAP)" + (f": {why}" if why else "")
        self.accounts = {a.lower(): MemoryAccount(a, p) for a, p in accounts.items()}
        self.owner = owner.lower()

    def deliver(self, address: str, raw: bytes, when: datetime) -> bool:
        account = self.accounts.get(address.lower())
        if account is None:
            return False
        account.deliver(raw, when)
        return True

    def open(self, address: str) -> MemoryMailbox:
        return MemoryMailbox(self.accounts[address.lower()])

    def poll_connect(self) -> Callable[[], Mailbox]:
        return lambda: self.open(self.owner)

    def imap_config(self) -> dict[str, object]:
        return {"host": "127.0.0.1"}
