"""The webinar as an iCalendar attachment (``.ics``, RFC 5545/5546), built with ``icalendar``.

The entry carries EG's UID, so a calendar that already holds EG's own invitation updates that
entry instead of showing the webinar twice, and a CANCEL with the same UID removes it again.
DTSTART is written in the calendar's local zone (``TZID=Europe/Copenhagen``) with a compact
VTIMEZONE, the form Outlook and Exchange write themselves. RSVP is off: the attendee is not
asked to answer us (EG runs the webinar, not the municipality).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

from mailtracker import __version__

PRODID = f"-//mailtracker//mailtracker {__version__}//DA"
COPENHAGEN = "Europe/Copenhagen"


@dataclass(frozen=True)
class Person:
    name: str
    email: str


@dataclass(frozen=True)
class WebinarEntry:
    """What the calendar entry says. ``start`` must be timezone-aware."""

    uid: str
    start: datetime
    duration: timedelta
    summary: str
    description: str
    join_url: str | None
    organizer: Person
    attendee: Person
    sequence: int = 0


def fallback_uid(message_id: str, domain: str) -> str:
    """A stable UID for an invitation that came without a calendar part."""
    digest = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:32]
    return f"{digest}@{domain}"


def webinar_ics(entry: WebinarEntry, *, method: str, stamp: datetime,
                timezone: str = COPENHAGEN) -> bytes:
    """The ``.ics`` bytes: METHOD ``REQUEST`` (add or update) or ``CANCEL`` (remove)."""
    method = method.upper()
    if method not in ("REQUEST", "CANCEL"):
        raise ValueError(f"unsupported calendar method {method!r}")
    if entry.start.tzinfo is None or stamp.tzinfo is None:
        raise ValueError("start and stamp must be timezone-aware")
    zone = ZoneInfo(timezone)
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", method)
    if timezone == COPENHAGEN:
        cal.add_component(_copenhagen_vtimezone())
    cal.add_component(_event(entry, method, stamp, zone))
    if timezone != COPENHAGEN:
        cal.add_missing_timezones()
    data: bytes = cal.to_ical()
    return data


def _event(entry: WebinarEntry, method: str, stamp: datetime, zone: ZoneInfo) -> Any:
    start = entry.start.astimezone(zone)
    event = icalendar.Event()
    event.add("uid", _clean(entry.uid))
    event.add("sequence", entry.sequence)
    event.add("dtstamp", stamp.astimezone(UTC))
    event.add("dtstart", start)
    event.add("dtend", start + entry.duration)
    event.add("summary", _clean(entry.summary))
    event.add("description", entry.description)
    if entry.join_url:
        event.add("location", _clean(entry.join_url))
        event.add("url", _clean(entry.join_url))
        if "teams.microsoft.com" in entry.join_url:
            event.add("x-microsoft-skypeteamsmeetingurl", _clean(entry.join_url))
    event.add("organizer", _address(entry.organizer, role=None))
    event.add("attendee", _address(entry.attendee, role="REQ-PARTICIPANT"))
    event.add("status", "CANCELLED" if method == "CANCEL" else "CONFIRMED")
    event.add("transp", "OPAQUE")
    event.add("class", "PUBLIC")
    return event


def _address(person: Person, *, role: str | None) -> Any:
    address = icalendar.vCalAddress(f"mailto:{_clean(person.email)}")
    if person.name:
        address.params["CN"] = _clean(person.name)
    if role is not None:
        address.params["ROLE"] = role
        address.params["PARTSTAT"] = "NEEDS-ACTION"
        address.params["RSVP"] = "FALSE"
    return address


def _copenhagen_vtimezone() -> Any:
    """Europe/Copenhagen by the EU rule (last Sunday of March and of October), since 1996."""
    tz = icalendar.Timezone()
    tz.add("tzid", COPENHAGEN)
    for kind, name, offset_from, offset_to, month, dtstart in (
            (icalendar.TimezoneDaylight, "CEST", 1, 2, 3, datetime(1970, 3, 29, 2, 0)),
            (icalendar.TimezoneStandard, "CET", 2, 1, 10, datetime(1970, 10, 25, 3, 0))):
        part = kind()
        part.add("tzname", name)
        part.add("tzoffsetfrom", timedelta(hours=offset_from))
        part.add("tzoffsetto", timedelta(hours=offset_to))
        part.add("dtstart", dtstart)
        part.add("rrule", {"freq": "yearly", "bymonth": month, "byday": "-1su"})
        tz.add_component(part)
    return tz


def _clean(text: str) -> str:
    """One line: control characters (a CR/LF from a hostile mail) become spaces."""
    return " ".join("".join(" " if unicodedata.category(c) in {"Cc", "Zl", "Zp"} else c
                            for c in text).split())
