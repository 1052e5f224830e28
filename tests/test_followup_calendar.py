"""Working days, working hours and Danish public holidays (pure; no clock, no servers)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailtracker.errors import TaskDefinitionError
from mailtracker.followup.calendar import (
    ClosedDay,
    WorkCalendar,
    danish_public_holidays,
    easter_sunday,
)
from mailtracker.followup.definition import followups_from_mapping

CPH = ZoneInfo("Europe/Copenhagen")
CAL = WorkCalendar()


def cph(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=CPH)


@pytest.mark.parametrize(("year", "easter"), [
    (2019, date(2019, 4, 21)), (2023, date(2023, 4, 9)), (2024, date(2024, 3, 31)),
    (2025, date(2025, 4, 20)), (2026, date(2026, 4, 5)), (2027, date(2027, 3, 28)),
    (2038, date(2038, 4, 25)),  # the latest possible date
    (2285, date(2285, 3, 22)),  # the earliest possible date
])
def test_easter_sunday(year: int, easter: date) -> None:
    assert easter_sunday(year) == easter


def test_danish_public_holidays_2026() -> None:
    assert danish_public_holidays(2026) == {
        date(2026, 1, 1): "nytårsdag",
        date(2026, 4, 2): "skærtorsdag",
        date(2026, 4, 3): "langfredag",
        date(2026, 4, 5): "påskedag",
        date(2026, 4, 6): "2. påskedag",
        date(2026, 5, 14): "Kristi himmelfartsdag",
        date(2026, 5, 24): "pinsedag",
        date(2026, 5, 25): "2. pinsedag",
        date(2026, 6, 5): "grundlovsdag",
        date(2026, 12, 25): "juledag",
        date(2026, 12, 26): "2. juledag",
    }


def test_store_bededag_is_a_holiday_up_to_2023_only() -> None:
    assert danish_public_holidays(2023)[date(2023, 5, 5)] == "store bededag"
    assert date(2024, 4, 26) not in danish_public_holidays(2024)  # would have been its day
    assert "store bededag" not in danish_public_holidays(2026).values()
    assert CAL.is_working_day(date(2024, 4, 26))
    assert CAL.closed_reason(date(2023, 5, 5)) == "store bededag"


@pytest.mark.parametrize(("day", "reason"), [
    (date(2026, 5, 16), "Saturday"),
    (date(2026, 5, 17), "Sunday"),
    (date(2026, 5, 14), "Kristi himmelfartsdag"),
    (date(2026, 4, 6), "2. påskedag"),
    (date(2026, 6, 5), "grundlovsdag"),
    (date(2026, 12, 24), "juleaftensdag"),
    (date(2026, 12, 31), "nytårsaftensdag"),
    (date(2026, 5, 15), None),  # the Friday after Kristi himmelfartsdag is a working day
    (date(2026, 12, 23), None),
])
def test_closed_reason(day: date, reason: str | None) -> None:
    assert CAL.closed_reason(day) == reason


@pytest.mark.parametrize(("at", "is_open"), [
    (cph(2026, 5, 18, 7, 59), False),
    (cph(2026, 5, 18, 8, 0), True),
    (cph(2026, 5, 18, 15, 59), True),
    (cph(2026, 5, 18, 16, 0), False),
    (cph(2026, 5, 16, 10, 0), False),  # Saturday
    (cph(2026, 5, 14, 10, 0), False),  # Kristi himmelfartsdag
    (datetime(2026, 5, 18, 6, 30, tzinfo=UTC), True),  # 08:30 in Copenhagen (summer time)
    (datetime(2026, 1, 12, 7, 30, tzinfo=UTC), True),  # 08:30 in Copenhagen (winter time)
    (datetime(2026, 1, 12, 15, 30, tzinfo=UTC), False),  # 16:30 in Copenhagen
])
def test_is_open_in_copenhagen_working_hours(at: datetime, is_open: bool) -> None:
    assert CAL.is_open(at) is is_open


def test_next_opening_skips_evening_weekend_and_holiday() -> None:
    assert CAL.next_opening(cph(2026, 5, 13, 17, 0)) == cph(2026, 5, 15, 8, 0)  # Thu is a holiday
    assert CAL.next_opening(cph(2026, 5, 15, 16, 0)) == cph(2026, 5, 18, 8, 0)
    assert CAL.next_opening(cph(2026, 5, 18, 6, 0)) == cph(2026, 5, 18, 8, 0)
    assert CAL.next_opening(cph(2026, 5, 18, 9, 15)) == cph(2026, 5, 18, 9, 15)
    assert CAL.next_opening(cph(2026, 4, 1, 16, 30)) == cph(2026, 4, 7, 8, 0)  # Easter
    assert CAL.next_opening(cph(2026, 12, 23, 16, 0)) == cph(2026, 12, 28, 8, 0)  # Christmas


def test_add_working_days_skips_weekends_and_holidays_and_keeps_the_hour() -> None:
    sent = cph(2026, 5, 8, 10, 0)  # Friday
    assert CAL.add_working_days(sent, 1) == cph(2026, 5, 11, 10, 0)
    # 11, 12, 13, (14 Kristi himmelfartsdag), 15, (weekend), 18
    assert CAL.add_working_days(sent, 5) == cph(2026, 5, 18, 10, 0)
    assert CAL.add_working_days(sent, 0) == sent


def test_add_working_days_from_outside_hours_counts_from_the_next_opening() -> None:
    assert CAL.add_working_days(cph(2026, 5, 16, 12, 0), 1) == cph(2026, 5, 19, 8, 0)
    assert CAL.add_working_days(cph(2026, 5, 18, 20, 0), 1) == cph(2026, 5, 20, 8, 0)


def test_add_working_days_across_the_change_to_summer_time() -> None:
    # Summer time starts Sunday 29 March 2026: the local hour stays 10:00, the UTC hour moves.
    before = cph(2026, 3, 27, 10, 0)
    after = CAL.add_working_days(before, 1)
    assert after == cph(2026, 3, 30, 10, 0)
    assert after.utcoffset() == timedelta(hours=2) and before.utcoffset() == timedelta(hours=1)


def test_configured_hours_days_and_closed_days() -> None:
    cal = WorkCalendar(working_days=frozenset({0, 1, 2, 3}), opens=time(9), closes=time(15),
                       danish_holidays=False, closed_days=(ClosedDay(5, 15, 2026),))
    assert not cal.is_open(cph(2026, 5, 22, 10))  # Friday is not a working day here
    assert cal.is_open(cph(2026, 5, 14, 10))  # holidays switched off
    assert not cal.is_open(cph(2026, 5, 18, 8, 30))
    assert not cal.is_working_day(date(2026, 5, 15))
    assert cal.is_working_day(date(2027, 5, 15)) is False  # a Saturday
    assert cal.is_working_day(date(2025, 5, 15))  # only 2026's 15 May is closed


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CAL.is_open(datetime(2026, 5, 18, 10, 0))


def _definition(schedule: dict[str, object]) -> None:
    followups_from_mapping({"schedule": schedule}, roles=set(), milestones=set(),
                           path=Path("t.toml"))


@pytest.mark.parametrize(("schedule", "key"), [
    ({"working_days": ["mon", "funday"]}, "schedule.working_days"),
    ({"working_days": []}, "schedule.working_days"),
    ({"opens": "8 o'clock"}, "schedule.opens"),
    ({"opens": "17:00"}, "schedule.closes"),
    ({"timezone": "Europe/Kastrup"}, "schedule.timezone"),
    ({"closed_days": ["24/12"]}, "schedule.closed_days"),
    ({"closed_days": ["02-30"]}, "schedule.closed_days"),
    ({"danish_holidays": "yes"}, "schedule.danish_holidays"),
    ({"holidays": True}, "schedule.holidays"),
])
def test_schedule_errors_name_the_key(schedule: dict[str, object], key: str) -> None:
    with pytest.raises(TaskDefinitionError) as err:
        _definition(schedule)
    assert key in str(err.value) and "t.toml" in str(err.value)


moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31),
                       timezones=st.just(UTC))


@given(moments)
def test_next_opening_is_open_and_never_earlier(at: datetime) -> None:
    opening = CAL.next_opening(at)
    assert opening >= at and CAL.is_open(opening)
    if CAL.is_open(at):
        assert opening == at
    # Nothing in between was open: the opening is the first one.
    if opening > at:
        probe = at
        while probe < opening:
            assert not CAL.is_open(probe)
            probe += timedelta(minutes=30)


@given(moments, st.integers(min_value=0, max_value=30))
def test_add_working_days_lands_on_an_open_moment_n_working_days_on(at: datetime,
                                                                    n: int) -> None:
    result = CAL.add_working_days(at, n)
    assert CAL.is_open(result) and result >= at
    start = CAL.next_opening(at)
    days = start.date()
    working = 0
    while days < CAL.local(result).date():
        days += timedelta(days=1)
        working += CAL.is_working_day(days)
    assert working == n
