"""Validation of e-mail addresses and display names (pure; no DNS)."""

from __future__ import annotations

import re
import unicodedata

# A practical subset of RFC 5321/5322: dot-atom local part, dotted domain with a TLD.
# Internationalised local parts are refused on purpose: municipal servers rarely accept SMTPUTF8.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
_EMAIL_RE = re.compile(rf"^{_LOCAL}@(?:{_LABEL}\.)+{_LABEL}$")


def check_email(address: str) -> str:
    """Return the address normalised (domain lower-cased) or raise ``ValueError``."""
    if any(ord(c) < 32 or ord(c) == 127 for c in address):
        raise ValueError("e-mail address must not contain control characters (CR/LF)")
    address = address.strip()
    if len(address) > 254 or not _EMAIL_RE.match(address):
        raise ValueError(f"not a valid e-mail address: {address!r}")
    local, _, domain = address.rpartition("@")
    if len(local) > 64:
        raise ValueError(f"local part longer than 64 characters: {address!r}")
    return f"{local}@{domain.lower()}"


def check_display_name(name: str) -> str:
    """Return the name stripped, or raise ``ValueError`` for control characters or empties.

    Any Unicode letter, comma or punctuation is fine (``Hansen, Bjørn``, ``Søren Ærø-Åse``);
    CR, LF, NUL, other C0/C1 controls and bidi overrides are not.
    """
    for ch in name:
        cat = unicodedata.category(ch)
        if cat in {"Cc", "Cf", "Zl", "Zp"}:
            raise ValueError("name must not contain control characters (such as CR or LF)")
    name = " ".join(name.split())
    if not name:
        raise ValueError("name must not be empty")
    if len(name) > 200:
        raise ValueError("name is longer than 200 characters")
    return name


# Words that make a name a department or a shared mailbox, not a person: such a name is used
# whole in the greeting ("Kære Økonomi, Fælles"), never cut to a "first name".
_UNIT_WORDS = ("økonomi", "afdeling", "fælles", "team", "kontor", "center", "sekretariat",
               "postkasse", "indkøb", "regnskab", "bogholderi", "service", "support",
               "finance", "department", "shared", "mailbox")


def first_name(name: str) -> str:
    """Whom the greeting names: ``'Hansen, Bjørn'`` → ``'Bjørn'``; ``'Søren Ærø-Åse'`` →
    ``'Søren'``; a department or shared mailbox (``'Økonomi, Fælles'``) keeps its whole name."""
    if any(word in name.lower() for word in _UNIT_WORDS):
        return name
    if "," in name:
        after = name.split(",", 1)[1].strip()
        if after:
            return after.split()[0]
    return name.split()[0]


def natural_name(name: str) -> str:
    """A person's name as it reads in a sentence or under a signature: ``'Pedersen, Karen'``
    → ``'Karen Pedersen'``; a department (``'Økonomi, Fælles'``) or a name without a comma
    stays as registered."""
    if "," not in name or any(word in name.lower() for word in _UNIT_WORDS):
        return name
    last, _, first = name.partition(",")
    if not first.strip() or "," in first:
        return name
    return f"{first.strip()} {last.strip()}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
