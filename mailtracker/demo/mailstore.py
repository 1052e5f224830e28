"""The demo's mailboxes: in memory, shared by the embedded SMTP and IMAP servers.

One :class:`MailStore` holds an account per demo address, each with IMAP folders of
messages that have UIDs, flags and an INTERNALDATE. It is thread-safe: the servers run on
their own event-loop thread while the scenario delivers EG's mail from the main thread.
Whoever wants to hear about new mail (an IMAP session in IDLE) registers a callback with
:meth:`MailStore.subscribe`; it is called, from the delivering thread, after every change.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
_CANONICAL = {f.lower(): f for f in SYSTEM_FLAGS}


def canonical_flag(flag: str) -> str:
    """System flags in their canonical spelling (they are case-insensitive); keywords as is."""
    return _CANONICAL.get(flag.lower(), flag)


@dataclass
class StoredMessage:
    uid: int
    raw: bytes  # CRLF line ends, as the IMAP server hands it out
    internaldate: datetime  # timezone-aware
    flags: set[str] = field(default_factory=set)

    @property
    def header_bytes(self) -> bytes:
        """The header block including the empty line that ends it."""
        end = self.raw.find(b"\r\n\r\n")
        return self.raw if end < 0 else self.raw[:end + 4]


@dataclass
class Folder:
    name: str
    uidvalidity: int
    uidnext: int = 1
    messages: list[StoredMessage] = field(default_factory=list)

    def add(self, raw: bytes, internaldate: datetime, flags: set[str] | None = None
            ) -> StoredMessage:
        message = StoredMessage(self.uidnext, raw, internaldate, set(flags or ()))
        self.uidnext += 1
        self.messages.append(message)
        return message

    def by_uid(self, uid: int) -> StoredMessage | None:
        return next((m for m in self.messages if m.uid == uid), None)


@dataclass
class Account:
    address: str
    password: str
    folders: dict[str, Folder] = field(default_factory=dict)


def normalise_crlf(raw: bytes) -> bytes:
    """Every line ending as CRLF, as on the wire and in IMAP literals."""
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class MailStore:
    """Accounts and their folders. Every method takes the store's lock itself, except code
    running inside :meth:`locked`, which holds it already."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._accounts: dict[str, Account] = {}
        self._listeners: dict[int, Callable[[], None]] = {}
        self._listener_ids = itertools.count(1)
        # UIDVALIDITY differs per folder and per run, as on a real server.
        self._uidvalidity = itertools.count(int(time.time()) % 1_000_000_000)

    @contextmanager
    def locked(self) -> Iterator[MailStore]:
        with self._lock:
            yield self

    def add_account(self, address: str, password: str) -> Account:
        with self._lock:
            account = Account(address.lower(), password)
            self._accounts[account.address] = account
            self._create(account, "INBOX")
            return account

    def account(self, address: str) -> Account | None:
        with self._lock:
            return self._accounts.get(address.lower())

    def accounts(self) -> list[Account]:
        with self._lock:
            return list(self._accounts.values())

    def check_login(self, address: str, password: str) -> Account | None:
        account = self.account(address)
        return account if account is not None and account.password == password else None

    @staticmethod
    def folder_key(name: str) -> str:
        """INBOX is case-insensitive (RFC 3501); other names are not."""
        return "INBOX" if name.upper() == "INBOX" else name

    def folder(self, account: Account, name: str) -> Folder | None:
        with self._lock:
            return account.folders.get(self.folder_key(name))

    def create_folder(self, account: Account, name: str) -> Folder | None:
        """The new folder, or None if one of that name exists."""
        with self._lock:
            if self.folder_key(name) in account.folders:
                return None
            return self._create(account, name)

    def _create(self, account: Account, name: str) -> Folder:
        folder = Folder(self.folder_key(name), next(self._uidvalidity))
        account.folders[folder.name] = folder
        return folder

    def deliver(self, address: str, raw: bytes, *, folder: str = "INBOX",
                when: datetime | None = None, flags: set[str] | None = None) -> int | None:
        """Put ``raw`` into ``address``'s folder; its UID, or None if no such account."""
        with self._lock:
            account = self._accounts.get(address.lower())
            if account is None:
                return None
            target = account.folders.get(self.folder_key(folder)) or self._create(account,
                                                                                   folder)
            stored = target.add(normalise_crlf(raw), when or datetime.now().astimezone(),
                                flags)
        self.changed()
        return stored.uid

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """Copies of the messages in ``address``'s folder, oldest first."""
        with self._lock:
            account = self._accounts.get(address.lower())
            target = account.folders.get(self.folder_key(folder)) if account else None
            return [m.raw for m in target.messages] if target else []

    def subscribe(self, callback: Callable[[], None]) -> int:
        with self._lock:
            token = next(self._listener_ids)
            self._listeners[token] = callback
            return token

    def unsubscribe(self, token: int) -> None:
        with self._lock:
            self._listeners.pop(token, None)

    def changed(self) -> None:
        """Tell every subscriber that some folder changed."""
        with self._lock:
            listeners = list(self._listeners.values())
        for callback in listeners:
            callback()
