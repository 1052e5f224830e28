"""The demo's in-memory mailbox answers the poller's questions as a real IMAP server does.

Each test runs twice: on :class:`MemoryMailbox` and on mailtracker's IMAP adapter talking to a
real Dovecot, with the same mail delivered to both; what the poller would see must be equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pytest

from mailtracker.demo.mailbox import MemoryAccount, MemoryMailbox, MemoryMailboxes
from mailtracker.errors import ImapError, ImapFolderError
from mailtracker.inbound import imap
from mailtracker.inbound.mailbox import Mailbox
from tests.plugins.dovecot import Dovecot

ZONE = timezone(timedelta(hours=2))
DAY1 = datetime(2026, 3, 2, 9, 15, 7, tzinfo=ZONE)
DAY2 = datetime(2026, 3, 4, 16, 0, 59, tzinfo=ZONE)


def _mail(n: int) -> bytes:
    return (f"From: EG <kundeservice@eg.dk>\nTo: kp@demo-kommune.dk\nSubject: Besked {n} æøå\n"
            f"Message-ID: <m{n}@eg.dk>\n\nTekst {n}\n").encode()


@dataclass
class Side:
    """A mailbox session and how to deliver into (and look at) the account behind it."""

    box: Mailbox
    deliver: Callable[[bytes, datetime], None]
    reopen: Callable[[], Mailbox]


@pytest.fixture(params=["memory", "dovecot"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "memory":
        account = MemoryAccount("kp@demo-kommune.dk", "pw")
        box: Mailbox = MemoryMailbox(account)
        yield Side(box, lambda raw, when: account.deliver(raw, when) and None,
                   lambda: MemoryMailbox(account))
        box.close()
        return
    server: Dovecot = request.getfixturevalue("dovecot")
    user, password = server.add_user()

    def connect() -> Mailbox:
        return imap.connect(server.imap_settings(user, timeout=10), password)

    box = connect()
    yield Side(box, lambda raw, when: server.append(user, raw, date=when) and None, connect)
    box.close()


def test_uids_grow_and_select_reports_them(side: Side) -> None:
    empty = side.box.select("INBOX")
    assert (empty.exists, empty.uidnext) == (0, 1)
    for n in (1, 2, 3):
        side.deliver(_mail(n), DAY1)
    assert side.box.uids_after(0) == [1, 2, 3]
    assert side.box.uids_after(2) == [3]
    assert side.box.uids_after(3) == []
    again = side.reopen()
    state = again.select("inbox")
    again.close()
    assert (state.exists, state.uidnext, state.uidvalidity) == (3, 4, empty.uidvalidity)


def test_since_filters_by_internaldate(side: Side) -> None:
    side.box.select("INBOX")
    side.deliver(_mail(1), DAY1)
    side.deliver(_mail(2), DAY2)
    assert side.box.uids_after(0, date(2026, 3, 3)) == [2]
    assert side.box.uids_after(0, date(2026, 3, 2)) == [1, 2]


def test_headers_sizes_dates_and_whole_messages(side: Side) -> None:
    side.box.select("INBOX")
    side.deliver(_mail(1), DAY1)
    side.deliver(_mail(2), DAY2)
    assert side.box.uids_after(0) == [1, 2]  # as the poller does: brings the view up to date
    crlf = _mail(2).replace(b"\n", b"\r\n")
    lean = list(side.box.fetch_headers([2, 1, 99], lean=True))
    assert [h.uid for h in lean] == [1, 2]
    assert lean[1].header_bytes == crlf[:crlf.index(b"\r\n\r\n") + 4]
    assert (lean[1].size, lean[1].internaldate) == (0, None)
    full = list(side.box.fetch_headers([2]))
    assert (full[0].size, full[0].internaldate) == (len(crlf), DAY2)
    assert side.box.sizes_and_dates([2, 99]) == {2: (len(crlf), DAY2)}
    assert side.box.fetch_full_many([2, 99]) == {2: crlf}
    # Fetching never sets \Seen.
    assert "\\Seen" not in next(side.box.fetch_headers([2])).flags


def test_keyword_and_move(side: Side) -> None:
    side.box.select("INBOX")
    for n in (1, 2):
        side.deliver(_mail(n), DAY1)
    assert side.box.uids_after(0) == [1, 2]
    side.box.add_keyword([1], "mailtracker")
    assert "mailtracker" in next(side.box.fetch_headers([1])).flags
    side.box.move([1], "Behandlet/æøå")
    assert side.box.uids_after(0) == [2]
    assert side.box.fetch_full_many([1]) == {}
    moved = side.reopen()
    assert moved.select("Behandlet/æøå").exists == 1
    assert moved.fetch_full_many([1]) == {1: _mail(1).replace(b"\n", b"\r\n")}
    moved.close()


def test_news_is_seen_by_wait_for_change(side: Side) -> None:
    side.box.select("INBOX")
    assert side.box.wait_for_change(0) is False
    side.deliver(_mail(1), DAY1)
    side.box.noop()
    assert side.box.wait_for_change(0) is True
    assert side.box.wait_for_change(0) is False


def test_a_missing_folder_is_a_folder_error(side: Side) -> None:
    with pytest.raises(ImapFolderError, match="Findes ikke"):
        side.box.select("Findes ikke")


def test_a_closed_memory_session_refuses_further_use() -> None:
    box = MemoryMailbox(MemoryAccount("kp@demo-kommune.dk", "pw"))
    box.select("INBOX")
    box.close()
    with pytest.raises(ImapError, match="closed"):
        box.uids_after(0)


def test_memory_mailboxes_refuse_an_unknown_address() -> None:
    boxes = MemoryMailboxes({"kp@demo-kommune.dk": "pw"}, "kp@demo-kommune.dk")
    assert boxes.deliver("KP@demo-kommune.dk", _mail(1), DAY1) is True
    assert boxes.deliver("nobody@demo-kommune.dk", _mail(2), DAY1) is False
    connect = boxes.poll_connect()
    with MemoryMailbox(boxes.accounts["kp@demo-kommune.dk"]) as box:
        assert box.select("INBOX").exists == 1
    session = connect()
    assert session.select("INBOX").exists == 1
    session.close()
