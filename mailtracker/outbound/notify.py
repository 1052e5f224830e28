"""The outbox: send each recipient's orientation mail exactly once.

Protocol (DESIGN.md, "Outbound"):
1. Render every message first; a template error sends nothing and stores nothing.
2. One store write creates the outbox documents (``pending``) with their Message-IDs, before
   any SMTP traffic. Retries reuse that Message-ID.
3. Per message, one store write marks it ``sending`` (together with the previous message's
   result), then the SMTP transaction runs. A run that finds a message still ``sending`` was
   killed mid-send: the outcome is ``unknown`` and it is never re-sent silently.
4. 4xx → retry with backoff (the message stays ``pending`` if retries run out); 5xx or a
   refused recipient → ``failed`` with the server's reply; timeout after DATA → ``unknown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mailtracker.app import App
from mailtracker.errors import ConfigError, InvalidInputError, MailtrackerError, SmtpError
from mailtracker.models import (
    Notification,
    NotificationState,
    Recipient,
    TimelineEntry,
    notification_key,
)
from mailtracker.outbound import smtp
from mailtracker.outbound.mailbuild import OutgoingMail, Roster, build_outgoing
from mailtracker.settings.secrets import resolve_credential, token_renewer
from mailtracker.store import Transaction
from mailtracker.task.state import reached_milestones

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class NotifyResult:
    recipient: str
    name: str
    role: str
    outcome: str  # sent | failed | unknown | deferred | already-sent | would-send | previewed
    detail: str = ""
    message_id: str | None = None


@dataclass(frozen=True)
class NotifyOptions:
    dry_run: bool = False
    preview_dir: Path | None = None
    role: str | None = None
    resend: bool = False
    only: Sequence[str] = ()  # recipient addresses; empty = all


def select_recipients(app: App, options: NotifyOptions) -> list[Recipient]:
    recipients = app.store.snapshot().recipients()
    if options.role:
        recipients = [r for r in recipients if r.role == options.role]
    if options.only:
        wanted = {e.lower() for e in options.only}
        recipients = [r for r in recipients if r.key in wanted]
    return recipients


def _plan(app: App, recipients: Sequence[Recipient], options: NotifyOptions,
          now: datetime) -> tuple[list[OutgoingMail], list[NotifyResult]]:
    """What to send now, and results for those skipped. Renders all (may raise)."""
    snapshot = app.store.snapshot()
    everyone = Roster(app, snapshot.recipients(), reached_milestones(
        snapshot.milestones(app.task.key), now))
    plan: list[OutgoingMail] = []
    skipped: list[NotifyResult] = []
    for r in recipients:
        role = app.task.role(r.role)
        if role is None:  # role removed from the task definition since the recipient was added
            skipped.append(NotifyResult(r.email, r.name, r.role, "failed",
                                        f"role {r.role!r} is not in the task definition"))
            continue
        key = notification_key(app.task.key, r.email, role.template)
        existing = snapshot.notification(key)
        if existing is not None and not options.resend and existing.state in (
                NotificationState.SENT, NotificationState.UNKNOWN, NotificationState.FAILED,
                NotificationState.SENDING):
            skipped.append(NotifyResult(r.email, r.name, r.role, f"already-{existing.state}",
                                        existing.last_error or "", existing.message_id))
            continue
        plan.append(build_outgoing(app, r, role.template, existing, resend=options.resend,
                                   now=now, everyone=everyone))
    return plan, skipped


async def run_notify(app: App, options: NotifyOptions, *, sleep: Sleep = asyncio.sleep,
                     ) -> list[NotifyResult]:
    """Send (or preview) the orientation mail. Returns one result per selected recipient.

    Raises ``StoreRestoredError`` when the state is older than the mail that went out (a
    restore from an older backup): nobody gets a second copy.
    """
    app.store.refuse_if_restored()
    if options.dry_run:
        plan, results = _plan(app, select_recipients(app, options), options, app.now())
        if options.preview_dir is not None:
            write_previews(options.preview_dir, plan)
        outcome = "previewed" if options.preview_dir else "would-send"
        return results + [NotifyResult(m.recipient.email, m.recipient.name, m.recipient.role,
                                       outcome, m.rendered.subject, m.message_id) for m in plan]
    with app.store.exclusive("notify"):
        recover_interrupted(app)
        plan, results = _plan(app, select_recipients(app, options), options, app.now())
        if options.preview_dir is not None:
            write_previews(options.preview_dir, plan)
        return results + await deliver(app, plan, sleep=sleep)


async def deliver(app: App, plan: Sequence[OutgoingMail], *, sleep: Sleep = asyncio.sleep,
                  ) -> list[NotifyResult]:
    """Persist ``plan`` in the outbox, then send it over one SMTP connection.

    The caller holds ``store.exclusive("notify")`` and has run ``recover_interrupted``.
    Used by ``notify`` and by the follow-up scheduler, so every mail goes through the same
    exactly-once protocol.
    """
    if not plan:
        return []
    if _graph_sends(app):
        from mailtracker.outbound import graph_send

        _persist_plan(app, plan)
        return await graph_send.send_all(app, plan, sleep=sleep)
    smtp_settings = app.settings.smtp
    if smtp_settings is None:
        raise ConfigError("no [smtp] section: cannot send", path=app.settings.path, key="smtp")
    password = resolve_credential(app.settings, "smtp", app.environ)
    _persist_plan(app, plan)
    return await _send_all(app, plan, password, sleep)


def write_previews(directory: Path, plan: Sequence[OutgoingMail]) -> None:
    """Each mail of ``plan`` as ``<template>--<address>.eml`` in ``directory``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for mail in plan:
            safe = mail.recipient.email.replace("@", "_at_").replace("/", "_")
            (directory / f"{mail.template}--{safe}.eml").write_bytes(mail.as_bytes())
    except OSError as exc:
        raise MailtrackerError(f"cannot write preview to {directory}: {exc.strerror}") from None


def recover_interrupted(app: App) -> None:
    """A notification left in ``sending`` by a killed run may or may not have been delivered."""
    if _graph_sends(app):  # Graph can tell: it looks in Sent Items first
        from mailtracker.outbound import graph_send

        graph_send.recover(app)
    reason = ("the previous run stopped while sending; it may have been delivered: check with "
              "the recipient, then use --resend if it did not arrive")
    with app.store.transaction() as txn:
        for n in txn.notifications(app.task.key):
            if n.state is NotificationState.SENDING:
                txn.put_notification(n.with_(state=NotificationState.UNKNOWN, last_error=reason,
                                             updated_at=app.now()))


def _graph_sends(app: App) -> bool:
    graph = app.settings.graph
    return app.settings.smtp is None and graph is not None and graph.send


def _persist_plan(app: App, plan: Sequence[OutgoingMail]) -> None:
    """One write: every planned message gets its outbox document and Message-ID."""
    with app.store.transaction() as txn:
        for mail in plan:
            txn.put_notification(mail.notification)


async def _send_all(app: App, plan: Sequence[OutgoingMail], password: str | None,
                    sleep: Sleep) -> list[NotifyResult]:
    assert app.settings.smtp is not None
    settings = app.settings.smtp
    results: list[NotifyResult] = []
    pending_update: Notification | None = None
    async with smtp.SmtpSession(settings, password, renew=token_renewer(
            app.settings, "smtp", app.environ)) as session:
        for mail in plan:
            with app.store.transaction() as txn:
                if pending_update is not None:
                    _record(txn, pending_update, results[-1])
                n = _mark_sending(txn, mail, app.now())
            try:
                n, result = await _send_one(app, session, mail, n, sleep)
            except (SmtpError, InvalidInputError) as exc:
                _unsent(app, n, exc)
                raise
            pending_update = n
            results.append(result)
    if pending_update is not None:
        with app.store.transaction() as txn:
            _record(txn, pending_update, results[-1])
    return results


def _record(txn: Transaction, n: Notification, result: NotifyResult) -> None:
    """Store a send's outcome, with a timeline entry for the status history.

    Only the send's own fields come from ``n``: while the SMTP transaction ran, ``watch`` may
    have recorded a bounce or a reply to this very message (a local MTA bounces before it
    answers 250), and the copy read before sending must not overwrite that.
    """
    current = txn.notification(n.key)
    if current is not None:
        n = current.with_(state=n.state, attempts=n.attempts, updated_at=n.updated_at,
                          sent_at=n.sent_at, last_error=n.last_error)
    txn.put_notification(n)
    if n.updated_at is not None:
        detail = f": {result.detail}" if result.detail else ""
        txn.add_timeline(n.task, TimelineEntry(
            n.updated_at, "notification",
            f"{n.template} to {result.name} <{result.recipient}>: {result.outcome}{detail}",
            n.message_id))


def _unsent(app: App, n: Notification, exc: Exception) -> None:
    """``n`` never left: the run stopped before its SMTP transaction began (reconnecting
    failed, a bad address). It goes back to ``pending`` for the next run, instead of staying
    ``sending`` and being reported as "may have been delivered"."""
    with app.store.transaction() as txn:
        current = txn.notification(n.key) or n
        txn.put_notification(current.with_(state=NotificationState.PENDING,
                                           updated_at=app.now(), last_error=f"not sent: {exc}"))


def _mark_sending(txn: Transaction, mail: OutgoingMail, now: datetime) -> Notification:
    current = txn.notification(mail.notification.key) or mail.notification
    n = current.with_(state=NotificationState.SENDING, attempts=current.attempts + 1,
                      updated_at=now)
    txn.put_notification(n)
    return n


async def _send_one(app: App, session: smtp.SmtpSession, mail: OutgoingMail, n: Notification,
                    sleep: Sleep) -> tuple[Notification, NotifyResult]:
    settings = app.settings.smtp
    assert settings is not None
    r = mail.recipient

    def done(state: NotificationState, outcome: str, detail: str) -> tuple[
            Notification, NotifyResult]:
        now = app.now()
        updated = n.with_(state=state, updated_at=now, last_error=detail or None,
                          sent_at=now if state is NotificationState.SENT else n.sent_at)
        return updated, NotifyResult(r.email, r.name, r.role, outcome, detail, n.message_id)

    delay = settings.retry_delay
    last = ""
    for attempt in range(settings.retries + 1):
        if attempt:
            await sleep(delay)
            delay *= 3
            n = n.with_(attempts=n.attempts + 1)
        message = mail.message_for_attempt(app.now())
        try:
            outcome = await session.send(message, [r.email])
        except smtp.SmtpUnknownOutcome as exc:
            return done(NotificationState.UNKNOWN, "unknown",
                        f"{exc} — it may have been delivered; not re-sent automatically")
        except smtp.SmtpPermanentFailure as exc:
            return done(NotificationState.FAILED, "failed", str(exc))
        except smtp.SmtpTemporaryFailure as exc:
            last = str(exc)  # the session reconnects by itself if the link was lost
            continue
        if outcome.refused:
            refusal = outcome.refused[0]
            if 400 <= refusal.code < 500:
                last = f"{refusal.code} {refusal.reply}"
                continue
            return done(NotificationState.FAILED, "failed", f"{refusal.code} {refusal.reply}")
        return done(NotificationState.SENT, "sent", "")
    return done(NotificationState.PENDING, "deferred",
                f"temporary failure, will retry on the next run: {last}")


def summarise(results: Sequence[NotifyResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return counts
