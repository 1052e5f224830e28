"""Raw message bytes → ``IncomingMessage`` facts. Pure, bounded, and never raises.

Hostile input is expected (see DESIGN.md): malformed MIME, unknown charsets, CR/LF hidden in
encoded words, thousands of nested multiparts, huge parts, NUL bytes, megabyte header lines.
Time and memory stay bounded: the input is cut at ``max_bytes``, a message with more
multipart containers than any real mail is read for its headers only, header values are cut
before the (slow) header registry sees them, and no part is decoded beyond a cap.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from email.utils import parsedate_to_datetime
from typing import Any

from mailtracker.inbound.mail.authres import dkim_signature_domain, parse_authentication_results
from mailtracker.inbound.mail.facts import AuthenticationResults, CalendarEvent, IncomingMessage
from mailtracker.inbound.mail.fromheader import parse_address_list, parse_from
from mailtracker.inbound.mail.ical import find_join_url
from mailtracker.inbound.mail.parts import Budget, PartFacts, walk
from mailtracker.inbound.mail.text import (
    clean,
    decode_words,
    is_text_charset,
    normalise,
    undo_surrogates,
)

DEFAULT_MAX_BYTES = 25 * 1024 * 1024  # the IMAP side's default max_message_bytes
MAX_CONTAINERS = 60  # multipart and message/rfc822: real mail has a handful
MAX_PARTS = 2000
MAX_DELIMITER_LINES = 5000  # lines starting with "--": boundary lines, signatures, rulers
MAX_FORWARD_DEPTH = 3
MAX_FORWARDS = 10
MAX_HEADERS = 1000
MAX_HEADER_BYTES = 1024 * 1024  # headers-only fallback reads this much
MAX_PARAM_HEADER = 4096  # Content-Type/-Disposition: the stdlib parses params in O(n²)
MAX_SUBJECT = 998
MAX_AUTH_HEADERS = 50

_CONTAINER_RE = re.compile(
    rb"(?im)^content-type[ \t]*:[ \t]*(?:\r?\n[ \t]+)?(?:multipart/|message/rfc822)")
_BOUNDARY_RE = re.compile(rb'(?i)boundary\*?0?\*?\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
_MSGID_RE = re.compile(r"<[^<>\s]{1,500}>")
_CHARSET_RE = re.compile(r"=\?([^?*\s]{1,60})(?:\*[^?]*)?\?[bBqQ]\?")
_KEYWORD_RE = re.compile(r"\s*([A-Za-z0-9_-]+)")
_UNFOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_FORWARD_RE = re.compile(r"^\s*(?:vs|fwd?|wg|tr|videresendt)\s*:", re.IGNORECASE)
_AUTO_SUBJECTS = tuple(normalise(p) for p in (
    "Automatisk svar", "Autosvar", "Out of Office", "Fraværende", "Abwesenheit",
    "Automatic reply", "Auto reply", "Autoreply", "Automatische Antwort",
))
_BULK_PRECEDENCE = {"bulk", "junk", "auto_reply", "list"}


class _BoundedMessage(Message):
    """A compat32 message whose parameter headers are cut before the stdlib parses them:
    ``get_param`` is quadratic in the number of parameters (12 s for 160,000 of them)."""

    def get(self, name: str, failobj: Any = None) -> Any:
        value = super().get(name, failobj)
        if (isinstance(value, str) and len(value) > MAX_PARAM_HEADER
                and name.lower() in {"content-type", "content-disposition"}):
            return value[:MAX_PARAM_HEADER]
        return value


def parse(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> IncomingMessage:
    """The facts of ``raw``. Never raises: unreadable input gives ``unparseable_reason``.

    At most ``max_bytes`` of ``raw`` are read; a longer message gets a defect and is
    classified on what was read (its headers are complete unless they alone exceed it).
    """
    size = len(raw)
    defects: list[str] = []
    try:
        if size > max_bytes:
            raw = bytes(raw[:max_bytes])
            defects.append(f"message cut to {max_bytes} of {size} bytes")
        if b"\x00" in raw:
            defects.append("NUL bytes in the message")
        hostile = _hostile_structure(raw)
        if hostile is not None:
            return _headers_only(raw, size, defects, hostile)
        parser = BytesParser(_class=_BoundedMessage, policy=compat32)
        msg = parser.parsebytes(raw)
        return _message_facts(msg, size, defects, depth=0)
    except RecursionError:
        return _headers_only(raw, size, defects, "MIME structure nested too deeply")
    except Exception as exc:  # the contract is "never raises"; the reason names the failure
        return _headers_only(raw, size, defects, f"parser failed: {type(exc).__name__}")


def _hostile_structure(raw: bytes) -> str | None:
    """Why ``raw`` must not go through the stdlib parser, or ``None``.

    The parser nests a generator per MIME level, so each line costs O(depth) and deep
    nesting ends in ``RecursionError``; and it builds an object per part, so 25 MB of empty
    parts take a minute and a gigabyte. Cheap byte counts come first; the regexes only run
    on messages that already look suspicious.
    """
    lowered = raw.lower()
    containers = lowered.count(b"multipart/") + lowered.count(b"message/rfc822")
    if containers > MAX_CONTAINERS and _more_than(_CONTAINER_RE.finditer(raw), MAX_CONTAINERS):
        return f"more than {MAX_CONTAINERS} nested MIME containers"
    delimiter_lines = raw.count(b"\n--")
    if delimiter_lines > MAX_DELIMITER_LINES:
        boundaries = {m.group(1) or m.group(2) for m in _BOUNDARY_RE.finditer(raw[:4 << 20])}
        parts = sum(raw.count(b"\n--" + b) for b in list(boundaries)[:100])
        if parts > MAX_PARTS or delimiter_lines > 10 * MAX_DELIMITER_LINES:
            return f"more than {MAX_PARTS} MIME parts"
    return None


def _more_than(matches: Iterator[object], limit: int) -> bool:
    return any(count > limit for count, _ in enumerate(matches, start=1))


def _headers_only(raw: bytes, size: int, defects: list[str], reason: str) -> IncomingMessage:
    defects.append(reason)
    try:
        parser = BytesHeaderParser(_class=_BoundedMessage, policy=compat32)
        msg = parser.parsebytes(raw[:MAX_HEADER_BYTES])
        facts = _build(msg, None, size, defects, depth=0)
        return replace(facts, unparseable_reason=reason)
    except Exception as exc:  # not even the headers: an empty fact set with the reason
        defects.append(f"headers cannot be read: {type(exc).__name__}")
        return IncomingMessage(defects=tuple(defects), unparseable_reason=reason, size=size)


def _message_facts(msg: Message, size: int, defects: list[str], depth: int,
                   budget: Budget | None = None) -> IncomingMessage:
    parts = walk(msg, budget)
    defects.extend(d for d in parts.defects if d not in defects)
    return _build(msg, parts, size, defects, depth)


def _build(msg: Message, parts: PartFacts | None, size: int, defects: list[str],
           depth: int) -> IncomingMessage:
    headers = _header_map(msg, defects)
    raw_subject = _first(headers, "subject") or ""
    subject = decode_words(raw_subject, MAX_SUBJECT)
    _check_charsets(raw_subject, defects)
    if len(raw_subject) > 4 * MAX_SUBJECT:
        defects.append(f"Subject of {len(raw_subject)} characters cut")
    body = parts.body_text() if parts is not None else ""
    facts = IncomingMessage(
        message_id=_first_id(_first(headers, "message-id")),
        in_reply_to=_first_id(_first(headers, "in-reply-to")),
        references=_all_ids(_first(headers, "references")),
        date=_date(_first(headers, "date")),
        subject=subject,
        from_header=parse_from(headers.get("from", [])),
        to=parse_address_list(headers.get("to", [])),
        cc=parse_address_list(headers.get("cc", [])),
        auto_reply_signals=_auto_reply_signals(headers, subject),
        auth_results=_auth_results(headers),
        dkim_domains=_dkim_domains(headers),
        exchange_tenant_ids=_exchange_tenant_ids(headers),
        forward_subject=bool(_FORWARD_RE.match(subject)),
        size=size,
    )
    if parts is not None:
        facts = replace(
            facts,
            attachments=tuple(parts.attachments),
            body_text=body,
            calendar_events=tuple(_with_join_url(e, body) for e in parts.calendar_events),
            delivery_report=parts.report,
            forwarded=_forwarded(parts.forwarded, depth, defects, parts.budget),
        )
    reason = None if headers else "no header fields"
    return replace(facts, defects=tuple(defects), unparseable_reason=reason)


def _forwarded(inner: list[Message], depth: int, defects: list[str], budget: Budget) -> tuple[
        IncomingMessage, ...]:
    if not inner:
        return ()
    if depth >= MAX_FORWARD_DEPTH:
        defects.append(f"forwarded messages nested deeper than {MAX_FORWARD_DEPTH}; ignored")
        return ()
    result = []
    for msg in inner[:MAX_FORWARDS]:
        try:
            result.append(_message_facts(msg, 0, [], depth + 1, budget))
        except Exception as exc:  # one bad inner message must not lose the outer one
            defects.append(f"forwarded message cannot be read: {type(exc).__name__}")
    return tuple(result)


def _with_join_url(event: CalendarEvent, body: str) -> CalendarEvent:
    if event.join_url is not None:
        return event
    return replace(event, join_url=find_join_url(body))


def _header_map(msg: Message, defects: list[str]) -> dict[str, list[str]]:
    """Header name (lower case) → raw values, unfolded, 8-bit bytes decoded."""
    result: dict[str, list[str]] = {}
    for index, (name, value) in enumerate(msg.raw_items()):
        if index >= MAX_HEADERS:
            defects.append(f"more than {MAX_HEADERS} header fields; the rest ignored")
            break
        if not isinstance(value, str):
            value = str(value)
        text = undo_surrogates(_UNFOLD_RE.sub("", value)).replace("\r", " ").replace("\n", " ")
        result.setdefault(str(name).strip().lower(), []).append(text.strip())
    return result


def _first(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _first_id(value: str | None) -> str | None:
    if value is None:
        return None
    match = _MSGID_RE.search(value[:4096])
    if match:
        return clean(match.group(0), 500)
    bare = clean(value, 500)
    return f"<{bare}>" if bare and " " not in bare and "@" in bare else None


def _all_ids(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    ids = [clean(m.group(0), 500) for m in _MSGID_RE.finditer(value[-64 * 1024:])]
    return tuple(ids[-100:])  # the newest are last, and they are the ones that matter


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value[:200])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _check_charsets(value: str, defects: list[str]) -> None:
    for charset in _CHARSET_RE.findall(value[: MAX_SUBJECT * 4])[:20]:
        if not is_text_charset(charset):
            note = f"unknown charset {clean(charset, 40)!r} in Subject"
            if note not in defects:
                defects.append(note)


def _auto_reply_signals(headers: dict[str, list[str]], subject: str) -> tuple[str, ...]:
    """RFC 3834 and the de-facto headers and subjects of out-of-office replies.
    ``X-Auto-Response-Suppress`` is a request to others, not a signal, and is ignored."""
    signals: list[str] = []
    keyword = _KEYWORD_RE.match(_first(headers, "auto-submitted") or "")
    auto_submitted = keyword.group(1).lower() if keyword else ""  # "auto-replied (x); y=z"
    if auto_submitted and auto_submitted != "no":
        signals.append(f"Auto-Submitted: {clean(auto_submitted, 60)}")
    for name, label in (("x-autoreply", "X-Autoreply"), ("x-autorespond", "X-Autorespond")):
        value = _first(headers, name)
        if value is not None and value.strip().lower() != "no":
            signals.append(label)
    precedence = (_first(headers, "precedence") or "").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        signals.append(f"Precedence: {precedence}")
    folded = normalise(subject[:100])
    if any(folded.startswith(prefix) for prefix in _AUTO_SUBJECTS):
        signals.append(f"Subject: {clean(subject, 60)}")
    return tuple(signals)


def _auth_results(headers: dict[str, list[str]]) -> tuple[AuthenticationResults, ...]:
    result = []
    for value in headers.get("authentication-results", [])[:MAX_AUTH_HEADERS]:
        try:
            parsed = parse_authentication_results(clean(value, 8192))
        except Exception:  # a hostile value is ignored, never trusted
            parsed = None
        if parsed is not None:
            result.append(parsed)
    return tuple(result)


def _exchange_tenant_ids(headers: dict[str, list[str]]) -> tuple[str, ...]:
    values = headers.get("x-ms-exchange-crosstenant-id", [])[:MAX_AUTH_HEADERS]
    return tuple("".join(clean(v, 200).split()).lower() for v in values)


def _dkim_domains(headers: dict[str, list[str]]) -> tuple[str, ...]:
    domains = (dkim_signature_domain(clean(v, 8192))
               for v in headers.get("dkim-signature", [])[:MAX_AUTH_HEADERS])
    return tuple(dict.fromkeys(d for d in domains if d))
