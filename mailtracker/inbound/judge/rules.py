"""Inbound rules as data: which mail from EG (or a signing platform) sets which milestone,
and which look-alikes are never EG events.

Nobody knows EG's exact wording, so the rules live in the task definition (``[inbound]`` of
``config/tasks/efaktura-8b.toml``) and ``rules_from_mapping`` turns that table into
``InboundRules``. ``DEFAULT_RULES`` is the same content, used when a task file has no
``[inbound]`` section; any key left out of the table falls back to its default.

Words are matched case- and accent-insensitively on decoded text (see ``text.normalise``):
"opsætning", "Opsaetning" and "OPSÆTNING" are the same word, and a word also matches inside
a Danish compound ("opsætningsvejledning") or before an ending ("serviceaftalen").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from mailtracker.errors import TaskDefinitionError
from mailtracker.inbound.mail.text import normalise
from mailtracker.tables import Table

SenderClass = Literal["eg", "signing"]
Where = Literal["subject", "anywhere"]
SENDER_CLASSES: tuple[SenderClass, ...] = ("eg", "signing")
CALENDAR_METHODS = ("REQUEST", "CANCEL", "PUBLISH", "REPLY", "COUNTER")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class MilestoneRule:
    """Sets ``milestone`` when a mail from one of ``senders`` matches.

    A rule matches when the mail carries a calendar part with method ``calendar``, or when
    every group of ``words`` has at least one word in the subject (``where = "subject"``) or
    in subject and body (``"anywhere"``) — and, if ``require_pdf``, the mail has a PDF.
    Words are stored normalised.
    """

    name: str
    milestone: str
    senders: tuple[SenderClass, ...]
    words: tuple[tuple[str, ...], ...] = ()
    where: Where = "anywhere"
    calendar: str | None = None
    require_pdf: bool = False


@dataclass(frozen=True, slots=True)
class NegativeRule:
    """A mail from one of ``from_domains`` (or a subdomain), or with one of
    ``subject_words`` in its subject, or one of ``words`` anywhere, is never an EG event."""

    name: str
    description: str
    from_domains: tuple[str, ...] = ()
    subject_words: tuple[str, ...] = ()
    words: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InboundRules:
    """Rules in precedence order (see ``classify``), negatives, and the words that show a
    signing platform's mail carries an EG document (matched as whole words)."""

    rules: tuple[MilestoneRule, ...]
    negatives: tuple[NegativeRule, ...]
    eg_document_words: tuple[str, ...]


# Mirrors the [inbound] section of config/tasks/efaktura-8b.toml (a test keeps them equal).
DEFAULT_MAPPING: Mapping[str, Any] = {
    "eg_document_words": ["EG", "EG A/S", "eg.dk", "EG Danmark"],
    "rules": [
        {"name": "agreement_signed", "milestone": "service_agreement_signed",
         "senders": ["eg", "signing"], "where": "subject",
         "words": [["underskrevet af alle parter", "dokumentet er underskrevet",
                    "er nu underskrevet", "signed by all parties", "completed"]]},
        {"name": "webinar_cancelled", "milestone": "webinar_cancelled", "senders": ["eg"],
         "calendar": "CANCEL",
         "words": [["aflyst", "aflysning", "cancelled", "canceled"], ["webinar"]]},
        {"name": "webinar_invited", "milestone": "webinar_invited", "senders": ["eg"],
         "calendar": "REQUEST", "words": [["webinar", "invitation"]]},
        {"name": "agreement_received", "milestone": "service_agreement_received",
         "senders": ["eg", "signing"],
         "words": [["serviceaftale", "aftale til underskrift", "underskrift"]]},
        {"name": "guide_received", "milestone": "guide_received", "senders": ["eg"],
         "words": [["vejledning", "opsætning"], ["efaktura", "videresendelse"]]},
    ],
    "negatives": [
        {"name": "nets_efaktura",
         "description": "Nets/Mastercard eFaktura mail to consumers (e-faktura i din netbank)",
         "from_domains": ["nets.eu", "mastercard.com"],
         "words": ["mastercard payment services", "e-faktura i din netbank"]},
        {"name": "kombit_serviceplatformen",
         "description": "KOMBIT Serviceplatformen notices about their own serviceaftaler",
         "from_domains": ["kombit.dk", "serviceplatformen.dk"],
         "subject_words": ["serviceplatformen"]},
        {"name": "kp_dk",
         "description": "Københavns Professionshøjskole (kp.dk), not KP the pension system",
         "from_domains": ["kp.dk"]},
    ],
}

_TOP_KEYS = {"eg_document_words", "rules", "negatives"}
_RULE_KEYS = {"name", "milestone", "senders", "words", "where", "calendar", "require_pdf"}
_NEGATIVE_KEYS = {"name", "description", "from_domains", "subject_words", "words"}


def rules_from_mapping(data: Mapping[str, Any], *, path: Path | None = None,
                       prefix: str = "inbound") -> InboundRules:
    """Validate the ``[inbound]`` table. Raises ``TaskDefinitionError`` naming the key."""
    given = Table(data, prefix, path, TaskDefinitionError)
    given.unknown_keys(_TOP_KEYS)
    t = Table({**DEFAULT_MAPPING, **data}, prefix, path, TaskDefinitionError)
    words = tuple(normalise(w) for w in t.strings("eg_document_words"))
    rules = tuple(_rule(r) for r in t.tables("rules"))
    negatives = tuple(_negative(n) for n in t.tables("negatives"))
    _unique(t, "rules", [r.name for r in rules])
    _unique(t, "negatives", [n.name for n in negatives])
    return InboundRules(rules=rules, negatives=negatives, eg_document_words=words)


def _rule(t: Table) -> MilestoneRule:
    t.unknown_keys(_RULE_KEYS)
    senders = t.strings("senders", ("eg",))
    if not senders or any(s not in SENDER_CLASSES for s in senders):
        raise t.fail("senders", f"must list one or more of {', '.join(SENDER_CLASSES)}")
    where = t.choice("where", "anywhere", ("subject", "anywhere"))
    calendar = t.data.get("calendar")
    if calendar is not None:
        if not isinstance(calendar, str) or calendar.upper() not in CALENDAR_METHODS:
            raise t.fail("calendar", f"must be one of {', '.join(CALENDAR_METHODS)}")
        calendar = calendar.upper()
    groups = _word_groups(t, "words")
    if not groups and calendar is None:
        raise t.fail(None, "a rule needs words or a calendar method")
    return MilestoneRule(
        name=t.name("name"),
        milestone=t.name("milestone"),
        senders=cast(tuple[SenderClass, ...], tuple(dict.fromkeys(senders))),
        words=groups,
        where=cast(Where, where),
        calendar=calendar,
        require_pdf=t.flag("require_pdf", False),
    )


def _negative(t: Table) -> NegativeRule:
    t.unknown_keys(_NEGATIVE_KEYS)
    domains = tuple(d.lstrip("@").rstrip(".") for d in t.str_list("from_domains", ()))
    if any(not d or "@" in d or " " in d for d in domains):
        raise t.fail("from_domains", "must be domain names such as kp.dk")
    subject_words = _words(t, "subject_words", t.strings("subject_words"))
    words = _words(t, "words", t.strings("words"))
    if not (domains or subject_words or words):
        raise t.fail(None, "a negative needs from_domains, subject_words or words")
    description = t.text("description", "") or ""
    return NegativeRule(name=t.name("name"), description=" ".join(description.split()),
                        from_domains=domains, subject_words=subject_words, words=words)


def _word_groups(t: Table, key: str) -> tuple[tuple[str, ...], ...]:
    """``["a", "b"]`` is one group (any of a, b); ``[["a"], ["b", "c"]]`` is a AND (b or c)."""
    value = t.data.get(key, [])
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return (_words(t, key, value),) if value else ()
    if isinstance(value, list) and all(isinstance(v, list) for v in value):
        groups = tuple(_words(t, f"{key}[{i}]", v) for i, v in enumerate(value))
        if any(not g for g in groups):
            raise t.fail(key, "a word group must not be empty")
        return groups
    raise t.fail(key, "must be a list of words or a list of lists of words, not a mix"
                 if isinstance(value, list) else
                 "must be a list of words or a list of lists of words")


def _words(t: Table, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise t.fail(key, "must be a list of strings")
    words = tuple(normalise(w) for w in value)
    if any(not w for w in words):
        raise t.fail(key, "words must not be empty")
    return words


def _unique(t: Table, key: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise t.fail(key, f"duplicate name {name!r}")
        seen.add(name)


DEFAULT_RULES: InboundRules = rules_from_mapping(DEFAULT_MAPPING)
