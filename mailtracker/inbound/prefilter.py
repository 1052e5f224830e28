"""Header-only prefilter: which new messages are worth a full fetch. Pure.

A shared municipal mailbox holds tens of thousands of unrelated messages; only those that
could matter are fetched whole: mail claiming an EG or signing-platform sender (genuine or
spoofed — spoofs must reach quarantine), replies to our mail, delivery reports, forwarded
copies, and anything whose subject carries a rule's words. A false positive costs one fetch;
a false negative would lose an event, so the filter errs on the side of fetching.
"""

from __future__ import annotations

from collections.abc import Mapping

from mailtracker.config import TrustSettings
from mailtracker.inbound.facts import IncomingMessage
from mailtracker.inbound.rules import InboundRules
from mailtracker.inbound.senderauth import domain_under
from mailtracker.inbound.text import contains, normalise


def is_candidate(head: IncomingMessage, header_bytes: bytes, rules: InboundRules,
                 trust: TrustSettings, sent: Mapping[str, str]) -> bool:
    """True if the message must be fetched and classified."""
    domains = head.from_header.claimed_domains or tuple(
        a.domain for a in head.from_header.addresses)
    watched = (*trust.sender_domains, *trust.signing_domains,
               *(d for n in rules.negatives for d in n.from_domains))
    if any(domain_under(d, watched) for d in domains):
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
    return any(contains(subject, word) for rule in rules.rules for group in rule.words
               for word in group)
