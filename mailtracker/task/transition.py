"""Pure transition: one classified message + the current task state → its effect.

``transition`` decides; the poller writes the effect of a whole batch in one store write.
Idempotent by construction: a milestone already recorded, an acknowledgement already
recorded or a quarantine entry already present produce no change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mailtracker.models import (
    DeliveryState,
    MilestoneRecord,
    Notification,
    QuarantineEntry,
    TimelineEntry,
)
from mailtracker.settings.taskdef import TaskDefinition
from mailtracker.task.verdict import Classification, Kind


@dataclass
class TaskState:
    """The parts of the stored state a transition reads, keyed for lookup."""

    milestones: dict[str, MilestoneRecord]
    notifications: dict[str, Notification]  # by notification key
    quarantine_ids: set[str] = field(default_factory=set)

    def notification_for(self, recipient: str, referenced: Sequence[str]
                         ) -> Notification | None:
        """The recipient's notification a reply/bounce refers to (by Message-ID), else
        their earliest one (the orientation)."""
        refs = {r.strip() for r in referenced}
        mine = [n for n in self.notifications.values() if n.recipient == recipient.lower()]
        for n in mine:
            if n.message_id in refs or refs.intersection(n.previous_message_ids):
                return n
        return min(mine, key=lambda n: (n.created_at is None, n.created_at), default=None)


@dataclass(frozen=True)
class Effect:
    milestones: tuple[MilestoneRecord, ...] = ()
    removed_milestones: tuple[str, ...] = ()
    notifications: tuple[Notification, ...] = ()
    quarantine: tuple[QuarantineEntry, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()
    summary: str | None = None  # one line for the user when something changed or is notable
    applied: bool = False  # the message changed the task (for the post-action)


def quarantine_id(message_id: str) -> str:
    return "q" + hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:7]


def transition(task: TaskDefinition, cls: Classification, state: TaskState, *,
               received_at: datetime, referenced: Sequence[str] = ()) -> Effect:
    """What ``cls`` changes. ``referenced``: the message's In-Reply-To and References."""
    if cls.kind is Kind.MILESTONE and cls.milestone:
        return _milestone(task, cls, state, received_at)
    if cls.kind is Kind.ACKNOWLEDGED and cls.recipient:
        return _acknowledged(task, cls, state, received_at, referenced)
    if cls.kind is Kind.BOUNCE and cls.recipient:
        return _bounce(cls, state, received_at, referenced)
    if cls.kind is Kind.QUARANTINE:
        return _quarantine(task, cls, state, received_at)
    if cls.kind is Kind.AUTO_REPLY and cls.recipient:
        return Effect(timeline=(TimelineEntry(received_at, "auto_reply", cls.summary,
                                              cls.evidence.message_id),),
                      summary=f"{cls.summary} — not counted as an acknowledgement")
    return Effect()


def _milestone(task: TaskDefinition, cls: Classification, state: TaskState,
               at: datetime) -> Effect:
    name = cls.milestone
    assert name is not None
    label = task.milestone(name).label_en if task.milestone(name) else name  # type: ignore[union-attr]
    record = MilestoneRecord(name, at, cls.evidence)
    existing = state.milestones.get(name)
    removed: tuple[str, ...] = ()
    if name == "webinar_invited":
        if existing is not None and existing.evidence.details == cls.evidence.details:
            return Effect()
        cancelled = state.milestones.get("webinar_cancelled")
        if cancelled is not None and cancelled.at <= at:
            removed = ("webinar_cancelled",)  # a new invitation after a cancellation
    elif existing is not None:
        return Effect()
    verb = "updated" if existing is not None else "reached"
    start = cls.evidence.details.get("start")
    extra = f" (starts {start})" if start else ""
    summary = f"milestone {verb}: {label}{extra} — from {cls.evidence.sender}: " \
              f"{cls.evidence.subject or ''}"
    return Effect(milestones=(record,), removed_milestones=removed,
                  timeline=(TimelineEntry(at, "milestone", summary, cls.evidence.message_id),),
                  summary=summary, applied=True)


def _acknowledged(task: TaskDefinition, cls: Classification, state: TaskState, at: datetime,
                  referenced: Sequence[str]) -> Effect:
    """A reply acknowledges the mail it answers and, if that was a follow-up (a reminder,
    an event mail), the recipient's orientation too: they have evidently read our mail."""
    assert cls.recipient is not None
    n = state.notification_for(cls.recipient, referenced)
    if n is None or n.acknowledged_at is not None:
        return Effect()
    ack = {"acknowledged_at": at, "acknowledged_by": cls.evidence.message_id}
    orientation_templates = {r.template for r in task.roles}
    updated = (n.with_(**ack), *(
        o.with_(**ack) for o in state.notifications.values()
        if o.recipient == n.recipient and o.key != n.key and o.acknowledged_at is None
        and o.template in orientation_templates))
    summary = f"acknowledged: {cls.recipient} replied" + (
        f" (from {cls.evidence.details['from']})" if "from" in cls.evidence.details else "")
    return Effect(notifications=updated,
                  timeline=(TimelineEntry(at, "acknowledged", summary, cls.evidence.message_id),),
                  summary=summary, applied=True)


def _bounce(cls: Classification, state: TaskState, at: datetime,
            referenced: Sequence[str]) -> Effect:
    assert cls.recipient is not None
    n = state.notification_for(cls.recipient, referenced)
    if n is None or n.delivery is DeliveryState.BOUNCED:
        return Effect()
    updated = n.with_(delivery=DeliveryState.BOUNCED, bounce_reason=cls.reason)
    summary = f"bounce: mail to {cls.recipient} was not delivered: {cls.reason}"
    return Effect(notifications=(updated,),
                  timeline=(TimelineEntry(at, "bounce", summary, cls.evidence.message_id),),
                  summary=summary, applied=True)


def _quarantine(task: TaskDefinition, cls: Classification, state: TaskState,
                at: datetime) -> Effect:
    mid = cls.evidence.message_id or cls.summary
    qid = quarantine_id(mid)
    if qid in state.quarantine_ids:
        return Effect()
    entry = QuarantineEntry(id=qid, task=task.key, message_id=mid, at=at,
                            sender=cls.evidence.sender or "", subject=cls.evidence.subject or "",
                            reason=cls.reason or "not authenticated",
                            milestone=cls.milestone or "", details=dict(cls.evidence.details))
    summary = (f"quarantined {qid}: looks like {cls.milestone or 'EG mail'} from "
               f"{entry.sender} but {entry.reason} (mailtracker review)")
    return Effect(quarantine=(entry,),
                  timeline=(TimelineEntry(at, "quarantine", summary, mid),), summary=summary)


def apply_to_state(state: TaskState, effect: Effect) -> None:
    """Fold an effect into the working state, so later messages of a batch see it."""
    for m in effect.milestones:
        state.milestones[m.name] = m
    for name in effect.removed_milestones:
        state.milestones.pop(name, None)
    for n in effect.notifications:
        state.notifications[n.key] = n
    for q in effect.quarantine:
        state.quarantine_ids.add(q.id)


def sent_message_ids(notifications: Mapping[str, Notification]) -> dict[str, str]:
    """Every Message-ID we sent (including earlier sends) → recipient address."""
    out: dict[str, str] = {}
    for n in notifications.values():
        out[n.message_id] = n.recipient
        for old in n.previous_message_ids:
            out[old] = n.recipient
    return out
