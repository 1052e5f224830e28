"""Which follow-up mail is due now. Pure: computed only from stored state and ``now``.

Nothing about the schedule itself is stored. A follow-up is due when its moment has come and
its outbox document does not exist yet (or is still ``pending`` after a temporary failure).
Once a mail is in the outbox as sent, failed or unknown, it is never due again. So a restart,
a second ``tick`` or a ``tick`` after days of downtime never repeats a mail and never skips
one: what should have gone out while nothing ran goes out at the next opening.

Outbox keys (the ``template`` part of the notification key) are:

- ``<event template>``, or ``<event template>@<8 hex>`` when the milestone carries a start
  time or calendar UID, so a rescheduled or new webinar is announced again, once;
- ``<reminder template>-<n>`` for the n-th reminder;
- ``<escalation template>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from mailtracker.followup.calendar import WorkCalendar
from mailtracker.followup.definition import ORIENTATION, ORIENTED, EscalationDef, EventDef
from mailtracker.models import (
    DeliveryState,
    MilestoneRecord,
    Notification,
    NotificationState,
    Recipient,
    notification_key,
)
from mailtracker.settings.taskdef import TaskDefinition
from mailtracker.task.state import reached_milestones


class Kind(StrEnum):
    EVENT = "event"
    REMINDER = "reminder"
    ESCALATION = "escalation"


@dataclass(frozen=True, slots=True)
class Due:
    """One follow-up mail to send now."""

    kind: Kind
    key: str  # the outbox template key (see the module docstring)
    template: str  # the template to render
    recipient: Recipient
    due_at: datetime  # when it became due
    milestone: str | None = None  # the event's or escalation's milestone
    number: int = 0  # the reminder's number, from 1
    calendar: str | None = None  # .ics METHOD to attach, for events
    duration_minutes: int = 90


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A follow-up that will be due later: ``due_at`` is the first moment it may go out."""

    kind: Kind
    key: str
    recipient: str
    due_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Overdue:
    """An expected milestone that has not arrived by its deadline."""

    milestone: str
    deadline: datetime
    template: str  # the escalation's template
    escalated_to: tuple[str, ...]  # recipients whose escalation mail was sent
    can_escalate: bool  # False when no recipient has a role in the escalation's ``to``


@dataclass(frozen=True, slots=True)
class FollowupPlan:
    """What the follow-ups need at ``now``: mail due, mail scheduled, milestones overdue."""

    now: datetime
    due: tuple[Due, ...]
    scheduled: tuple[Scheduled, ...]
    overdue: tuple[Overdue, ...]

    @property
    def next_at(self) -> datetime | None:
        """The earliest moment something scheduled becomes due, or None."""
        return min((s.due_at for s in self.scheduled), default=None)


@dataclass(frozen=True, slots=True)
class _State:
    """The stored state a plan is made from."""

    task: TaskDefinition
    recipients: Sequence[Recipient]
    notifications: Mapping[str, Notification]
    milestones: Mapping[str, MilestoneRecord]
    now: datetime
    # the task's outbox documents per recipient key: ``mine`` is asked for every recipient
    by_recipient: Mapping[str, Sequence[Notification]] = field(default_factory=dict)

    @property
    def calendar(self) -> WorkCalendar:
        return self.task.followups.calendar

    def outbox(self, recipient: Recipient, key: str) -> Notification | None:
        return self.notifications.get(notification_key(self.task.key, recipient.key, key))

    def mine(self, recipient: Recipient) -> Iterator[Notification]:
        return iter(self.by_recipient.get(recipient.key, ()))

    def orientation(self, recipient: Recipient) -> Notification | None:
        role = self.task.role(recipient.role)
        return None if role is None else self.outbox(recipient, role.template)

    def oriented(self, recipient: Recipient) -> bool:
        n = self.orientation(recipient)
        return (n is not None and n.state is NotificationState.SENT
                and n.delivery is not DeliveryState.BOUNCED)

    def bounced(self, recipient: Recipient) -> bool:
        return any(n.delivery is DeliveryState.BOUNCED for n in self.mine(recipient))

    def acknowledged(self, recipient: Recipient) -> bool:
        """A reply to any of our mails (orientation, reminder, event mail) counts."""
        return any(n.acknowledged_at is not None for n in self.mine(recipient))

    def audience(self, to: Sequence[str]) -> list[Recipient]:
        return [r for r in self.recipients
                if (r.role in to or (ORIENTED in to and self.oriented(r)))
                and not self.bounced(r)]


def plan_followups(task: TaskDefinition, recipients: Sequence[Recipient],
                   notifications: Mapping[str, Notification],
                   milestones: Mapping[str, MilestoneRecord], now: datetime) -> FollowupPlan:
    """Everything due at ``now``, what is scheduled later, and what is overdue.

    ``notifications`` are the task's outbox documents by key, ``milestones`` the stored ones
    (derived milestones such as ``webinar_held`` are added here).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    by_recipient: dict[str, list[Notification]] = {}
    for n in notifications.values():
        if n.task == task.key:
            by_recipient.setdefault(n.recipient, []).append(n)
    st = _State(task, recipients, notifications, reached_milestones(milestones, now), now,
                by_recipient)
    due: list[Due] = []
    scheduled: list[Scheduled] = []
    for event in task.followups.events:
        due += _event_due(st, event)
    _reminders(st, due, scheduled)
    overdue = [o for es in task.followups.escalations
               if (o := _escalation(st, es, due, scheduled)) is not None]
    return FollowupPlan(now, tuple(due), tuple(sorted(scheduled, key=lambda s: s.due_at)),
                        tuple(overdue))


def due_followups(task: TaskDefinition, recipients: Sequence[Recipient],
                  notifications: Mapping[str, Notification],
                  milestones: Mapping[str, MilestoneRecord], now: datetime) -> list[Due]:
    """The follow-up mail to send at ``now`` (see ``plan_followups``)."""
    return list(plan_followups(task, recipients, notifications, milestones, now).due)


def event_key(event: EventDef, record: MilestoneRecord) -> str:
    """The outbox key of ``event``'s mail for this occurrence of its milestone."""
    details = record.evidence.details
    if not (details.get("start") or details.get("ical_uid")):
        return event.template
    ident = f"{details.get('ical_uid', '')}|{details.get('start', '')}"
    return f"{event.template}@{hashlib.sha256(ident.encode('utf-8')).hexdigest()[:8]}"


def is_event_key(key: str, template: str) -> bool:
    return key == template or key.startswith(f"{template}@")


def reminder_key(template: str, number: int) -> str:
    return f"{template}-{number}"


def event_start(record: MilestoneRecord) -> datetime | None:
    """The start time in the milestone's evidence (a webinar's), if any and readable."""
    raw = record.evidence.details.get("start")
    try:
        start = datetime.fromisoformat(raw) if raw else None
    except ValueError:
        return None
    return start if start is not None and start.tzinfo is not None else None


def _event_due(st: _State, event: EventDef) -> list[Due]:
    record = st.milestones.get(event.milestone)
    if record is None:
        return []
    for name in event.unless:
        later = st.milestones.get(name)
        if later is not None and later.at >= record.at:
            return []
    start = event_start(record)
    if start is not None and start <= st.now:
        return []  # about something that has begun: too late to be useful
    key = event_key(event, record)
    out = []
    for r in st.audience(event.to):
        if event.only_notified and not _got(st, r, event.only_notified):
            continue
        n = st.outbox(r, key)
        if n is None or n.state is NotificationState.PENDING:
            out.append(Due(Kind.EVENT, key, event.template, r, record.at,
                           milestone=event.milestone, calendar=event.calendar,
                           duration_minutes=event.duration_minutes))
    return out


def _got(st: _State, recipient: Recipient, template: str) -> bool:
    return any(is_event_key(n.template, template)
               and n.state in (NotificationState.SENT, NotificationState.UNKNOWN)
               for n in st.mine(recipient))


def _reminders(st: _State, due: list[Due], scheduled: list[Scheduled]) -> None:
    rd = st.task.followups.reminders
    if rd is None or rd.max_count == 0:
        return
    roles = rd.roles or tuple(r.key for r in st.task.roles if r.required)
    for r in st.recipients:
        orientation = st.orientation(r)
        if r.role not in roles or orientation is None or not st.oriented(r) \
                or st.acknowledged(r) \
                or any(m in st.milestones for m in rd.unless.get(r.role, ())):
            continue
        anchor = orientation.sent_at
        for number in range(1, rd.max_count + 1):
            if anchor is None:
                break
            key = reminder_key(rd.template, number)
            n = st.outbox(r, key)
            if n is None or n.state is NotificationState.PENDING:
                gap = rd.after_working_days if number == 1 else rd.interval_working_days
                at = st.calendar.add_working_days(anchor, gap)
                _due_or_scheduled(st, Due(Kind.REMINDER, key, rd.template, r, at,
                                          number=number), due, scheduled,
                                  f"reminder {number}: no reply {gap} working days after "
                                  f"{'the orientation' if number == 1 else 'the last one'}")
                break
            if n.state is not NotificationState.SENT:
                break  # failed or unknown: a person must look before we write again
            anchor = n.sent_at


def _due_or_scheduled(st: _State, item: Due, due: list[Due], scheduled: list[Scheduled],
                      reason: str) -> None:
    """Due if its moment has come and the office is open; otherwise scheduled."""
    if st.now >= item.due_at and st.calendar.is_open(st.now):
        due.append(item)
        return
    at = st.calendar.next_opening(max(item.due_at, st.now))
    scheduled.append(Scheduled(item.kind, item.key, item.recipient.email, at, reason))


def escalation_deadline(st_task: TaskDefinition, es: EscalationDef,
                        notifications: Mapping[str, Notification],
                        milestones: Mapping[str, MilestoneRecord]) -> datetime | None:
    """When ``es``'s milestone is overdue, or None while its anchor has not happened."""
    cal = st_task.followups.calendar
    if es.deadline is not None:
        return datetime.combine(es.deadline, cal.opens, tzinfo=cal.tz)
    if es.after == ORIENTATION:
        templates = {r.template for r in st_task.roles}
        anchor = min((n.sent_at for n in notifications.values()
                      if n.task == st_task.key and n.template in templates
                      and n.state is NotificationState.SENT and n.sent_at is not None),
                     default=None)
    else:
        record = milestones.get(es.after)
        anchor = record.at if record is not None else None
    if anchor is None:
        return None
    if es.working_days is not None:
        return cal.add_working_days(anchor, es.working_days)
    assert es.delay is not None
    return cal.local(anchor) + es.delay  # wall-clock arithmetic: 6 weeks keep the hour


def _escalation(st: _State, es: EscalationDef, due: list[Due],
                scheduled: list[Scheduled]) -> Overdue | None:
    if es.milestone in st.milestones or any(m in st.milestones for m in es.unless):
        return None
    deadline = escalation_deadline(st.task, es, st.notifications, st.milestones)
    if deadline is None:
        return None
    targets = [r for r in st.recipients if r.role in es.to and not st.bounced(r)]
    sent: list[str] = []
    for r in targets:
        n = st.outbox(r, es.template)
        if n is None or n.state is NotificationState.PENDING:
            _due_or_scheduled(st, Due(Kind.ESCALATION, es.template, es.template, r, deadline,
                                      milestone=es.milestone), due, scheduled,
                              f"escalation: {es.milestone} missing")
        elif n.state in (NotificationState.SENT, NotificationState.UNKNOWN):
            sent.append(r.email)
    if st.now < deadline:
        return None
    return Overdue(es.milestone, deadline, es.template, tuple(sent), bool(targets))
