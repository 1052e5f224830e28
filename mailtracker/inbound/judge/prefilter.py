"""Header-only prefilter: which new messages are worth a full fetch. Pure.

A shared municipal mailbox holds tens of thousands of unrelated messages; only those that
could matter are fetched whole: mail claiming an EG or signing-platform sender (genuine or
spoofed — spoofs must reach quarantine), replies to our mail, delivery reports, forwarded
copies, and anything whose subject carries a rule's words. A false positive costs one fetch;
a false negative would lose an event, so the filter errs on the side of fetching.
"""

from __future__ import annotations

import email._encoded_words as _ew  # type: ignore[import-not-found]
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from mailtracker.inbound.judge.rules import InboundRules
from mailtracker.inbound.judge.senderauth import domain_under
from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mail.facts import IncomingMessage
from mailtracker.inbound.mail.fromheader import MAX_FROM_CHARS, scrape_domains
from mailtracker.inbound.mail.parse import (
    _FORWARD_RE,
    _MSGID_RE,
    MAX_CONTAINERS,
    MAX_DELIMITER_LINES,
    MAX_SUBJECT,
)
from mailtracker.inbound.mail.text import clean, contains, normalise


def _watched(rules: InboundRules, trust: TrustSettings) -> tuple[str, ...]:
    return (*trust.sender_domains, *trust.signing_domains,
            *(d for n in rules.negatives for d in n.from_domains))


def _words(rules: InboundRules) -> tuple[str, ...]:
    return tuple(word for rule in rules.rules for group in rule.words for word in group)


def is_candidate(head: IncomingMessage, header_bytes: bytes, rules: InboundRules,
                 trust: TrustSettings, sent: Mapping[str, str]) -> bool:
    """True if the message must be fetched and classified."""
    domains = head.from_header.claimed_domains or tuple(
        a.domain for a in head.from_header.addresses)
    if any(domain_under(d, _watched(rules, trust)) for d in domains):
        return True
    refs = {r.strip() for r in (head.in_reply_to, *head.references) if r}
    if refs and any(r in sent for r in refs):
        return True
    lowered = header_bytes.lower()
    if b"multipart/report" in lowered or b"delivery-status" in lowered:
        return True
    if head.forward_subject:
        return True
    subject = normalise(head.subject)
    return any(contains(subject, word) for word in _words(rules))


# --------------------------------------------------------------------------- fast screen
#
# ``parse`` builds a whole message model (MIME tree, address registry, authentication
# results): about a millisecond per header block, most of a big first scan. The screen reads
# only the header fields ``is_candidate`` looks at, straight from the bytes, and says "no"
# only where parse + is_candidate would certainly say no too: it uses the same helpers
# (``scrape_domains``, ``domain_under``, ``normalise``, the same regexes) on the same field
# values, and anything unusual (8-bit bytes that are not UTF-8, control characters, a line
# that is no header field, a From without a domain, a huge block) goes to the full parse.

SCREEN_LIMIT = 256 * 1024  # larger header blocks always take the full parse
_CONTROL = bytes([*range(9), 11, 12, *range(14, 32), 127])  # all but TAB, LF, CR
_LONE_CR = re.compile(rb"\r(?!\n)")  # the stdlib parser breaks a line there; we would not
# A line (after the first) that the stdlib parser would not read as a header field or a
# continuation line. The patterns start at a line break: far faster than ``^`` per position.
_ODD_LINE = re.compile(rb"\n(?![!-9;-~]+:|[ \t]|\r?\n|\r?\Z)")
_FIRST_LINE = re.compile(rb"[!-9;-~]+:")
# Matched in the lower-cased block (far faster than IGNORECASE); values are cut from the
# original at the same offsets (``bytes.lower`` keeps every byte in its place).
_FIELD = re.compile(rb"\n(from|subject|in-reply-to|references):([^\n]*(?:\n[ \t][^\n]*)*)")
_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bBqQ]\?.*?\?=")
_STRICT_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")  # RFC 2047: no space, no '?'


@dataclass(frozen=True)
class Screen:
    """What :func:`could_be_candidate` compares with; build one per batch (``screen``)."""

    watched: tuple[str, ...]
    words: re.Pattern[str] | None  # any rule word, as a substring (``contains``)
    sent: Mapping[str, str]


def clear_caches() -> None:
    """Forget the remembered answers for From and Subject values (benchmarks start cold)."""
    _from_may_match.cache_clear()
    _subject_may_match.cache_clear()


def screen(rules: InboundRules, trust: TrustSettings, sent: Mapping[str, str]) -> Screen:
    words = sorted({w for w in _words(rules) if w}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, words))) if words else None
    return Screen(_watched(rules, trust), pattern, sent)


def could_be_candidate(header_bytes: bytes, how: Screen) -> bool:
    """False only if ``is_candidate(parse(header_bytes), …)`` is certainly False and
    ``parse`` would find nothing unparseable; True means "parse it and ask is_candidate"."""
    return screen_blocks([header_bytes], how)[0]


# Between two blocks in a batch: a blank line, which ends a folded value and is no odd line.
_SEP = b"\n\n"
# One literal per pattern: the regex engine finds a literal fast, an alternation slowly.
_REPORT = (re.compile(rb"multipart/report"), re.compile(rb"delivery-status"))
_CONTAINER = (re.compile(rb"multipart/"), re.compile(rb"message/rfc822"))


def screen_blocks(blocks: Sequence[bytes], how: Screen) -> list[bool]:
    """:func:`could_be_candidate` of each header block, the same answers in one go.

    The searches for anything unusual run once over the batch's blocks joined by a blank
    line, and each match is charged to the block it lies in (a block ending in CR, whose CR
    the join would pair with an LF, is judged alone: it always goes to the full parse)."""
    verdict = [True] * len(blocks)  # unless screened below: the full parse decides
    todo = [i for i, block in enumerate(blocks)
            if len(block) <= SCREEN_LIMIT and not block.endswith(b"\r")
            and _FIRST_LINE.match(block)]
    if not todo:
        return verdict
    parts = [blocks[i] for i in todo]
    joined = _SEP.join(parts)
    starts = list(accumulate((len(p) + len(_SEP) for p in parts[:-1]), initial=0))
    unusual = [False] * len(parts)

    def owner(pos: int) -> int:  # index into ``parts`` of the block at ``pos`` of ``joined``
        return bisect_right(starts, pos) - 1

    if len(joined.translate(None, _CONTROL)) != len(joined):
        for k, part in enumerate(parts):
            unusual[k] = len(part.translate(None, _CONTROL)) != len(part)
    for match in _LONE_CR.finditer(joined):
        unusual[owner(match.start())] = True
    for match in _ODD_LINE.finditer(joined):
        k = owner(match.start())
        # A match on the separator's second line break is about the next block's first
        # line, which _FIRST_LINE has judged.
        if match.start() < starts[k] + len(parts[k]):
            unusual[k] = True
    lowered = joined.lower()
    for pattern in _REPORT:
        for match in pattern.finditer(lowered):
            unusual[owner(match.start())] = True
    containers = Counter(owner(m.start()) for pattern in _CONTAINER
                         for m in pattern.finditer(lowered))
    for k, part in enumerate(parts):
        if (containers[k] > MAX_CONTAINERS
                or (len(part) > 3 * MAX_DELIMITER_LINES  # too short for that many otherwise
                    and part.count(b"\n--") > MAX_DELIMITER_LINES)):
            unusual[k] = True
    fields: list[dict[str, list[str]]] = [{} for _ in parts]
    # In ``b"\n" + lowered`` offsets are one more than in ``joined``.
    for match in _FIELD.finditer(b"\n" + lowered):
        k = owner(match.start(1) - 1)
        if unusual[k]:
            continue
        start, end = match.span(2)
        try:
            _add_field(fields[k], match.group(1), joined[start - 1:end - 1])
        except UnicodeDecodeError:
            unusual[k] = True
    for k, i in enumerate(todo):
        verdict[i] = unusual[k] or _fields_may_match(fields[k], how)
    return verdict


def _fields_may_match(fields: dict[str, list[str]], how: Screen) -> bool:
    return (_from_may_match(tuple(fields.get("from", ())), how.watched)
            or _refs_may_match(fields, how.sent)
            or any(_subject_may_match(v, how.words) for v in fields.get("subject", [])))


def _add_field(fields: dict[str, list[str]], name: bytes, raw: bytes) -> None:
    if b"\n" in raw:  # folded: unfold as parse does, then line breaks become spaces
        raw = _UNFOLD.sub(b"", raw).replace(b"\r", b" ").replace(b"\n", b" ")
    elif b"\r" in raw:
        raw = raw.replace(b"\r", b" ")
    fields.setdefault(name.decode("ascii"), []).append(raw.decode("utf-8").strip())


# A shared mailbox hears from the same senders about the same things again and again
# (newsletters, system notices, threads): the answers for a From or Subject value are
# remembered (pure functions of the value and the screen's settings; bounded).
@lru_cache(maxsize=8192)
def _from_may_match(values: tuple[str, ...], watched: tuple[str, ...]) -> bool:
    # The claimed domains exactly as parse_from finds them (it reads the first ten values).
    claimed = [d for v in values[:10] for d in scrape_domains(v[:MAX_FROM_CHARS])]
    # Without a claimed domain is_candidate looks at the parsed addresses: leave it to it.
    if not claimed:
        return True
    # A domain can only be under a watched one that it contains: skip domain_under otherwise.
    return any(domain_under(d, watched) for d in claimed
               if any(w.lower().strip(".") in d for w in watched))


def _refs_may_match(fields: dict[str, list[str]], sent: Mapping[str, str]) -> bool:
    if not sent:
        return False
    for name in ("in-reply-to", "references"):
        for value in fields.get(name, []):
            if any(m.group(0) in sent for m in _MSGID_RE.finditer(value)):
                return True
            bare = clean(value, 500)
            if name == "in-reply-to" and f"<{bare}>" in sent:
                return True
    return False


@lru_cache(maxsize=8192)
def _subject_may_match(value: str, words: re.Pattern[str] | None) -> bool:
    readings = list(_subject_readings(value))
    if any(_FORWARD_RE.match(text) for text in readings):
        return True
    # One normalise for all readings: a word across two of them only costs a parse.
    return words is not None and words.search(normalise("\n".join(readings))) is not None


def _decoded(word: str) -> str:
    try:
        return str(_ew.decode(word)[0])
    except Exception:
        return word


def _subject_readings(value: str) -> Iterator[str]:
    """The subject as written and, with encoded words, decoded both with and without the
    white space between adjacent encoded words (which RFC 2047 drops). Uncut, so a word
    near the end of a long subject is never missed."""
    limit = 4 * MAX_SUBJECT
    yield clean(value, limit)
    if "=?" not in value:
        return
    gaps: list[str] = []
    texts: list[str] = []
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gaps.append(value[pos:match.start()])
        try:
            texts.append(_ew.decode(match.group(0))[0])
        except Exception:  # the header registry keeps such a word as it is …
            raw = match.group(0)
            # … but reads the well-formed encoded words inside it, word by word
            texts.append(" ".join([raw, *(_decoded(w) for w in _STRICT_WORD.findall(raw, 2))]))
        pos = match.end()
    tail = value[pos:]
    kept = "".join(g + t for g, t in zip(gaps, texts, strict=True)) + tail
    dropped = "".join((g if i == 0 or g.strip() else "") + t
                      for i, (g, t) in enumerate(zip(gaps, texts, strict=True))) + tail
    yield clean(kept, limit)
    if dropped != kept:
        yield clean(dropped, limit)
