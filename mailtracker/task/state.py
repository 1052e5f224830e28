"""Pure task state: KLIK status, orientation per role, next step, derived milestones.

No I/O: callers pass recipients, outbox documents, milestones and ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from mailtracker.models import (
    DeliveryState,
    Evidence,
    MilestoneRecord,
    Notification,
    NotificationState,
    OrientedFact,
    Recipient,
)
from mailtracker.settings.taskdef import TaskDefinition

FORGOTTEN = "forgotten recipient"  # stands in for a person removed with ``forget``


class KlikStatus(StrEnum):
    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    DONE = "done"


def klik_label(task: TaskDefinition, status: KlikStatus) -> str:
    return {KlikStatus.NOT_STARTED: task.klik.not_started,
            KlikStatus.IN_PROGRESS: task.klik.in_progress,
            KlikStatus.DONE: task.klik.done}[status]


def orientation_of(task: TaskDefinition, recipient: Recipient,
                   notifications: Mapping[str, Notification]) -> Notification | None:
    """The recipient's orientation notification (by the role's template), if any."""
    role = task.role(recipient.role)
    if role is None:
        return None
    return notifications.get(f"{task.key}|{recipient.key}|{role.template}")


def is_oriented(n: Notification | None, require_ack: bool) -> bool:
    if n is None or n.state is not NotificationState.SENT:
        return False
    if n.delivery is DeliveryState.BOUNCED:
        return False
    return not require_ack or n.acknowledged_at is not None


@dataclass(frozen=True, slots=True)
class RoleCoverage:
    """Whether a role has someone oriented, for the KLIK status."""

    role: str
    required: bool
    oriented: tuple[str, ...]  # recipient addresses counted as oriented
    recipients: int


def role_coverage(task: TaskDefinition, recipients: Sequence[Recipient],
                  notifications: Mapping[str, Notification],
                  facts: Sequence[OrientedFact] = ()) -> list[RoleCoverage]:
    """Per role, who counts as oriented: recipients, and people since forgotten (``facts``),
    who appear as ``forgotten recipient``."""
    out = []
    for role in task.roles:
        members = [r for r in recipients if r.role == role.key]
        oriented = tuple(r.email for r in members if is_oriented(
            orientation_of(task, r, notifications), task.require_acknowledgement))
        oriented += tuple(FORGOTTEN for f in facts
                          if f.task == task.key and f.role == role.key
                          and f.template == role.template
                          and (f.acknowledged_at is not None
                               or not task.require_acknowledgement))
        out.append(RoleCoverage(role.key, role.required, oriented, len(members)))
    return out


def klik_status(task: TaskDefinition, recipients: Sequence[Recipient],
                notifications: Mapping[str, Notification],
                facts: Sequence[OrientedFact] = ()) -> KlikStatus:
    """``i gang`` once any orientation went out; ``fuldført`` once every required role has a
    recipient whose orientation was delivered (and acknowledged, if the task requires it)."""
    coverage = role_coverage(task, recipients, notifications, facts)
    if all(c.oriented for c in coverage if c.required):
        return KlikStatus.DONE
    went_out = any(n.state in (NotificationState.SENT, NotificationState.UNKNOWN)
                   for n in notifications.values() if n.task == task.key) \
        or any(f.task == task.key for f in facts)
    return KlikStatus.IN_PROGRESS if went_out else KlikStatus.NOT_STARTED


def reached_milestones(milestones: Mapping[str, MilestoneRecord],
                       now: datetime) -> dict[str, MilestoneRecord]:
    """The stored milestones plus those that follow from them at ``now`` (``webinar_held``)."""
    reached = dict(milestones)
    for extra in derived_milestones(reached, now):
        reached[extra.name] = extra
    return reached


def derived_milestones(milestones: Mapping[str, MilestoneRecord],
                       now: datetime) -> list[MilestoneRecord]:
    """``webinar_held`` once the invited start time has passed (and it was not cancelled)."""
    invited = milestones.get("webinar_invited")
    if invited is None or "webinar_held" in milestones:
        return []
    cancelled = milestones.get("webinar_cancelled")
    if cancelled is not None and cancelled.at >= invited.at:
        return []
    start_raw = invited.evidence.details.get("start")
    if not start_raw:
        return []
    try:
        start = datetime.fromisoformat(start_raw)
    except ValueError:
        return []
    if start.tzinfo is None or start > now:
        return []
    return [MilestoneRecord("webinar_held", start, Evidence(
        source="derived", message_id=invited.evidence.message_id,
        note=f"start time {start_raw} has passed", details=dict(invited.evidence.details)))]


def next_step(task: TaskDefinition, status: KlikStatus,
              coverage: Sequence[RoleCoverage], milestones: Mapping[str, MilestoneRecord],
              lang: str) -> str:
    """What the KP system owner should expect or do next, in ``lang``."""
    missing_roles = [c for c in coverage if c.required and not c.oriented]
    if status is not KlikStatus.DONE:
        without = [c.role for c in missing_roles if c.recipients == 0]
        if without:
            labels = ", ".join(_role_label(task, k, lang) for k in without)
            return (f"Tilføj modtagere for: {labels}." if lang == "da"
                    else f"Add recipients for: {labels}.")
        labels = ", ".join(_role_label(task, c.role, lang) for c in missing_roles)
        return (f"Send orienteringen til: {labels} (mailtracker notify)." if lang == "da"
                else f"Send the orientation to: {labels} (mailtracker notify).")
    for m in task.milestones:
        if m.optional or m.key in milestones:
            continue
        if m.key == "webinar_held" and "webinar_cancelled" in milestones:
            continue
        return m.next_step(lang) or m.label(lang)
    return ("Alle trin er gennemført." if lang == "da" else "All steps are complete.")


def _role_label(task: TaskDefinition, key: str, lang: str) -> str:
    role = task.role(key)
    return role.label(lang) if role else key
