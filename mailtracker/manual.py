"""Decisions made by a person: ``mark`` a milestone, ``review`` quarantined mail."""

from __future__ import annotations

import getpass
from dataclasses import replace
from datetime import datetime

from mailtracker.addresses import check_display_name
from mailtracker.errors import InvalidInputError, NotFoundError
from mailtracker.models import Evidence, MilestoneRecord, QuarantineEntry, TimelineEntry
from mailtracker.settings.taskdef import TaskDefinition
from mailtracker.store import Store


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _clean_note(note: str | None) -> str | None:
    if note is None:
        return None
    try:
        return check_display_name(note)[:500]
    except ValueError as exc:
        raise InvalidInputError(f"invalid note: {exc}") from None


def mark_milestone(store: Store, task: TaskDefinition, name: str, *, now: datetime,
                   note: str | None = None, by: str | None = None,
                   at: datetime | None = None) -> MilestoneRecord:
    """Record a milestone by hand. Mail-only milestones need ``review accept`` instead."""
    milestone = task.milestone(name)
    if milestone is None:
        known = ", ".join(m.key for m in task.milestones if m.manual)
        raise InvalidInputError(f"unknown milestone {name!r} (can be marked: {known})")
    if not milestone.manual:
        raise InvalidInputError(
            f"{name} is set from EG's mail, not by hand; if the mail went to quarantine, use "
            "'mailtracker review accept ID'")
    record = MilestoneRecord(name, at or now, Evidence(
        source="manual", recorded_by=by or current_user(), note=_clean_note(note)))
    with store.transaction() as txn:
        if name in txn.milestones(task.key):
            raise InvalidInputError(f"{name} is already recorded (use 'mark --remove' first)")
        txn.put_milestone(task.key, record)
        txn.add_timeline(task.key, TimelineEntry(now, "milestone",
                                                 f"{name} marked by {record.evidence.recorded_by}"))
    return record


def unmark_milestone(store: Store, task: TaskDefinition, name: str, *, now: datetime) -> None:
    with store.transaction() as txn:
        if not txn.remove_milestone(task.key, name):
            raise NotFoundError(f"{name} is not recorded")
        txn.add_timeline(task.key, TimelineEntry(now, "milestone",
                                                 f"{name} removed by {current_user()}"))


def list_quarantine(store: Store, task: TaskDefinition, *,
                    include_decided: bool = False) -> list[QuarantineEntry]:
    entries = store.snapshot().quarantine(task.key)
    return [q for q in entries if include_decided or q.state == "pending"]


def decide(store: Store, task: TaskDefinition, entry_id: str, *, accept: bool,
           now: datetime, by: str | None = None) -> QuarantineEntry:
    """Accept (apply its milestone, with the evidence) or reject a quarantined mail."""
    who = by or current_user()
    with store.transaction() as txn:
        entry = txn.quarantine_entry(entry_id)
        if entry is None or entry.task != task.key:
            raise NotFoundError(f"no quarantined mail with id {entry_id!r} "
                                "(see 'mailtracker review')")
        if entry.state != "pending":
            raise InvalidInputError(f"{entry_id} was already {entry.state}")
        decided = replace(entry, state="accepted" if accept else "rejected", decided_at=now,
                          decided_by=who)
        txn.put_quarantine(decided)
        if accept and entry.milestone and entry.milestone not in txn.milestones(task.key):
            txn.put_milestone(task.key, MilestoneRecord(entry.milestone, entry.at, Evidence(
                source="mail", message_id=entry.message_id, sender=entry.sender,
                subject=entry.subject, recorded_by=who,
                note=f"accepted after review (was quarantined: {entry.reason})",
                details=dict(entry.details))))
        verb = "accepted" if accept else "rejected"
        txn.add_timeline(task.key, TimelineEntry(now, "review", f"quarantine {entry_id} {verb} "
                                                 f"by {who}", entry.message_id))
    return decided
