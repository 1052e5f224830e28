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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from mailtracker.errors import TaskDefinitionError
from mailtracker.inbound.mail.text import normalise

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
    if not isinstance(data, Mapping):
        raise TaskDefinitionError("must be a table", path=path, key=prefix)
    _no_unknown(data, _TOP_KEYS, prefix, path)
    merged = {**DEFAULT_MAPPING, **data}
    words = tuple(normalise(w) for w in _str_list(merged["eg_document_words"],
                                                   f"{prefix}.eg_document_words", path))
    rules = tuple(_rule(r, f"{prefix}.rules[{i}]", path)
                  for i, r in enumerate(_tables(merged["rules"], f"{prefix}.rules", path)))
    negatives = tuple(_negative(n, f"{prefix}.negatives[{i}]", path)
                      for i, n in enumerate(_tables(merged["negatives"],
                                                    f"{prefix}.negatives", path)))
    _unique([r.name for r in rules], f"{prefix}.rules", path)
    _unique([n.name for n in negatives], f"{prefix}.negatives", path)
    return InboundRules(rules=rules, negatives=negatives, eg_document_words=words)


def _rule(data: Mapping[str, Any], key: str, path: Path | None) -> MilestoneRule:
    _no_unknown(data, _RULE_KEYS, key, path)
    senders = _str_list(data.get("senders", ["eg"]), f"{key}.senders", path)
    if not senders or any(s not in SENDER_CLASSES for s in senders):
        raise TaskDefinitionError(f"must list one or more of {', '.join(SENDER_CLASSES)}",
                                  path=path, key=f"{key}.senders")
    where = data.get("where", "anywhere")
    if where not in ("subject", "anywhere"):
        raise TaskDefinitionError('must be "subject" or "anywhere"', path=path,
                                  key=f"{key}.where")
    calendar = data.get("calendar")
    if calendar is not None:
        if not isinstance(calendar, str) or calendar.upper() not in CALENDAR_METHODS:
            raise TaskDefinitionError(f"must be one of {', '.join(CALENDAR_METHODS)}",
                                      path=path, key=f"{key}.calendar")
        calendar = calendar.upper()
    require_pdf = data.get("require_pdf", False)
    if not isinstance(require_pdf, bool):
        raise TaskDefinitionError("must be true or false", path=path, key=f"{key}.require_pdf")
    groups = _word_groups(data.get("words", []), f"{key}.words", path)
    if not groups and calendar is None:
        raise TaskDefinitionError("a rule needs words or a calendar method", path=path, key=key)
    return MilestoneRule(
        name=_name(data.get("name"), f"{key}.name", path),
        milestone=_name(data.get("milestone"), f"{key}.milestone", path),
        senders=cast(tuple[SenderClass, ...], tuple(dict.fromkeys(senders))),
        words=groups,
        where=cast(Where, where),
        calendar=calendar,
        require_pdf=require_pdf,
    )


def _negative(data: Mapping[str, Any], key: str, path: Path | None) -> NegativeRule:
    _no_unknown(data, _NEGATIVE_KEYS, key, path)
    domains = tuple(d.strip().lower().lstrip("@").rstrip(".")
                    for d in _str_list(data.get("from_domains", []), f"{key}.from_domains",
                                       path))
    if any(not d or "@" in d or " " in d for d in domains):
        raise TaskDefinitionError("must be domain names such as kp.dk", path=path,
                                  key=f"{key}.from_domains")
    subject_words = _words(data.get("subject_words", []), f"{key}.subject_words", path)
    words = _words(data.get("words", []), f"{key}.words", path)
    if not (domains or subject_words or words):
        raise TaskDefinitionError("a negative needs from_domains, subject_words or words",
                                  path=path, key=key)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise TaskDefinitionError("must be a string", path=path, key=f"{key}.description")
    return NegativeRule(name=_name(data.get("name"), f"{key}.name", path),
                        description=" ".join(description.split()),
                        from_domains=domains, subject_words=subject_words, words=words)


def _word_groups(value: Any, key: str, path: Path | None) -> tuple[tuple[str, ...], ...]:
    """``["a", "b"]`` is one group (any of a, b); ``[["a"], ["b", "c"]]`` is a AND (b or c)."""
    if not isinstance(value, list):
        raise TaskDefinitionError("must be a list of words or a list of lists of words",
                                  path=path, key=key)
    if all(isinstance(v, str) for v in value):
        return (_words(value, key, path),) if value else ()
    if all(isinstance(v, list) for v in value):
        groups = tuple(_words(v, f"{key}[{i}]", path) for i, v in enumerate(value))
        if any(not g for g in groups):
            raise TaskDefinitionError("a word group must not be empty", path=path, key=key)
        return groups
    raise TaskDefinitionError("must be a list of words or a list of lists of words, "
                              "not a mix", path=path, key=key)


def _words(value: Any, key: str, path: Path | None) -> tuple[str, ...]:
    words = tuple(normalise(w) for w in _str_list(value, key, path))
    if any(not w for w in words):
        raise TaskDefinitionError("words must not be empty", path=path, key=key)
    return words


def _str_list(value: Any, key: str, path: Path | None) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaskDefinitionError("must be a list of strings", path=path, key=key)
    return list(value)


def _tables(value: Any, key: str, path: Path | None) -> Sequence[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise TaskDefinitionError("must be an array of tables", path=path, key=key)
    return value


def _name(value: Any, key: str, path: Path | None) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise TaskDefinitionError(f"must be a lower-case name such as guide_received, "
                                  f"not {value!r}", path=path, key=key)
    return value


def _no_unknown(data: Mapping[str, Any], allowed: set[str], key: str,
                path: Path | None) -> None:
    for name in data:
        if name not in allowed:
            raise TaskDefinitionError(f"unknown key (allowed: {', '.join(sorted(allowed))})",
                                      path=path, key=f"{key}.{name}")


def _unique(names: list[str], key: str, path: Path | None) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise TaskDefinitionError(f"duplicate name {name!r}", path=path, key=key)
        seen.add(name)


DEFAULT_RULES: InboundRules = rules_from_mapping(DEFAULT_MAPPING)
