"""Domain data: recipients, notifications (the outbox), milestones, task state.

Plain frozen dataclasses and enums. The store converts TinyDB documents to and from these at
its boundary; nothing else sees a dict from the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


class NotificationState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"


class DeliveryState(StrEnum):
    """What we learned after sending: a DSN bounce marks ``failed``."""

    NONE = "none"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class Recipient:
    """A person to orient: address, name, role and the language of their mail."""

    email: str  # normalised: domain lower-case; the key
    name: str
    role: str
    lang: str = "da"
    added_at: datetime | None = None
    greeting: str | None = None  # whom "Kære …" names; None: worked out from the name

    @property
    def key(self) -> str:
        return self.email.lower()


@dataclass(frozen=True, slots=True)
class Notification:
    """One outbox document, keyed by (task, recipient, template)."""

    task: str
    recipient: str  # recipient key (lower-case e-mail)
    template: str
    message_id: str  # created and persisted before the first SMTP attempt
    state: NotificationState = NotificationState.PENDING
    attempts: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    sent_at: datetime | None = None
    last_error: str | None = None  # server reply or reason, shown in status
    subject: str | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None  # Message-ID of the reply
    delivery: DeliveryState = DeliveryState.NONE
    bounce_reason: str | None = None
    generation: int = 0  # bumped by --resend
    previous_message_ids: tuple[str, ...] = ()  # earlier sends: replies to them still count
    draft_id: str | None = None  # Graph: the draft's immutable id, stored before it is sent

    @property
    def key(self) -> str:
        return notification_key(self.task, self.recipient, self.template)

    def with_(self, **changes: Any) -> Notification:
        return replace(self, **changes)


def notification_key(task: str, recipient: str, template: str) -> str:
    return f"{task}|{recipient.lower()}|{template}"


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a milestone or state change happened."""

    source: str  # "mail" | "manual"
    message_id: str | None = None
    sender: str | None = None
    subject: str | None = None
    recorded_by: str | None = None  # for manual entries
    note: str | None = None
    details: dict[str, str] = field(default_factory=dict)  # e.g. webinar start, join link


@dataclass(frozen=True, slots=True)
class MilestoneRecord:
    """A milestone reached: when, and the evidence for it."""

    name: str
    at: datetime
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of the task's history, as shown by ``status``."""

    at: datetime
    kind: str  # "notification", "milestone", "acknowledged", "bounce", "quarantine", …
    text: str
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class OrientedFact:
    """That a role was oriented, kept when ``forget`` removes the person: no name, no address.

    So a completed KLIK task stays completed after the person oriented is forgotten (the
    orientation did happen), and ``status`` can still say when.
    """

    task: str
    role: str
    template: str  # the orientation template the person was sent
    sent_at: datetime
    acknowledged_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeltaLink:
    """Inbound position in Microsoft Graph: the folder's ``@odata.deltaLink`` (or the
    ``nextLink`` of the next page), saved with the events of the page that led to it."""

    account: str  # "graph:<mailbox>"
    folder: str  # as configured ([graph] folder)
    link: str
    updated_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.account}|{self.folder}"


@dataclass(frozen=True, slots=True)
class Watermark:
    """Inbound position: only UIDs above ``last_uid`` under ``uidvalidity`` are new."""

    account: str  # "user@host"
    folder: str
    uidvalidity: int
    last_uid: int
    updated_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.account}|{self.folder}"


@dataclass(frozen=True, slots=True)
class HandledMessage:
    """Dedupe index: a Message-ID we have processed, and what it did (GDPR: no bodies)."""

    message_id: str
    at: datetime
    outcome: str  # classification kind
    uid: int | None = None
    folder: str | None = None


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """A mail that looked like EG but failed authentication; kept for ``review``."""

    id: str  # short stable id derived from the Message-ID
    task: str
    message_id: str
    at: datetime
    sender: str
    subject: str
    reason: str
    milestone: str  # what it would have set
    details: dict[str, str] = field(default_factory=dict)
    state: str = "pending"  # pending | accepted | rejected
    decided_at: datetime | None = None
    decided_by: str | None = None


@dataclass(frozen=True, slots=True)
class UnparseableEntry:
    """A message the parser could not read, kept (without its text) for ``status``."""

    message_id: str | None
    uid: int | None
    folder: str
    at: datetime
    reason: str


class StateReader(Protocol):
    """What the pure task code reads of the stored state. The store's views provide it; the
    task code depends on this shape only, never on the store or TinyDB."""

    def recipients(self) -> list[Recipient]: ...
    def notifications(self, task: str | None = None) -> list[Notification]: ...
    def milestones(self, task: str) -> dict[str, MilestoneRecord]: ...
    def handled_count(self) -> int: ...
    def quarantine(self, task: str | None = None) -> list[QuarantineEntry]: ...
    def unparseable(self) -> list[UnparseableEntry]: ...
    def timeline(self, task: str) -> list[TimelineEntry]: ...
    def oriented_facts(self, task: str) -> list[OrientedFact]: ...
