"""The follow-up schedule is a pure function of the stored state and ``now``.

Each test builds a state by hand, sets the clock and asks what is due — then "sends" it by
adding the outbox document a delivery would write and asks again, as a restart would.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from mailtracker.errors import TaskDefinitionError
from mailtracker.followup.definition import Followups, followups_from_mapping
from mailtracker.followup.schedule import FollowupPlan, Kind, plan_followups
from mailtracker.models import (
    DeliveryState,
    Evidence,
    MilestoneRecord,
    Notification,
    NotificationState,
    Recipient,
    notification_key,
)
from mailtracker.resources import data_dir
from mailtracker.settings.taskdef import TaskDefinition, load_task

CPH = ZoneInfo("Europe/Copenhagen")
TASK = load_task(data_dir("config") / "tasks" / "efaktura-8b.toml")
SOEREN = Recipient("soeren@kommune.example", "Søren Ærø-Åse", "system_owner")
BJOERN = Recipient("bjoern.hansen@kommune.example", "Hansen, Bjørn", "agreement_admin")
AASE = Recipient("aase.oeberg@kommune.example", "Åse Øberg", "oeir_coordinator")
FINANCE = Recipient("oekonomi@kommune.example", "Økonomi", "finance")
KAREN = Recipient("karen@kommune.example", "Karen Pedersen", "kp_owner")
EVERYONE = [SOEREN, BJOERN, AASE, FINANCE, KAREN]
WEBINAR = {"start": "2026-06-10T10:00:00+02:00", "ical_uid": "040000008200E00074C5B7101A82E008",
           "join_url": "https://teams.microsoft.com/l/meetup-join/19%3ameeting_x"}


def cph(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=CPH)


@dataclass
class World:
    """A stored state to schedule from; ``send`` records what a delivery would."""

    task: TaskDefinition = TASK
    recipients: list[Recipient] = field(default_factory=lambda: list(EVERYONE))
    outbox: dict[str, Notification] = field(default_factory=dict)
    milestones: dict[str, MilestoneRecord] = field(default_factory=dict)

    def put(self, recipient: Recipient, template: str, **fields: Any) -> Notification:
        n = Notification(self.task.key, recipient.key, template, f"<{len(self.outbox)}@k>",
                         **fields)
        self.outbox[n.key] = n
        return n

    def orient(self, at: datetime, *who: Recipient, **fields: Any) -> None:
        for r in who or self.recipients:
            role = self.task.role(r.role)
            assert role is not None
            self.put(r, role.template, state=fields.pop("state", NotificationState.SENT),
                     created_at=at, sent_at=at, **fields)

    def reach(self, name: str, at: datetime, **details: str) -> None:
        self.milestones[name] = MilestoneRecord(name, at, Evidence(
            "mail", f"<{name}@eg.dk>", "kundeservice@eg.dk", f"Mail om {name}",
            details=dict(details)))

    def plan(self, now: datetime) -> FollowupPlan:
        return plan_followups(self.task, self.recipients, self.outbox, self.milestones, now)

    def due(self, now: datetime, kind: Kind | None = None) -> list[tuple[str, str, str]]:
        """(kind, key, recipient) of what is due, optionally of one kind only."""
        return [(d.kind.value, d.key, d.recipient.email) for d in self.plan(now).due
                if kind is None or d.kind is kind]

    def send(self, now: datetime, kind: Kind | None = None,
             state: NotificationState = NotificationState.SENT) -> int:
        """Deliver what is due at ``now`` (of ``kind``) with ``state``; returns how many."""
        due = [d for d in self.plan(now).due if kind is None or d.kind is kind]
        for d in due:
            self.put(d.recipient, d.key, state=state, created_at=now,
                     sent_at=now if state is NotificationState.SENT else None)
        return len(due)

    def ack(self, recipient: Recipient, template: str, at: datetime) -> None:
        key = notification_key(self.task.key, recipient.key, template)
        self.outbox[key] = self.outbox[key].with_(acknowledged_at=at)


def with_followups(**tables: Any) -> TaskDefinition:
    followups = followups_from_mapping(
        {**TASK.raw, **tables}, roles={r.key for r in TASK.roles},
        milestones={m.key for m in TASK.milestones}, path=Path("custom.toml"))
    return replace(TASK, followups=followups)


# ------------------------------------------------------------------------------- reminders


def test_reminder_is_due_five_working_days_after_the_orientation_not_before() -> None:
    w = World()
    w.orient(cph(2026, 5, 8, 10, 0))  # Friday; Thursday 14 May is Kristi himmelfartsdag
    assert w.due(cph(2026, 5, 18, 9, 59)) == []
    scheduled = {s.recipient: s.due_at for s in w.plan(cph(2026, 5, 11, 9)).scheduled
                 if s.kind is Kind.REMINDER}
    assert scheduled == {r.email: cph(2026, 5, 18, 10, 0) for r in (SOEREN, BJOERN, AASE)}
    due = w.due(cph(2026, 5, 18, 10, 0))
    assert due == [("reminder", "reminder-orientation-1", r.email) for r in (SOEREN, BJOERN, AASE)]


def test_holiday_is_not_counted_as_a_working_day() -> None:
    w = World()
    w.orient(cph(2026, 5, 11, 10, 0))  # Monday; 12, 13, (14), 15, 18, 19
    assert w.due(cph(2026, 5, 18, 12, 0)) == []
    assert len(w.due(cph(2026, 5, 19, 10, 0))) == 3


@pytest.mark.parametrize("now", [
    cph(2026, 5, 9, 10, 0),  # Saturday after the due moment
    cph(2026, 5, 10, 12, 0),  # Sunday
    cph(2026, 5, 8, 16, 0),  # closing time on the due day
    cph(2026, 5, 11, 7, 59),  # Monday before opening
])
def test_no_reminder_outside_working_hours_even_when_it_is_late(now: datetime) -> None:
    w = World()
    w.orient(cph(2026, 5, 1, 10, 0))  # due Friday 8 May 10:00
    assert w.due(now) == []
    assert {s.due_at for s in w.plan(now).scheduled if s.kind is Kind.REMINDER} == {
        cph(2026, 5, 11, 8, 0)}


def test_no_reminder_on_a_public_holiday_then_at_the_next_opening() -> None:
    w = World()
    w.orient(cph(2026, 4, 1, 15, 0), SOEREN)  # Wednesday before Easter
    # 1 working day: Tue 7 April (2-6 April: skærtorsdag, langfredag, weekend, 2. påskedag)
    w.task = with_followups(reminders={"after_working_days": 1, "max_count": 1})
    assert w.due(cph(2026, 4, 2, 15, 0)) == []  # skærtorsdag
    assert w.due(cph(2026, 4, 6, 15, 0)) == []  # 2. påskedag
    assert w.due(cph(2026, 4, 7, 14, 59)) == []
    assert w.due(cph(2026, 4, 7, 15, 0)) == [("reminder", "reminder-orientation-1",
                                              SOEREN.email)]


def test_no_reminder_after_acknowledgement() -> None:
    w = World()
    w.orient(cph(2026, 5, 8, 10, 0))
    w.ack(SOEREN, "orientation-system_owner", cph(2026, 5, 9, 9, 0))
    emails = [e for _, _, e in w.due(cph(2026, 5, 18, 10, 0))]
    assert emails == [BJOERN.email, AASE.email]
    assert SOEREN.email not in {s.recipient for s in w.plan(cph(2026, 5, 11, 9)).scheduled}


def test_a_reply_to_the_reminder_stops_further_reminders() -> None:
    w = World(recipients=[SOEREN])
    w.task = with_followups(reminders={"max_count": 3, "interval_working_days": 2})
    w.orient(cph(2026, 5, 8, 10, 0))
    assert w.send(cph(2026, 5, 18, 10, 0)) == 1
    w.ack(SOEREN, "reminder-orientation-1", cph(2026, 5, 18, 11, 0))
    assert w.due(cph(2026, 6, 30, 10, 0)) == []


def test_reminders_stop_at_the_maximum_and_follow_the_interval() -> None:
    w = World(recipients=[SOEREN])
    w.task = with_followups(reminders={"max_count": 2, "after_working_days": 5,
                                       "interval_working_days": 3})
    w.orient(cph(2026, 5, 8, 10, 0))
    assert w.send(cph(2026, 5, 18, 11, 30)) == 1  # reminder 1, sent late at 11:30
    assert w.due(cph(2026, 5, 21, 11, 29)) == []
    assert w.due(cph(2026, 5, 21, 11, 30)) == [("reminder", "reminder-orientation-2",
                                                SOEREN.email)]
    assert w.send(cph(2026, 5, 21, 11, 30)) == 1
    assert w.due(cph(2026, 12, 1, 10, 0)) == []


def test_restart_neither_repeats_nor_skips_a_reminder() -> None:
    w = World()
    w.orient(cph(2026, 5, 8, 10, 0))
    # Nothing ran for a week after the due moment: the reminder goes out at the next tick.
    assert w.send(cph(2026, 5, 26, 9, 0)) == 3
    # A restart at the same moment, or any later one, plans no more reminders.
    assert w.due(cph(2026, 5, 26, 9, 0)) == []
    assert w.due(cph(2026, 9, 1, 9, 0), Kind.REMINDER) == []


def test_deferred_reminder_is_retried_and_failed_one_is_not() -> None:
    w = World(recipients=[SOEREN, BJOERN])
    w.orient(cph(2026, 5, 8, 10, 0))
    w.put(SOEREN, "reminder-orientation-1", state=NotificationState.PENDING)  # 4xx last time
    w.put(BJOERN, "reminder-orientation-1", state=NotificationState.FAILED)
    assert w.due(cph(2026, 5, 18, 10, 0)) == [("reminder", "reminder-orientation-1",
                                               SOEREN.email)]


def test_no_reminder_when_orientation_bounced_failed_or_role_not_reminded() -> None:
    w = World()
    w.orient(cph(2026, 5, 8, 10, 0), SOEREN, delivery=DeliveryState.BOUNCED)
    w.orient(cph(2026, 5, 8, 10, 0), BJOERN, state=NotificationState.FAILED)
    w.orient(cph(2026, 5, 8, 10, 0), FINANCE, KAREN)
    assert w.due(cph(2026, 5, 18, 10, 0)) == []  # Åse was never oriented


# ------------------------------------------------------------------------------- events


def test_agreement_event_goes_to_the_agreement_admin_once() -> None:
    w = World()
    w.orient(cph(2026, 3, 2, 9, 0))
    w.reach("service_agreement_received", datetime(2026, 3, 20, 8, 0, tzinfo=UTC))
    now = cph(2026, 3, 21, 22, 0)  # a Saturday night: event mail does not wait for hours
    assert w.due(now) == [("event", "event-service_agreement_received", BJOERN.email)]
    w.send(now)
    assert w.due(now) == [] and w.due(cph(2026, 4, 1, 10), Kind.EVENT) == []


def test_agreement_event_is_pointless_once_signed() -> None:
    w = World()
    w.reach("service_agreement_received", datetime(2026, 3, 20, 8, 0, tzinfo=UTC))
    w.reach("service_agreement_signed", datetime(2026, 3, 20, 9, 0, tzinfo=UTC))
    assert w.due(cph(2026, 3, 20, 12, 0)) == []


def test_event_mail_deferred_by_the_server_is_due_again_with_the_same_key() -> None:
    w = World()
    w.reach("guide_received", datetime(2026, 3, 20, 8, 0, tzinfo=UTC))
    w.send(cph(2026, 3, 20, 12, 0), state=NotificationState.PENDING)
    assert w.due(cph(2026, 3, 20, 12, 5)) == [("event", "event-guide_received", SOEREN.email)]
    w.send(cph(2026, 3, 20, 12, 5), state=NotificationState.UNKNOWN)
    assert w.due(cph(2026, 3, 20, 12, 10)) == []


def test_webinar_invitation_goes_to_every_oriented_recipient_with_a_calendar() -> None:
    w = World()
    w.orient(cph(2026, 3, 2, 9, 0), SOEREN, AASE, KAREN)
    w.orient(cph(2026, 3, 2, 9, 0), BJOERN, delivery=DeliveryState.BOUNCED)
    w.reach("webinar_invited", datetime(2026, 5, 9, tzinfo=UTC), **WEBINAR)
    due = w.plan(cph(2026, 5, 9, 12, 0)).due
    assert {d.recipient.email for d in due} == {SOEREN.email, AASE.email, KAREN.email}
    assert {d.calendar for d in due} == {"REQUEST"}
    assert len({d.key for d in due}) == 1 and due[0].key.startswith("event-webinar_invited@")


def test_webinar_that_has_started_is_not_announced() -> None:
    w = World()
    w.orient(cph(2026, 3, 2, 9, 0))
    w.reach("webinar_invited", datetime(2026, 5, 9, tzinfo=UTC), **WEBINAR)
    assert w.due(cph(2026, 6, 10, 9, 59), Kind.EVENT) != []
    assert w.due(cph(2026, 6, 10, 10, 0), Kind.EVENT) == []


def test_same_invitation_twice_is_one_mail_and_a_new_time_is_announced_again() -> None:
    w = World(recipients=[SOEREN])
    w.orient(cph(2026, 3, 2, 9, 0))
    w.reach("webinar_invited", datetime(2026, 5, 9, tzinfo=UTC), **WEBINAR)
    assert w.send(cph(2026, 5, 9, 12, 0), Kind.EVENT) == 1
    w.reach("webinar_invited", datetime(2026, 5, 10, tzinfo=UTC), **WEBINAR)  # seen again
    assert w.due(cph(2026, 5, 10, 12, 0), Kind.EVENT) == []
    w.reach("webinar_invited", datetime(2026, 5, 11, tzinfo=UTC),
            **{**WEBINAR, "start": "2026-06-17T10:00:00+02:00"})  # moved a week
    first = [n.template for n in w.outbox.values() if n.template.startswith("event-")]
    due = w.due(cph(2026, 5, 11, 12, 0), Kind.EVENT)
    assert len(due) == 1 and due[0][1] not in first


def test_cancellation_goes_only_to_those_invited_and_stops_the_invitation() -> None:
    w = World()
    w.orient(cph(2026, 3, 2, 9, 0), SOEREN, AASE)
    w.reach("webinar_invited", datetime(2026, 5, 9, tzinfo=UTC), **WEBINAR)
    w.send(cph(2026, 5, 9, 12, 0), Kind.EVENT)
    w.orient(cph(2026, 5, 12, 9, 0), BJOERN)  # oriented after the invitation went out
    w.reach("webinar_cancelled", datetime(2026, 5, 12, 10, tzinfo=UTC), **WEBINAR)
    due = [d for d in w.plan(cph(2026, 5, 12, 12, 0)).due if d.kind is Kind.EVENT]
    assert {(d.key.partition("@")[0], d.recipient.email, d.calendar) for d in due} == {
        ("event-webinar_cancelled", SOEREN.email, "CANCEL"),
        ("event-webinar_cancelled", AASE.email, "CANCEL")}


# ------------------------------------------------------------------------------- escalation


def test_escalation_once_after_six_weeks_and_status_overdue() -> None:
    w = World()
    w.orient(cph(2026, 3, 2, 9, 0))  # six weeks: Monday 13 April 09:00
    before = w.plan(cph(2026, 4, 13, 8, 59))
    assert before.overdue == () and w.due(cph(2026, 4, 13, 8, 59), Kind.ESCALATION) == []
    assert [s.due_at for s in before.scheduled if s.kind is Kind.ESCALATION] == [
        cph(2026, 4, 13, 9, 0)]
    at = cph(2026, 4, 13, 9, 0)
    assert w.due(at, Kind.ESCALATION) == [
        ("escalation", "escalation-service_agreement_received", KAREN.email)]
    assert [o.milestone for o in w.plan(at).overdue] == ["service_agreement_received"]
    w.send(at)
    later = w.plan(cph(2026, 4, 20, 9, 0))
    assert later.due == () and later.overdue[0].escalated_to == (KAREN.email,)


def test_escalation_deadline_on_a_holiday_waits_for_the_next_opening() -> None:
    w = World()
    w.orient(cph(2026, 2, 23, 9, 0))  # six weeks later is 2. påskedag, 6 April
    on_holiday = w.plan(cph(2026, 4, 6, 12, 0))
    assert on_holiday.due == ()
    assert [o.deadline for o in on_holiday.overdue] == [cph(2026, 4, 6, 9, 0)]
    assert w.due(cph(2026, 4, 7, 8, 0), Kind.ESCALATION) == [
        ("escalation", "escalation-service_agreement_received", KAREN.email)]


def test_no_escalation_or_overdue_once_the_milestone_arrived() -> None:
    w = World()
    w.orient(cph(2026, 3, 2, 9, 0))
    w.reach("service_agreement_received", datetime(2026, 4, 20, tzinfo=UTC))
    plan = w.plan(cph(2026, 4, 21, 9, 0))
    assert plan.overdue == () and all(d.kind is not Kind.ESCALATION for d in plan.due)


def test_overdue_without_a_kp_owner_says_nobody_can_be_told() -> None:
    w = World(recipients=[SOEREN, BJOERN, AASE])
    w.orient(cph(2026, 3, 2, 9, 0))
    plan = w.plan(cph(2026, 4, 14, 9, 0))
    assert [(o.milestone, o.can_escalate) for o in plan.overdue] == [
        ("service_agreement_received", False)]
    assert all(d.kind is not Kind.ESCALATION for d in plan.due)


def test_escalation_after_a_milestone_in_working_days_and_a_fixed_deadline() -> None:
    w = World()
    w.task = with_followups(escalations=[
        {"milestone": "guide_received", "after": "service_agreement_signed", "working_days": 10,
         "template": "escalation-guide"},
        {"milestone": "erp_forwarding_configured", "deadline": datetime(2026, 9, 1).date()},
    ])
    w.orient(cph(2026, 3, 2, 9, 0))
    assert w.plan(cph(2026, 8, 31, 9, 0)).overdue == ()  # not signed yet: no anchor
    w.reach("service_agreement_signed", cph(2026, 5, 1, 11, 0))
    plan = w.plan(cph(2026, 9, 1, 8, 0))
    assert {o.milestone: o.deadline for o in plan.overdue} == {
        "guide_received": cph(2026, 5, 18, 11, 0),  # 10 working days; 14 May is a holiday
        "erp_forwarding_configured": cph(2026, 9, 1, 8, 0)}
    assert {d.key for d in plan.due if d.kind is Kind.ESCALATION} == {
        "escalation-guide", "escalation-erp_forwarding_configured"}


# ------------------------------------------------------------------------------- definition


@pytest.mark.parametrize(("tables", "key"), [
    ({"events": [{"milestone": "contract_signed", "to": ["kp_owner"]}]}, "events[0].milestone"),
    ({"events": [{"milestone": "guide_received", "to": ["ceo"]}]}, "events[0].to"),
    ({"events": [{"milestone": "guide_received", "to": []}]}, "events[0].to"),
    ({"events": [{"milestone": "guide_received", "to": "oriented", "calendar": "PUBLISH"}]},
     "events[0].calendar"),
    ({"events": [{"milestone": "guide_received", "to": "oriented", "only_notified": "x"}]},
     "events[0].only_notified"),
    ({"events": [{"milestone": "guide_received", "to": "oriented", "template": "../x"}]},
     "events[0].template"),
    ({"events": {"milestone": "guide_received"}}, "events"),
    ({"reminders": {"after_working_days": 0}}, "reminders.after_working_days"),
    ({"reminders": {"max_count": "one"}}, "reminders.max_count"),
    ({"reminders": {"roles": ["nobody"]}}, "reminders.roles"),
    ({"reminders": {"after_days": 5}}, "reminders.after_days"),
    ({"escalations": [{"milestone": "guide_received", "weeks": 2, "days": 3}]},
     "escalations[0].deadline"),
    ({"escalations": [{"milestone": "guide_received"}]}, "escalations[0].deadline"),
    ({"escalations": [{"milestone": "guide_received", "weeks": 2, "after": "x"}]},
     "escalations[0].after"),
    ({"escalations": [{"milestone": "guide_received", "deadline": "soon"}]},
     "escalations[0].deadline"),
])
def test_definition_errors_name_the_key(tables: dict[str, Any], key: str) -> None:
    with pytest.raises(TaskDefinitionError) as err:
        with_followups(**tables)
    message = str(err.value)
    assert message.startswith("custom.toml: ") and key in message


def test_a_task_without_follow_up_tables_has_none() -> None:
    bare = followups_from_mapping({}, roles={"system_owner"}, milestones=set())
    assert bare == Followups()
    w = World(task=replace(TASK, followups=bare))
    w.orient(cph(2026, 3, 2, 9, 0))
    w.reach("webinar_invited", datetime(2026, 5, 9, tzinfo=UTC), **WEBINAR)
    assert w.plan(cph(2026, 12, 1, 10, 0)) == FollowupPlan(cph(2026, 12, 1, 10, 0), (), (), ())


def test_the_schedule_depends_only_on_its_inputs() -> None:
    w = World()
    w.orient(cph(2026, 3, 2, 9, 0))
    w.reach("webinar_invited", datetime(2026, 5, 9, tzinfo=UTC), **WEBINAR)
    now = cph(2026, 5, 12, 10, 0)
    assert w.plan(now) == w.plan(now)
    with pytest.raises(ValueError, match="timezone-aware"):
        w.plan(datetime(2026, 5, 12, 10, 0))
