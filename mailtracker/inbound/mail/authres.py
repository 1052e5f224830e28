"""Parsing of ``Authentication-Results`` (RFC 8601) and ``DKIM-Signature`` d= tags.

Tolerant of what real servers write: comments anywhere (also containing ``;``), odd spacing,
versions (``mx.kommune.dk 1;``, ``dkim/1=pass``), quoted values and Exchange Online's header
without an authserv-id. Pure string work, no DNS.
"""

from __future__ import annotations

import re

from mailtracker.inbound.mail.facts import AuthenticationResults, AuthResult
from mailtracker.inbound.mail.text import unquoted

# method[/version] = value   or   ptype.property = value   or   reason = "quoted"
_PAIR_RE = re.compile(
    r'([A-Za-z0-9][A-Za-z0-9_.-]*)(?:/[0-9]+)?\s*=\s*("(?:[^"\\]|\\.)*"|[^\s";]*)'
)
_MAX_RESULTS = 50


def parse_authentication_results(value: str) -> AuthenticationResults | None:
    """The header value parsed, or ``None`` when it holds neither an id nor a result."""
    items = _split_outside_quotes(_strip_comments(value), ";")
    if not items:
        return None
    head = items[0].strip()
    if "=" in head:  # no authserv-id: Exchange Online style
        authserv_id, rest = "", items
    else:
        authserv_id, rest = (head.split() or [""])[0].lower(), items[1:]
    results: list[AuthResult] = []
    for item in rest[:_MAX_RESULTS]:
        result = _resinfo(item)
        if result is not None:
            results.append(result)
    if not authserv_id and not results:
        return None
    return AuthenticationResults(authserv_id=authserv_id, results=tuple(results))


def _resinfo(item: str) -> AuthResult | None:
    pairs = _PAIR_RE.findall(item)
    if not pairs:
        return None  # e.g. "none"
    method, result = pairs[0]
    props = tuple((key.lower(), _unquote(val)) for key, val in pairs[1:])
    return AuthResult(method=method.lower(), result=_unquote(result).lower(), properties=props)


def dkim_signature_domain(value: str) -> str | None:
    """The ``d=`` tag of a DKIM-Signature header value, lower case (not verified!)."""
    for tag in value.split(";"):
        name, sep, tag_value = tag.partition("=")
        if sep and name.strip().lower() == "d":
            domain = "".join(tag_value.split()).lower()
            return domain or None
    return None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _strip_comments(value: str) -> str:
    """Remove RFC 5322 comments (nested, with quoted-pairs) outside quoted strings."""
    out: list[str] = []
    depth = 0
    in_quote = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
        elif depth == 0 and ch == '"':
            in_quote = not in_quote
            out.append(ch)
        elif not in_quote and ch == "(":
            depth += 1
        elif not in_quote and ch == ")" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append(" ")
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    for ch, outside in unquoted(value):
        if ch == sep and outside:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]
