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

With ``sender_auth = "exchange_online"`` the verdict is Exchange Online's own. Exchange writes
its ``Authentication-Results`` on top and without an authserv-id, and renames every header of
that name that came with the message to ``Authentication-Results-Original`` (those are never
read). So the *topmost* header must have no authserv-id and say ``dmarc=pass`` with a
``header.from`` equal to the clean From's domain (``bestguesspass`` means the domain publishes
no DMARC record: not a pass), and the topmost ``X-MS-Exchange-CrossTenant-Id`` must be the
municipality's tenant, so the message was received by that tenant's Exchange Online.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailtracker.inbound.judge.rules import SenderClass
from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mail.facts import AuthResult, IncomingMessage

_NEGATIVE_DMARC = {"fail", "permerror"}


@dataclass(frozen=True)
class SenderVerdict:
    """``problem`` is ``None`` when the sender is authenticated as ``sender_class``."""

    sender_class: SenderClass | None
    domain: str | None
    problem: str | None
    basis: str = ""  # when authenticated: which verdict, from which server (for the evidence)

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
    basis = _basis(msg, domain, base, trust) if problem is None else ""
    return SenderVerdict(sender_class, domain, problem, basis)


def _basis(msg: IncomingMessage, domain: str, base: str, trust: TrustSettings) -> str:
    """What authenticated the sender, as the evidence shows it."""
    if trust.sender_auth == "allowlist":
        return "not checked (sender_auth = allowlist)"
    if trust.sender_auth == "exchange_online":
        tenant = (trust.tenant_id or "").lower()
        return f"Exchange Online (tenant {tenant}): dmarc=pass for {domain}"
    authserv = (trust.authserv_id or "").strip().lower()
    ours = [r for ar in msg.auth_results if ar.authserv_id == authserv for r in ar.results]
    if any(r.method == "dmarc" and r.result == "pass"
           and (r.prop("header.from") or "").lower().rstrip(".") == domain for r in ours):
        return f"{authserv}: dmarc=pass for {domain}"
    dkim = next((_dkim_domain(r) for r in ours if r.method == "dkim" and r.result == "pass"
                 and _aligned(_dkim_domain(r), base)), base)
    return f"{authserv}: dkim=pass for {dkim}"


def _auth_problem(msg: IncomingMessage, domain: str, base: str,
                  trust: TrustSettings) -> str | None:
    if trust.sender_auth == "allowlist":
        return None
    if trust.sender_auth == "exchange_online":
        return _exchange_problem(msg, domain, trust)
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


def _exchange_problem(msg: IncomingMessage, domain: str, trust: TrustSettings) -> str | None:
    tenant = (trust.tenant_id or "").lower()
    if not msg.exchange_tenant_ids:
        return "no X-MS-Exchange-CrossTenant-Id: not received by Exchange Online"
    if msg.exchange_tenant_ids[0] != tenant:
        return (f"received by Exchange Online tenant {msg.exchange_tenant_ids[0][:36]}, "
                f"not {tenant}")
    if not msg.auth_results:
        return "no Authentication-Results from Exchange Online"
    top = msg.auth_results[0]
    if top.authserv_id:
        return (f"the topmost Authentication-Results is from {top.authserv_id[:60]}, "
                "not Exchange Online's own (which has no authserv-id)")
    dmarc = [r for r in top.results if r.method == "dmarc"]
    if not dmarc:
        return "Exchange Online: no dmarc result"
    for verdict in dmarc:  # Exchange writes one; should there be more, every one must pass
        header_from = (verdict.prop("header.from") or "").lower().rstrip(".")
        if verdict.result != "pass":
            return f"Exchange Online: dmarc={verdict.result[:30]} for {header_from or domain}"
        if header_from != domain:
            return (f"Exchange Online: dmarc=pass for {header_from[:60] or 'no domain'}, "
                    f"not {domain}")
    return None


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
