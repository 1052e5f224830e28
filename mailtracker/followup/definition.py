"""The follow-up tables of a task definition: ``[schedule]``, ``[[events]]``, ``[reminders]``,
``[[escalations]]`` → frozen dataclasses. Pure; every error names the key.

A task definition without these tables has no follow-ups (and the default calendar).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from mailtracker.errors import TaskDefinitionError
from mailtracker.followup.calendar import (
    DEFAULT_CLOSED_DAYS,
    WEEKDAYS,
    ClosedDay,
    WorkCalendar,
)
from mailtracker.tables import Table

ORIENTED = "oriented"  # audience: every recipient whose orientation was delivered
ORIENTATION = "orientation"  # escalation anchor: the first orientation mail sent
CALENDAR_METHODS = ("REQUEST", "CANCEL")
_TEMPLATE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CLOSED_RE = re.compile(r"^(?:(\d{4})-)?(\d{2})-(\d{2})$")
_CLOSED_NAMES = {(12, 24): "juleaftensdag", (12, 31): "nytårsaftensdag",
                 (5, 1): "1. maj"}


@dataclass(frozen=True, slots=True)
class EventDef:
    """Mail ``template`` to ``to`` once ``milestone`` is reached."""

    milestone: str
    template: str
    to: tuple[str, ...]  # role keys and/or "oriented"
    unless: tuple[str, ...] = ()  # milestones that, recorded since, make the mail pointless
    only_notified: str | None = None  # only to those who got this earlier event mail
    calendar: str | None = None  # attach an .ics with this METHOD (REQUEST or CANCEL)
    duration_minutes: int = 90  # length of the calendar entry (EG's mail gives only a start)


@dataclass(frozen=True, slots=True)
class ReminderDef:
    """Remind unacknowledged recipients ``after_working_days`` after their orientation."""

    template: str = "reminder-orientation"
    after_working_days: int = 5
    max_count: int = 1
    interval_working_days: int = 5  # between one reminder and the next
    roles: tuple[str, ...] = ()  # empty: the required roles
    # role → milestones: once one is recorded, that role's reminder has nothing left to ask
    # (an agreement administrator whose agreement is signed is not asked to sign again)
    unless: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EscalationDef:
    """Tell ``to`` when ``milestone`` has not arrived by the deadline.

    The deadline is ``deadline`` (a fixed date), or ``after`` ("orientation" or a milestone)
    plus ``delay`` (calendar time) or ``working_days``.
    """

    milestone: str
    template: str
    to: tuple[str, ...] = ("kp_owner",)
    unless: tuple[str, ...] = ()  # later milestones that show it arrived (signed ⇒ received)
    after: str = ORIENTATION
    delay: timedelta | None = None
    working_days: int | None = None
    deadline: date | None = None


@dataclass(frozen=True, slots=True)
class Followups:
    """A task's follow-up settings: working calendar, events, reminders, escalations."""

    calendar: WorkCalendar = field(default_factory=WorkCalendar)
    events: tuple[EventDef, ...] = ()
    reminders: ReminderDef | None = None
    escalations: tuple[EscalationDef, ...] = ()


def _reader(table: Any, where: str, path: Path | None) -> Table:
    return Table(table, where, path, TaskDefinitionError)


def _template(r: Table, key: str, default: str | None = None) -> str:
    value = r.req_str(key, default)
    if not _TEMPLATE_RE.match(value):
        raise r.fail(key, f"not a template name: {value!r}")
    return value


def followups_from_mapping(data: Mapping[str, Any], *, roles: Collection[str],
                           milestones: Collection[str], path: Path | None = None) -> Followups:
    """Read the follow-up tables of a task definition. Raises ``TaskDefinitionError``."""
    calendar = _calendar(data.get("schedule", {}), path)
    raw_events = data.get("events", [])
    raw_escalations = data.get("escalations", [])
    for key, value in (("events", raw_events), ("escalations", raw_escalations)):
        if not isinstance(value, list):
            raise TaskDefinitionError("must be an array of tables ([[...]])", path=path, key=key)
    events = tuple(_event(_reader(t, f"events[{i}]", path), roles, milestones)
                   for i, t in enumerate(raw_events))
    event_templates = {e.template for e in events}
    for i, e in enumerate(events):
        if e.only_notified is not None and e.only_notified not in event_templates:
            raise TaskDefinitionError(f"no event with template {e.only_notified!r}", path=path,
                                      key=f"events[{i}].only_notified")
    reminders = None
    if "reminders" in data:
        reminders = _reminders(_reader(data["reminders"], "reminders", path), roles,
                               milestones)
    escalations = tuple(_escalation(_reader(t, f"escalations[{i}]", path), roles, milestones)
                        for i, t in enumerate(raw_escalations))
    return Followups(calendar=calendar, events=events, reminders=reminders,
                     escalations=escalations)


def _calendar(table: Any, path: Path | None) -> WorkCalendar:
    r = _reader(table, "schedule", path)
    r.unknown_keys({"timezone", "working_days", "opens", "closes", "danish_holidays",
                  "closed_days"})
    days = r.names("working_days", WEEKDAYS[:5], WEEKDAYS)
    if not days:
        raise r.fail("working_days", "must name at least one weekday")
    holidays = r.data.get("danish_holidays", True)
    if not isinstance(holidays, bool):
        raise r.fail("danish_holidays", "must be true or false")
    opens, closes = _clock(r, "opens", "08:00"), _clock(r, "closes", "16:00")
    if not opens < closes:
        raise r.fail("closes", "must be later than opens")
    timezone = r.req_str("timezone", "Europe/Copenhagen")
    try:
        return WorkCalendar(timezone=timezone,
                            working_days=frozenset(WEEKDAYS.index(d) for d in days),
                            opens=opens, closes=closes, danish_holidays=holidays,
                            closed_days=_closed_days(r))
    except (ZoneInfoNotFoundError, ValueError):
        raise r.fail("timezone", f"unknown time zone {timezone!r}") from None


def _clock(r: Table, key: str, default: str) -> time:
    value = r.data.get(key, default)
    if isinstance(value, time):  # TOML local time: opens = 08:00
        return value
    try:
        hours, minutes = str(value).split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise r.fail(key, f"not a time of day like \"08:00\": {value!r}") from None


def _closed_days(r: Table) -> tuple[ClosedDay, ...]:
    if "closed_days" not in r.data:
        return DEFAULT_CLOSED_DAYS
    value = r.data["closed_days"]
    if not isinstance(value, list):
        raise r.fail("closed_days", 'must be a list like ["12-24", "2026-05-15"]')
    out = []
    for item in value:
        if isinstance(item, date) and not isinstance(item, datetime):
            out.append(ClosedDay(item.month, item.day, item.year))
            continue
        match = _CLOSED_RE.match(str(item))
        try:
            if match is None:
                raise ValueError
            year = int(match[1]) if match[1] else None
            date(year or 2024, int(match[2]), int(match[3]))  # 2024: a leap year allows 02-29
        except ValueError:
            raise r.fail("closed_days", f'not "MM-DD" or "YYYY-MM-DD": {item!r}') from None
        month, day = int(match[2]), int(match[3])
        label = "" if year else _CLOSED_NAMES.get((month, day), "")
        out.append(ClosedDay(month, day, year, label))
    return tuple(out)


def _event(r: Table, roles: Collection[str], milestones: Collection[str]) -> EventDef:
    r.unknown_keys({"milestone", "template", "to", "unless", "only_notified", "calendar",
                  "duration_minutes"})
    milestone = r.names("milestone", (), milestones)
    if len(milestone) != 1:
        raise r.fail("milestone", "must name one milestone")
    to = r.names("to", (), {*roles, ORIENTED})
    if not to:
        raise r.fail("to", f"must name at least one role (or {ORIENTED!r})")
    method = r.data.get("calendar")
    if method is not None and (not isinstance(method, str)
                               or method.upper() not in CALENDAR_METHODS):
        raise r.fail("calendar", f"must be one of {', '.join(CALENDAR_METHODS)}")
    only = _template(r, "only_notified") if "only_notified" in r.data else None
    return EventDef(milestone=milestone[0],
                    template=_template(r, "template", f"event-{milestone[0]}"),
                    to=to, unless=r.names("unless", (), milestones), only_notified=only,
                    calendar=method.upper() if isinstance(method, str) else None,
                    duration_minutes=r.integer("duration_minutes", 90, 1))


def _reminders(r: Table, roles: Collection[str], milestones: Collection[str]) -> ReminderDef:
    r.unknown_keys({"template", "after_working_days", "max_count", "interval_working_days",
                  "roles", "unless"})
    unless: dict[str, tuple[str, ...]] = {}
    if "unless" in r.data:
        table = _reader(r.data["unless"], f"{r.where}.unless", r.path)
        table.unknown_keys(roles)
        unless = {role: table.names(role, (), milestones) for role in table.data}
    return ReminderDef(template=_template(r, "template", "reminder-orientation"),
                       after_working_days=r.integer("after_working_days", 5, 1),
                       max_count=r.integer("max_count", 1, 0),
                       interval_working_days=r.integer("interval_working_days", 5, 1),
                       roles=r.names("roles", (), roles), unless=unless)


def _escalation(r: Table, roles: Collection[str],
                milestones: Collection[str]) -> EscalationDef:
    r.unknown_keys({"milestone", "template", "to", "unless", "after", "days", "weeks",
                  "working_days", "deadline"})
    milestone = r.names("milestone", (), milestones)
    if len(milestone) != 1:
        raise r.fail("milestone", "must name one milestone")
    given = [k for k in ("days", "weeks", "working_days", "deadline") if k in r.data]
    if len(given) != 1:
        raise r.fail("deadline", "give exactly one of days, weeks, working_days or deadline")
    deadline = r.data.get("deadline")
    if deadline is not None and (not isinstance(deadline, date)
                                 or isinstance(deadline, datetime)):
        raise r.fail("deadline", "must be a date like 2026-06-30")
    delay = None
    if "days" in r.data:
        delay = timedelta(days=r.integer("days", None, 1))
    elif "weeks" in r.data:
        delay = timedelta(weeks=r.integer("weeks", None, 1))
    working_days = r.integer("working_days", None, 1) if "working_days" in r.data else None
    after = r.names("after", (ORIENTATION,), {*milestones, ORIENTATION})
    if len(after) != 1:
        raise r.fail("after", f"must name one milestone or {ORIENTATION!r}")
    to = r.names("to", ("kp_owner",), roles) if "kp_owner" in roles or "to" in r.data else ()
    if not to:
        raise r.fail("to", "must name at least one role")
    return EscalationDef(milestone=milestone[0],
                         template=_template(r, "template", f"escalation-{milestone[0]}"),
                         to=to, unless=r.names("unless", (), milestones), after=after[0],
                         delay=delay, working_days=working_days,
                         deadline=deadline)
