"""One scheduler round (``mailtracker tick``, and ``watch`` after each poll): send what is due.

A round takes the outbox lock (the same one ``notify`` takes), marks mail a killed run left in
``sending`` as ``unknown``, computes what is due from the stored state and ``now``
(schedule.py), renders it and hands it to the outbox protocol (``notify.deliver``): every
Message-ID is persisted before the first SMTP attempt, 4xx is retried, nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from mailtracker.app import App
from mailtracker.errors import (
    DeliveryFailedError,
    MailtrackerError,
    StoreLockedError,
    TemplateError,
)
from mailtracker.followup.compose import compose
from mailtracker.followup.schedule import Due, FollowupPlan, Overdue, Scheduled, plan_followups
from mailtracker.outbound.mailbuild import OutgoingMail, Roster
from mailtracker.outbound.notify import Sleep, deliver, recover_interrupted, write_previews
from mailtracker.task.state import reached_milestones

log = logging.getLogger("mailtracker.tick")
LOCK_WHAT = "'mailtracker notify' or 'tick'"
PROBLEM_OUTCOMES = ("failed", "unknown", "deferred", "template-error")


@dataclass(frozen=True)
class TickResult:
    """What happened to one due follow-up."""

    kind: str  # event | reminder | escalation
    key: str  # the outbox template key
    recipient: str
    outcome: str  # sent | failed | unknown | deferred | would-send | template-error
    detail: str = ""
    message_id: str | None = None


@dataclass(frozen=True)
class TickReport:
    now: datetime
    dry_run: bool = False
    results: tuple[TickResult, ...] = ()
    scheduled: tuple[Scheduled, ...] = ()
    overdue: tuple[Overdue, ...] = ()
    skipped: str | None = None  # why nothing was attempted (another process holds the lock)
    error: str | None = None  # an error that stopped the round (tick_sync only)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def next_due_at(self) -> datetime | None:
        """When the next scheduled follow-up becomes due (for a caller's wait), or None."""
        return min((s.due_at for s in self.scheduled), default=None)

    @property
    def problems(self) -> list[TickResult]:
        return [r for r in self.results if r.outcome in PROBLEM_OUTCOMES]

    def raise_for_problems(self) -> None:
        """For ``tick``'s exit code: ``TemplateError`` if a template failed (exit 8), else
        ``DeliveryFailedError`` if a mail failed, was deferred or is unknown (exit 11)."""
        broken = [r for r in self.results if r.outcome == "template-error"]
        if broken:
            raise TemplateError(f"{len(broken)} follow-up(s) not sent: {broken[0].detail}")
        if self.problems:
            raise DeliveryFailedError(f"{len(self.problems)} follow-up(s) not delivered (see "
                                      "above; 'mailtracker status' shows the details)")

    def lines(self, tz: tzinfo | None = None) -> list[str]:
        """Human-readable lines: one per mail, then a summary; times in ``tz`` (local)."""
        out = [f"{r.outcome:<14} {r.kind:<10} {r.key:<40} {r.recipient}"
               + (f": {r.detail}" if r.detail else "") for r in self.results]
        if self.skipped:
            out.append(f"skipped: {self.skipped}")
        if self.error:
            out.append(f"error: {self.error}")
        for o in self.overdue:
            out.append(f"overdue: {o.milestone} (deadline {_people_time(o.deadline, tz)})")
        summary = ", ".join(f"{v} {k}" for k, v in sorted(self.counts.items()))
        out.append(summary or "Nothing due.")
        nxt = self.next_due_at
        if nxt is not None:
            out.append(f"Next follow-up due: {_people_time(nxt, tz)}")
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``tick --json`` document."""
        return {
            "now": self.now.isoformat(timespec="seconds"),
            "dry_run": self.dry_run,
            "results": [r.__dict__ for r in self.results],
            "counts": self.counts,
            "scheduled": [{"kind": s.kind.value, "key": s.key, "recipient": s.recipient,
                           "due_at": s.due_at.isoformat(timespec="seconds"), "reason": s.reason}
                          for s in self.scheduled],
            "overdue": [{"milestone": o.milestone,
                         "deadline": o.deadline.isoformat(timespec="seconds"),
                         "escalated_to": list(o.escalated_to)} for o in self.overdue],
            "next_due_at": (self.next_due_at.isoformat(timespec="seconds")
                            if self.next_due_at else None),
            "skipped": self.skipped,
            "error": self.error,
        }


def _people_time(at: datetime, tz: tzinfo | None) -> str:
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


async def run_tick(app: App, *, dry_run: bool = False, sleep: Sleep = asyncio.sleep,
                   preview_dir: Path | None = None) -> TickReport:
    """Send every follow-up due now (``dry_run``: render only, store and send nothing;
    ``preview_dir``: also write each mail due as an ``.eml`` there, as ``notify`` does).

    Raises ``StoreLockedError`` if another ``notify`` or ``tick`` is running, ``ConfigError``
    without ``[smtp]`` when something is due, ``SmtpError`` when the server cannot be used.
    A template that fails to render is reported per mail and does not stop the others.
    Raises ``StoreRestoredError`` when the state is older than the mail that went out.
    """
    app.store.refuse_if_restored()
    if dry_run:
        plan, mails, results = _prepare(app)
        if preview_dir is not None:
            write_previews(preview_dir, [m for _, m in mails])
        shown = "previewed" if preview_dir is not None else "would-send"
        results += [_result(d, m, shown, m.rendered.subject) for d, m in mails]
        return _report(plan, results, dry_run=True)
    with app.store.exclusive("notify", LOCK_WHAT):
        recover_interrupted(app)
        plan, mails, results = _prepare(app)
        if preview_dir is not None:
            write_previews(preview_dir, [m for _, m in mails])
        delivered = await deliver(app, [m for _, m in mails], sleep=sleep)
    for (due, mail), outcome in zip(mails, delivered, strict=True):
        results.append(_result(due, mail, outcome.outcome, outcome.detail))
    return _report(plan, results, dry_run=False)


def tick_sync(app: App, runner: asyncio.Runner | None = None) -> TickReport:
    """One round from synchronous code (``watch``). Never raises a ``MailtrackerError``.

    ``runner``: the event loop to run it in; ``watch`` keeps one for its whole life (one loop
    per process, not one per round). Without it, a loop for this round alone.

    If another process holds the outbox lock the round is skipped with a log line; it will
    simply happen at the next round. Other errors (no SMTP server reachable, bad config) are
    logged and returned in ``error``, so a follow-up problem never stops the inbox watcher.
    """
    try:
        if runner is None:
            with asyncio.Runner() as own:
                report = own.run(run_tick(app))
        else:
            report = runner.run(run_tick(app))
    except StoreLockedError as exc:
        log.info("follow-ups skipped this round: %s", exc)
        return TickReport(now=app.now(), skipped=str(exc))
    except MailtrackerError as exc:
        log.error("follow-ups failed this round: %s", exc)
        return TickReport(now=app.now(), error=str(exc))
    for r in report.results:
        level = logging.WARNING if r.outcome in PROBLEM_OUTCOMES else logging.INFO
        log.log(level, "follow-up %s: %s %s to %s%s", r.outcome, r.kind, r.key, r.recipient,
                f" ({r.detail})" if r.detail else "")
    return report


def _prepare(app: App) -> tuple[FollowupPlan, list[tuple[Due, OutgoingMail]], list[TickResult]]:
    """The plan, the rendered mails, and results for those whose template failed."""
    view = app.store.snapshot()
    now = app.now()
    recipients = view.recipients()
    notifications = {n.key: n for n in view.notifications(app.task.key)}
    milestones = view.milestones(app.task.key)
    plan = plan_followups(app.task, recipients, notifications, milestones, now)
    roster = Roster(app, recipients, reached_milestones(milestones, now))
    mails: list[tuple[Due, OutgoingMail]] = []
    failed: list[TickResult] = []
    for due in plan.due:
        try:
            mails.append((due, compose(app, due, everyone=roster,
                                       notifications=notifications, milestones=milestones,
                                       now=now)))
        except TemplateError as exc:
            failed.append(TickResult(due.kind.value, due.key, due.recipient.email,
                                     "template-error", str(exc)))
    return plan, mails, failed


def _result(due: Due, mail: OutgoingMail, outcome: str, detail: str) -> TickResult:
    return TickResult(due.kind.value, due.key, due.recipient.email, outcome, detail,
                      mail.message_id)


def _report(plan: FollowupPlan, results: list[TickResult], *, dry_run: bool) -> TickReport:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return TickReport(now=plan.now, dry_run=dry_run, results=tuple(results),
                      scheduled=plan.scheduled, overdue=plan.overdue, counts=counts)
