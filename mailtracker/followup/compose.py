"""Turn a due follow-up into the outgoing mail: template context, .ics attachment, outbox key.

Context variables of the follow-up templates, on top of the orientation ones (render.py):

======================= ===============================================================
``kind``                ``"event"``, ``"reminder"`` or ``"escalation"``
``milestone``           the event's or escalation's milestone key, or ``None``
``milestone_label``     its label in the mail's language, or ``None``
``evidence_sender``     who sent EG's mail (``kundeservice@eg.dk``), or ``None``
``evidence_subject``    its subject, or ``None``
``evidence_date``       when it arrived, e.g. ``tirsdag den 3. marts 2026 kl. 09.12``
``webinar_start``       e.g. ``onsdag den 15. april 2026 kl. 10.00``, or ``None``
``webinar_date``        e.g. ``onsdag den 15. april 2026``, or ``None``
``webinar_time``        e.g. ``10.00`` (Danish) / ``10:00`` (English), or ``None``
``webinar_timezone``    ``dansk tid`` / ``Danish time``
``join_url``            the join link (Teams), or ``None``
``webinar_updated``     true if an earlier invitation to this recipient was announced
``has_calendar``        true if an .ics is attached
``reminder_number``     1 for the first reminder (0 otherwise)
``orientation_subject`` the subject of the recipient's orientation mail, or ``None``
``orientation_sent``    the date it was sent, e.g. ``mandag den 2. marts 2026``, or ``None``
``working_days``        the number of working days waited before this reminder (or 0)
``deadline``            the escalation's deadline date, or ``None``
``waited``              how long we waited, e.g. ``6 uger`` / ``6 weeks``, or ``None``
``anchor_label``        what we waited from, e.g. ``orienteringen`` / ``the orientation``
``anchor_date``         its date, or ``None``
``next_step``           the missing milestone's next step in the mail's language, or ``None``
======================= ===============================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from mailtracker.app import App
from mailtracker.followup.calendar import format_date, format_datetime, format_time
from mailtracker.followup.definition import ORIENTATION, EscalationDef
from mailtracker.followup.ics import Person, WebinarEntry, fallback_uid, webinar_ics
from mailtracker.followup.schedule import (
    Due,
    Kind,
    escalation_deadline,
    event_start,
    is_event_key,
)
from mailtracker.models import (
    MilestoneRecord,
    Notification,
    NotificationState,
    Recipient,
    notification_key,
)
from mailtracker.outbound.mailbuild import (
    OutgoingMail,
    Roster,
    build_outgoing,
    orientation_context,
)
from mailtracker.task.state import reached_milestones

_SUBJECT_PREFIX = re.compile(r"^(?:(?:opdateret |updated )?invitation|aflyst|annulleret|"
                             r"cancell?ed|canceled|vs|fw|fwd)\s*:\s*", re.I)


def compose(app: App, due: Due, *, everyone: Sequence[Recipient] | Roster,
            notifications: Mapping[str, Notification],
            milestones: Mapping[str, MilestoneRecord], now: datetime) -> OutgoingMail:
    """The mail for ``due``, paired with its outbox document (keyed by ``due.key``).

    A ``pending`` document from an earlier tick keeps its Message-ID. Raises
    ``TemplateError`` if the template is missing or fails to render.
    """
    r = due.recipient
    existing = notifications.get(notification_key(app.task.key, r.key, due.key))
    roster = everyone if isinstance(everyone, Roster) else Roster(
        app, everyone, reached_milestones(milestones, now))
    context = orientation_context(app, r, roster)
    context.update(_followup_context(app, due, notifications, milestones))
    attachments = _attachments(app, due, notifications, milestones, now)
    context["has_calendar"] = bool(attachments)
    mail = build_outgoing(app, r, due.template, existing, resend=False, now=now,
                          everyone=roster, context=context, attachments=attachments)
    return replace(mail, notification=mail.notification.with_(template=due.key))


def _followup_context(app: App, due: Due, notifications: Mapping[str, Notification],
                      milestones: Mapping[str, MilestoneRecord]) -> dict[str, object]:
    lang, tz = due.recipient.lang, app.task.followups.calendar.tz
    ctx: dict[str, object] = dict.fromkeys(
        ("milestone", "milestone_label", "evidence_sender", "evidence_subject",
         "evidence_date", "webinar_start", "webinar_date", "webinar_time", "join_url",
         "orientation_subject", "orientation_sent", "deadline", "waited", "anchor_label",
         "anchor_date", "next_step"))
    ctx.update(kind=due.kind.value, reminder_number=due.number, working_days=0,
               webinar_updated=False, has_calendar=False,
               webinar_timezone="dansk tid" if lang == "da" else "Danish time")
    definition = app.task.milestone(due.milestone) if due.milestone else None
    if definition is not None:
        ctx.update(milestone=definition.key, milestone_label=definition.label(lang),
                   next_step=definition.next_step(lang) or None)
    record = milestones.get(due.milestone) if due.milestone else None
    if due.kind is Kind.EVENT and record is not None:
        ctx.update(_evidence(record, lang, tz))
        ctx.update(_webinar(due, record, milestones, lang, tz))
        ctx["webinar_updated"] = _earlier_invitations(app, due, notifications) > 0
    elif due.kind is Kind.REMINDER:
        ctx.update(_reminder(app, due, notifications, lang, tz))
    elif due.kind is Kind.ESCALATION:
        ctx.update(_escalation(app, due, notifications, milestones, lang, tz))
    return ctx


def _evidence(record: MilestoneRecord, lang: str, tz: ZoneInfo) -> dict[str, object]:
    ev = record.evidence
    return {"evidence_sender": ev.sender, "evidence_subject": ev.subject,
            "evidence_date": format_datetime(record.at, lang, tz)}


def _webinar_record(due: Due, milestones: Mapping[str, MilestoneRecord]
                    ) -> MilestoneRecord | None:
    """The record with the webinar's details: the cancellation's own, else the invitation."""
    record = milestones.get(due.milestone) if due.milestone else None
    if record is not None and event_start(record) is not None:
        return record
    return milestones.get("webinar_invited")


def _webinar(due: Due, record: MilestoneRecord, milestones: Mapping[str, MilestoneRecord],
             lang: str, tz: ZoneInfo) -> dict[str, object]:
    source = _webinar_record(due, milestones) if due.calendar else record
    if source is None:
        return {}
    start = event_start(source)
    out: dict[str, object] = {"join_url": source.evidence.details.get("join_url")}
    if start is not None:
        out.update(webinar_start=format_datetime(start, lang, tz),
                   webinar_date=format_date(start, lang, tz),
                   webinar_time=format_time(start, lang, tz))
    return out


def _earlier_invitations(app: App, due: Due, notifications: Mapping[str, Notification],
                         template: str | None = None) -> int:
    """How many other mails of ``template`` (default: this event's) the recipient was sent.

    For an .ics this is the SEQUENCE: each update to the same UID must count up, and a
    CANCEL must not be older than the last REQUEST it cancels.
    """
    template = template or due.key.partition("@")[0]
    return sum(1 for n in notifications.values()
               if n.task == app.task.key and n.recipient == due.recipient.key
               and n.template != due.key and is_event_key(n.template, template)
               and n.state is NotificationState.SENT)


def _reminder(app: App, due: Due, notifications: Mapping[str, Notification], lang: str,
              tz: ZoneInfo) -> dict[str, object]:
    role = app.task.role(due.recipient.role)
    rd = app.task.followups.reminders
    n = notifications.get(notification_key(app.task.key, due.recipient.key, role.template)
                          ) if role else None
    gap = 0 if rd is None else (rd.after_working_days if due.number == 1
                                else rd.interval_working_days)
    return {"orientation_subject": n.subject if n else None,
            "orientation_sent": format_date(n.sent_at, lang, tz) if n and n.sent_at else None,
            "working_days": gap}


def _escalation(app: App, due: Due, notifications: Mapping[str, Notification],
                milestones: Mapping[str, MilestoneRecord], lang: str,
                tz: ZoneInfo) -> dict[str, object]:
    es = next((e for e in app.task.followups.escalations if e.template == due.key), None)
    if es is None:
        return {}
    deadline = escalation_deadline(app.task, es, notifications, milestones)
    out: dict[str, object] = {"waited": _waited(es, lang),
                              "deadline": format_date(deadline, lang, tz) if deadline else None}
    if es.after == ORIENTATION:
        out["anchor_label"] = "orienteringen" if lang == "da" else "the orientation"
        templates = {r.template for r in app.task.roles}
        sent = [n.sent_at for n in notifications.values() if n.template in templates
                and n.sent_at is not None and n.state is NotificationState.SENT]
        out["anchor_date"] = format_date(min(sent), lang, tz) if sent else None
    elif es.deadline is None:
        anchor = app.task.milestone(es.after)
        label = anchor.label(lang) if anchor else es.after
        out["anchor_label"] = f"»{label}«" if lang == "da" else f"“{label}”"
        record = milestones.get(es.after)
        out["anchor_date"] = format_date(record.at, lang, tz) if record else None
    return out


def _waited(es: EscalationDef, lang: str) -> str | None:
    if es.working_days is not None:
        return f"{es.working_days} " + ("arbejdsdage" if lang == "da" else "working days")
    if es.delay is None:
        return None
    days = es.delay.days
    if days % 7 == 0:
        weeks = days // 7
        return f"{weeks} " + (("uge" if weeks == 1 else "uger") if lang == "da"
                              else ("week" if weeks == 1 else "weeks"))
    return f"{days} " + (("dag" if days == 1 else "dage") if lang == "da"
                         else ("day" if days == 1 else "days"))


def _attachments(app: App, due: Due, notifications: Mapping[str, Notification],
                 milestones: Mapping[str, MilestoneRecord],
                 now: datetime) -> list[tuple[str, str, bytes]]:
    """The .ics for a calendar event, or nothing when the webinar's start is unknown."""
    if due.kind is not Kind.EVENT or due.calendar is None:
        return []
    source = _webinar_record(due, milestones)
    start = event_start(source) if source is not None else None
    if source is None or start is None:
        return []
    invited = milestones.get("webinar_invited") or source
    uid = (source.evidence.details.get("ical_uid") or invited.evidence.details.get("ical_uid")
           or fallback_uid(invited.evidence.message_id or invited.at.isoformat(),
                           _sender_domain(app)))
    lang = due.recipient.lang
    summary = _SUBJECT_PREFIX.sub("", source.evidence.subject or "").strip() or (
        "EG-webinar: eFaktura til KP" if lang == "da" else "EG webinar: eFaktura to KP")
    join = source.evidence.details.get("join_url")
    description = (("Webinar fra EG om eFaktura til KP." if lang == "da"
                    else "EG's webinar about eFaktura to KP.")
                   + (f"\n\n{'Deltag' if lang == 'da' else 'Join'}: {join}" if join else ""))
    smtp = app.settings.sender
    entry = WebinarEntry(
        uid=uid, start=start, duration=timedelta(minutes=due.duration_minutes),
        summary=summary, description=description, join_url=join,
        organizer=Person(smtp.from_name if smtp else app.settings.organisation,
                         smtp.from_address if smtp else "mailtracker@localhost"),
        attendee=Person(due.recipient.name, due.recipient.email),
        sequence=_sequence(app, due, notifications))
    data = webinar_ics(entry, method=due.calendar, stamp=now,
                       timezone=app.task.followups.calendar.timezone)
    # The charset is declared: without it a text/* part is US-ASCII, and "ØS Indsigt" or an
    # attendee's name would reach a standards-following calendar as mojibake.
    return [("webinar.ics", f"text/calendar; method={due.calendar}; charset=utf-8", data)]


def _sequence(app: App, due: Due, notifications: Mapping[str, Notification]) -> int:
    event = next((e for e in app.task.followups.events if e.template == due.template), None)
    if due.calendar == "CANCEL" and event is not None and event.only_notified:
        return _earlier_invitations(app, due, notifications, event.only_notified)
    return _earlier_invitations(app, due, notifications)


def _sender_domain(app: App) -> str:
    smtp = app.settings.sender
    address = smtp.from_address if smtp else "mailtracker@localhost"
    return address.rpartition("@")[2] or "localhost"
