"""The demo's IMAP server, driven by the production client (``mailtracker.inbound.imap``)
and by imapclient directly for what the adapter does not expose. Real sockets, real TLS."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from mailtracker.demo.imapproto import (
    ImapSyntaxError,
    parse_command,
    parse_sequence_set,
)
from mailtracker.demo.mailstore import Folder, MailStore
from mailtracker.demo.servers import DemoServers, DemoTls, make_demo_ca
from mailtracker.errors import ImapAuthError, ImapFolderError, ImapTlsError
from mailtracker.inbound.imap import ImapMailbox, connect
from mailtracker.settings.config import ImapSettings, SecretSource

USER = "kp-systemansvarlig@demo-kommune.dk"
PASSWORD = "demo-Kodeord-1"
CET = timezone(timedelta(hours=1))


def message(n: int, body: str = "Brødtekst med æøå") -> bytes:
    return (f"From: EG <kundeservice@eg.dk>\r\nTo: {USER}\r\nSubject: Besked {n}\r\n"
            f"Message-ID: <{n}@demo.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            f"\r\n{body}\r\n").encode()


class Demo:
    def __init__(self, store: MailStore, servers: DemoServers, tls: DemoTls):
        self.store = store
        self.servers = servers
        self.tls = tls
        self.opened: list[Any] = []

    def settings(self, **overrides: Any) -> ImapSettings:
        fields: dict[str, Any] = dict(host="127.0.0.1", port=self.servers.imap_port,
                                      tls="implicit", username=USER, secret=SecretSource(),
                                      ca_file=self.tls.ca_file, timeout=10)
        fields.update(overrides)
        return ImapSettings(**fields)

    def mailbox(self, password: str = PASSWORD, **overrides: Any) -> ImapMailbox:
        mb = connect(self.settings(**overrides), password)
        self.opened.append(mb)
        return mb

    def client(self) -> IMAPClient:
        """imapclient itself, logged in, for what the adapter does not expose."""
        client = IMAPClient("127.0.0.1", self.servers.imap_port, ssl=True, timeout=10,
                            ssl_context=ssl.create_default_context(cafile=str(self.tls.ca_file)))
        client.login(USER, PASSWORD)
        self.opened.append(client)
        return client

    def folder(self, name: str = "INBOX") -> Folder:
        account = self.store.account(USER)
        assert account is not None
        folder = self.store.folder(account, name)
        assert folder is not None
        return folder

    def deliver(self, n: int, when: datetime | None = None) -> int:
        uid = self.store.deliver(USER, message(n), when=when)
        assert uid is not None
        return uid


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    store = MailStore()
    store.add_account(USER, PASSWORD)
    tls = make_demo_ca(tmp_path / "tls")
    with DemoServers(store, tls) as servers:
        d = Demo(store, servers, tls)
        yield d
        for item in d.opened:
            with contextlib.suppress(Exception):
                item.close() if isinstance(item, ImapMailbox) else item.logout()


# -- through the production adapter ----------------------------------------------------------


def test_select_reports_uidvalidity_uidnext_and_exists(demo: Demo) -> None:
    for n in range(3):
        demo.deliver(n)
    state = demo.mailbox().select("INBOX")
    assert (state.uidvalidity, state.uidnext, state.exists) == (demo.folder().uidvalidity, 4, 3)


def test_selecting_a_missing_folder_is_a_folder_error(demo: Demo) -> None:
    with pytest.raises(ImapFolderError):
        demo.mailbox().select("Findes-ikke")


def test_uids_after_returns_only_newer_uids(demo: Demo) -> None:
    demo.deliver(1)
    demo.deliver(2)
    mb = demo.mailbox()
    mb.select("INBOX")
    assert mb.uids_after(0) == [1, 2]
    assert mb.uids_after(2) == []
    demo.deliver(3)
    assert mb.uids_after(2) == [3]  # mail that arrived after SELECT is found


def test_uid_range_beyond_the_last_uid_matches_the_last_message_as_rfc3501_says(
        demo: Demo) -> None:
    demo.deliver(1)
    demo.deliver(2)
    client = demo.client()
    client.select_folder("INBOX")
    assert client.search(["UID", "3:*"]) == [2]  # like Dovecot: the adapter must filter


def test_since_filters_by_the_internaldate_day(demo: Demo) -> None:
    demo.deliver(1, when=datetime(2025, 12, 31, 23, 30, tzinfo=CET))
    demo.deliver(2, when=datetime(2026, 1, 2, 8, 0, tzinfo=CET))
    mb = demo.mailbox()
    mb.select("INBOX")
    assert mb.uids_after(0, since=date(2026, 1, 1)) == [2]


def test_fetch_headers_gives_header_block_size_flags_and_zoned_internaldate(
        demo: Demo) -> None:
    when = datetime(2026, 1, 5, 10, 15, 30, tzinfo=CET)
    uid = demo.deliver(7, when=when)
    mb = demo.mailbox()
    mb.select("INBOX")
    (head,) = list(mb.fetch_headers([uid, 99]))  # a UID that does not exist is skipped
    raw = message(7)
    assert head.uid == uid and head.size == len(raw)
    assert head.header_bytes == raw[:raw.index(b"\r\n\r\n") + 4]
    assert head.internaldate == when and head.internaldate.utcoffset() == timedelta(hours=1)
    assert "\\Seen" not in head.flags


def test_fetch_full_returns_the_exact_bytes_and_leaves_the_message_unseen(demo: Demo) -> None:
    uid = demo.deliver(1)
    mb = demo.mailbox()
    mb.select("INBOX")
    assert mb.fetch_full_many([uid]) == {uid: message(1)}  # 8-bit UTF-8, byte for byte
    assert mb.fetch_full_many([999]) == {}
    (head,) = list(mb.fetch_headers([uid]))
    assert "\\Seen" not in head.flags


def test_fetch_without_peek_sets_seen_and_says_so(demo: Demo) -> None:
    uid = demo.deliver(1)
    client = demo.client()
    client.select_folder("INBOX")
    data = client.fetch([uid], ["BODY[]"])
    assert data[uid][b"BODY[]"] == message(1)
    assert b"\\Seen" in data[uid][b"FLAGS"]  # the implicit change is reported


def test_add_keyword_is_stored(demo: Demo) -> None:
    uid = demo.deliver(1)
    mb = demo.mailbox()
    mb.select("INBOX")
    mb.add_keyword([uid], "mailtracker")
    (head,) = list(mb.fetch_headers([uid]))
    assert "mailtracker" in head.flags


def test_move_creates_the_folder_and_removes_the_message_from_inbox(demo: Demo) -> None:
    first, second = demo.deliver(1), demo.deliver(2)
    mb = demo.mailbox()
    mb.select("INBOX")
    mb.move([first], "Behandlet")
    assert mb.uids_after(0) == [second]
    assert demo.store.messages(USER, "Behandlet") == [message(1)]
    mb.move([second], "Behandlet")  # the folder exists now: no second CREATE
    assert demo.store.messages(USER, "Behandlet") == [message(1), message(2)]


def test_copy_and_uid_expunge_remove_exactly_the_given_message(demo: Demo) -> None:
    uids = [demo.deliver(n) for n in range(3)]
    client = demo.client()
    client.create_folder("Arkiv")
    client.select_folder("INBOX")
    client.copy([uids[0]], "Arkiv")
    client.add_flags(uids[:2], [b"\\Deleted"])
    client.uid_expunge([uids[0]])
    assert client.search(["ALL"]) == uids[1:]  # uids[1] is marked deleted, not expunged
    assert demo.store.messages(USER, "Arkiv") == [message(0)]


def test_wrong_password_is_refused(demo: Demo) -> None:
    with pytest.raises(ImapAuthError, match="AUTHENTICATIONFAILED"):
        demo.mailbox(password="forkert")


def test_non_ascii_password_logs_in_with_authenticate_plain(demo: Demo) -> None:
    demo.store.add_account("bjoern@demo-kommune.dk", "Kodeord med æøå og \"citat\"")
    mb = demo.mailbox(password="Kodeord med æøå og \"citat\"",
                      username="bjoern@demo-kommune.dk")
    assert mb.select("INBOX").exists == 0


def test_a_client_trusting_another_ca_refuses_the_server(demo: Demo, other_ca: Any) -> None:
    with pytest.raises(ImapTlsError, match="certificate"):
        demo.mailbox(ca_file=other_ca.ca_file)


def test_wait_for_change_sees_mail_delivered_during_idle(demo: Demo) -> None:
    mb = demo.mailbox()
    mb.select("INBOX")
    assert mb.uses_idle
    client = demo.client()
    client.select_folder("INBOX")
    client.idle()
    demo.deliver(1)
    pushed = client.idle_check(timeout=10)  # returns as soon as the server says something
    client.idle_done()
    assert (1, b"EXISTS") in pushed
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(mb.wait_for_change, 10)
        assert waiting.result(timeout=15) is True  # the NOOP before IDLE already sees it
    assert mb.uids_after(0) == [1]


def test_wait_for_change_returns_false_when_nothing_arrives(demo: Demo) -> None:
    mb = demo.mailbox()
    mb.select("INBOX")
    assert mb.wait_for_change(0.2) is False


def test_expunge_by_another_session_is_announced_at_noop(demo: Demo) -> None:
    uids = [demo.deliver(n) for n in range(2)]
    watcher, other = demo.client(), demo.client()
    watcher.select_folder("INBOX")
    other.select_folder("INBOX")
    other.add_flags([uids[0]], [b"\\Deleted"])
    other.expunge()
    _text, responses = watcher.noop()
    assert (1, b"EXPUNGE") in responses
    assert watcher.search(["ALL"]) == [uids[1]]


def test_append_with_a_literal_stores_the_message_unchanged(demo: Demo) -> None:
    client = demo.client()
    raw = message(5, body="Linje 1\r\n.\r\nLinje 3 \x00 med NUL")
    client.append("INBOX", raw, flags=[b"\\Seen"],
                  msg_time=datetime(2026, 1, 5, 10, 0, tzinfo=CET))
    assert demo.store.messages(USER) == [raw]
    client.select_folder("INBOX")
    data = client.fetch([1], ["FLAGS", "INTERNALDATE", "BODY.PEEK[TEXT]"])
    assert data[1][b"FLAGS"] == (b"\\Seen",)
    assert data[1][b"BODY[TEXT]"] == raw[raw.index(b"\r\n\r\n") + 4:]


def test_list_and_status_describe_the_folders(demo: Demo) -> None:
    demo.deliver(1)
    client = demo.client()
    client.create_folder("Behandlet")
    names = [name for _flags, _delim, name in client.list_folders()]
    assert sorted(names) == ["Behandlet", "INBOX"]
    assert client.folder_exists("Behandlet") and not client.folder_exists("Andet")
    status = client.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UNSEEN"])
    assert status == {b"MESSAGES": 1, b"UIDNEXT": 2, b"UNSEEN": 1}


def test_sequence_numbers_follow_expunges_in_store_responses(demo: Demo) -> None:
    for n in range(3):
        demo.deliver(n)
    client = demo.client()
    client.use_uid = False
    client.select_folder("INBOX")
    client.delete_messages([1])
    client.expunge()
    changed = client.add_flags([2], [b"\\Flagged"])  # now the message with UID 3
    assert changed == {2: (b"\\Flagged",)}
    assert [m.flags for m in demo.folder().messages] == [set(), {"\\Flagged"}]


# -- pure syntax -------------------------------------------------------------------------------


def test_parse_command_reads_quoted_strings_literals_and_lists() -> None:
    cmd = parse_command(b'a1 UID FETCH 1,3:* (BODY.PEEK[HEADER.FIELDS (FROM)] FLAGS)\r\n')
    assert (cmd.tag, cmd.name) == ("a1", "UID FETCH")
    assert cmd.args == ["1,3:*", ["BODY.PEEK[HEADER.FIELDS (FROM)]", "FLAGS"]]
    login = parse_command(b'a2 LOGIN {4}\r\nkp@x "pa\\"ss\\\\"\r\n')
    assert login.args == ["kp@x", 'pa"ss\\']


@pytest.mark.parametrize("bad", [b"a1\r\n", b'a1 LOGIN "open\r\n', b"a1 FETCH (1\r\n",
                                 b"a1 APPEND INBOX {10}\r\nshort\r\n"])
def test_malformed_commands_are_syntax_errors(bad: bytes) -> None:
    with pytest.raises(ImapSyntaxError):
        parse_command(bad)


def test_star_ranges_include_the_highest_number_even_when_reversed() -> None:
    assert parse_sequence_set("4:*", 2) == [(2, 4)]
    assert parse_sequence_set("1,5:7", 9) == [(1, 1), (5, 7)]
    with pytest.raises(ImapSyntaxError):
        parse_sequence_set("0:3", 5)
