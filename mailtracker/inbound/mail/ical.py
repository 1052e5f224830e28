"""``text/calendar`` parts → ``CalendarEvent`` facts (method, UID, summary, start, join link).

Outlook and Exchange write Windows zone names (``TZID:Romance Standard Time``); those are
mapped to IANA zones. A floating time (no zone) is read as Danish local time, which is what
a Danish municipality's calendar would show.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailtracker.inbound.mail.facts import CalendarEvent

DEFAULT_ZONE = "Europe/Copenhagen"
MAX_EVENTS = 20

# Checked before icalendar's own table, which maps "Romance Standard Time" to Europe/Paris
# (same offsets, but a Danish user expects to read Copenhagen).
_WINDOWS_ZONES = {
    "romance standard time": "Europe/Copenhagen",
    "w. europe standard time": "Europe/Berlin",
    "central europe standard time": "Europe/Budapest",
    "central european standard time": "Europe/Warsaw",
    "gmt standard time": "Europe/London",
    "greenwich standard time": "Atlantic/Reykjavik",
    "utc": "UTC",
    "coordinated universal time": "UTC",
    "fle standard time": "Europe/Helsinki",
    "e. europe standard time": "Europe/Chisinau",
    "greenland standard time": "America/Nuuk",
    "faroe standard time": "Atlantic/Faroe",
    "eastern standard time": "America/New_York",
    "pacific standard time": "America/Los_Angeles",
}
_TEAMS_RE = re.compile(r"https://teams\.microsoft\.com/l/meetup-join/[^\s<>\"'\\]+", re.I)
_HTTPS_RE = re.compile(r"https://[^\s<>\"'\\]+", re.I)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def find_join_url(*texts: str | None) -> str | None:
    """The first Teams meeting link in ``texts`` (in order), or ``None``."""
    for text in texts:
        if text:
            match = _TEAMS_RE.search(text)
            if match:
                return match.group(0).rstrip(".,;)")
    return None


def parse_calendar(text: str, *, method_hint: str | None = None) -> tuple[
        tuple[CalendarEvent, ...], tuple[str, ...]]:
    """The events of one iCalendar text and a list of defects. Never raises.

    ``method_hint`` is the ``method=`` parameter of the part's Content-Type, used when the
    calendar itself has no METHOD.
    """
    try:
        import icalendar  # 30 ms: only when a mail has a calendar part

        cal = icalendar.Calendar.from_ical(text)
    except Exception as exc:  # icalendar raises ValueError, KeyError, … on bad input
        return (), (f"calendar part cannot be parsed: {type(exc).__name__}",)
    defects: list[str] = []
    method = _text(cal.get("METHOD")).upper() or (method_hint or "").upper() or None
    events: list[CalendarEvent] = []
    for component in _events(cal):
        try:
            events.append(_event(component, method, defects))
        except Exception as exc:  # one broken VEVENT must not hide the others
            defects.append(f"calendar event cannot be read: {type(exc).__name__}")
    return tuple(events), tuple(defects)


def _events(cal: Any) -> Iterable[Any]:
    found = [c for c in cal.walk("VEVENT")] if hasattr(cal, "walk") else []
    return found[:MAX_EVENTS]


def _event(component: Any, method: str | None, defects: list[str]) -> CalendarEvent:
    location = _text(component.get("LOCATION"))
    description = _text(component.get("DESCRIPTION"))
    teams = _text(component.get("X-MICROSOFT-SKYPETEAMSMEETINGURL"))
    join = find_join_url(teams, location, description)
    if join is None:
        match = _HTTPS_RE.search(teams) or _HTTPS_RE.search(location)
        join = match.group(0) if match else None
    return CalendarEvent(
        method=method,
        uid=_text(component.get("UID")) or None,
        summary=_text(component.get("SUMMARY")),
        start=_start(component.get("DTSTART"), defects),
        join_url=join,
    )


def _start(prop: Any, defects: list[str]) -> datetime | None:
    if prop is None or not hasattr(prop, "dt"):
        return None
    value = prop.dt
    if isinstance(value, datetime):
        tzid = prop.params.get("TZID") if hasattr(prop, "params") else None
        if tzid:
            zone = resolve_zone(str(tzid))
            if zone is not None:
                return value.replace(tzinfo=zone)
            if value.tzinfo is not None:  # icalendar built the zone from VTIMEZONE
                return value
            defects.append(f"unknown calendar time zone {_clean(str(tzid))[:80]!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=ZoneInfo(DEFAULT_ZONE))
        return value
    if isinstance(value, date):  # an all-day event
        return datetime.combine(value, time(0), tzinfo=ZoneInfo(DEFAULT_ZONE))
    return None


def resolve_zone(tzid: str) -> tzinfo | None:
    """An IANA zone for a TZID: Windows names, IANA names, "UTC"; ``None`` if unknown."""
    name = tzid.strip().strip('"')
    key = name.lower()
    from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

    iana = _WINDOWS_ZONES.get(key) or WINDOWS_TO_OLSON.get(name)
    if iana is None and "/" in name:
        iana = name
    if iana is None:
        return None
    if iana.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # a property given several times
        value = value[0] if value else ""
    try:
        text = str(value)
    except Exception:
        return ""
    return _clean(text)


def _clean(text: str) -> str:
    return " ".join(_CONTROL_RE.sub(" ", text).split())
