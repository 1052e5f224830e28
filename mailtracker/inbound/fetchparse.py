"""A fast reader for the one FETCH answer a scan gets thousands of times. Pure.

A scan asks ``UID FETCH <uids> (BODY.PEEK[HEADER])`` for every message in the folder. imapclient
parses each answer token by token in Python, which is most of a bare client's cost per
message. The answer to this one question has a fixed shape, as imaplib hands it over::

    (b'12 (UID 34 BODY[HEADER] {4162}', b'<4162 bytes>'), b')'

(or with ``UID 34`` after the literal: ``(b'12 (BODY[HEADER] {4162}', b'…'), b' UID 34)'``).
:func:`header_blocks` reads exactly that shape with one regular expression per message and
returns None for anything else — another order, other items, an unsolicited FLAGS update, a
NIL body, a length that does not match — so the caller falls back to imapclient's parser and
gets the same result as ever.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_UID_FIRST = re.compile(rb"\d+ \(UID (\d+) BODY\[HEADER\] \{(\d+)\}")
_UID_LAST_HEAD = re.compile(rb"\d+ \(BODY\[HEADER\] \{(\d+)\}")
_UID_LAST_TAIL = re.compile(rb" UID (\d+)\)")


def header_blocks(data: Sequence[object]) -> dict[int, bytes] | None:
    """``{uid: header bytes}`` from imaplib's untagged FETCH data, or None if any part of it
    is not in the expected shape."""
    blocks: dict[int, bytes] = {}
    i, n = 0, len(data)
    while i < n:
        item = data[i]
        if not isinstance(item, tuple) or len(item) != 2 or i + 1 >= n:
            return None
        head, literal = item
        tail = data[i + 1]
        if not isinstance(head, bytes) or not isinstance(literal, bytes) \
                or not isinstance(tail, bytes):
            return None
        match = _UID_FIRST.fullmatch(head)
        if match is not None and tail == b")":
            uid, size = int(match.group(1)), int(match.group(2))
        else:
            first, last = _UID_LAST_HEAD.fullmatch(head), _UID_LAST_TAIL.fullmatch(tail)
            if first is None or last is None:
                return None
            uid, size = int(last.group(1)), int(first.group(1))
        if size != len(literal) or uid in blocks:
            return None
        blocks[uid] = literal
        i += 2
    return blocks
