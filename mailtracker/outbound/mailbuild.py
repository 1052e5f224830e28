"""Turn a recipient and a template into the outgoing message and its outbox document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email import policy
from email.message import EmailMessage
from pathlib import Path

from mailtracker.app import App
from mailtracker.followup.calendar import format_date
from mailtracker.models import MilestoneRecord, Notification, NotificationState, Recipient
from mailtracker.outbound.render import RenderedMail, build_email, make_message_id, render
from mailtracker.outbound.render import orientation_context as render_context
from mailtracker.resources import data_dir


@dataclass(frozen=True)
class OutgoingMail:
    recipient: Recipient
    template: str
    notification: Notification  # the outbox document, with the Message-ID to (re)use
    rendered: RenderedMail
    sender_name: str
    sender_address: str
    attachments: tuple[tuple[str, str, bytes], ...] = ()  # (filename, MIME type, content)
    timezone: tzinfo | None = None  # the Date header's zone: the task's local time

    @property
    def message_id(self) -> str:
        return self.notification.message_id

    def message_for_attempt(self, now: datetime) -> EmailMessage:
        """The message with a fresh Date (local time, with its offset); the Message-ID is the
        persisted one."""
        if self.timezone is not None:
            now = now.astimezone(self.timezone)
        return build_email(self.rendered, sender_name=self.sender_name,
                           sender_address=self.sender_address, to_name=self.recipient.name,
                           to_address=self.recipient.email, message_id=self.message_id, date=now,
                           attachments=self.attachments)

    def as_bytes(self, now: datetime | None = None) -> bytes:
        when = now or self.notification.created_at or datetime.now().astimezone()
        return self.message_for_attempt(when).as_bytes(policy=policy.SMTP)


class Roster:
    """Who is oriented (for the KP owner's copy) and what has happened so far (so no mail asks
    for what is already done): built once for a whole run, not once per recipient
    (rebuilding it for each of N recipients made a run quadratic in N)."""

    def __init__(self, app: App, everyone: Sequence[Recipient],
                 milestones: Mapping[str, MilestoneRecord] | None = None) -> None:
        self._app = app
        self.everyone = tuple(everyone)
        self.kp_owner = next((r for r in self.everyone if r.role == "kp_owner"), None)
        self._milestones = dict(milestones or {})
        self._rows: dict[str, list[dict[str, str]]] = {}
        self._progress: dict[str, dict[str, dict[str, str]]] = {}

    def progress(self, lang: str) -> dict[str, dict[str, str]]:
        """Milestone key → ``{label, date}`` of what has happened, in ``lang``."""
        progress = self._progress.get(lang)
        if progress is None:
            tz = self._app.task.followups.calendar.tz
            order = [m.key for m in self._app.task.milestones]
            progress = {}
            for key in sorted(self._milestones, key=lambda k: (
                    order.index(k) if k in order else len(order), k)):
                definition = self._app.task.milestone(key)
                progress[key] = {"label": definition.label(lang) if definition else key,
                                 "date": format_date(self._milestones[key].at, lang, tz)}
            self._progress[lang] = progress
        return progress

    def __len__(self) -> int:
        return len(self.everyone)

    def label(self, r: Recipient, lang: str) -> str:
        rd = self._app.task.role(r.role)
        return rd.label(lang) if rd else r.role

    def rows(self, lang: str) -> list[dict[str, str]]:
        """``{name, email, role_label}`` of everyone but the KP owner, labels in ``lang``.
        One shared list per language: templates only read it."""
        rows = self._rows.get(lang)
        if rows is None:
            labels: dict[str, str] = {}
            rows = []
            for r in self.everyone:
                if r.role == "kp_owner":
                    continue
                if r.role not in labels:
                    labels[r.role] = self.label(r, lang)
                rows.append({"name": r.name, "email": r.email, "role_label": labels[r.role]})
            self._rows[lang] = rows
        return rows


def orientation_context(app: App, recipient: Recipient,
                        everyone: Sequence[Recipient] | Roster) -> dict[str, object]:
    """Variables for the orientation templates (documented in render.py).

    Pass a ``Roster`` when building contexts for many recipients of one run.
    """
    roster = everyone if isinstance(everyone, Roster) else Roster(app, everyone)
    role = app.task.role(recipient.role)
    kp_owner = roster.kp_owner
    smtp = app.settings.sender
    context = render_context(
        recipient_name=recipient.name, recipient_email=recipient.email, role=recipient.role,
        greeting=recipient.greeting,
        role_label=roster.label(recipient, recipient.lang), lang=recipient.lang,
        organisation=app.settings.organisation,
        sender_name=smtp.from_name if smtp else app.settings.organisation,
        sender_email=smtp.from_address if smtp else "",
        task_title=app.task.title_for(recipient.lang),
        kp_owner_name=kp_owner.name if kp_owner else None,
        kp_owner_email=kp_owner.email if kp_owner else None,
        milestones=roster.progress(recipient.lang),
    )
    context["recipients"] = roster.rows(recipient.lang) if role is not None else []
    return context


def templates_root(app: App) -> Path:
    return app.settings.templates_dir or data_dir("templates")


def build_outgoing(app: App, recipient: Recipient, template: str,
                   existing: Notification | None, *, resend: bool, now: datetime,
                   everyone: Sequence[Recipient] | Roster = (),
                   context: dict[str, object] | None = None,
                   attachments: Sequence[tuple[str, str, bytes]] = ()) -> OutgoingMail:
    """Render (raises TemplateError) and pair with the outbox document to persist."""
    ctx = context if context is not None else orientation_context(
        app, recipient, everyone or [recipient])
    rendered = render(templates_root(app), app.task.key, recipient.lang, template, ctx)
    smtp = app.settings.sender
    sender_address = smtp.from_address if smtp else "mailtracker@localhost"
    sender_name = smtp.from_name if smtp else app.settings.organisation
    domain = sender_address.rpartition("@")[2]
    if existing is None:
        notification = Notification(task=app.task.key, recipient=recipient.key, template=template,
                                    message_id=make_message_id(domain), created_at=now,
                                    updated_at=now, subject=rendered.subject)
    elif resend:
        notification = existing.with_(
            message_id=make_message_id(domain), state=NotificationState.PENDING,
            generation=existing.generation + 1, updated_at=now, last_error=None,
            subject=rendered.subject,
            previous_message_ids=(*existing.previous_message_ids, existing.message_id))
    else:  # pending from an earlier run (e.g. deferred): reuse its Message-ID
        notification = existing.with_(subject=rendered.subject, updated_at=now)
    return OutgoingMail(recipient, template, notification, rendered, sender_name,
                        sender_address, tuple(attachments), app.task.followups.calendar.tz)
