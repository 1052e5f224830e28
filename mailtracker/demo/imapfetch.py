"""FETCH items and SEARCH criteria of the demo IMAP server. Pure: no sockets, no store.

:func:`parse_fetch_items` + :func:`fetch_items` turn ``(UID BODY.PEEK[HEADER] RFC822.SIZE
FLAGS INTERNALDATE)`` into the response data of one message (bodies as literals; a non-PEEK
body fetch sets ``\\Seen``). :func:`search_matcher` turns SEARCH criteria into a predicate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailtracker.demo.imapproto import (
    ImapSyntaxError,
    Token,
    flag_list,
    format_internaldate,
    in_ranges,
    literal,
    parse_search_date,
    parse_sequence_set,
)
from mailtracker.demo.mailstore import StoredMessage, canonical_flag

_BODY = re.compile(r"(BODY(?:\.PEEK)?)\[(|HEADER|TEXT)\]")
_SIMPLE = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"}
# name → (response name, section, sets \Seen)
_RFC822 = {"RFC822": ("RFC822", "", True), "RFC822.HEADER": ("RFC822.HEADER", "HEADER", False),
           "RFC822.TEXT": ("RFC822.TEXT", "TEXT", True)}


@dataclass(frozen=True)
class FetchItem:
    name: str  # as written in the response, e.g. "BODY[HEADER]"
    section: str | None = None  # None: not a body item; "" whole, "HEADER", "TEXT"
    sets_seen: bool = False


def parse_fetch_items(token: Token, by_uid: bool) -> list[FetchItem]:
    """The items of a FETCH; ``UID`` comes first for UID FETCH (RFC 3501 6.4.8)."""
    if isinstance(token, str):
        names = ["FLAGS", "INTERNALDATE", "RFC822.SIZE"] if token.upper() == "FAST" else [token]
    else:
        names = [t for t in token if isinstance(t, str)]
        if len(names) != len(token):
            raise ImapSyntaxError("bad FETCH item list")
    items = [_item(n) for n in names]
    if by_uid and FetchItem("UID") not in items:
        items.insert(0, FetchItem("UID"))
    return items


def _item(raw: str) -> FetchItem:
    name = raw.upper()
    if name in _SIMPLE:
        return FetchItem(name)
    if name in _RFC822:
        shown, section, seen = _RFC822[name]
        return FetchItem(shown, section, seen)
    match = _BODY.fullmatch(name)
    if match is None:
        raise ImapSyntaxError(f"unsupported FETCH item {raw!r} (the demo server knows "
                              "UID, FLAGS, INTERNALDATE, RFC822*, BODY[], BODY[HEADER], "
                              "BODY[TEXT] and their .PEEK forms)")
    peek = match.group(1) == "BODY.PEEK"
    return FetchItem(f"BODY[{match.group(2)}]", match.group(2), not peek)


def _section(message: StoredMessage, section: str) -> bytes:
    if section == "HEADER":
        return message.header_bytes
    if section == "TEXT":
        return message.raw[len(message.header_bytes):]
    return message.raw


def fetch_items(message: StoredMessage, items: list[FetchItem], readonly: bool) -> bytes:
    """The parenthesised data of one FETCH response line (without the parentheses)."""
    wanted = list(items)
    if not readonly and any(i.sets_seen for i in items) and "\\Seen" not in message.flags:
        message.flags.add("\\Seen")
        if FetchItem("FLAGS") not in wanted:  # the client must learn of the implicit change
            wanted.append(FetchItem("FLAGS"))
    parts: list[bytes] = []
    for item in wanted:
        if item.name == "UID":
            parts.append(b"UID %d" % message.uid)
        elif item.name == "FLAGS":
            parts.append(b"FLAGS " + flag_list(message.flags))
        elif item.name == "INTERNALDATE":
            parts.append(b"INTERNALDATE " + format_internaldate(message.internaldate).encode())
        elif item.name == "RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % len(message.raw))
        else:
            assert item.section is not None
            parts.append(item.name.encode() + b" " + literal(_section(message, item.section)))
    return b" ".join(parts)


Matcher = Callable[[int, StoredMessage], bool]

_FLAG_KEYS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "FLAGGED": "\\Flagged",
              "SEEN": "\\Seen", "DRAFT": "\\Draft"}


def search_matcher(args: list[Token], view: list[int]) -> Matcher:
    """A predicate ``(sequence number, message) -> bool`` for SEARCH criteria (ANDed).

    ``view`` is the session's list of UIDs (for ``*``). Supports ALL, UID set, sequence set,
    SINCE/BEFORE/ON (INTERNALDATE's date), flag keys and their UN- forms,
    KEYWORD/UNKEYWORD, LARGER/SMALLER, NOT, OR and parentheses.
    """
    return _all_of(args, max(view) if view else 0, len(view))


def _all_of(args: list[Token], top_uid: int, count: int) -> Matcher:
    tokens = iter(args)
    matchers = [_criterion(t, tokens, top_uid, count) for t in tokens]
    if not matchers:
        raise ImapSyntaxError("SEARCH needs criteria")
    return lambda seq, m: all(f(seq, m) for f in matchers)


def _next(tokens: Iterator[Token], key: str) -> Token:
    try:
        return next(tokens)
    except StopIteration:
        raise ImapSyntaxError(f"SEARCH {key} needs an argument") from None


def _criterion(token: Token, tokens: Iterator[Token], top_uid: int, count: int) -> Matcher:
    if isinstance(token, list):
        return _all_of(token, top_uid, count)
    key = token.upper()
    if key == "ALL":
        return lambda seq, m: True
    if key in _FLAG_KEYS or (key.startswith("UN") and key[2:] in _FLAG_KEYS):
        flag, want = (_FLAG_KEYS[key], True) if key in _FLAG_KEYS else (_FLAG_KEYS[key[2:]],
                                                                       False)
        return lambda seq, m: (flag in m.flags) is want
    if key in ("KEYWORD", "UNKEYWORD"):
        word, want = canonical_flag(str(_next(tokens, key))), key == "KEYWORD"
        return lambda seq, m: (word in m.flags) is want
    if key in ("SINCE", "BEFORE", "ON"):
        day = parse_search_date(str(_next(tokens, key)))
        compare: dict[str, Callable[[StoredMessage], bool]] = {
            "SINCE": lambda m: m.internaldate.date() >= day,
            "BEFORE": lambda m: m.internaldate.date() < day,
            "ON": lambda m: m.internaldate.date() == day}
        test = compare[key]
        return lambda seq, m: test(m)
    if key in ("LARGER", "SMALLER"):
        size = _size(_next(tokens, key))
        return ((lambda seq, m: len(m.raw) > size) if key == "LARGER"
                else (lambda seq, m: len(m.raw) < size))
    if key == "UID":
        uids = parse_sequence_set(str(_next(tokens, key)), top_uid)
        return lambda seq, m: in_ranges(m.uid, uids)
    if key == "NOT":
        inner = _criterion(_next(tokens, key), tokens, top_uid, count)
        return lambda seq, m: not inner(seq, m)
    if key == "OR":
        left = _criterion(_next(tokens, key), tokens, top_uid, count)
        right = _criterion(_next(tokens, key), tokens, top_uid, count)
        return lambda seq, m: left(seq, m) or right(seq, m)
    if key[:1].isdigit() or key.startswith("*"):
        numbers = parse_sequence_set(key, count)
        return lambda seq, m: in_ranges(seq, numbers)
    raise ImapSyntaxError(f"unsupported SEARCH key {token!r}")


def _size(token: Token) -> int:
    if not isinstance(token, str) or not token.isdigit():
        raise ImapSyntaxError("LARGER/SMALLER need a number")
    return int(token)
