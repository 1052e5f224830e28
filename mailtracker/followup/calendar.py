"""Working days and working hours in Denmark: weekends, public holidays, extra closed days. Pure.

Danish public holidays (*helligdage*) follow Easter: skærtorsdag, langfredag, påskedag,
2. påskedag, Kristi himmelfartsdag, pinsedag and 2. pinsedag; the fixed ones are nytårsdag,
grundlovsdag (5 June; not a *helligdag* by law, but public offices close), juledag and
2. juledag. Store bededag (the fourth Friday after Easter) was abolished from 2024, so it is a
holiday up to and including 2023 only. Days such as 24 and 31 December, when the town hall
is closed without it being a holiday, are configured as extra closed days.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
LAST_STORE_BEDEDAG = 2023  # abolished by law from 2024
_MAX_SEARCH_DAYS = 3660  # a calendar with no working day in ten years is a configuration error


def easter_sunday(year: int) -> date:
    """Easter Sunday of the Gregorian calendar (the anonymous Meeus/Jones/Butcher algorithm)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    leap = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * leap) // 451
    month, day = divmod(h + leap - 7 * m + 114, 31)
    return date(year, month, day + 1)


def danish_public_holidays(year: int) -> dict[date, str]:
    """The Danish public holidays of ``year``: date → Danish name."""
    easter = easter_sunday(year)

    def rel(days: int) -> date:
        return easter + timedelta(days=days)

    holidays = {
        date(year, 1, 1): "nytårsdag",
        rel(-3): "skærtorsdag",
        rel(-2): "langfredag",
        easter: "påskedag",
        rel(1): "2. påskedag",
        rel(39): "Kristi himmelfartsdag",
        rel(49): "pinsedag",
        rel(50): "2. pinsedag",
        date(year, 6, 5): "grundlovsdag",
        date(year, 12, 25): "juledag",
        date(year, 12, 26): "2. juledag",
    }
    if year <= LAST_STORE_BEDEDAG:
        holidays[rel(26)] = "store bededag"
    return holidays


@dataclass(frozen=True, slots=True)
class ClosedDay:
    """An extra closed day: every year on ``month``/``day``, or only in ``year`` if given."""

    month: int
    day: int
    year: int | None = None
    label: str = ""

    def matches(self, d: date) -> bool:
        return d.month == self.month and d.day == self.day and self.year in (None, d.year)

    def describe(self) -> str:
        when = (f"{self.year:04d}-" if self.year else "") + f"{self.month:02d}-{self.day:02d}"
        return self.label or f"closed day {when}"


DEFAULT_CLOSED_DAYS = (ClosedDay(12, 24, label="juleaftensdag"),
                       ClosedDay(12, 31, label="nytårsaftensdag"))


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """When mail may go out: working days (``0`` = Monday) between ``opens`` and ``closes``
    local time in ``timezone``, except public holidays and ``closed_days``."""

    timezone: str = "Europe/Copenhagen"
    working_days: frozenset[int] = frozenset(range(5))
    opens: time = time(8, 0)
    closes: time = time(16, 0)
    danish_holidays: bool = True
    closed_days: tuple[ClosedDay, ...] = field(default=DEFAULT_CLOSED_DAYS)

    def __post_init__(self) -> None:
        if not self.working_days or not self.working_days <= set(range(7)):
            raise ValueError("working_days must name at least one weekday")
        if not self.opens < self.closes:
            raise ValueError("opens must be before closes")
        ZoneInfo(self.timezone)  # raises for an unknown zone

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local(self, at: datetime) -> datetime:
        """``at`` in the calendar's time zone. Raises ``ValueError`` for a naive datetime."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("a timezone-aware datetime is required")
        return at.astimezone(self.tz)

    def closed_reason(self, d: date) -> str | None:
        """Why ``d`` is not a working day (e.g. ``"Saturday"``, ``"2. påskedag"``), or None."""
        if d.weekday() not in self.working_days:
            return _WEEKDAY_NAMES[d.weekday()]
        if self.danish_holidays:
            name = danish_public_holidays(d.year).get(d)
            if name:
                return name
        for closed in self.closed_days:
            if closed.matches(d):
                return closed.describe()
        return None

    def is_working_day(self, d: date) -> bool:
        return self.closed_reason(d) is None

    def is_open(self, at: datetime) -> bool:
        """True if ``at`` falls on a working day within working hours."""
        local = self.local(at)
        return (self.is_working_day(local.date())
                and self.opens <= local.time().replace(tzinfo=None) < self.closes)

    def next_working_day(self, d: date) -> date:
        """The first working day after ``d``."""
        for offset in range(1, _MAX_SEARCH_DAYS):
            candidate = d + timedelta(days=offset)
            if self.is_working_day(candidate):
                return candidate
        raise ValueError("no working day found in ten years: check the calendar settings")

    def _at(self, d: date, t: time) -> datetime:
        return datetime.combine(d, t, tzinfo=self.tz)

    def next_opening(self, at: datetime) -> datetime:
        """``at`` itself if the office is open then, else the next moment it opens."""
        local = self.local(at)
        d, t = local.date(), local.time().replace(tzinfo=None)
        if self.is_working_day(d):
            if t < self.opens:
                return self._at(d, self.opens)
            if t < self.closes:
                return local
        return self._at(self.next_working_day(d), self.opens)

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """The moment ``days`` whole working days after ``start``.

        ``start`` outside working hours counts from the next opening, so a mail sent on
        Saturday is "one working day old" on Tuesday at 08:00. The result keeps the local time
        of day and always lies within working hours.
        """
        if days < 0:
            raise ValueError("days must not be negative")
        begin = self.next_opening(start)
        d = begin.date()
        for _ in range(days):
            d = self.next_working_day(d)
        return self._at(d, begin.time().replace(tzinfo=None))


_DA_DAYS = ("mandag", "tirsdag", "onsdag", "torsdag", "fredag", "lørdag", "søndag")
_DA_MONTHS = ("januar", "februar", "marts", "april", "maj", "juni", "juli", "august",
              "september", "oktober", "november", "december")
_EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")


def format_date(at: datetime, lang: str, tz: ZoneInfo) -> str:
    """``onsdag den 15. april 2026`` / ``Wednesday 15 April 2026`` in ``tz``."""
    local = at.astimezone(tz)
    if lang == "da":
        return (f"{_DA_DAYS[local.weekday()]} den {local.day}. "
                f"{_DA_MONTHS[local.month - 1]} {local.year}")
    return f"{_EN_DAYS[local.weekday()]} {local.day} {_EN_MONTHS[local.month - 1]} {local.year}"


def format_time(at: datetime, lang: str, tz: ZoneInfo) -> str:
    """``10.00`` (Danish usage) / ``10:00``."""
    return at.astimezone(tz).strftime("%H.%M" if lang == "da" else "%H:%M")


def format_datetime(at: datetime, lang: str, tz: ZoneInfo) -> str:
    joiner = " kl. " if lang == "da" else " at "
    return format_date(at, lang, tz) + joiner + format_time(at, lang, tz)
