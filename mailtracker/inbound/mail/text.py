"""Decoded mail text: ``clean`` for storing and showing it, ``normalise`` for matching it.

Matching is case- and accent-insensitive on Danish words.

People write "opsætning", "opsaetning" and "Opsætning"; "København", "Kobenhavn" and
"Koebenhavn"; "e-faktura" and "eFaktura". ``normalise`` maps all spellings of a word to one
form, and the same function is applied to the rule words and to the mail text, so a rule
written either way matches a mail written either way.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache

# C0/C1 controls (CR, LF, NUL, ESC …), line/paragraph separators and bidi overrides, which
# can make a logged subject read differently from what it is.
_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def unquoted(value: str) -> Iterator[tuple[str, bool]]:
    """Each character of a header value with whether it counts as outside a quoted string:
    quote marks, backslashes and escaped characters never do."""
    in_quote = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
            yield ch, False
        elif ch == "\\":
            escaped = True
            yield ch, False
        elif ch == '"':
            in_quote = not in_quote
            yield ch, False
        else:
            yield ch, not in_quote


def clean(text: str, limit: int | None = None) -> str:
    """``text`` safe to log and store: lone surrogates (undecodable bytes) become U+FFFD,
    control characters become spaces, runs of white space one space; cut to ``limit``."""
    if limit is not None:
        text = text[: limit * 2]  # bound the work before collapsing white space
    text = undo_surrogates(text)
    text = " ".join(_UNSAFE_RE.sub(" ", text).split())
    return text if limit is None else text[:limit]


def decode_words(value: str, limit: int) -> str:
    """RFC 2047 encoded words in ``value`` decoded, cleaned and cut to ``limit``; never raises.

    Uses the header registry of ``policy.default`` (an unknown charset becomes U+FFFD). Its
    parser is slow on long input, so at most ``4 * limit`` characters are looked at."""
    from email import policy  # here: ``status`` reads rules through this module, not mail

    raw = value[: limit * 4]
    try:
        decoded = str(policy.default.header_factory("x-mailtracker", raw))
    except Exception:  # the registry raises ValueError, RecursionError, … on hostile input
        decoded = raw
    return clean(decoded, limit)


def is_text_charset(charset: str) -> bool:
    """``charset`` names a codec that turns bytes into text ("base64", "zlib" do not)."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):
        return False
    return bool(getattr(info, "_is_text_encoding", True))


def undo_surrogates(text: str) -> str:
    """Raw 8-bit bytes arrive as lone surrogates (surrogateescape): decode them as UTF-8
    (RFC 6532 headers) or else as Windows-1252, the usual unlabelled Danish charset."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


# æ has no Unicode decomposition, ø neither; å decomposes to a + ring. Hyphens go so that
# "e-faktura" == "efaktura"; the soft hyphen (U+00AD) is invisible in mail clients anyway.
_FOLD = str.maketrans({
    "æ": "ae", "ø": "o", "å": "a", "ß": "ss",
    "-": None, "\u00ad": None, "\u2010": None, "\u2011": None,
})


def normalise(text: str) -> str:
    """Casefold, strip accents, fold æ→ae, ø/oe→o, å/aa→a, drop hyphens, collapse spaces.

    >>> normalise("Opsætning af e-Faktura i  KØBENHAVN")
    'opsaetning af efaktura i kobenhavn'
    """
    folded = text.casefold().translate(_FOLD)
    if folded.isascii():  # NFKD leaves ASCII as it is, and ASCII has no combining marks
        stripped = folded
    else:
        decomposed = unicodedata.normalize("NFKD", folded)
        stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    # The spellings without Danish letters: "aa" for å and "oe" for ø.
    stripped = stripped.replace("aa", "a").replace("oe", "o")
    return " ".join(stripped.split())


def contains(text: str, phrase: str) -> bool:
    """``phrase`` (normalised) occurs anywhere in ``text`` (normalised).

    A plain substring test on purpose: Danish glues words together ("opsætningsvejledning",
    "serviceaftalen"), so "vejledning" must match inside a compound and before an ending.
    """
    return bool(phrase) and phrase in text


def contains_word(text: str, phrase: str) -> bool:
    """``phrase`` (normalised) occurs as whole words in ``text``: "eg" matches "EG A/S" and
    "kundeservice@eg.dk" but not "jeg" or "egentlig"."""
    return bool(phrase) and _word_re(phrase).search(text) is not None


@lru_cache(maxsize=256)
def _word_re(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)")
