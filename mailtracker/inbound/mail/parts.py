"""The MIME tree of one message → body text, attachments, calendar events, DSN, forwards.

Walks iteratively with a depth and a part-count limit (2000 nested multiparts must not
raise ``RecursionError``), never decodes more than a cap of any part (attachment sizes are
estimated from the encoded length), and decodes unknown charsets with replacement instead of
raising ``LookupError``. Works on ``compat32`` messages, whose parts are plain strings.
"""

from __future__ import annotations

import binascii
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from html.parser import HTMLParser

from mailtracker.inbound.mail.facts import Attachment, CalendarEvent, DeliveryReport, DeliveryStatus
from mailtracker.inbound.mail.ical import parse_calendar
from mailtracker.inbound.mail.text import clean, decode_words, is_text_charset

MAX_DEPTH = 30
MAX_PARTS = 500
MAX_TEXT_CHARS = 64 * 1024  # body text kept for matching
MAX_ENCODED_TEXT = 512 * 1024  # encoded characters of a text part looked at
MAX_ENCODED_CALENDAR = 256 * 1024  # an Outlook invitation is 10-50 KB; icalendar does ~1 MB/s
MAX_STATUS_BLOCKS = 100
MAX_CALENDAR_PARTS = 3
MAX_DECODED_TOTAL = 8 * 1024 * 1024  # encoded characters decoded per message, all parts
_DSN_TYPES = {"message/delivery-status", "message/global-delivery-status"}
_ORIGINAL_TYPES = {"message/rfc822", "text/rfc822-headers", "message/global-headers",
                   "message/global"}
_MSGID_RE = re.compile(r"<[^<>\s]{1,500}>")
_B64_JUNK_RE = re.compile(r"[^A-Za-z0-9+/]")


@dataclass
class Budget:
    """Work left for one whole message, forwarded messages included: their number is
    bounded, but 60 of them with three 256 KB calendars each would still take seconds."""

    calendar_parts: int = MAX_CALENDAR_PARTS
    decoded_chars: int = MAX_DECODED_TOTAL


@dataclass
class PartFacts:
    """What the walk found; ``forwarded`` holds inner messages still to be parsed."""

    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    calendar_events: list[CalendarEvent] = field(default_factory=list)
    report: DeliveryReport | None = None
    forwarded: list[Message] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    text_chars: int = 0
    budget: Budget = field(default_factory=Budget)

    def body_text(self) -> str:
        text = " ".join(self.plain) if self.plain else " ".join(self.html)
        return clean(text, MAX_TEXT_CHARS)

    def defect(self, text: str) -> None:
        if text not in self.defects:
            self.defects.append(text)


def walk(msg: Message, budget: Budget | None = None) -> PartFacts:
    """Visit every part of ``msg`` (not inside forwarded messages) in document order.
    Pass the same ``budget`` for the forwarded messages of one message."""
    facts = PartFacts(budget=budget or Budget())
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            facts.defect(f"more than {MAX_PARTS} MIME parts; the rest ignored")
            break
        for defect in getattr(part, "defects", ()):
            facts.defect(f"MIME: {type(defect).__name__}")
        ctype = part.get_content_type()
        if ctype == "multipart/report" and _is_dsn(part) and facts.report is None:
            facts.report = _delivery_report(part, facts)
        if ctype in {"message/rfc822", "message/global"}:
            _forwarded(part, facts)
        elif part.is_multipart():
            children = part.get_payload()
            if depth >= MAX_DEPTH:
                facts.defect(f"MIME nesting deeper than {MAX_DEPTH} levels; inner parts ignored")
            elif isinstance(children, list):
                stack.extend((c, depth + 1) for c in reversed(children)
                             if isinstance(c, Message) and not _is_report_only(part, c))
        else:
            _leaf(part, ctype, facts)
    return facts


def _is_dsn(part: Message) -> bool:
    return str(part.get_param("report-type", "") or "").strip().lower() == "delivery-status"


def _is_report_only(parent: Message, child: Message) -> bool:
    """The machine-readable parts of a DSN are read by ``_delivery_report``, not walked:
    its returned message is not a forward, and its status block is no attachment."""
    if parent.get_content_type() != "multipart/report" or not _is_dsn(parent):
        return False
    ctype = child.get_content_type()
    return ctype in _DSN_TYPES or ctype in _ORIGINAL_TYPES


def _forwarded(part: Message, facts: PartFacts) -> None:
    inner = part.get_payload()
    name = _filename(part, facts)
    facts.attachments.append(Attachment(name, "message/rfc822", _encoded_size(part)))
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        facts.forwarded.append(inner[0])


def _leaf(part: Message, ctype: str, facts: PartFacts) -> None:
    name = _filename(part, facts)
    disposition = (part.get_content_disposition() or "").lower()
    is_calendar = ctype in {"text/calendar", "application/ics"} or (
        name is not None and name.lower().endswith(".ics"))
    if is_calendar and facts.budget.calendar_parts <= 0:
        facts.defect(f"more than {MAX_CALENDAR_PARTS} calendar parts; the rest ignored")
    elif is_calendar:
        facts.budget.calendar_parts -= 1
        text = decoded_text(part, MAX_ENCODED_CALENDAR, facts)
        method = part.get_param("method")
        hint = clean(str(method), 20) if isinstance(method, str) else None
        events, defects = parse_calendar(text, method_hint=hint)
        facts.calendar_events.extend(events)
        for d in defects:
            facts.defect(d)
    inline_text = ctype in {"text/plain", "text/html"} and disposition != "attachment"
    if inline_text and name is None:
        if facts.text_chars >= MAX_TEXT_CHARS:
            return  # enough text for matching: do not decode another part
        text = decoded_text(part, MAX_ENCODED_TEXT, facts)
        if ctype == "text/plain":
            facts.plain.append(text)
        else:
            text = html_to_text(text)
            facts.html.append(text)
        facts.text_chars += len(text)
    elif is_calendar and name is None:
        return  # an Outlook invitation's inline calendar part is no attachment
    else:
        facts.attachments.append(Attachment(name, clean(ctype, 100), _encoded_size(part)))


def _filename(part: Message, facts: PartFacts) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # RFC 2231 values with broken charsets
        facts.defect("attachment file name cannot be decoded")
        return None
    if name is None:
        return None
    return decode_words(str(name), 255) or None


def _encoded_size(part: Message) -> int:
    payload = _raw_payload(part)
    if isinstance(payload, list):
        return sum(_encoded_size(p) for p in payload if isinstance(p, Message))
    if not isinstance(payload, str):
        return 0
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        stripped = len(payload) - payload.count("\n") - payload.count("\r")
        return stripped * 3 // 4
    return len(payload)


def _raw_payload(part: Message) -> object:
    """The payload as parsed. ``get_payload()`` would decode 8-bit text with the declared
    charset and U+FFFD (undoing compat32's surrogateescape), losing the bytes."""
    return getattr(part, "_payload", None)


def decoded_text(part: Message, encoded_limit: int, facts: PartFacts) -> str:
    """The text of a leaf part, decoding at most ``encoded_limit`` encoded characters."""
    payload = _raw_payload(part)
    if not isinstance(payload, str):
        return ""
    limit = min(encoded_limit, facts.budget.decoded_chars)
    if len(payload) > limit:
        facts.defect(f"{clean(part.get_content_type(), 100)} part cut to {limit} characters")
        payload = payload[:limit]
    facts.budget.decoded_chars -= len(payload)
    raw = payload.encode("utf-8", "surrogateescape")  # undo compat32's 8-bit smuggling
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte == "base64":
        data = _B64_JUNK_RE.sub("", payload)
        data = data[: len(data) // 4 * 4]
        try:
            raw = binascii.a2b_base64(data)
        except (binascii.Error, ValueError):
            facts.defect("bad base64")
            raw = b""
    elif cte == "quoted-printable":
        raw = quopri.decodestring(raw)
    return decode_bytes(raw, part.get_content_charset() or "", facts)


def decode_bytes(data: bytes, charset: str, facts: PartFacts) -> str:
    """``data`` as text in ``charset``; unknown or lying charsets never raise."""
    charset = charset.strip().strip('"').lower()
    if charset in {"", "us-ascii", "ascii", "unknown-8bit", "x-unknown"} or not is_text_charset(
            charset):
        if charset not in {"", "us-ascii", "ascii"}:
            facts.defect(f"unknown charset {clean(charset, 40)!r}")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", "replace")
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):
        return data.decode("cp1252", "replace")


class _TextExtractor(HTMLParser):
    """Text of an HTML body; script/style dropped; Teams links kept (they sit in hrefs)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.size = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style", "head"}:
            self._skip += 1
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            if "teams.microsoft.com/l/meetup-join" in href:
                self._add(f" {href} ")
        elif tag in {"br", "p", "div", "tr", "li"}:
            self._add(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style", "head"} and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._add(data)

    def _add(self, text: str) -> None:
        if self.size < MAX_TEXT_CHARS:
            self.chunks.append(text)
            self.size += len(text)


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # lenient as it is, HTMLParser must not sink the message: keep the text
        return " ".join(parser.chunks)
    return " ".join(parser.chunks)


def _delivery_report(report: Message, facts: PartFacts) -> DeliveryReport:
    statuses: list[DeliveryStatus] = []
    original: str | None = None
    children = report.get_payload()
    for child in children if isinstance(children, list) else []:
        if not isinstance(child, Message):
            continue
        ctype = child.get_content_type()
        if ctype in _DSN_TYPES:
            statuses.extend(_status_blocks(child, facts))
        elif ctype in _ORIGINAL_TYPES and original is None:
            original = _original_message_id(child, facts)
    return DeliveryReport(statuses=tuple(statuses[:MAX_STATUS_BLOCKS]),
                          original_message_id=original)


def _status_blocks(part: Message, facts: PartFacts) -> list[DeliveryStatus]:
    payload = part.get_payload()
    if isinstance(payload, list):  # compat32 parses each block as a header set
        blocks = [b for b in payload if isinstance(b, Message)]
    else:
        text = decoded_text(part, MAX_ENCODED_TEXT, facts)
        parser = HeaderParser()
        blocks = [parser.parsestr(b) for b in re.split(r"\r?\n\s*\r?\n", text)]
    statuses = []
    for block in blocks[: MAX_STATUS_BLOCKS + 1]:
        final = block.get("Final-Recipient")
        if final is None:
            continue  # the per-message block
        statuses.append(DeliveryStatus(
            recipient=_typed_address(str(final)),
            original_recipient=_typed_address(str(block.get("Original-Recipient", ""))) or None,
            action=clean(str(block.get("Action", "")), 40).lower(),
            status=clean(str(block.get("Status", "")), 40),
            diagnostic=clean(str(block.get("Diagnostic-Code", "")).partition(";")[2]
                             or str(block.get("Diagnostic-Code", "")), 500),
        ))
    return statuses


def _typed_address(value: str) -> str:
    """``'rfc822; <User@Example.DK>'`` → ``'User@example.dk'``."""
    address = value.partition(";")[2] if ";" in value else value
    address = clean(address, 320).strip("<> ")
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def _original_message_id(part: Message, facts: PartFacts) -> str | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        headers: Message = payload[0]
    else:
        headers = HeaderParser().parsestr(decoded_text(part, MAX_ENCODED_TEXT, facts))
    value = headers.get("Message-ID")
    if value is None:
        return None
    match = _MSGID_RE.search(str(value))
    return clean(match.group(0), 500) if match else None
