"""One pass over the inbox: what is new since the watermark, handed in batches to the pipeline
(``inbound/pipeline.py``: headers → prefilter → full fetch → parse → classify → transition →
one store write per batch, with the watermark) → optional post-action.

Exactly once: the watermark (folder, UIDVALIDITY, last UID) advances only in the same atomic
write that records the batch's effects and the Message-IDs handled; a crash before that write
re-processes the batch, and the Message-ID index makes that harmless. A UIDVALIDITY change
rescans the folder, deduplicated by Message-ID. Fetching uses BODY.PEEK and never sets \\Seen.

A poll that finds nothing new imports neither the parser nor the judge: only what it takes to
log in and SELECT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailtracker.app import App
from mailtracker.errors import ConfigError
from mailtracker.inbound.mailbox import ChunkSource, Mailbox
from mailtracker.models import Watermark
from mailtracker.settings.config import ImapSettings
from mailtracker.settings.graphconfig import GraphSettings
from mailtracker.settings.secrets import resolve_credential, token_renewer

if TYPE_CHECKING:
    from mailtracker.inbound.imap import ImapMailbox
    from mailtracker.inbound.pipeline import SavePosition
    from mailtracker.store import Transaction

log = logging.getLogger("mailtracker.poll")
BATCH = 500
@dataclass
class PollReport:
    folder: str
    uidvalidity: int = 0
    rescan: bool = False
    scanned: int = 0  # new messages looked at (headers)
    fetched: int = 0  # full bodies fetched (candidates)
    counts: dict[str, int] = field(default_factory=dict)  # by classification kind
    changes: list[str] = field(default_factory=list)
    last_uid: int = 0
    dry_run: bool = False

    @property
    def new_messages(self) -> int:
        return self.scanned

    def summary_line(self) -> str:
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        what = "would change" if self.dry_run else "changed"
        return (f"{self.folder}: {self.scanned} new message(s), {self.fetched} examined"
                + (f" ({kinds})" if kinds else "") + f"; {len(self.changes)} {what}"
                + ("; UIDVALIDITY changed, folder rescanned" if self.rescan else ""))


def inbound_settings(app: App) -> ImapSettings | GraphSettings:
    """Where mail is read: ``[graph]`` with ``read = true``, else ``[imap]``."""
    graph = app.settings.graph
    if graph is not None and graph.read:
        return graph
    return imap_settings(app)


def imap_settings(app: App) -> ImapSettings:
    if app.settings.imap is None:
        raise ConfigError("no [imap] section: nothing to watch", path=app.settings.path,
                          key="imap")
    return app.settings.imap


def open_mailbox(app: App) -> ImapMailbox:
    """Connect and log in per ``[imap]`` (password from its configured source)."""
    from mailtracker.inbound import imap  # imapclient: only when connecting

    settings = imap_settings(app)
    password = resolve_credential(app.settings, "imap", app.environ)
    if password is None:
        raise ConfigError("no password source (password_env, password_command or keyring)",
                          path=app.settings.path, key="imap.password_env")
    return imap.connect(settings, password,
                        renew=token_renewer(app.settings, "imap", app.environ))


def account_of(settings: ImapSettings) -> str:
    return f"{settings.username}@{settings.host}"


def poll_once(app: App, mailbox: Mailbox, *, dry_run: bool = False,
              batch: int = BATCH) -> PollReport:
    """Process everything new in the configured folder. One store write per batch."""
    settings = imap_settings(app)
    folder = settings.folder
    state = mailbox.select(folder)
    report = PollReport(folder=folder, uidvalidity=state.uidvalidity, dry_run=dry_run)
    account = account_of(settings)
    mark = app.store.snapshot().watermark(account, folder)
    report.rescan = mark is not None and mark.uidvalidity != state.uidvalidity
    last = mark.last_uid if mark is not None and not report.rescan else 0
    report.last_uid = last
    if state.uidnext is not None and state.uidnext <= last + 1 and not report.rescan:
        return report  # nothing new: SELECT was the only command
    uids = mailbox.uids_after(last, settings.since)
    if not uids:
        if not dry_run and (mark is None or report.rescan):
            _save_watermark(app, account, folder, state.uidvalidity, last)
        return report
    for start in range(0, len(uids), batch):
        chunk = uids[start:start + batch]

        def save(txn: Transaction, last: int = chunk[-1]) -> None:
            txn.set_watermark(Watermark(account, folder, report.uidvalidity, last, app.now()))

        process_chunk(app, mailbox, chunk, report, save, dry_run=dry_run)
        report.last_uid = chunk[-1]
    return report


def process_chunk(app: App, mailbox: ChunkSource, chunk: Sequence[int], report: PollReport,
                  save_position: SavePosition, *, dry_run: bool) -> None:
    """Screen, fetch, classify and apply ``chunk`` (``inbound/pipeline.py``); imported only
    when there is something new, so a poll that finds nothing loads no parser."""
    from mailtracker.inbound import pipeline

    pipeline.process_chunk(app, mailbox, chunk, report, save_position, dry_run=dry_run)


def _save_watermark(app: App, account: str, folder: str, uidvalidity: int, last: int) -> None:
    with app.store.transaction() as txn:
        txn.set_watermark(Watermark(account, folder, uidvalidity, last, app.now()))


def run_poll(app: App, *, dry_run: bool = False,
             connect: Callable[[], Mailbox] | None = None) -> PollReport:
    """``mailtracker poll``: connect, one pass, disconnect.

    ``connect`` opens the mailbox instead of ``[imap]``'s server (the demo's in-memory
    mailbox); whatever it returns is closed after the pass. With ``[graph] read = true``
    the pass reads the folder's delta through Microsoft Graph."""
    if connect is None and isinstance(inbound_settings(app), GraphSettings):
        from mailtracker.inbound.graph import run_graph_poll

        return run_graph_poll(app, dry_run=dry_run)
    opener = connect or (lambda: open_mailbox(app))
    if dry_run:
        with closing(opener()) as mailbox:
            return poll_once(app, mailbox, dry_run=True)
    with app.store.exclusive("inbound", "'mailtracker poll' or 'watch'"), \
            closing(opener()) as mailbox:
        return poll_once(app, mailbox)


def run_watch_forever(app: App, *, health_interval: float = 3600.0) -> None:
    """``mailtracker watch``: poll, wait for news (IDLE or polling), repeat; until a signal."""
    if isinstance(inbound_settings(app), GraphSettings):
        from mailtracker.inbound.graph import run_graph_watch

        run_graph_watch(app, health_interval=health_interval)
        return
    import asyncio

    from mailtracker.followup.runner import tick_sync
    from mailtracker.inbound.watch import run_watch

    settings = imap_settings(app)
    # One event loop for the watcher's whole life: each round's follow-ups run in it.
    with app.store.exclusive("inbound", "'mailtracker poll' or 'watch'"), \
            asyncio.Runner() as loop:
        run_watch(lambda: open_mailbox(app), lambda mb: poll_once(app, mb),
                  wait_seconds=settings.watch_interval,
                  health_interval=health_interval, after_poll=lambda: tick_sync(app, loop))
