"""Reading mail through Microsoft Graph: the folder's delta query, behind the poller's
:class:`~mailtracker.inbound.mailbox.ChunkSource` interface (one pipeline, two adapters).

One poll follows ``@odata.nextLink`` pages until ``@odata.deltaLink``. Each page is one batch
of the poller (screen on the headers → full MIME via ``$value`` only for mail the screen lets
through → parse → classify → transition), and the link to the next page (or the delta link)
is saved in the same store write as the page's events, as the IMAP watermark is. A poll with
no news is one HTTP request (the saved delta link) once the token is cached.

Expired or invalid delta state (``410 Gone``, ``syncStateNotFound``, a malformed link) starts
a resync from ``[graph] since``: logged as a warning, and the Message-ID index makes it count
nothing twice. ``@removed`` entries and updates of handled mail are skipped; mail without an
Internet Message-ID is keyed by a hash of its headers, as over IMAP.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.header import Header
from typing import Any

from mailtracker.app import App
from mailtracker.errors import ConfigError, GraphError
from mailtracker.graph import graph_settings, open_client
from mailtracker.graph.http import IMMUTABLE_IDS, MAX_IN_FLIGHT, GraphClient
from mailtracker.inbound.mailbox import HeaderInfo
from mailtracker.inbound.poller import PollReport, process_chunk
from mailtracker.models import DeltaLink
from mailtracker.settings.graphconfig import GraphSettings
from mailtracker.store import Transaction

log = logging.getLogger("mailtracker.poll")

PAGE_SIZE = 500  # Prefer: odata.maxpagesize (Graph's default page is 10)
SELECT = ("internetMessageId", "internetMessageHeaders", "receivedDateTime", "subject", "from",
          "categories")
WELL_KNOWN = {"inbox", "archive", "drafts", "sentitems", "deleteditems", "junkemail",
              "outbox", "clutter", "conversationhistory", "scheduled", "searchfolders"}
_STALE_CODES = {"syncStateNotFound", "syncStateInvalid", "resyncRequired", "InvalidDeltaToken"}


class GraphPollReport(PollReport):
    def summary_line(self) -> str:
        line = super().summary_line().replace("; UIDVALIDITY changed, folder rescanned", "")
        return line + ("; delta state expired, folder resynced" if self.rescan else "")


@dataclass(frozen=True)
class Entry:
    """One message of a delta page, as the screen needs it."""

    id: str
    header_bytes: bytes
    received: datetime | None
    categories: tuple[str, ...]
    headers_given: bool = True  # False: Graph gave no internetMessageHeaders


class GraphReader:
    """The ``[graph]`` mailbox for ``poll`` and ``watch`` (``wait_for_change``, ``close``)."""

    def __init__(self, client: GraphClient, settings: GraphSettings,
                 stop: threading.Event | None = None):
        self.client = client
        self.settings = settings
        self._stop = stop or threading.Event()
        self._folders: dict[str, str] = {}  # configured name or path -> id

    def close(self) -> None:
        self.client.close()

    def wait_for_change(self, timeout: float) -> bool:
        """No push over Graph here (webhooks need a public endpoint): wait, then poll."""
        self._stop.wait(timeout)
        return False

    # -- folders -------------------------------------------------------------------------

    def folder_id(self, name: str) -> str:
        """A well-known name (``Inbox``), a display name, or a path (``Indbakke/EG``)."""
        if name not in self._folders:
            self._folders[name] = self._resolve(name)
        return self._folders[name]

    def _resolve(self, name: str) -> str:
        parts = [p for p in name.split("/") if p]
        if len(parts) == 1 and parts[0].lower() in WELL_KNOWN:
            return str(self._get(f"/mailFolders/{parts[0].lower()}")["id"])
        parent: str | None = None
        for depth, part in enumerate(parts):
            rest = f"/mailFolders/{parent}/childFolders" if parent else "/mailFolders"
            folders = self._all(rest)
            found = ([f for f in folders if f.get("displayName") == part]
                     or [f for f in folders if str(f.get("displayName", "")).lower()
                         == part.lower()])
            if not found and depth == 0 and part.lower() in WELL_KNOWN:
                found = [self._get(f"/mailFolders/{part.lower()}")]
            if len(found) != 1:
                names = ", ".join(sorted(str(f.get("displayName")) for f in folders)) or "none"
                raise ConfigError(f"folder {part!r} of {name!r} not found in mailbox "
                                  f"{self.settings.mailbox} (there: {names})",
                                  key="graph.folder" if name == self.settings.folder
                                  else "graph.move_to")
            parent = str(found[0]["id"])
        assert parent is not None
        return parent

    def _get(self, rest: str) -> dict[str, Any]:
        return self.client.request("GET", self.client.user_url(rest), need="Mail.Read").json()

    def _all(self, rest: str) -> list[dict[str, Any]]:
        url = self.client.user_url(rest)
        params: dict[str, str] | None = {"$top": "250"}
        found: list[dict[str, Any]] = []
        while url:
            data = self.client.request("GET", url, need="Mail.Read", params=params).json()
            found += list(data.get("value", []))
            url, params = str(data.get("@odata.nextLink") or ""), None
        return found

    # -- delta ---------------------------------------------------------------------------

    def initial_url(self) -> str:
        return self.client.user_url(f"/mailFolders/{self.folder_id(self.settings.folder)}"
                                    "/messages/delta")

    def page(self, url: str) -> tuple[list[Entry], str, bool]:
        """One delta page: its messages, the link to go on with, and whether it was the last
        (the link is then the delta link)."""
        params = None if "?" in url else {"$select": ",".join(SELECT)}
        data = self.client.request(
            "GET", url, need="Mail.Read", params=params,
            headers={"Prefer": f"odata.maxpagesize={PAGE_SIZE}, {IMMUTABLE_IDS}"}).json()
        entries = [e for raw in data.get("value", []) if (e := _entry(raw)) is not None]
        if "@odata.nextLink" in data:
            return entries, str(data["@odata.nextLink"]), False
        if "@odata.deltaLink" not in data:
            raise GraphError("Microsoft Graph sent a delta page without a next or delta link",
                             host=self.client.host)
        return entries, str(data["@odata.deltaLink"]), True

    # -- messages ------------------------------------------------------------------------

    def mime(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The MIME of each message (``$value``), at most 4 requests at a time. A message
        deleted meanwhile is left out."""
        def one(mid: str) -> tuple[str, bytes | None]:
            try:
                r = self.client.request("GET", self.client.user_url(f"/messages/{mid}/$value"),
                                        need="Mail.Read", headers={"Prefer": IMMUTABLE_IDS})
            except GraphError as exc:
                if exc.status == 404:
                    return mid, None
                raise
            return mid, r.content

        if len(ids) == 1:
            pairs = [one(ids[0])]
        else:
            with ThreadPoolExecutor(MAX_IN_FLIGHT) as pool:
                pairs = list(pool.map(one, ids))
        return {mid: body for mid, body in pairs if body is not None}

    def add_category(self, entries: Sequence[Entry], category: str) -> None:
        for e in entries:
            if category not in e.categories:
                self.client.request("PATCH", self.client.user_url(f"/messages/{e.id}"),
                                    need="Mail.ReadWrite", body={"categories": [
                                        *e.categories, category]},
                                    headers={"Prefer": IMMUTABLE_IDS})

    def move(self, ids: Sequence[str], folder: str) -> None:
        target = self.folder_id(folder)
        for mid in ids:
            self.client.request("POST", self.client.user_url(f"/messages/{mid}/move"),
                                need="Mail.ReadWrite", body={"destinationId": target},
                                headers={"Prefer": IMMUTABLE_IDS})


class _Page:
    """One delta page as a :class:`~mailtracker.inbound.mailbox.ChunkSource` (local uids)."""

    def __init__(self, reader: GraphReader, uids: Sequence[int], entries: Sequence[Entry]):
        self.reader = reader
        self.entries = dict(zip(uids, entries, strict=True))
        self._bodies: dict[str, bytes] = {}  # fetched early for want of headers

    def fetch_headers(self, uids: Sequence[int], batch: int = 0, *,
                      lean: bool = False) -> Iterator[HeaderInfo]:
        """The headers Graph gave; for a message it gave none of, the real ones from its
        MIME (fetched now, and kept for the full fetch), so the screen never judges on the
        few fields the delta had (a reply's In-Reply-To would be missing)."""
        blind = [self.entries[u].id for u in uids if not self.entries[u].headers_given]
        if blind:
            self._bodies = self.reader.mime(blind)
        for uid in uids:
            e = self.entries[uid]
            head = e.header_bytes
            if e.id in self._bodies:
                raw = self._bodies[e.id]
                cut = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0),
                          default=len(raw))
                head = raw[:cut] + b"\r\n\r\n"
            yield HeaderInfo(uid, 0, (), head, e.received)

    def sizes_and_dates(self, uids: Sequence[int]) -> dict[int, tuple[int, datetime | None]]:
        return {uid: (0, self.entries[uid].received) for uid in uids}

    def fetch_full_many(self, uids: Sequence[int]) -> dict[int, bytes]:
        bodies = dict(self._bodies)
        missing = [self.entries[u].id for u in uids if self.entries[u].id not in bodies]
        if missing:
            bodies.update(self.reader.mime(missing))
        return {u: bodies[self.entries[u].id] for u in uids if self.entries[u].id in bodies}

    def add_keyword(self, uids: Sequence[int], keyword: str) -> None:
        self.reader.add_category([self.entries[u] for u in uids], keyword)

    def move(self, uids: Sequence[int], folder: str) -> None:
        self.reader.move([self.entries[u].id for u in uids], folder)


def _entry(raw: dict[str, Any]) -> Entry | None:
    if "@removed" in raw or not raw.get("id"):
        return None
    received = _when(raw.get("receivedDateTime"))
    return Entry(str(raw["id"]), _header_block(raw), received,
                 tuple(str(c) for c in raw.get("categories") or ()),
                 headers_given=bool(raw.get("internetMessageHeaders")))


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _header_block(raw: dict[str, Any]) -> bytes:
    """The message's header block: from ``internetMessageHeaders`` when Graph gives them,
    else made from the fields it did give (From, Subject, Message-ID)."""
    headers = raw.get("internetMessageHeaders")
    lines: list[str] = []
    if headers:
        lines = [f"{h.get('name')}: {h.get('value')}" for h in headers
                 if h.get("name") and "\n" not in str(h.get("value"))]
    else:
        sender = (raw.get("from") or {}).get("emailAddress") or {}
        if sender.get("address"):
            name = Header(str(sender.get("name") or ""), "utf-8").encode()
            lines.append(f"From: {name} <{sender['address']}>")
        if raw.get("subject"):
            lines.append(f"Subject: {Header(str(raw['subject']), 'utf-8').encode()}")
        if raw.get("internetMessageId"):
            lines.append(f"Message-ID: {raw['internetMessageId']}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


# -- one poll ------------------------------------------------------------------------------

def account_of(settings: GraphSettings) -> str:
    return f"graph:{settings.mailbox.lower()}"


def poll_graph_once(app: App, reader: GraphReader, *, dry_run: bool = False) -> PollReport:
    """Everything new in ``[graph] folder`` since the saved delta link."""
    settings = graph_settings(app.settings)
    report = GraphPollReport(folder=settings.folder, dry_run=dry_run)
    mark = app.store.snapshot().delta_link(account_of(settings), settings.folder)
    url = mark.link if mark is not None and reader.client.owns(mark.link) else None
    if mark is not None and url is None:
        _resync_warning(settings, "the saved delta link is malformed")
        report.rescan = True
    try:
        _rounds(app, reader, url or reader.initial_url(), report, dry_run=dry_run)
    except GraphError as exc:
        if not _stale(exc) or report.rescan:
            raise
        _resync_warning(settings, f"{exc.code or exc.status}")
        report.rescan = True
        _rounds(app, reader, reader.initial_url(), report, dry_run=dry_run)
    return report


def _rounds(app: App, reader: GraphReader, url: str, report: PollReport, *,
            dry_run: bool) -> None:
    settings = reader.settings
    seen = 0
    while True:
        entries, link, last = reader.page(url)
        fresh = [e for e in entries if _after_since(e, settings.since)]
        save = _saver(app, settings, link)
        if fresh:
            uids = list(range(seen + 1, seen + len(fresh) + 1))
            process_chunk(app, _Page(reader, uids, fresh), uids, report, save, dry_run=dry_run)
            seen += len(fresh)
        elif not dry_run and link != url:
            with app.store.transaction() as txn:
                save(txn)
        report.last_uid = seen
        if last:
            return
        url = link


def _saver(app: App, settings: GraphSettings, link: str) -> Any:
    def save(txn: Transaction) -> None:
        txn.set_delta_link(DeltaLink(account_of(settings), settings.folder, link, app.now()))
    return save


def _after_since(entry: Entry, since: date | None) -> bool:
    return since is None or entry.received is None or entry.received.date() >= since


def _stale(exc: GraphError) -> bool:
    return exc.status in (400, 410) or (exc.code or "") in _STALE_CODES


def _resync_warning(settings: GraphSettings, why: str) -> None:
    log.warning("%s: the delta state is no longer valid (%s); resyncing the folder from "
                "%s. Mail already handled is recognised by its Message-ID and not counted "
                "twice", settings.folder, why, settings.since or "the beginning")


def open_reader(app: App, stop: threading.Event | None = None) -> GraphReader:
    return GraphReader(open_client(app.settings, app.environ), graph_settings(app.settings),
                       stop)


def run_graph_poll(app: App, *, dry_run: bool = False) -> PollReport:
    """``mailtracker poll`` over Graph."""
    if dry_run:
        reader = open_reader(app)
        try:
            return poll_graph_once(app, reader, dry_run=True)
        finally:
            reader.close()
    with app.store.exclusive("inbound", "'mailtracker poll' or 'watch'"):
        reader = open_reader(app)
        try:
            return poll_graph_once(app, reader)
        finally:
            reader.close()


def run_graph_watch(app: App, *, health_interval: float = 3600.0,
                    stop: threading.Event | None = None) -> None:
    """``mailtracker watch`` over Graph: poll the delta every ``watch_interval``."""
    import asyncio

    from mailtracker.followup.runner import tick_sync
    from mailtracker.inbound.watch import run_watch

    settings = graph_settings(app.settings)
    # One event loop for the watcher's whole life: each round's follow-ups run in it.
    with app.store.exclusive("inbound", "'mailtracker poll' or 'watch'"), \
            asyncio.Runner() as loop:
        run_watch(lambda: open_reader(app, stop), lambda r: poll_graph_once(app, r),
                  wait_seconds=settings.watch_interval, health_interval=health_interval,
                  after_poll=lambda: tick_sync(app, loop), stop=stop)
