"""From and address-list headers → ``FromHeader`` / ``Address`` facts.

``email.utils.parseaddr``/``getaddresses`` are not used: on Python 3.11.7 they read
``'alice@vendor.example)<attacker@evil.example>'`` as the vendor address (CVE-2023-27043).
The header registry of ``policy.default`` reports such input as defects, and on top of that
a From value with more than one ``@`` outside quoted strings never counts as clean.
"""

from __future__ import annotations

import re
from email import policy
from email.errors import ObsoleteHeaderDefect

from mailtracker.addresses import check_email
from mailtracker.inbound.mail.facts import Address, FromHeader
from mailtracker.inbound.mail.text import clean, unquoted

MAX_FROM_CHARS = 4096  # an honest From is a few hundred characters
MAX_LIST_CHARS = 8192  # the registry's parser is slow on long lists (0.1 s at 8 KB)
MAX_ADDRESSES = 100

_DOMAIN_RE = re.compile(r"@\s*([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)")
_LOOSE_ADDR_RE = re.compile(r"[^\s<>,;:\"()\[\]@]{1,64}@[A-Za-z0-9.-]{1,253}")
_COUNT_WORDS = {2: "two", 3: "three"}


def parse_from(values: list[str]) -> FromHeader:
    """All From header values (unfolded) → addresses, problems and claimed domains."""
    problems: list[str] = []
    if not values:
        problems.append("no From header")
    elif len(values) > 1:
        problems.append(f"{_COUNT_WORDS.get(len(values), str(len(values)))} From headers")
    addresses: list[Address] = []
    claimed: list[str] = []
    for value in values[:10]:
        claimed.extend(scrape_domains(value[:MAX_FROM_CHARS]))
        found, value_problems = _parse_one_from(value)
        addresses.extend(found)
        problems.extend(p for p in value_problems if p not in problems)
    return FromHeader(
        header_count=len(values),
        addresses=tuple(addresses[:MAX_ADDRESSES]),
        problems=tuple(problems),
        claimed_domains=tuple(dict.fromkeys(claimed)),
    )


def _parse_one_from(value: str) -> tuple[list[Address], list[str]]:
    if len(value) > MAX_FROM_CHARS:
        return [], [f"From header longer than {MAX_FROM_CHARS} characters"]
    problems: list[str] = []
    try:
        header = policy.default.header_factory("from", value)
    except ValueError as exc:
        # An encoded word that decodes to CR/LF makes the registry refuse the address.
        what = "CR/LF in an encoded word" if "CR or LF" in str(exc) else "cannot be parsed"
        return [], [f"From header {what}"]
    except (RecursionError, LookupError, IndexError, TypeError, AttributeError):
        return [], ["From header cannot be parsed"]
    # Obsolete but valid syntax ("J. Hansen <j@eg.dk>": a period in a phrase) is no sign of
    # an attack; every other defect is.
    found = [_address(a.display_name, a.username, a.domain) for a in header.addresses]
    count = max(len(found), _ats_outside_quotes(value))
    if count > 1:
        problems.append(f"From has {count} addresses")
    elif not found:
        problems.append("From has no address")
    defects = [d for d in header.defects if not isinstance(d, ObsoleteHeaderDefect)]
    if defects:
        problems.append(f"From header defect: {clean(str(defects[0]), 120)}")
    for address in found:
        try:
            check_email(address.email)
        except ValueError:
            problems.append(f"From address is not valid: {address.email[:120]!r}")
    return found, problems


def parse_address_list(values: list[str]) -> tuple[Address, ...]:
    """Addresses of To/Cc-like headers, best effort (not used to authenticate anything)."""
    result: list[Address] = []
    for value in values[:10]:
        value = value[:MAX_LIST_CHARS]
        try:
            header = policy.default.header_factory("to", value)
            found = [_address(a.display_name, a.username, a.domain) for a in header.addresses]
        except Exception:  # any failure of the registry: fall back to a scrape
            found = [_address("", *m.group(0).rsplit("@", 1))
                     for m in _LOOSE_ADDR_RE.finditer(value)]
        result.extend(a for a in found if "@" in a.email)
    return tuple(result[:MAX_ADDRESSES])


def _address(name: str, username: str, domain: str) -> Address:
    local = clean(username or "", 256)
    dom = clean(domain or "", 256).lower()
    email = f"{local}@{dom}" if local or dom else ""
    return Address(name=clean(name or "", 256), email=email)


def scrape_domains(value: str) -> list[str]:
    return [clean(m.group(1), 253).lower().rstrip(".") for m in _DOMAIN_RE.finditer(value)]


def _ats_outside_quotes(value: str) -> int:
    """'@' characters outside quoted strings: a display name may quote an address
    (``"kundeservice@eg.dk" <x@evil.example>``) but a second bare '@' is a second address."""
    return sum(1 for ch, outside in unquoted(value) if ch == "@" and outside)
