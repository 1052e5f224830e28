"""Follow-ups in ``status``: overdue milestones, follow-up mail in the outbox, what is
scheduled next. Pure: built from the stored state and ``now`` like the schedule itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailtracker.followup.schedule import (
    Due,
    Kind,
    Overdue,
    Scheduled,
    is_event_key,
    plan_followups,
)
from mailtracker.models import Notification, StateReader
from mailtracker.settings.taskdef import TaskDefinition


@dataclass(frozen=True, slots=True)
class FollowupMail:
    """A follow-up mail in the outbox, with its kind."""

    kind: Kind
    notification: Notification


@dataclass(frozen=True, slots=True)
class FollowupStatus:
    """The follow-up part of ``status``."""

    overdue: tuple[Overdue, ...]
    scheduled: tuple[Scheduled, ...]
    mails: tuple[FollowupMail, ...]
    due: tuple[Due, ...] = ()  # due now: the next ``tick`` (or ``watch`` round) sends them


def followup_kind(task: TaskDefinition, key: str) -> Kind | None:
    """Which kind of follow-up an outbox template key belongs to (None: not a follow-up)."""
    fu = task.followups
    if any(is_event_key(key, e.template) for e in fu.events):
        return Kind.EVENT
    if fu.reminders is not None and key.startswith(f"{fu.reminders.template}-") \
            and key.rpartition("-")[2].isdigit():
        return Kind.REMINDER
    if any(key == e.template for e in fu.escalations):
        return Kind.ESCALATION
    return None


def followup_status(task: TaskDefinition, view: StateReader, now: datetime) -> FollowupStatus:
    notifications = {n.key: n for n in view.notifications(task.key)}
    plan = plan_followups(task, view.recipients(), notifications, view.milestones(task.key),
                          now)
    mails = []
    for n in sorted(notifications.values(), key=lambda n: (n.created_at is None, n.created_at)):
        kind = followup_kind(task, n.template)
        if kind is not None:
            mails.append(FollowupMail(kind, n))
    return FollowupStatus(plan.overdue, plan.scheduled, tuple(mails), plan.due)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def status_json(task: TaskDefinition, fs: FollowupStatus | None) -> dict[str, Any]:
    """The ``overdue``, ``followups``, ``followups_due`` and ``followups_scheduled`` keys of
    ``status --json``."""
    if fs is None:
        return {}
    return {
        "overdue": [{"milestone": o.milestone, "label": _label(task, o.milestone, "en"),
                     "deadline": o.deadline.isoformat(), "escalated_to": list(o.escalated_to),
                     "can_escalate": o.can_escalate} for o in fs.overdue],
        "followups": [{"kind": m.kind.value, "template": m.notification.template,
                       "recipient": m.notification.recipient,
                       "state": m.notification.state.value,
                       "sent_at": _iso(m.notification.sent_at),
                       "attempts": m.notification.attempts,
                       "last_error": m.notification.last_error,
                       "message_id": m.notification.message_id,
                       "subject": m.notification.subject,
                       "acknowledged": m.notification.acknowledged_at is not None}
                      for m in fs.mails],
        "followups_due": [{"kind": d.kind.value, "template": d.key,
                           "recipient": d.recipient.email, "due_at": d.due_at.isoformat(),
                           "milestone": d.milestone} for d in fs.due],
        "followups_scheduled": [{"kind": s.kind.value, "template": s.key,
                                 "recipient": s.recipient, "due_at": s.due_at.isoformat(),
                                 "reason": s.reason} for s in fs.scheduled],
    }


def status_text(task: TaskDefinition, fs: FollowupStatus | None,
                local: Callable[[datetime], str]) -> list[str]:
    """Lines for ``status`` (``local`` formats a datetime in local time)."""
    if fs is None or not (fs.mails or fs.scheduled or fs.overdue or fs.due):
        return []
    lines = ["", "Follow-ups:"]
    for m in fs.mails:
        n = m.notification
        when = f"  {local(n.sent_at)}" if n.sent_at else ""
        err = f" ({n.last_error})" if n.last_error and n.state.value != "sent" else ""
        lines.append(f"  {n.state.value:<9} {m.kind.value:<10} {n.template:<40} "
                     f"{n.recipient}{when}{err}")
    for d in fs.due:
        lines.append(f"  {'due now':<9} {d.kind.value:<10} {d.key:<40} {d.recipient.email}  "
                     f"since {local(d.due_at)}")
    for s in fs.scheduled:
        lines.append(f"  {'scheduled':<9} {s.kind.value:<10} {s.key:<40} {s.recipient}  "
                     f"from {local(s.due_at)}")
    if fs.due:
        lines.append(f"  {len(fs.due)} follow-up mail(s) due now: 'mailtracker tick' sends them "
                     "('watch' does at its next round); 'tick --dry-run' shows them first.")
    for o in fs.overdue:
        told = (f"; told {', '.join(o.escalated_to)}" if o.escalated_to
                else "" if o.can_escalate else "; nobody to escalate to (add a kp_owner)")
        lines.append(f"OVERDUE: {_label(task, o.milestone, 'en')} "
                     f"(deadline {local(o.deadline)}{told})")
    return lines


def status_markdown(task: TaskDefinition, fs: FollowupStatus | None,
                    local: Callable[[datetime], str]) -> list[str]:
    """Danish lines for the KLIK block: only what is overdue."""
    if fs is None or not fs.overdue:
        return []
    return [""] + [f"**Forsinket:** {_label(task, o.milestone, 'da')} (frist {local(o.deadline)})"
                   for o in fs.overdue]


def _label(task: TaskDefinition, milestone: str, lang: str) -> str:
    m = task.milestone(milestone)
    return m.label(lang) if m else milestone
