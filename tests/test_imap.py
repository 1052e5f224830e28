"""mailtracker.inbound.imap against a real Dovecot on loopback (tests/plugins/dovecot.py)."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from mailtracker.errors import (
    ImapAuthError,
    ImapError,
    ImapFolderError,
    ImapTimeoutError,
    ImapTlsError,
)
from mailtracker.inbound.imap import IDLE_ROUND_SECONDS, ImapMailbox, connect
from tests.plugins.dovecot import Dovecot, free_port
from tests.plugins.tcpproxy import Proxy


def message(n: int, subject: str = "Serviceaftale") -> bytes:
    return (f"From: EG <noreply@eg.dk>\r\nTo: kp@kommune.dk\r\nSubject: {subject} {n}\r\n"
            f"Message-ID: <{n}@test.mailtracker>\r\nDate: Mon, 05 Jan 2026 10:00:00 +0100\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Body {n}\r\n").encode()


@pytest.fixture
def open_mailbox(dovecot: Dovecot) -> Iterator[Callable[..., ImapMailbox]]:
    """``open_mailbox(user, **settings_overrides)`` → a connected mailbox, closed at teardown."""
    opened: list[ImapMailbox] = []

    def open_(user: str, *, server: Dovecot | None = None, idle_round: float = 1500,
              poll_interval: float = 30, **overrides: Any) -> ImapMailbox:
        server = server or dovecot
        overrides.setdefault("timeout", 10)
        mb = connect(server.imap_settings(user, **overrides), server.password(user),
                     idle_round=idle_round, poll_interval=poll_interval)
        opened.append(mb)
        return mb

    yield open_
    for mb in opened:
        mb.close()


class IdleWatcher(logging.Handler):
    """Sees the adapter's "IDLE started" debug line: the moment the server is idling."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.started = threading.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("IDLE started"):
            self.count += 1
            self.started.set()


@pytest.fixture
def idle_watcher() -> Iterator[IdleWatcher]:
    logger = logging.getLogger("mailtracker.inbound.imap")
    watcher, old_level = IdleWatcher(), logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    yield watcher
    logger.removeHandler(watcher)
    logger.setLevel(old_level)


def once_idle(watcher: IdleWatcher, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn(*args)`` to run in a thread as soon as the mailbox is idling."""
    def run() -> Any:
        if not watcher.started.wait(10):
            raise AssertionError("the mailbox never entered IDLE")
        return fn(*args)
    return run


@pytest.fixture
def background() -> Iterator[Callable[..., Future[Any]]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool.submit


# -- connecting, TLS and login ---------------------------------------------------------


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_login_over_verified_tls_and_select_reports_folder_state(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any, tls: str) -> None:
    user, _ = imap_user
    dovecot.append(user, message(1))
    dovecot.append(user, message(2))
    state = open_mailbox(user, tls=tls).select("INBOX")
    assert (state.exists, state.uidnext) == (2, 3)
    assert state.uidvalidity > 0


def test_starttls_not_offered_refuses_before_the_password_is_sent(
        dovecot_factory: Any, tcp_proxy: Callable[[str, int], Proxy]) -> None:
    plain = dovecot_factory(starttls=False)
    user, password = plain.add_user()
    proxy = tcp_proxy(plain.host, plain.port_starttls)
    settings = plain.imap_settings(user, tls="starttls", port=proxy.port, timeout=10)
    with pytest.raises(ImapTlsError, match="does not offer STARTTLS") as err:
        connect(settings, password)
    assert f"127.0.0.1:{proxy.port}" in str(err.value)
    assert b"CAPABILITY" in proxy.client_bytes  # the capture works: the client did talk
    assert password.encode() not in proxy.client_bytes
    assert b"LOGIN" not in proxy.client_bytes and b"AUTHENTICATE" not in proxy.client_bytes


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_certificate_from_an_untrusted_ca_is_refused(
        dovecot: Dovecot, imap_user: tuple[str, str], other_ca: Any, tls: str) -> None:
    user, password = imap_user
    settings = dovecot.imap_settings(user, tls=tls, ca_file=other_ca.ca_file, timeout=10)
    with pytest.raises(ImapTlsError, match="certificate") as err:
        connect(settings, password)
    assert password not in str(err.value)
    assert f"user=<{user}>" not in dovecot.log_text()  # no login attempt reached Dovecot


def test_wrong_password_raises_auth_error_naming_user_not_password(
        dovecot: Dovecot, imap_user: tuple[str, str]) -> None:
    user, _ = imap_user
    with pytest.raises(ImapAuthError) as err:
        connect(dovecot.imap_settings(user, timeout=10), "not-the-password-42")
    assert user in str(err.value) and "AUTHENTICATIONFAILED" in str(err.value)
    assert "not-the-password-42" not in str(err.value)


@pytest.mark.parametrize("password", ["hemmelig-42", "hemmelig-æøå-ÆØÅ"])
def test_login_works_and_debug_logs_never_show_the_password(
        dovecot: Dovecot, open_mailbox: Any, caplog: pytest.LogCaptureFixture,
        password: str) -> None:
    user, _ = dovecot.add_user(password=password)  # ASCII uses LOGIN, the other SASL PLAIN
    with caplog.at_level(logging.DEBUG):
        assert open_mailbox(user).select("INBOX").exists == 0
    assert "Logged in" in caplog.text  # imapclient's protocol trace was captured
    sasl = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    assert password not in caplog.text and sasl not in caplog.text


def test_refused_connection_names_host_and_port(dovecot: Dovecot, imap_user: Any) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ImapError, match=f"cannot connect to 127.0.0.1:{port}") as err:
        connect(dovecot.imap_settings(imap_user[0], port=port, timeout=5), imap_user[1])
    assert type(err.value) is ImapError


def test_connect_over_a_dead_link_times_out_instead_of_hanging(
        dovecot: Dovecot, imap_user: tuple[str, str],
        tcp_proxy: Callable[[str, int], Proxy]) -> None:
    assert dovecot.port_tls is not None
    proxy = tcp_proxy(dovecot.host, dovecot.port_tls)
    proxy.blackhole()
    settings = dovecot.imap_settings(imap_user[0], port=proxy.port, timeout=1)
    started = time.monotonic()
    with pytest.raises(ImapTimeoutError, match="no answer within 1 s"):
        connect(settings, imap_user[1])
    assert time.monotonic() - started < 5


# -- folders ---------------------------------------------------------------------------


def test_selecting_a_missing_folder_raises_folder_error(
        imap_user: tuple[str, str], open_mailbox: Any) -> None:
    with pytest.raises(ImapFolderError, match="'Findes ikke'"):
        open_mailbox(imap_user[0]).select("Findes ikke")


def test_move_creates_a_non_ascii_folder_and_the_message_lands_there(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    first, second, third = (dovecot.append(user, message(n)) for n in (1, 2, 3))
    mb = open_mailbox(user)
    mb.select("INBOX")
    mb.move([first], "Behandlet/æøå")
    mb.move([third], "Behandlet/æøå")  # the folder exists now
    assert "Behandlet/æøå" in dovecot.list_folders(user)
    assert dovecot.uids(user, "INBOX") == [second]
    with dovecot.client(user) as c:
        c.select_folder("Behandlet/æøå", readonly=True)
        got = c.fetch(c.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    ids = sorted(item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].strip() for item in got.values())
    assert ids == [b"Message-ID: <1@test.mailtracker>", b"Message-ID: <3@test.mailtracker>"]


def test_move_without_move_capability_expunges_only_the_moved_messages(
        dovecot_factory: Any, open_mailbox: Any) -> None:
    server = dovecot_factory(drop_capabilities=["MOVE"])
    user, _ = server.add_user()
    moved = server.append(user, message(1))
    deleted_by_someone = server.append(user, message(2), flags=["\\Deleted"])
    mb = open_mailbox(user, server=server)
    mb.select("INBOX")
    mb.move([moved], "Behandlet")
    assert server.uids(user, "Behandlet") == [1]
    assert server.uids(user, "INBOX") == [deleted_by_someone]


# -- searching -------------------------------------------------------------------------


def test_uids_after_with_nothing_new_is_empty_although_dovecot_answers_the_last_uid(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    for n in (1, 2, 3):
        dovecot.append(user, message(n))
    with dovecot.client(user) as c:  # the server quirk this guards against
        c.select_folder("INBOX", readonly=True)
        assert c.search(["UID", "4:*"]) == [3]
    mb = open_mailbox(user)
    mb.select("INBOX")
    assert mb.uids_after(3) == []
    assert mb.uids_after(1) == [2, 3]
    dovecot.append(user, message(4))
    assert mb.uids_after(3) == [4]


def test_since_narrows_the_scan_by_internal_date_on_the_server(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    for n, day in enumerate((date(2020, 1, 1), date(2026, 1, 10), date(2026, 2, 1)), start=1):
        dovecot.append(user, message(n), date=datetime(day.year, day.month, day.day, 12,
                                                           tzinfo=UTC))
    mb = open_mailbox(user)
    mb.select("INBOX")
    assert mb.uids_after(0, since=date(2026, 1, 10)) == [2, 3]
    assert mb.uids_after(2, since=date(2026, 1, 10)) == [3]
    assert mb.uids_after(0, since=date(2027, 1, 1)) == []


# -- fetching --------------------------------------------------------------------------


def test_fetching_headers_and_bodies_never_marks_mail_as_seen(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    when = datetime(2026, 1, 5, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    uid = dovecot.append(user, message(1), date=when)
    flagged = dovecot.append(user, message(2), flags=["\\Flagged", "$Label1"])
    mb = open_mailbox(user)
    mb.select("INBOX")
    headers = list(mb.fetch_headers([flagged, uid]))
    assert [h.uid for h in headers] == [uid, flagged]
    first = headers[0]
    assert first.header_bytes.startswith(b"From: EG <noreply@eg.dk>\r\n")
    assert b"Body 1" not in first.header_bytes
    assert first.size == len(message(1))
    assert first.internaldate == when and first.internaldate.utcoffset() is not None
    assert {"\\Flagged", "$Label1"} <= set(headers[1].flags)
    assert mb.fetch_full_many([uid]) == {uid: message(1)}
    assert all("\\Seen" not in flags for flags in dovecot.flags(user).values())


def test_a_message_expunged_meanwhile_is_skipped_or_none(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    keep, gone = dovecot.append(user, message(1)), dovecot.append(user, message(2))
    mb = open_mailbox(user)
    mb.select("INBOX")
    with dovecot.client(user) as c:
        c.select_folder("INBOX")
        c.delete_messages([gone])
        c.expunge()
    assert mb.fetch_full_many([gone]) == {}
    assert [h.uid for h in mb.fetch_headers([keep, gone])] == [keep]


def test_whole_messages_of_many_uids_come_in_one_command_byte_for_byte(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    uids = [dovecot.append(user, message(n)) for n in range(1, 6)]
    mb = open_mailbox(user)
    mb.select("INBOX")
    with dovecot.client(user) as c:
        c.select_folder("INBOX")
        c.delete_messages([uids[2]])
        c.expunge()
    bodies = mb.fetch_full_many([uids[4], *uids])
    assert bodies == {uid: message(n) for n, uid in enumerate(uids, 1) if uid != uids[2]}
    assert mb.fetch_full_many([]) == {}
    assert all("\\Seen" not in flags for flags in dovecot.flags(user).values())


def test_add_keyword_is_visible_to_other_clients(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    a, b = dovecot.append(user, message(1)), dovecot.append(user, message(2))
    mb = open_mailbox(user)
    mb.select("INBOX")
    mb.add_keyword([a], "mailtracker")
    assert dovecot.flags(user) == {a: frozenset({"mailtracker"}), b: frozenset()}


def test_headers_of_two_thousand_messages_come_in_batches_in_uid_order(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    dovecot.bulk_load(user, (message(n) for n in range(1, 2001)))
    mb = open_mailbox(user)
    assert mb.select("INBOX").exists == 2000
    uids = mb.uids_after(0)
    assert uids == list(range(1, 2001))
    headers = list(mb.fetch_headers(uids, batch=500))
    assert [h.uid for h in headers] == uids
    assert all(f"<{h.uid}@test.mailtracker>".encode() in h.header_bytes for h in headers)
    assert not any("\\Seen" in flags for flags in dovecot.flags(user).values())


def test_lean_fetch_from_dovecot_matches_imapclients_parse(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    raws = [b"From: a@eg.dk\r\nSubject: =?utf-8?q?Ops=C3=A6tning?=\r\nMessage-ID: <%d@x>\r\n"
            b"X-Long: " % n + b"y" * (n * 37) + b"\r\n\r\nBody\r\n" for n in range(1, 40)]
    uids = [dovecot.append(user, raw) for raw in raws]
    mb = open_mailbox(user)
    mb.select("INBOX")
    lean = {h.uid: h.header_bytes for h in mb.fetch_headers(uids, lean=True)}
    with dovecot.client(user) as c:
        c.select_folder("INBOX", readonly=True)
        reference = {uid: item[b"BODY[HEADER]"]
                     for uid, item in c.fetch(uids, ["BODY.PEEK[HEADER]"]).items()}
    assert lean == reference
    assert all(lean[uid] == raw.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
               for uid, raw in zip(uids, raws, strict=True))


def test_reset_uidvalidity_helper_renumbers_uids(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    for n in (1, 2, 3):
        dovecot.append(user, message(n))
    with dovecot.client(user) as c:
        before = c.select_folder("INBOX")[b"UIDVALIDITY"]
        c.delete_messages([1])
        c.expunge()
    dovecot.reset_uidvalidity(user)
    state = open_mailbox(user).select("INBOX")
    assert state.uidvalidity != before
    assert dovecot.uids(user) == [1, 2]


# -- waiting for mail: IDLE and polling --------------------------------------------------


def test_idle_wakes_promptly_when_mail_arrives(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any,
        idle_watcher: IdleWatcher, background: Any) -> None:
    user, _ = imap_user
    mb = open_mailbox(user)
    mb.select("INBOX")
    assert mb.uses_idle
    arrival = background(once_idle(idle_watcher, dovecot.append, user, message(1)))
    started = time.monotonic()
    assert mb.wait_for_change(timeout=60) is True
    assert time.monotonic() - started < 10
    assert arrival.result(timeout=10) == 1
    assert mb.uids_after(0) == [1]


def test_wait_reports_mail_that_arrived_before_it_was_called(
        dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any) -> None:
    user, _ = imap_user
    mb = open_mailbox(user)
    mb.select("INBOX")
    dovecot.append(user, message(1))
    started = time.monotonic()
    assert mb.wait_for_change(timeout=60) is True
    assert time.monotonic() - started < 10


def test_wait_without_news_returns_false_after_the_timeout_in_idle_rounds(
        imap_user: tuple[str, str], open_mailbox: Any, idle_watcher: IdleWatcher) -> None:
    mb = open_mailbox(imap_user[0], idle_round=0.25)
    mb.select("INBOX")
    started = time.monotonic()
    assert mb.wait_for_change(timeout=1.0) is False
    assert 1.0 <= time.monotonic() - started < 5
    assert idle_watcher.count >= 3  # IDLE ended and re-issued each round


def test_idle_round_never_exceeds_25_minutes(imap_user: Any, open_mailbox: Any) -> None:
    assert open_mailbox(imap_user[0], idle_round=3600).idle_round == IDLE_ROUND_SECONDS == 1500


@pytest.mark.parametrize("how", ["server lacks IDLE", "idle = false"])
def test_polling_fallback_notices_new_mail(
        dovecot_factory: Any, open_mailbox: Any, background: Any, how: str) -> None:
    server = dovecot_factory(drop_capabilities=["IDLE"] if how == "server lacks IDLE" else [])
    user, _ = server.add_user()
    mb = open_mailbox(user, server=server, poll_interval=0.1, idle=how != "idle = false")
    mb.select("INBOX")
    assert not mb.uses_idle
    assert mb.wait_for_change(timeout=0.3) is False
    arrival = background(server.append, user, message(1))
    started = time.monotonic()
    assert mb.wait_for_change(timeout=60) is True
    assert time.monotonic() - started < 10
    assert arrival.result(timeout=10) == 1


# -- broken links ----------------------------------------------------------------------


@pytest.fixture
def proxied(dovecot: Dovecot, imap_user: tuple[str, str], open_mailbox: Any,
            tcp_proxy: Callable[[str, int], Proxy]
            ) -> Callable[..., tuple[ImapMailbox, Proxy]]:
    """``proxied(idle_round=1500)`` → a selected mailbox whose connection runs through a
    proxy, with a socket timeout of 1 s."""
    assert dovecot.port_tls is not None
    proxy = tcp_proxy(dovecot.host, dovecot.port_tls)

    def make(idle_round: float = 1500) -> tuple[ImapMailbox, Proxy]:
        mb = open_mailbox(imap_user[0], port=proxy.port, timeout=1, idle_round=idle_round)
        mb.select("INBOX")
        return mb, proxy

    return make


def test_dead_link_makes_noop_time_out_and_the_mailbox_refuse_further_use(
        proxied: Callable[..., tuple[ImapMailbox, Proxy]]) -> None:
    mb, proxy = proxied()
    proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(ImapTimeoutError, match="no answer within 1 s while sending NOOP"):
        mb.noop()
    assert time.monotonic() - started < 4
    with pytest.raises(ImapError, match="reconnect"):
        mb.uids_after(0)


def test_dead_link_during_idle_is_detected_within_a_round_plus_the_socket_timeout(
        proxied: Callable[..., tuple[ImapMailbox, Proxy]], idle_watcher: IdleWatcher,
        background: Any) -> None:
    mb, proxy = proxied(idle_round=0.5)
    dead = background(once_idle(idle_watcher, proxy.blackhole))
    started = time.monotonic()
    with pytest.raises(ImapTimeoutError, match="ending IDLE"):
        mb.wait_for_change(timeout=30)
    assert time.monotonic() - started < 6  # round 0.5 s + timeout 1 s, with slack
    dead.result(timeout=10)


@pytest.mark.parametrize("during", ["noop", "idle"])
def test_cut_connection_raises_connection_lost_promptly(
        proxied: Callable[..., tuple[ImapMailbox, Proxy]], idle_watcher: IdleWatcher,
        background: Any, during: str) -> None:
    mb, proxy = proxied()  # IDLE rounds of 25 min: EOF must end the wait, not the round
    started = time.monotonic()
    if during == "noop":
        proxy.cut()
        with pytest.raises(ImapError, match="connection lost") as err:
            mb.noop()
    else:
        cut = background(once_idle(idle_watcher, proxy.cut))
        with pytest.raises(ImapError, match="connection lost") as err:
            mb.wait_for_change(timeout=30)
        cut.result(timeout=10)
    assert not isinstance(err.value, ImapTimeoutError)
    assert time.monotonic() - started < 4
