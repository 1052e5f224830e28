"""``IncomingMessage`` → one ``Classification``: milestone, reply, auto-reply, bounce, …

Pure: the rules, the trust settings and our sent Message-IDs come in as arguments.

The steps, first hit wins:

1. ``unparseable`` — ``parse`` gave up (the reason says why).
2. ``bounce`` — a DSN whose returned Message-ID is ours or whose failed recipient is one of
   ours. Any other delivery report is ``unrelated``.
3. negatives — Nets, KOMBIT Serviceplatformen, kp.dk, … → ``unrelated``; they win over
   every positive rule.
4. EG rules — the mail claims an EG sender (or a signing platform carrying an EG document)
   and a rule matches. Authenticated (see ``senderauth``) → ``milestone``; otherwise →
   ``quarantine`` with the reason. A forwarded copy (``message/rfc822`` or an inline
   ``VS:``/``Fwd:``) from anyone who is not an authenticated EG sender → ``quarantine``.
5. ``auto_reply`` — RFC 3834 and out-of-office signals; never acknowledges. An
   out-of-office reply skips step 4 (it quotes the words of the mail it answers).
6. ``acknowledged`` — In-Reply-To/References holds one of our Message-IDs.
7. ``unrelated``.

Rule precedence (one milestone per message): a rule matched in the subject or by a calendar
part beats a rule matched only in the body; between equals, the earlier rule in the task
file wins. The default order is signed (subject only), webinar cancelled, webinar invited,
agreement received, guide received: "Serviceaftale er underskrevet af alle parter" is a
signature, a CANCEL beats the word "webinar", and a guide that mentions the agreement in its
body stays a guide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mailtracker.inbound.judge.rules import InboundRules, MilestoneRule, NegativeRule, SenderClass
from mailtracker.inbound.judge.senderauth import domain_under, verify_sender
from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mail.facts import CalendarEvent, IncomingMessage
from mailtracker.inbound.mail.ical import find_join_url
from mailtracker.inbound.mail.text import clean, contains, contains_word, normalise
from mailtracker.models import Evidence
from mailtracker.task.verdict import Classification, Kind

_PERSONAL_AUTO_SIGNALS = ("Auto-Submitted: auto-replied", "X-Autoreply", "X-Autorespond",
                          "Subject:")
_BODY_DOMAIN_RE = re.compile(r"@([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)", re.IGNORECASE)


@dataclass(frozen=True)
class _View:
    """Normalised text of a message for matching."""

    subject: str
    text: str  # subject, From names, body, file names, calendar summaries (and forwards)
    has_pdf: bool
    calendar_methods: frozenset[str]


def classify(msg: IncomingMessage, rules: InboundRules, trust: TrustSettings,
             sent: Mapping[str, str]) -> Classification:
    """Classify ``msg``. ``sent`` maps our Message-IDs (``<…>``) to the recipient e-mail."""
    evidence = _evidence(msg, {})
    if msg.unparseable_reason is not None:
        return Classification(Kind.UNPARSEABLE, f"unparseable: {msg.unparseable_reason}",
                              evidence, reason=msg.unparseable_reason)
    ours = {_norm_id(k): v.lower() for k, v in sent.items() if _norm_id(k)}
    if msg.delivery_report is not None:
        return _bounce(msg, ours, evidence)
    view = _view(msg, include_forwarded=True)
    negative = _negative(msg, view, rules)
    if negative is not None:
        return Classification(Kind.UNRELATED, f"not an EG event: {negative.description}",
                              evidence, reason=negative.description, rule=negative.name)
    if not _is_personal_auto_reply(msg):
        eg_event = _eg_event(msg, view, rules, trust)
        if eg_event is not None:
            return eg_event
    return _reply(msg, ours, evidence)


def _is_personal_auto_reply(msg: IncomingMessage) -> bool:
    """An out-of-office reply ("Automatisk svar: Serviceaftale …") quotes the words of the
    mail it answers, so it is never an EG event. Machine mail that is merely
    ``Auto-Submitted: auto-generated`` or ``Precedence: bulk`` (signing platforms, mass
    invitations) is still matched against the EG rules."""
    return any(s.startswith(_PERSONAL_AUTO_SIGNALS) for s in msg.auto_reply_signals)


def _eg_event(msg: IncomingMessage, view: _View, rules: InboundRules,
              trust: TrustSettings) -> Classification | None:
    eg_document = _carries_eg_document(view, rules)
    classes = _claimed_classes(msg.from_header.claimed_domains, eg_document, trust)
    if classes:
        rule = best_rule(rules, view, classes)
        if rule is None:
            return None
        verdict = verify_sender(msg, trust, carries_eg_document=eg_document)
        if verdict.authenticated and verdict.sender_class in rule.senders:
            return _milestone(msg, rule, verdict.basis)
        problem = verdict.problem or f"rule {rule.name} does not accept {verdict.domain}"
        return _quarantine(msg, rule, problem)
    return _forwarded_copy(msg, view, rules, trust)


def _forwarded_copy(msg: IncomingMessage, view: _View, rules: InboundRules,
                    trust: TrustSettings) -> Classification | None:
    """An EG mail forwarded by someone who is not an EG sender: its inner headers prove
    nothing (anyone can write them), so it goes to review."""
    outer = msg.from_header.domain or "an unknown sender"
    sender = msg.from_header.addresses[0].email if msg.from_header.addresses else outer
    for inner in msg.forwarded:
        inner_view = _view(inner, include_forwarded=True)
        eg_document = _carries_eg_document(inner_view, rules)
        classes = _claimed_classes(inner.from_header.claimed_domains, eg_document, trust)
        rule = best_rule(rules, inner_view, classes) if classes else None
        if rule is not None:
            return _quarantine(msg, rule, f"forwarded copy from {sender}")
    if msg.forward_subject and not msg.forwarded:
        mentioned = [m.lower() for m in _BODY_DOMAIN_RE.findall(msg.body_text)]
        classes = _claimed_classes(tuple(mentioned), _carries_eg_document(view, rules), trust)
        rule = best_rule(rules, view, classes) if classes else None
        if rule is not None:
            return _quarantine(msg, rule, f"forwarded copy from {sender} (inline)")
    return None


def best_rule(rules: InboundRules, view: _View,
              classes: frozenset[SenderClass]) -> MilestoneRule | None:
    """The strongest matching rule: subject/calendar matches before body-only matches,
    then the order of the rules."""
    best: tuple[int, int, MilestoneRule] | None = None
    for index, rule in enumerate(rules.rules):
        tier = _rule_tier(rule, view, classes)
        if tier is not None and (best is None or (tier, index) < best[:2]):
            best = (tier, index, rule)
    return best[2] if best else None


def _rule_tier(rule: MilestoneRule, view: _View,
               classes: frozenset[SenderClass]) -> int | None:
    """0: matched by the subject or a calendar part; 1: only by the body; None: no match."""
    if not classes.intersection(rule.senders):
        return None
    if rule.require_pdf and not view.has_pdf:
        return None
    if rule.calendar is not None and rule.calendar in view.calendar_methods:
        return 0
    if not rule.words:
        return None
    if all(any(contains(view.subject, w) for w in group) for group in rule.words):
        return 0
    if rule.where == "anywhere" and all(any(contains(view.text, w) for w in group)
                                        for group in rule.words):
        return 1
    return None


def _claimed_classes(domains: tuple[str, ...], eg_document: bool,
                     trust: TrustSettings) -> frozenset[SenderClass]:
    classes: set[SenderClass] = set()
    for domain in domains:
        if domain_under(domain, trust.sender_domains):
            classes.add("eg")
        elif eg_document and domain_under(domain, trust.signing_domains):
            classes.add("signing")
    return frozenset(classes)


def _carries_eg_document(view: _View, rules: InboundRules) -> bool:
    return any(contains_word(view.text, w) for w in rules.eg_document_words)


def _negative(msg: IncomingMessage, view: _View, rules: InboundRules) -> NegativeRule | None:
    domains = set(msg.from_header.claimed_domains)
    domains.update(a.domain for a in msg.from_header.addresses)
    for negative in rules.negatives:
        if any(domain_under(d, negative.from_domains) for d in domains):
            return negative
        if any(contains(view.subject, w) for w in negative.subject_words):
            return negative
        if any(contains(view.text, w) for w in negative.words):
            return negative
    return None


def _view(msg: IncomingMessage, *, include_forwarded: bool) -> _View:
    texts = [msg.subject, *(a.name for a in msg.from_header.addresses), msg.body_text]
    texts.extend(a.filename for a in msg.attachments if a.filename)
    texts.extend(e.summary for e in msg.calendar_events)
    has_pdf = msg.has_pdf
    methods = {e.method for e in msg.calendar_events if e.method}
    if include_forwarded:
        for inner in msg.forwarded:
            inner_view = _view(inner, include_forwarded=True)
            texts.append(inner_view.text)
            has_pdf = has_pdf or inner_view.has_pdf
            methods.update(inner_view.calendar_methods)
    return _View(subject=normalise(msg.subject), text=normalise(" ".join(texts)),
                 has_pdf=has_pdf, calendar_methods=frozenset(methods))


def _milestone(msg: IncomingMessage, rule: MilestoneRule, auth: str) -> Classification:
    details = _webinar_details(msg, rule) if rule.milestone.startswith("webinar") else {}
    if auth:
        details["auth"] = clean(auth, 200)
    evidence = _evidence(msg, details)
    return Classification(
        Kind.MILESTONE, f"{rule.milestone} from {evidence.sender}: {_short(msg.subject)}",
        evidence, milestone=rule.milestone, rule=rule.name)


def _quarantine(msg: IncomingMessage, rule: MilestoneRule, reason: str) -> Classification:
    reason = clean(reason, 300)
    return Classification(
        Kind.QUARANTINE, f"quarantined, looks like {rule.milestone}: {reason}",
        _evidence(msg, {}), milestone=rule.milestone, reason=reason, rule=rule.name)


def _webinar_details(msg: IncomingMessage, rule: MilestoneRule) -> dict[str, str]:
    events = [*msg.calendar_events, *(e for f in msg.forwarded for e in f.calendar_events)]
    wanted = rule.calendar or ("CANCEL" if "cancel" in rule.milestone else "REQUEST")
    event: CalendarEvent | None = next((e for e in events if e.method == wanted),
                                       events[0] if events else None)
    details: dict[str, str] = {}
    if event is not None:
        if event.start is not None:
            details["start"] = event.start.isoformat()
        if event.uid:
            details["ical_uid"] = event.uid
        if event.join_url:
            details["join_url"] = event.join_url
    if "join_url" not in details:
        link = find_join_url(msg.body_text, *(f.body_text for f in msg.forwarded))
        if link:
            details["join_url"] = link
    return details


def _bounce(msg: IncomingMessage, ours: Mapping[str, str],
            evidence: Evidence) -> Classification:
    report = msg.delivery_report
    assert report is not None
    failed = [s for s in report.statuses if s.failed]
    by_id = ours.get(_norm_id(report.original_message_id or ""))
    our_recipients = set(ours.values())
    recipient = by_id
    for status in failed:
        for address in (status.original_recipient, status.recipient):
            if recipient is None and address and address.lower() in our_recipients:
                recipient = address.lower()
    if not failed or recipient is None:
        what = "no failed recipient" if not failed else "not about our mail"
        return Classification(Kind.UNRELATED, f"delivery report, {what}", evidence)
    status = failed[0]
    reason = clean(f"{status.status} {status.diagnostic}".strip(), 300) or "delivery failed"
    if status.recipient.lower() != recipient:
        reason += f" (failed address {status.recipient})"
    return Classification(Kind.BOUNCE, f"bounce: mail to {recipient} failed: {reason}",
                          evidence, recipient=recipient, reason=reason)


def _reply(msg: IncomingMessage, ours: Mapping[str, str],
           evidence: Evidence) -> Classification:
    referenced = [_norm_id(i) for i in (msg.in_reply_to, *reversed(msg.references)) if i]
    recipient = next((ours[i] for i in referenced if i in ours), None)
    sender = evidence.sender or "an unknown sender"
    if msg.auto_reply_signals:
        signal = msg.auto_reply_signals[0]
        to = f" to mail for {recipient}" if recipient else ""
        return Classification(Kind.AUTO_REPLY, f"auto-reply from {sender}{to} ({signal})",
                              evidence, recipient=recipient, reason=signal)
    if recipient is None:
        return Classification(Kind.UNRELATED, "unrelated", evidence)
    details = {"from": sender} if sender.lower() != recipient else {}
    note = f" (replied by {sender})" if details else ""
    return Classification(
        Kind.ACKNOWLEDGED, f"reply acknowledges mail to {recipient}{note}",
        _evidence(msg, details), recipient=recipient)


def _evidence(msg: IncomingMessage, details: dict[str, str]) -> Evidence:
    sender = msg.from_header.addresses[0].email if msg.from_header.addresses else None
    return Evidence(source="mail", message_id=msg.message_id, sender=sender,
                    subject=msg.subject or None, details=details)


def _norm_id(message_id: str) -> str:
    bare = message_id.strip().strip("<>").strip()
    return f"<{bare}>" if bare else ""


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
