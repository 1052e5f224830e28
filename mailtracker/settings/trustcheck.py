"""Warnings about weakened sender authentication, shown by ``status`` and ``check``."""

from __future__ import annotations

from mailtracker.settings.config import Settings


def trust_warnings(settings: Settings) -> list[str]:
    warnings = []
    if settings.trust.sender_auth == "allowlist":
        warnings.append(
            'sender_auth = "allowlist": EG mail is trusted by its From address alone, which '
            "anyone can forge; switch to \"dmarc\" if your mail server adds "
            "Authentication-Results headers")
    if settings.imap is not None and settings.imap.tls == "none":
        warnings.append('imap.tls = "none": the mailbox is read without encryption')
    if settings.smtp is not None and settings.smtp.tls == "none":
        warnings.append('smtp.tls = "none": mail is sent without encryption')
    return warnings


def trust_mode(settings: Settings) -> str:
    """The sender authentication in force, in words ``status`` shows."""
    trust = settings.trust
    if trust.sender_auth == "exchange_online":
        return f"exchange_online (Exchange Online's verdict, tenant {trust.tenant_id})"
    if trust.sender_auth == "dmarc":
        return f"dmarc (Authentication-Results from {trust.authserv_id or 'unset'})"
    return "allowlist (From address only)"
