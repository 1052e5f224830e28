"""Is a message really from the EG (or signing-platform) sender it claims? (DESIGN.md "Trust")

Authenticated means: a clean From (one header, one address, no defect) whose domain is an
allowed sender domain — and, with ``sender_auth = "dmarc"``, an Authentication-Results header
written by the municipality's own receiving server (``authserv_id``; headers with any other
id are ignored, forged ones from outside look exactly like that) showing ``dmarc=pass`` for
the From domain or a ``dkim=pass`` aligned with it. A ``dmarc=fail`` for the From domain in
one of our own headers wins over any pass: the server that wrote it saw the real message.

Alignment is relaxed without a public-suffix list: the configured sender domain the From
falls under (``eg.dk`` for ``kundeservice@mail.eg.dk``) serves as the organisational domain,
so ``header.d=mail.eg.dk`` aligns with a From at ``eg.dk`` and vice versa.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailtracker.inbound.judge.rules import SenderClass
from mailtracker.inbound.mail.facts import AuthResult, IncomingMessage
from mailtracker.settings.config import TrustSettings

_NEGATIVE_DMARC = {"fail", "permerror"}


@dataclass(frozen=True)
class SenderVerdict:
    """``problem`` is ``None`` when the sender is authenticated as ``sender_class``."""

    sender_class: SenderClass | None
    domain: str | None
    problem: str | None

    @property
    def authenticated(self) -> bool:
        return self.problem is None


def domain_under(domain: str, bases: Iterable[str]) -> str | None:
    """The entry of ``bases`` that ``domain`` equals or is a subdomain of, else ``None``."""
    domain = domain.lower().rstrip(".")
    for base in bases:
        base = base.lower().strip(".")
        if base and (domain == base or domain.endswith("." + base)):
            return base
    return None


def verify_sender(msg: IncomingMessage, trust: TrustSettings, *,
                  carries_eg_document: bool) -> SenderVerdict:
    """Decide whether ``msg`` authenticates as an EG sender or a signing platform."""
    author = msg.from_header.address
    if author is None:
        problems = msg.from_header.problems or ("From cannot be read",)
        return SenderVerdict(None, msg.from_header.domain, problems[0])
    domain = author.domain
    base = domain_under(domain, trust.sender_domains)
    sender_class: SenderClass = "eg"
    if base is None:
        base = domain_under(domain, trust.signing_domains)
        sender_class = "signing"
        if base is None:
            return SenderVerdict(None, domain, f"{domain} is not an EG sender domain")
        if not carries_eg_document:
            return SenderVerdict(None, domain,
                                 f"mail from signing platform {domain} names no EG document")
    problem = _auth_problem(msg, domain, base, trust)
    return SenderVerdict(sender_class, domain, problem)


def _auth_problem(msg: IncomingMessage, domain: str, base: str,
                  trust: TrustSettings) -> str | None:
    if trust.sender_auth == "allowlist":
        return None
    authserv = (trust.authserv_id or "").strip().lower()
    if not authserv:
        return 'no authserv_id configured for sender_auth = "dmarc"'
    headers = [ar for ar in msg.auth_results if ar.authserv_id == authserv]
    if not headers:
        return f"no Authentication-Results from {authserv}"
    ours = [r for ar in headers for r in ar.results]
    dmarc = [r for r in ours if r.method == "dmarc"
             and (r.prop("header.from") or "").lower().rstrip(".") == domain]
    failed = [r for r in dmarc if r.result in _NEGATIVE_DMARC]
    if failed:
        return f"{authserv}: dmarc={failed[0].result} for {domain}"
    if any(r.result == "pass" for r in dmarc):
        return None
    if any(r.method == "dkim" and r.result == "pass" and _aligned(_dkim_domain(r), base)
           for r in ours):
        return None
    return f"{authserv}: {_describe(ours, domain)}"


def _dkim_domain(result: AuthResult) -> str:
    domain = result.prop("header.d") or (result.prop("header.i") or "").rpartition("@")[2]
    return domain.lower().rstrip(".")


def _aligned(dkim_domain: str, base: str) -> bool:
    return bool(dkim_domain) and domain_under(dkim_domain, (base,)) is not None


def _describe(results: list[AuthResult], domain: str) -> str:
    """``'dkim=fail, spf=pass, dmarc=pass for evil.example'``: why nothing authenticated."""
    described = []
    for r in results:
        if r.method not in {"dkim", "dmarc", "spf"}:
            continue
        text = f"{r.method}={r.result}"
        other = r.prop("header.from") if r.method == "dmarc" else (
            _dkim_domain(r) if r.method == "dkim" else None)
        if r.result == "pass" and other and other.lower() != domain:
            text += f" for {other.lower()}"
        described.append(text)
    return ", ".join(described[:6]) or "no dkim or dmarc result"
