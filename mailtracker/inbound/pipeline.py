"""The poll pipeline for one batch: headers → prefilter → full fetch → parse → classify →
transition → one store write (with the position the caller saves) → optional post-action.

One pipeline, two adapters: an IMAP mailbox (``inbound/imap.py``) or a Microsoft Graph delta
page (``inbound/graph.py``) behind :class:`ChunkSource`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from mailtracker.app import App
from mailtracker.inbound.judge.classify import classify
from mailtracker.inbound.judge.prefilter import is_candidate, screen, screen_blocks
from mailtracker.inbound.mail.facts import IncomingMessage
from mailtracker.inbound.mail.parse import parse
from mailtracker.inbound.mailbox import ChunkSource, HeaderInfo
from mailtracker.inbound.poller import PollReport, inbound_settings
from mailtracker.models import HandledMessage, UnparseableEntry
from mailtracker.settings.config import ImapSettings
from mailtracker.settings.graphconfig import GraphSettings
from mailtracker.store import Transaction
from mailtracker.store.handled import HandledIndex
from mailtracker.task.transition import (
    Effect,
    TaskState,
    apply_to_state,
    sent_message_ids,
    transition,
)
from mailtracker.task.verdict import Classification, Kind

log = logging.getLogger("mailtracker.poll")

FULL_FETCH_BYTES = 16 * 1024 * 1024  # whole messages fetched by one command, at most


@dataclass(frozen=True)
class _Item:
    uid: int
    message_id: str
    msg: IncomingMessage
    cls: Classification
    received_at: datetime


#: Saves the inbound position in the batch's transaction (IMAP watermark, Graph delta link).
SavePosition = Callable[[Transaction], None]


def message_key(message_id: str | None, header_bytes: bytes) -> str:
    """The dedupe key: the Message-ID, or a hash of the header block when there is none."""
    if message_id:
        return message_id
    return f"<sha256-{hashlib.sha256(header_bytes).hexdigest()[:32]}@mailtracker.invalid>"


def process_chunk(app: App, mailbox: ChunkSource, chunk: Sequence[int], report: PollReport,
                  save_position: SavePosition, *, dry_run: bool) -> None:
    """Screen, fetch, classify and apply ``chunk``; one write with ``save_position``."""
    settings = inbound_settings(app)
    view = app.store.snapshot()
    notifications = {n.key: n for n in view.notifications(app.task.key)}
    sent = sent_message_ids(notifications)
    handled = view.handled_ids()
    wanted = [w for head in _candidates(app, mailbox, chunk, sent, report)
              if (w := _wanted(app, head, sent, handled)) is not None]
    items: list[_Item] = []
    unparseable: list[UnparseableEntry] = []
    for group in _fetch_groups(wanted, settings.max_message_bytes):
        bodies = mailbox.fetch_full_many([w.head.uid for w in group
                                          if w.head.size <= settings.max_message_bytes])
        for want in group:
            if want.key in handled:  # a second copy in this chunk
                continue
            item = _examine(app, want, bodies, sent, report)
            if item is None:
                continue
            handled.add(item.message_id)
            if item.cls.kind is Kind.UNPARSEABLE:
                unparseable.append(UnparseableEntry(item.message_id, item.uid, settings.folder,
                                                    item.received_at, item.cls.reason or "?"))
            items.append(item)
    applied = _write_batch(app, items, unparseable, save_position, report, dry_run=dry_run)
    if not dry_run and applied:
        _post_action(mailbox, settings, applied)


def _candidates(app: App, mailbox: ChunkSource, chunk: Sequence[int], sent: dict[str, str],
                report: PollReport) -> list[HeaderInfo]:
    """The chunk's messages that ``_wanted`` must look at, with size and INTERNALDATE.

    The rest are turned away by the prefilter's screen on the raw header bytes, which says
    no only where ``_wanted``'s parse + is_candidate would say no too; they need neither
    a parse nor their size and date.
    """
    how = screen(app.task.rules, app.settings.trust, sent)
    fetched = list(mailbox.fetch_headers(chunk, lean=True))
    report.scanned += len(fetched)
    verdicts = screen_blocks([head.header_bytes for head in fetched], how)
    heads = [head for head, wanted in zip(fetched, verdicts, strict=True) if wanted]
    if not heads:
        return []
    details = mailbox.sizes_and_dates([h.uid for h in heads])
    result = []
    for head in heads:
        # A message expunged meanwhile keeps size 0 and no date: the full fetch skips it.
        size, date = details.get(head.uid, (0, None))
        result.append(replace(head, size=size, internaldate=date))
    return result


@dataclass(frozen=True)
class _Wanted:
    """A message whose header says it must be classified: its whole text is fetched (all of
    a chunk's in one command) unless it is over ``max_message_bytes``."""

    head: HeaderInfo
    key: str
    received_at: datetime
    facts: IncomingMessage  # the header's parse: all there is of a mail too big to fetch


def _fetch_groups(wanted: Sequence[_Wanted], max_bytes: int) -> Iterator[list[_Wanted]]:
    """``wanted`` in order, cut into groups whose whole texts together stay under
    ``FULL_FETCH_BYTES`` (one message may exceed it alone): one FETCH command per group,
    and no more than one group's mail in memory at a time."""
    group: list[_Wanted] = []
    total = 0
    for want in wanted:
        size = want.head.size if want.head.size <= max_bytes else 0
        if group and total + size > FULL_FETCH_BYTES:
            yield group
            group, total = [], 0
        group.append(want)
        total += size
    if group:
        yield group


def _wanted(app: App, head: HeaderInfo, sent: dict[str, str],
            handled: HandledIndex) -> _Wanted | None:
    facts = parse(head.header_bytes)
    key = message_key(facts.message_id, head.header_bytes)
    if key in handled:
        return None
    if facts.unparseable_reason is None and not is_candidate(
            facts, head.header_bytes, app.task.rules, app.settings.trust, sent):
        return None
    return _Wanted(head, key, head.internaldate or facts.date or app.now(), facts)


def _examine(app: App, want: _Wanted, bodies: Mapping[int, bytes], sent: dict[str, str],
             report: PollReport) -> _Item | None:
    settings = inbound_settings(app)
    head = want.head
    if head.size > settings.max_message_bytes:
        reason = f"message is {head.size} bytes, over max_message_bytes; judged on headers"
        msg = _with_defect(want.facts, reason)
    else:
        raw = bodies.get(head.uid)
        if raw is None:  # expunged meanwhile
            return None
        report.fetched += 1
        msg = parse(raw, max_bytes=settings.max_message_bytes)
    cls = classify(msg, app.task.rules, app.settings.trust, sent)
    report.counts[cls.kind.value] = report.counts.get(cls.kind.value, 0) + 1
    return _Item(head.uid, want.key, msg, cls, want.received_at)


def _with_defect(msg: IncomingMessage, defect: str) -> IncomingMessage:
    from dataclasses import replace

    return replace(msg, defects=(*msg.defects, defect))


def _write_batch(app: App, items: Sequence[_Item], unparseable: Sequence[UnparseableEntry],
                 save_position: SavePosition, report: PollReport, *,
                 dry_run: bool) -> list[int]:
    """Apply the batch's effects, handled IDs and watermark in ONE transaction.

    Returns the UIDs whose message changed the task (for the post-action)."""
    settings = inbound_settings(app)
    applied: list[int] = []
    if dry_run:
        view = app.store.snapshot()
        _apply_items(app, _task_state(app, view), items, report, applied, None)
        return applied
    with app.store.transaction() as txn:
        state = _task_state(app, txn)
        # Another process (an old watch) may have handled some meanwhile: check again.
        fresh = [i for i in items if not txn.is_handled(i.message_id)]
        _apply_items(app, state, fresh, report, applied, txn)
        for entry in unparseable:
            txn.add_unparseable(entry)
        txn.add_handled([HandledMessage(i.message_id, app.now(), i.cls.kind.value, i.uid,
                                        settings.folder) for i in fresh])
        save_position(txn)
    return applied


def _task_state(app: App, view: Transaction | object) -> TaskState:
    from mailtracker.store import StateView

    assert isinstance(view, StateView)
    return TaskState(milestones=view.milestones(app.task.key),
                     notifications={n.key: n for n in view.notifications(app.task.key)},
                     quarantine_ids={q.id for q in view.quarantine(app.task.key)})


def _apply_items(app: App, state: TaskState, items: Iterable[_Item], report: PollReport,
                 applied: list[int], txn: Transaction | None) -> None:
    for item in items:
        effect = transition(app.task, item.cls, state, received_at=item.received_at,
                            referenced=_referenced(item.msg))
        apply_to_state(state, effect)
        if effect.summary:
            report.changes.append(effect.summary)
            log.info("%s%s", "would: " if txn is None else "", effect.summary)
        if effect.applied:
            applied.append(item.uid)
        if txn is not None:
            _write_effect(app, txn, effect)


def _referenced(msg: IncomingMessage) -> tuple[str, ...]:
    """The Message-IDs ``msg`` answers. A DSN names the bounced mail only in its report:
    without it, a follow-up's bounce would land on the recipient's orientation."""
    report = msg.delivery_report
    returned = report.original_message_id if report is not None else None
    return (*filter(None, [msg.in_reply_to, returned]), *msg.references)


def _write_effect(app: App, txn: Transaction, effect: Effect) -> None:
    for m in effect.milestones:
        txn.put_milestone(app.task.key, m)
    for name in effect.removed_milestones:
        txn.remove_milestone(app.task.key, name)
    for n in effect.notifications:
        txn.put_notification(n)
    for q in effect.quarantine:
        txn.put_quarantine(q)
    for t in effect.timeline:
        txn.add_timeline(app.task.key, t)


def _post_action(mailbox: ChunkSource, settings: ImapSettings | GraphSettings,
                 uids: Sequence[int]) -> None:
    """After the write: a failure here is logged, never undoes what was recorded."""
    from mailtracker.errors import GraphError, ImapError

    try:
        if settings.post_action in ("keyword", "category"):
            mailbox.add_keyword(uids, settings.keyword)
        elif settings.post_action == "move":
            mailbox.move(uids, settings.move_to)
    except (ImapError, GraphError) as exc:
        log.warning("post-action %s failed (the events are recorded): %s",
                    settings.post_action, exc)


