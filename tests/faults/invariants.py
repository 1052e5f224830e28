"""The invariants a run must hold after recovery, and the checks of each command's exit.

1. Every EG mail counts exactly once: each genuine EG Message-ID is in the handled index,
   and each milestone has exactly one timeline entry, from a genuine mail of that milestone.
2. Every recipient's mail is delivered exactly once (counted on the SMTP server by
   Message-ID) or marked ``failed`` (never delivered) or ``unknown`` (0 or 1 deliveries,
   never 2), with a reason. Every delivered Message-ID is known to the store.
3. No spoofed mail is applied: spoofs are handled and quarantined, never evidence.
4. The state file parses at every checkpoint and ``status`` works at the end.
5. Nothing recorded is lost: each checkpoint's facts are still there at the next one and at
   the end (a webinar cancellation may be lifted by a later invitation; that is by design).
6. Replies acknowledge, auto-replies never do, bounces mark the delivery failed.
7. After recovery a further ``poll`` changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from mailtracker.models import DeliveryState, NotificationState
from mailtracker.store import StateView
from mailtracker.store.handled import key_for
from mailtracker.task.transition import quarantine_id
from tests.faults.mails import Ledger
from tests.plugins.smtpd import ReceivedMessage

TASK = "efaktura-8b"
#: Named exit codes a command may end with while faults are injected (see errors.ExitStatus).
ALLOWED_EXITS = {"notify": {0, 4, 5, 6, 11}, "tick": {0, 4, 5, 6, 11}, "poll": {0, 4, 5, 7},
                 "watch": {0, 5}}
FINAL = {NotificationState.SENT, NotificationState.FAILED, NotificationState.UNKNOWN}
ONCE_KINDS = {"milestone", "acknowledged", "bounce", "quarantine", "auto_reply"}


@dataclass(frozen=True)
class Note:
    recipient: str
    template: str  # orientation-<role>, event-<milestone>, reminder-…, escalation-…
    message_id: str
    state: NotificationState
    acknowledged: bool
    bounced: bool
    last_error: str | None


@dataclass(frozen=True)
class Facts:
    """What the store had recorded at one moment."""

    handled: frozenset[str] = frozenset()  # keys (hashes) of the handled Message-IDs
    timeline: frozenset[tuple[str, str | None, str]] = frozenset()  # kind, Message-ID, text
    timeline_list: tuple[tuple[str, str | None], ...] = ()
    milestones: dict[str, str | None] = field(default_factory=dict)  # name → evidence id
    notifications: dict[str, Note] = field(default_factory=dict)
    quarantine: frozenset[str] = frozenset()
    recipients: frozenset[str] = frozenset()


def facts_of(view: StateView | None) -> Facts:
    if view is None:
        return Facts()
    timeline = view.timeline(TASK)
    return Facts(
        handled=frozenset(view.handled_ids()),
        timeline=frozenset((t.kind, t.message_id, t.text) for t in timeline),
        timeline_list=tuple((t.kind, t.message_id) for t in timeline),
        milestones={k: m.evidence.message_id for k, m in view.milestones(TASK).items()},
        notifications={n.key: Note(n.recipient, n.template, n.message_id, n.state,
                                   n.acknowledged_at is not None,
                                   n.delivery is DeliveryState.BOUNCED, n.last_error)
                       for n in view.notifications(TASK)},
        quarantine=frozenset(q.id for q in view.quarantine(TASK)),
        recipients=frozenset(r.key for r in view.recipients()),
    )


def check_exit(command: str, code: int | None, output: str, *, killed: bool) -> str | None:
    """A problem with how a command ended under faults, or None."""
    if killed:
        return None
    if "Traceback" in output or "internal error" in output:
        return f"{command} crashed (exit {code}):\n{output[-3000:]}"
    if code not in ALLOWED_EXITS[command]:
        return f"{command} exited {code}, not one of {sorted(ALLOWED_EXITS[command])}:\n" \
               f"{output[-3000:]}"
    return None


def lost(before: Facts, after: Facts, label: str) -> list[str]:
    """Facts of ``before`` missing from ``after``."""
    problems = []
    for what, old, new in (("handled message", before.handled, after.handled),
                           ("timeline entry", before.timeline, after.timeline),
                           ("quarantine entry", before.quarantine, after.quarantine)):
        problems += [f"{label}: {what} lost: {item}" for item in sorted(old - new, key=str)]
    for name in before.milestones:
        if name not in after.milestones and name != "webinar_cancelled":
            problems.append(f"{label}: milestone lost: {name}")
    for key, old_note in before.notifications.items():
        new_note = after.notifications.get(key)
        if new_note is None:
            problems.append(f"{label}: notification lost: {key}")
            continue
        problems += [f"{label}: {key}: {p}" for p in _note_regressions(old_note, new_note)]
    return problems


def _note_regressions(old: Note, new: Note) -> Iterable[str]:
    if new.message_id != old.message_id:
        yield f"Message-ID changed from {old.message_id} to {new.message_id}"
    if old.state in FINAL and new.state != old.state:
        yield f"state went from {old.state} back to {new.state}"
    if old.acknowledged and not new.acknowledged:
        yield "acknowledgement lost"
    if old.bounced and not new.bounced:
        yield "bounce lost"


def check_final(final: Facts, ledger: Ledger, delivered: list[ReceivedMessage],
                checkpoints: list[Facts], last_poll: dict[str, object] | None) -> list[str]:
    """Every invariant of the module docstring on the state after recovery."""
    problems = _eg_counted_once(final, ledger) + _spoofs_not_applied(final, ledger)
    problems += _outbound_exactly_once(final, delivered) + _responses(final, ledger)
    counts = Counter(t for t in final.timeline_list if t[0] in ONCE_KINDS and t[1])
    problems += [f"timeline has {n} '{kind}' entries for {mid}"
                 for (kind, mid), n in counts.items() if n > 1]
    for i, (before, after) in enumerate(zip(checkpoints, [*checkpoints[1:], final],
                                            strict=True)):
        problems += lost(before, after, f"after step {i}")
    if last_poll is not None and (last_poll.get("changes") or last_poll.get("new_messages")):
        problems.append(f"a poll after recovery still found work: {last_poll}")
    return problems


def _eg_counted_once(final: Facts, ledger: Ledger) -> list[str]:
    problems = [f"EG mail {mid} (UIDs {ledger.uids.get(mid)}) was never handled"
                for mid in sorted(ledger.genuine) if key_for(mid) not in final.handled]
    by_milestone: dict[str, set[str]] = {}
    for mid, milestone in ledger.genuine.items():
        by_milestone.setdefault(milestone, set()).add(mid)
    entries = [mid for kind, mid in final.timeline_list if kind == "milestone"]
    for milestone, mids in sorted(by_milestone.items()):
        count = sum(1 for mid in entries if mid in mids)
        if count != 1:
            problems.append(f"milestone {milestone} has {count} timeline entries, not 1")
        if milestone != "webinar_cancelled" and final.milestones.get(milestone) not in mids:
            problems.append(f"milestone {milestone} not recorded from its EG mail "
                            f"(evidence {final.milestones.get(milestone)})")
    for mid in entries:
        if mid not in ledger.genuine:
            problems.append(f"milestone timeline entry from a mail that is no EG mail: {mid}")
    for name, mid in final.milestones.items():
        if mid not in ledger.genuine:
            problems.append(f"milestone {name} recorded from a non-EG mail: {mid}")
    return problems


def _spoofs_not_applied(final: Facts, ledger: Ledger) -> list[str]:
    problems = []
    for mid in sorted(ledger.spoofs):
        if key_for(mid) not in final.handled:
            problems.append(f"spoof {mid} was never handled")
        if quarantine_id(mid) not in final.quarantine:
            problems.append(f"spoof {mid} is not in quarantine")
        if mid in final.milestones.values():
            problems.append(f"spoof {mid} was applied")
    return problems


def _delivery_counts(delivered: list[ReceivedMessage]) -> Counter[str]:
    return Counter(str(m.message["Message-ID"]) for m in delivered)


def _outbound_exactly_once(final: Facts, delivered: list[ReceivedMessage]) -> list[str]:
    problems = []
    counts = _delivery_counts(delivered)
    known = {n.message_id for n in final.notifications.values()}
    problems += [f"delivered Message-ID {mid} is unknown to the store"
                 for mid in counts if mid not in known]
    oriented = {n.recipient for n in final.notifications.values()
                if n.template.startswith("orientation-")}
    problems += [f"recipient {r} has no orientation mail after recovery"
                 for r in sorted(final.recipients - oriented)]
    ids = Counter(n.message_id for n in final.notifications.values())
    problems += [f"{n} notifications share Message-ID {mid}" for mid, n in ids.items() if n > 1]
    for key, n in sorted(final.notifications.items()):
        d = counts.get(n.message_id, 0)
        if n.state is NotificationState.SENT and d != 1:
            problems.append(f"{key} is sent but was delivered {d} times")
        elif n.state is NotificationState.FAILED and (d != 0 or not n.last_error):
            problems.append(f"{key} is failed ({n.last_error!r}) but was delivered {d} times")
        elif n.state is NotificationState.UNKNOWN and (d > 1 or not n.last_error):
            problems.append(f"{key} is unknown ({n.last_error!r}) and delivered {d} times")
        elif n.state not in FINAL:
            problems.append(f"{key} is still {n.state} after recovery")
    return problems


def _responses(final: Facts, ledger: Ledger) -> list[str]:
    """Each answer lands on the mail it answers: a reply acknowledges it (and a reply to a
    follow-up also the orientation), a bounce marks it; auto-replies do neither."""
    problems = []
    by_id = {n.message_id: (key, n) for key, n in final.notifications.items()}
    replied: set[str] = set()
    bounced: set[str] = set()
    for recipient, answers in sorted(ledger.responses.items()):
        for kind, mid in answers:
            key, n = by_id.get(mid, (None, None))
            if n is None:
                problems.append(f"{recipient} answered {mid}, which the store does not know")
            elif kind == "reply":
                replied.add(recipient)
                if not n.acknowledged:
                    problems.append(f"{key}: replied to, but not acknowledged")
            elif kind == "bounce":
                bounced.add(mid)
                if not n.bounced:
                    problems.append(f"{key}: bounced, but the bounce is not recorded")
    for key, n in sorted(final.notifications.items()):
        if n.acknowledged and n.recipient not in replied:
            problems.append(f"{key} is acknowledged, but {n.recipient} never replied")
        if n.bounced and n.message_id not in bounced:
            problems.append(f"{key} is marked bounced without a bounce")
    return problems
