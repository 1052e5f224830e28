"""What ``parse`` extracts from one raw message: plain frozen dataclasses.

Every text field is a ``str`` with no control characters (no CR/LF: an RFC 2047 word can
decode to ``'\\r\\nX-Evil: 1'``), every collection a tuple. No ``email`` object leaks out, so
the facts can be compared in tests, logged and stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Address:
    """One mailbox: ``name`` is the decoded display name ('' if none)."""

    name: str
    email: str  # local part as written, domain lower-cased

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


@dataclass(frozen=True)
class FromHeader:
    """Every ``From`` header of the message and why it cannot authenticate, if it cannot.

    ``clean`` means: exactly one From header holding exactly one address, no parse defect and
    nothing that looks like a second address. Only a clean From may authenticate a sender.
    """

    header_count: int
    addresses: tuple[Address, ...]
    problems: tuple[str, ...]  # empty when clean; e.g. "two From headers"
    # Every domain written after an '@' in any From value, parsed or not: what the mail
    # *claims* to come from. Used to decide whether a failed message "looks like EG".
    claimed_domains: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def address(self) -> Address | None:
        """The one author address when the From is clean, else ``None``."""
        return self.addresses[0] if self.clean and self.addresses else None

    @property
    def domain(self) -> str | None:
        """Lower-case domain of the first From address (clean or not), or ``None``."""
        return self.addresses[0].domain if self.addresses else None


@dataclass(frozen=True)
class AuthResult:
    """One ``method=result`` of an Authentication-Results header (RFC 8601)."""

    method: str  # lower case: "dkim", "spf", "dmarc", "arc", …
    result: str  # lower case: "pass", "fail", "none", …
    properties: tuple[tuple[str, str], ...] = ()  # (("header.d", "eg.dk"), …), names lower

    def prop(self, name: str) -> str | None:
        """The first value of property ``name`` (e.g. ``"header.from"``), or ``None``."""
        for key, value in self.properties:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class AuthenticationResults:
    """One Authentication-Results header. ``authserv_id`` is '' when the header has none
    (Exchange Online writes ``spf=pass …`` without one)."""

    authserv_id: str  # lower case
    results: tuple[AuthResult, ...]


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str  # lower case, e.g. "application/pdf"
    size: int  # decoded bytes, estimated from the encoded length (never decoded)

    @property
    def is_pdf(self) -> bool:
        name = (self.filename or "").lower()
        return self.content_type == "application/pdf" or name.endswith(".pdf")


@dataclass(frozen=True)
class CalendarEvent:
    """One VEVENT of a ``text/calendar`` part."""

    method: str | None  # "REQUEST", "CANCEL", … (upper case)
    uid: str | None
    summary: str
    start: datetime | None  # aware; Windows TZIDs such as "Romance Standard Time" resolved
    join_url: str | None  # Teams meeting link (or another https link from the invite)


@dataclass(frozen=True)
class DeliveryStatus:
    """One per-recipient block of a DSN (RFC 3464)."""

    recipient: str  # Final-Recipient address (lower-cased domain)
    original_recipient: str | None
    action: str  # lower case: "failed", "delayed", "delivered", …
    status: str  # e.g. "5.1.1"
    diagnostic: str  # Diagnostic-Code without its type, e.g. "550 5.1.1 User unknown"

    @property
    def failed(self) -> bool:
        if self.action:
            return self.action == "failed"
        return self.status.startswith("5")


@dataclass(frozen=True)
class DeliveryReport:
    """A ``multipart/report; report-type=delivery-status`` message."""

    statuses: tuple[DeliveryStatus, ...]
    original_message_id: str | None  # from the returned message or its headers


@dataclass(frozen=True)
class IncomingMessage:
    """The facts of one message. ``parse`` always returns one, even for garbage:
    then ``unparseable_reason`` says why and the other fields are best effort."""

    message_id: str | None = None  # with angle brackets
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    date: datetime | None = None  # aware
    subject: str = ""
    from_header: FromHeader = field(default_factory=lambda: FromHeader(0, (), ("no From header",)))
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    auto_reply_signals: tuple[str, ...] = ()  # e.g. ("Auto-Submitted: auto-replied",)
    auth_results: tuple[AuthenticationResults, ...] = ()  # in header order (topmost first)
    dkim_domains: tuple[str, ...] = ()  # d= of DKIM-Signature headers (unverified!)
    # X-MS-Exchange-CrossTenant-Id values, topmost first, lower case (Exchange Online's tenant)
    exchange_tenant_ids: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    body_text: str = ""  # text/plain, else text/html without tags; whitespace collapsed; capped
    calendar_events: tuple[CalendarEvent, ...] = ()
    delivery_report: DeliveryReport | None = None
    forwarded: tuple[IncomingMessage, ...] = ()  # inner message/rfc822 parts, parsed
    forward_subject: bool = False  # subject starts with VS:/Fwd:/FW:/WG:
    defects: tuple[str, ...] = ()
    unparseable_reason: str | None = None
    size: int = 0  # bytes as received (0 for a forwarded message)

    @property
    def has_pdf(self) -> bool:
        return any(a.is_pdf for a in self.attachments)

    @property
    def is_auto_reply(self) -> bool:
        return bool(self.auto_reply_signals)
