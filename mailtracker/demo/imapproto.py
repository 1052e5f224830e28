"""Pure IMAP4rev1 syntax for the demo server: command tokens, sequence sets, dates, quoting.

No I/O. :func:`parse_command` takes one complete command (its literals already read and
inlined as ``{n}\\r\\n`` + n bytes) and returns the tag, the command name and the arguments
as nested lists of strings. Only what the demo server needs is here (RFC 3501 subset).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

Token = str | list["Token"]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n$")
_ATOM_END = frozenset(b" ()\r\n")


class ImapSyntaxError(ValueError):
    """The command is not valid IMAP (answered with BAD)."""


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper case; "UID FETCH" etc. for UID commands
    args: list[Token]


def literal_length(line: bytes) -> tuple[int, bool] | None:
    """If ``line`` ends with a literal announcement ``{n}``/``{n+}``: (n, non-synchronising)."""
    match = _LITERAL.search(line)
    return (int(match.group(1)), bool(match.group(2))) if match else None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def tokens(self, *, nested: bool) -> list[Token]:
        out: list[Token] = []
        while True:
            while self.peek() == 0x20:
                self.pos += 1
            c = self.peek()
            if c is None or c in (0x0D, 0x0A):
                if nested:
                    raise ImapSyntaxError("unbalanced parenthesis")
                return out
            if c == 0x29:  # ")"
                if not nested:
                    raise ImapSyntaxError("unexpected ')'")
                self.pos += 1
                return out
            if c == 0x28:  # "("
                self.pos += 1
                out.append(self.tokens(nested=True))
            elif c == 0x22:  # '"'
                out.append(self.quoted())
            elif c == 0x7B:  # "{"
                out.append(self.literal())
            else:
                out.append(self.atom())

    def quoted(self) -> str:
        self.pos += 1
        buf = bytearray()
        while True:
            c = self.peek()
            if c is None or c in (0x0D, 0x0A):
                raise ImapSyntaxError("unterminated quoted string")
            self.pos += 1
            if c == 0x22:
                return _decode(bytes(buf))
            if c == 0x5C:  # backslash escapes the next character
                c = self.peek()
                if c is None:
                    raise ImapSyntaxError("unterminated quoted string")
                self.pos += 1
            buf.append(c)

    def literal(self) -> str:
        match = re.compile(rb"\{(\d+)\+?\}\r\n").match(self.data, self.pos)
        if match is None:
            raise ImapSyntaxError("malformed literal")
        start = match.end()
        end = start + int(match.group(1))
        if end > len(self.data):
            raise ImapSyntaxError("literal longer than the command")
        self.pos = end
        return _decode(self.data[start:end])

    def atom(self) -> str:
        start = self.pos
        depth = 0  # "BODY.PEEK[HEADER.FIELDS (FROM)]": brackets may hold spaces and lists
        while (c := self.peek()) is not None and (depth or c not in _ATOM_END):
            depth += (c == 0x5B) - (c == 0x5D)
            self.pos += 1
        return _decode(self.data[start:self.pos])


def parse_command(data: bytes) -> Command:
    """Tag, name and arguments of one complete command line (CRLF optional)."""
    reader = _Reader(data)
    tokens = reader.tokens(nested=False)
    if len(tokens) < 2 or not all(isinstance(t, str) for t in tokens[:2]):
        raise ImapSyntaxError("expected a tag and a command")
    tag, name = str(tokens[0]), str(tokens[1]).upper()
    args = tokens[2:]
    if name == "UID":
        if not args or not isinstance(args[0], str):
            raise ImapSyntaxError("UID needs a command")
        name = f"UID {args[0].upper()}"
        args = args[1:]
    return Command(tag, name, args)


def string_args(args: list[Token], count: int) -> list[str]:
    """Exactly ``count`` string arguments (atoms, quoted strings or literals)."""
    if len(args) != count or not all(isinstance(a, str) for a in args):
        raise ImapSyntaxError(f"expected {count} argument(s)")
    return [str(a) for a in args]


def parse_sequence_set(text: str, highest: int) -> list[tuple[int, int]]:
    """``1,3:5,7:*`` → [(1, 1), (3, 5), (7, highest)] with each range ordered low-high.

    ``*`` stands for the highest number in use, so ``n:*`` always includes the highest
    message, even when it is below n (RFC 3501, section 6.4.8).
    """
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        ends = part.split(":")
        if not 1 <= len(ends) <= 2:
            raise ImapSyntaxError(f"bad sequence set {text!r}")
        values = [highest if e == "*" else _number(e, text) for e in ends]
        ranges.append((min(values), max(values)))
    return ranges


def _number(text: str, whole: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise ImapSyntaxError(f"bad sequence set {whole!r}")
    return int(text)


def in_ranges(n: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= n <= hi for lo, hi in ranges)


def parse_search_date(text: str) -> date:
    """``5-Jan-2026`` / ``05-Jan-2026`` (RFC 3501 ``date``)."""
    try:
        day, month, year = text.split("-")
        return date(int(year), _MONTHS.index(month.capitalize()) + 1, int(day))
    except ValueError:
        raise ImapSyntaxError(f"bad date {text!r}") from None


def format_internaldate(when: datetime) -> str:
    """``"05-Jan-2026 10:00:00 +0100"`` (quoted, as in a FETCH response)."""
    return f'"{when.day:02d}-{_MONTHS[when.month - 1]}-{when:%Y %H:%M:%S %z}"'


def quote(text: str) -> bytes:
    """A quoted string, or a literal when quoting cannot carry ``text``."""
    raw = text.encode("utf-8", "surrogateescape")
    if raw.isascii() and b"\r" not in raw and b"\n" not in raw:
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(raw)


def literal(raw: bytes) -> bytes:
    return b"{%d}\r\n" % len(raw) + raw


def flag_list(flags: set[str] | list[str] | tuple[str, ...]) -> bytes:
    return b"(" + " ".join(sorted(flags)).encode("utf-8", "surrogateescape") + b")"


def mailbox_matches(name: str, pattern: str, delimiter: str = "/") -> bool:
    """LIST pattern match: ``*`` matches anything, ``%`` anything but the delimiter."""
    regex = "".join(".*" if c == "*" else f"[^{re.escape(delimiter)}]*" if c == "%"
                    else re.escape(c) for c in pattern)
    flags = re.IGNORECASE if name.upper() == "INBOX" else 0
    return re.fullmatch(regex, name, flags) is not None
