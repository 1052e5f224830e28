"""What the dossier shows, gathered from the stored state and ``now``. Pure.

Everything here is data the page prints as text (Jinja2 escapes it); times are aware
datetimes that the page formats in the task's time zone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from mailtracker.dossier.timeline import Layout, Mark, Rule, Shape, layout
from mailtracker.followup.schedule import Kind, escalation_deadline
from mailtracker.models import (
    DeliveryState,
    MilestoneRecord,
    Notification,
    NotificationState,
    OrientedFact,
    QuarantineEntry,
    Recipient,
    StateReader,
)
from mailtracker.settings.taskdef import TaskDefinition
from mailtracker.task.followups import followup_kind
from mailtracker.task.report import TaskReport, build_report
from mailtracker.task.state import KlikStatus, klik_label, orientation_of

EG_LANE = {"da": "EG og signering", "en": "EG and signing"}
_STATE_WORDS = {
    "da": {"sent": "sendt", "failed": "fejlet", "unknown": "ukendt", "pending": "afventer",
           "sending": "sendes", "not-sent": "ikke sendt", "bounced": "afvist (bounce)"},
    "en": {"sent": "sent", "failed": "failed", "unknown": "unknown", "pending": "pending",
           "sending": "sending", "not-sent": "not sent", "bounced": "bounced"},
}


@dataclass(frozen=True, slots=True)
class PersonRow:
    role: str
    name: str
    email: str
    sent_at: datetime | None
    state: str  # in the page's language
    problem: bool  # failed, unknown or bounced: shown with a marker as well as words
    server_reply: str  # the SMTP server's answer when sending failed, or ''
    acknowledged_at: datetime | None
    bounce_reason: str


@dataclass(frozen=True, slots=True)
class MilestoneRow:
    label: str
    record: MilestoneRecord | None
    how: str  # "mail", "manual", "derived" or "" when not reached
    next_step: str  # what to do while it is missing


@dataclass(frozen=True, slots=True)
class FollowupRow:
    kind: str  # event, reminder, escalation
    template: str
    recipient: str
    state: str  # sent, failed, … / "due now" / "scheduled"
    at: datetime | None


@dataclass(frozen=True, slots=True)
class Dossier:
    lang: str
    title: str
    project: str
    organisation: str
    klik: str
    klik_code: str
    klik_since: datetime | None
    klik_reason: str
    next_step: str
    now: datetime
    state_file: str
    trust: str
    people: tuple[PersonRow, ...]
    milestones: tuple[MilestoneRow, ...]
    quarantine: tuple[QuarantineEntry, ...]
    followups: tuple[FollowupRow, ...]
    overdue: tuple[tuple[str, datetime], ...]  # (milestone label, deadline)
    timeline: Layout
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _State:
    """What the dossier reads of the stored state besides the report, read once."""

    recipients: list[Recipient]
    outbox: dict[str, Notification]  # the task's, by key
    facts: tuple[OrientedFact, ...]


def build_dossier(task: TaskDefinition, view: StateReader, *, organisation: str,
                  now: datetime, lang: str, state_file: Path, trust: str = "",
                  warnings: tuple[str, ...] = ()) -> Dossier:
    report = build_report(task, view, organisation=organisation, now=now, lang=lang,
                          warnings=warnings, trust=trust)
    state = _State(view.recipients(), {n.key: n for n in view.notifications(task.key)},
                   tuple(view.oriented_facts(task.key)))
    people = tuple(_person(task, r, lang) for r in report.recipients)
    rows = tuple(_milestone_row(task, key, report, lang) for key in _milestone_keys(task, report))
    fs = report.followups
    followups: list[FollowupRow] = []
    overdue: list[tuple[str, datetime]] = []
    if fs is not None:
        followups += [FollowupRow(m.kind.value, m.notification.template,
                                  m.notification.recipient, m.notification.state.value,
                                  m.notification.sent_at) for m in fs.mails]
        followups += [FollowupRow(d.kind.value, d.key, d.recipient.email, "due", d.due_at)
                      for d in fs.due]
        followups += [FollowupRow(s.kind.value, s.key, s.recipient, "scheduled", s.due_at)
                      for s in fs.scheduled]
        overdue = [(_label(task, o.milestone, lang), o.deadline) for o in fs.overdue]
    return Dossier(
        lang=lang, title=task.title_for(lang), project=task.project, organisation=organisation,
        klik=klik_label(task, report.klik), klik_code=report.klik.value,
        klik_since=_klik_since(task, state, report), klik_reason=report.klik_reason,
        next_step=report.next_step, now=now, state_file=str(state_file), trust=trust,
        people=people, milestones=rows, quarantine=tuple(view.quarantine(task.key)),
        followups=tuple(followups), overdue=tuple(overdue),
        timeline=_timeline(task, state, report, lang), warnings=tuple(report.warnings))


def _label(task: TaskDefinition, key: str, lang: str) -> str:
    m = task.milestone(key)
    return m.label(lang) if m else key


def _milestone_keys(task: TaskDefinition, report: TaskReport) -> list[str]:
    keys = [m.key for m in task.milestones]
    return keys + [k for k in report.milestones if k not in keys]


def _milestone_row(task: TaskDefinition, key: str, report: TaskReport,
                   lang: str) -> MilestoneRow:
    definition = task.milestone(key)
    record = report.milestones.get(key)
    how = ""
    if record is not None:
        how = "derived" if definition is not None and definition.source == "derived" \
            and record.evidence.source != "manual" else record.evidence.source
    return MilestoneRow(_label(task, key, lang), record, how,
                        definition.next_step(lang) if definition else "")


def _person(task: TaskDefinition, row: dict[str, object], lang: str) -> PersonRow:
    words = _STATE_WORDS["en" if lang == "en" else "da"]
    role = task.role(str(row["role"]))
    state = str(row["notification"])
    bounced = row["delivery"] == DeliveryState.BOUNCED.value
    return PersonRow(
        role=role.label(lang) if role else str(row["role"]), name=str(row["name"]),
        email=str(row["email"]), sent_at=_dt(row["sent_at"]),
        state=words["bounced"] if bounced else words.get(state, state),
        problem=bounced or state in ("failed", "unknown"),
        server_reply=str(row["last_error"] or "") if state != "sent" else "",
        acknowledged_at=_dt(row["acknowledged_at"]),
        bounce_reason=str(row["bounce_reason"] or ""))


def _dt(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _klik_since(task: TaskDefinition, state: _State, report: TaskReport) -> datetime | None:
    """When the KLIK status became what it is: the first orientation sent (i gang), or the
    moment the last required role was covered (fuldført)."""
    sent: dict[str, list[datetime]] = {}
    for r in state.recipients:
        n = orientation_of(task, r, state.outbox)
        if n is not None and n.state is NotificationState.SENT and n.sent_at is not None \
                and n.delivery is not DeliveryState.BOUNCED:
            done_at = n.acknowledged_at if task.require_acknowledgement else n.sent_at
            if done_at is not None:
                sent.setdefault(r.role, []).append(done_at)
    for fact in state.facts:
        sent.setdefault(fact.role, []).append(fact.sent_at)
    if report.klik is KlikStatus.NOT_STARTED or not sent:
        return None
    if report.klik is KlikStatus.IN_PROGRESS:
        return min(min(times) for times in sent.values())
    firsts = [min(sent[r.key]) for r in task.roles if r.required and r.key in sent]
    return max(firsts) if firsts else None


def _timeline(task: TaskDefinition, state: _State, report: TaskReport,
              lang: str) -> Layout:
    da = lang != "en"
    marks: list[Mark] = []
    rules: list[Rule] = [Rule(report.now, "I dag" if da else "Today", "today")]
    names = {r.email: r.name for r in state.recipients}
    notifications = list(state.outbox.values())
    orientation_templates = {r.template for r in task.roles}
    for n in notifications:
        lane = names.get(n.recipient, n.recipient)
        kind = followup_kind(task, n.template)
        what = ("Orientering" if da else "Orientation") if n.template in orientation_templates \
            else _kind_word(kind, da)
        if n.sent_at is not None and n.state is NotificationState.SENT:
            shape: Shape = "sent"
            if kind is Kind.REMINDER:
                shape = "reminder"
            elif kind is Kind.ESCALATION:
                shape = "escalation"
            marks.append(Mark(n.sent_at, lane, f"{what} {'sendt' if da else 'sent'}",
                              f"{what}: {n.subject or n.template}", shape))
        elif n.state in (NotificationState.FAILED, NotificationState.UNKNOWN) \
                and n.updated_at is not None:
            word = ("fejlet" if da else "failed") if n.state is NotificationState.FAILED \
                else ("ukendt" if da else "unknown")
            marks.append(Mark(n.updated_at, lane, f"{what} {word}",
                              f"{what}: {n.last_error or word}", "failed"))
        if n.acknowledged_at is not None:
            marks.append(Mark(n.acknowledged_at, lane, "Svar modtaget" if da else "Replied",
                              f"{'Svar på' if da else 'Reply to'} {n.subject or n.template}",
                              "answered"))
        if n.delivery is DeliveryState.BOUNCED:
            at = n.acknowledged_at or n.updated_at or n.sent_at or report.now
            marks.append(Mark(at, lane, "Afvist (bounce)" if da else "Bounced",
                              n.bounce_reason or "bounce", "bounced"))
    eg = EG_LANE["da" if da else "en"]
    for key, record in report.milestones.items():
        label = _label(task, key, lang)
        manual = record.evidence.source == "manual"
        detail = record.evidence.subject or record.evidence.note or label
        marks.append(Mark(record.at, eg, label, f"{label}: {detail}",
                          "manual" if manual else "eg"))
        webinar = record.evidence.details.get("start") if key == "webinar_invited" else None
        if webinar:
            with contextlib.suppress(ValueError):
                rules.append(Rule(datetime.fromisoformat(webinar), "Webinar", "webinar"))
    fs = report.followups
    if fs is not None:
        for s in fs.scheduled:
            marks.append(Mark(s.due_at, names.get(s.recipient, s.recipient),
                              f"{_kind_word(s.kind, da)} {'planlagt' if da else 'scheduled'}",
                              s.reason, "scheduled"))
        for o in fs.overdue:
            word = "FORSINKET" if da else "OVERDUE"
            rules.append(Rule(o.deadline, f"{word}: {_label(task, o.milestone, lang)}",
                              "overdue"))
        late = {o.milestone for o in fs.overdue}
        for es in task.followups.escalations:
            if es.milestone in late or es.milestone in report.milestones \
                    or any(m in report.milestones for m in es.unless):
                continue
            deadline = escalation_deadline(task, es, state.outbox, report.milestones)
            if deadline is not None:
                rules.append(Rule(deadline, f"{'Frist' if da else 'Deadline'}: "
                                  f"{_label(task, es.milestone, lang)}", "deadline"))
    lanes = [r.name for r in state.recipients] + [eg]
    times = [m.at for m in marks] + [r.at for r in rules]
    start = min(times) - timedelta(days=1)
    end = max(max(times), report.now) + timedelta(days=1)
    return layout(lanes, marks, rules, start, end, task.followups.calendar.tz, lang)


def _kind_word(kind: Kind | None, da: bool) -> str:
    if kind is Kind.REMINDER:
        return "Påmindelse" if da else "Reminder"
    if kind is Kind.ESCALATION:
        return "Eskalering" if da else "Escalation"
    return "Besked" if da else "Notice"
