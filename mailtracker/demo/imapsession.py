"""IMAP commands of the authenticated and selected states, over a :class:`MailStore`.

No sockets here: each handler takes a parsed :class:`Command` and returns the untagged
response lines and the tagged status text (e.g. ``"OK FETCH completed"``), or raises
:class:`NoResponse` (tagged NO) or :class:`ImapSyntaxError` (tagged BAD). The connection in
``imapd.py`` writes them out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from mailtracker.demo.imapfetch import fetch_items, parse_fetch_items, search_matcher
from mailtracker.demo.imapproto import (
    Command,
    ImapSyntaxError,
    Token,
    flag_list,
    in_ranges,
    mailbox_matches,
    parse_sequence_set,
    quote,
    string_args,
)
from mailtracker.demo.mailstore import (
    SYSTEM_FLAGS,
    Account,
    Folder,
    MailStore,
    StoredMessage,
    canonical_flag,
)

Reply = tuple[list[bytes], str]
SyncHandler = Callable[[Command], Reply]


class NoResponse(Exception):
    """The command failed (answered with a tagged NO and this text)."""



def _flags_of(token: Token) -> set[str]:
    items = token if isinstance(token, list) else [token]
    if not all(isinstance(f, str) for f in items):
        raise ImapSyntaxError("bad flag list")
    return {canonical_flag(str(f)) for f in items}


class AccountCommands:
    """CREATE, LIST, LSUB, STATUS and APPEND: no mailbox needs to be selected."""

    def __init__(self, store: MailStore, account: Account):
        self.store = store
        self.account = account

    def handler(self, name: str) -> SyncHandler | None:
        return {"CREATE": self.create, "LIST": self.list, "LSUB": self.list,
                "STATUS": self.status, "APPEND": self.append}.get(name)

    def create(self, cmd: Command) -> Reply:
        (name,) = string_args(cmd.args, 1)
        if not name or self.store.create_folder(self.account, name.rstrip("/")) is None:
            raise NoResponse("[ALREADYEXISTS] Mailbox exists")
        return [], "OK CREATE completed"

    def list(self, cmd: Command) -> Reply:
        reference, pattern = string_args(cmd.args, 2)
        if pattern == "":
            return [b'* LIST (\\Noselect) "/" ""'], f"OK {cmd.name} completed"
        with self.store.locked():
            names = list(self.account.folders)
        lines = [b'* %s (\\HasNoChildren) "/" %s' % (cmd.name.encode(), quote(name))
                 for name in names if mailbox_matches(name, reference + pattern)]
        return lines, f"OK {cmd.name} completed"

    def status(self, cmd: Command) -> Reply:
        if len(cmd.args) != 2 or not isinstance(cmd.args[0], str) or not isinstance(
                cmd.args[1], list):
            raise ImapSyntaxError("STATUS mailbox (items)")
        folder = self.store.folder(self.account, cmd.args[0])
        if folder is None:
            raise NoResponse("[NONEXISTENT] No such mailbox")
        with self.store.locked():
            values = {"MESSAGES": len(folder.messages), "RECENT": 0,
                      "UIDNEXT": folder.uidnext, "UIDVALIDITY": folder.uidvalidity,
                      "UNSEEN": sum("\\Seen" not in m.flags for m in folder.messages)}
        try:
            pairs = [f"{str(i).upper()} {values[str(i).upper()]}" for i in cmd.args[1]]
        except KeyError as exc:
            raise ImapSyntaxError(f"unknown STATUS item {exc}") from None
        return ([b"* STATUS %s (%s)" % (quote(folder.name), " ".join(pairs).encode())],
                "OK STATUS completed")

    def append(self, cmd: Command) -> Reply:
        if len(cmd.args) < 2 or not isinstance(cmd.args[0], str):
            raise ImapSyntaxError("APPEND mailbox [flags] [date-time] literal")
        folder = self.store.folder(self.account, cmd.args[0])
        if folder is None:
            raise NoResponse("[TRYCREATE] No such mailbox")
        flags: set[str] = set()
        when = datetime.now().astimezone()
        for extra in cmd.args[1:-1]:
            if isinstance(extra, list):
                flags = _flags_of(extra)
            else:
                try:
                    when = datetime.strptime(extra, "%d-%b-%Y %H:%M:%S %z")
                except ValueError:
                    raise ImapSyntaxError(f"bad date-time {extra!r}") from None
        body = cmd.args[-1]
        if not isinstance(body, str):
            raise ImapSyntaxError("APPEND needs a literal")
        uid = self.store.deliver(self.account.address, body.encode("utf-8", "surrogateescape"),
                                 folder=folder.name, when=when, flags=flags)
        return [], f"OK [APPENDUID {folder.uidvalidity} {uid}] APPEND completed"


class Mailbox(AccountCommands):
    """The selected state: the session's view of one folder, and the commands on it.

    ``view`` holds the UIDs this session has been told about; message sequence number n is
    ``view[n - 1]``. :meth:`updates` brings it up to date and says so (EXISTS, EXPUNGE).
    """

    def __init__(self, store: MailStore, account: Account, folder: Folder, *,
                 readonly: bool):
        super().__init__(store, account)
        self.folder = folder
        self.readonly = readonly
        with store.locked():
            self.view = [m.uid for m in folder.messages]

    def handler(self, name: str) -> SyncHandler | None:
        table: dict[str, SyncHandler] = {
            "SEARCH": self.search, "FETCH": self.fetch, "STORE": self.store_flags,
            "COPY": self.copy, "MOVE": self.move, "EXPUNGE": self.expunge}
        if name.startswith("UID ") and name[4:] in table:
            return table[name[4:]]
        return table.get(name) or super().handler(name)

    def select_lines(self) -> list[bytes]:
        f = self.folder
        with self.store.locked():
            unseen = next((n for n, m in enumerate(f.messages, 1) if "\\Seen" not in m.flags),
                          None)
            lines = [b"* FLAGS %s" % flag_list(SYSTEM_FLAGS),
                     b"* OK [PERMANENTFLAGS %s] Flags permitted"
                     % flag_list((*SYSTEM_FLAGS, "\\*")),
                     b"* %d EXISTS" % len(self.view), b"* 0 RECENT",
                     b"* OK [UIDVALIDITY %d] UIDs valid" % f.uidvalidity,
                     b"* OK [UIDNEXT %d] Predicted next UID" % f.uidnext]
        if unseen is not None:
            lines.append(b"* OK [UNSEEN %d] First unseen" % unseen)
        return lines

    def updates(self, *, allow_expunge: bool) -> list[bytes]:
        """EXPUNGE and EXISTS lines for what changed since the session last heard."""
        with self.store.locked():
            present = {m.uid for m in self.folder.messages}
            lines: list[bytes] = []
            if allow_expunge:
                for seq in range(len(self.view), 0, -1):
                    if self.view[seq - 1] not in present:
                        del self.view[seq - 1]
                        lines.append(b"* %d EXPUNGE" % seq)
            known = set(self.view)
            new = [m.uid for m in self.folder.messages if m.uid not in known]
        if new:
            self.view.extend(new)
            lines.append(b"* %d EXISTS" % len(self.view))
        return lines

    def _selected(self, cmd: Command, set_text: Token) -> list[tuple[int, StoredMessage]]:
        """(sequence number, message) for a sequence set or, for UID commands, a UID set."""
        if not isinstance(set_text, str):
            raise ImapSyntaxError("bad sequence set")
        by_uid = cmd.name.startswith("UID ")
        highest = (max(self.view) if self.view else 0) if by_uid else len(self.view)
        ranges = parse_sequence_set(set_text, highest)
        out = []
        for seq, uid in enumerate(self.view, 1):
            if in_ranges(uid if by_uid else seq, ranges):
                message = self.folder.by_uid(uid)
                if message is not None:  # expunged by someone else, not yet announced
                    out.append((seq, message))
        return out

    def search(self, cmd: Command) -> Reply:
        args = list(cmd.args)
        if len(args) >= 2 and str(args[0]).upper() == "CHARSET":
            args = args[2:]
        by_uid = cmd.name.startswith("UID ")
        with self.store.locked():
            matches = search_matcher(args, self.view)
            found = [uid if by_uid else seq for seq, uid in enumerate(self.view, 1)
                     if (m := self.folder.by_uid(uid)) is not None and matches(seq, m)]
        return [b"* SEARCH" + b"".join(b" %d" % n for n in found)], f"OK {cmd.name} completed"

    def fetch(self, cmd: Command) -> Reply:
        if len(cmd.args) != 2:
            raise ImapSyntaxError("FETCH set items")
        by_uid = cmd.name.startswith("UID ")
        items = parse_fetch_items(cmd.args[1], by_uid)
        with self.store.locked():
            lines = [b"* %d FETCH (%s)" % (seq, fetch_items(m, items, self.readonly))
                     for seq, m in self._selected(cmd, cmd.args[0])]
        return lines, f"OK {cmd.name} completed"

    def store_flags(self, cmd: Command) -> Reply:
        if len(cmd.args) != 3 or not isinstance(cmd.args[1], str):
            raise ImapSyntaxError("STORE set item flags")
        if self.readonly:
            raise NoResponse("Mailbox is read-only")
        item = cmd.args[1].upper()
        mode, silent = item.removesuffix(".SILENT"), item.endswith(".SILENT")
        if mode not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise ImapSyntaxError(f"unknown STORE item {cmd.args[1]!r}")
        flags = _flags_of(cmd.args[2])
        lines = []
        with self.store.locked():
            for seq, m in self._selected(cmd, cmd.args[0]):
                if mode == "FLAGS":
                    m.flags = set(flags)
                elif mode == "+FLAGS":
                    m.flags |= flags
                else:
                    m.flags -= flags
                if not silent:
                    uid = b" UID %d" % m.uid if cmd.name.startswith("UID ") else b""
                    lines.append(b"* %d FETCH (FLAGS %s%s)" % (seq, flag_list(m.flags), uid))
        return lines, f"OK {cmd.name} completed"

    def _copy(self, cmd: Command) -> tuple[list[StoredMessage], bytes]:
        """Copy the chosen messages; returns them and the COPYUID response code."""
        if len(cmd.args) != 2 or not isinstance(cmd.args[1], str):
            raise ImapSyntaxError(f"{cmd.name} set mailbox")
        target = self.store.folder(self.account, cmd.args[1])
        if target is None:
            raise NoResponse("[TRYCREATE] No such mailbox")
        with self.store.locked():
            chosen = [m for _seq, m in self._selected(cmd, cmd.args[0])]
            copies = [target.add(m.raw, m.internaldate, m.flags - {"\\Deleted"})
                      for m in chosen]
        self.store.changed()
        code = b"[COPYUID %d %s %s]" % (target.uidvalidity,
                                         b",".join(b"%d" % m.uid for m in chosen),
                                         b",".join(b"%d" % c.uid for c in copies))
        return chosen, code if chosen else b""

    def copy(self, cmd: Command) -> Reply:
        _chosen, code = self._copy(cmd)
        prefix = f"{code.decode()} " if code else ""
        return [], f"OK {prefix}{cmd.name} completed"

    def move(self, cmd: Command) -> Reply:
        if self.readonly:
            raise NoResponse("Mailbox is read-only")
        chosen, code = self._copy(cmd)
        moved = {m.uid for m in chosen}
        with self.store.locked():
            self.folder.messages = [m for m in self.folder.messages if m.uid not in moved]
        self.store.changed()
        # RFC 6851: the COPYUID goes in an untagged OK before the EXPUNGEs.
        lines = [b"* OK %s Moved" % code] if code else []
        return lines + self.updates(allow_expunge=True), f"OK {cmd.name} completed"

    def expunge(self, cmd: Command) -> Reply:
        if self.readonly:
            raise NoResponse("Mailbox is read-only")
        only: set[int] | None = None
        if cmd.name == "UID EXPUNGE":
            if len(cmd.args) != 1:
                raise ImapSyntaxError("UID EXPUNGE set")
            only = {m.uid for _seq, m in self._selected(cmd, cmd.args[0])}
        self._remove_deleted(only)
        return self.updates(allow_expunge=True), f"OK {cmd.name} completed"

    def expunge_silently(self) -> None:
        """CLOSE: remove ``\\Deleted`` messages without telling this session."""
        if not self.readonly:
            self._remove_deleted(None)

    def _remove_deleted(self, only: set[int] | None) -> None:
        with self.store.locked():
            self.folder.messages = [
                m for m in self.folder.messages
                if "\\Deleted" not in m.flags or (only is not None and m.uid not in only)]
        self.store.changed()
