"""What the newest mail says about the authserv-id the receiving server writes.

A message's topmost ``Authentication-Results`` header is the one the municipality's own
receiving server added; its authserv-id is what ``[trust] authserv_id`` must be. Exchange
Online writes that header without an authserv-id and stamps ``X-MS-Exchange-CrossTenant-Id``:
then ``sender_auth = "exchange_online"`` with that tenant is the mode to suggest. ``check``
reads the header blocks of the newest messages and asks :func:`judge_authserv`. Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mail.parse import parse

Verdict = Literal["ok", "warn", "fail"]

_ALLOWLIST_RISK = ('sender_auth = "allowlist" trusts EG mail by its From address alone, which '
                   "anyone can forge")


def authserv_ids(header_bytes: bytes) -> list[str]:
    """The authserv-id of each ``Authentication-Results`` header, topmost (the receiving
    server's) first; lower case, '' for a header without one (as Exchange Online writes).

    Read by the same parser that decides trust in ``poll``, so what ``check`` suggests is
    what the trust decision will compare with."""
    return [ar.authserv_id for ar in parse(header_bytes).auth_results]


def exchange_tenant(header_bytes: bytes) -> str | None:
    """The Exchange Online tenant that received the message: the topmost
    ``X-MS-Exchange-CrossTenant-Id`` when the topmost ``Authentication-Results`` has no
    authserv-id (Exchange Online's own), else ``None``."""
    msg = parse(header_bytes)
    if msg.auth_results and not msg.auth_results[0].authserv_id and msg.exchange_tenant_ids:
        return msg.exchange_tenant_ids[0]
    return None


def judge_authserv(trust: TrustSettings, headers: Sequence[bytes]
                   ) -> tuple[Verdict, str, str]:
    """Whether ``trust`` matches what the server writes in ``headers`` (the header blocks of
    the newest messages, oldest first): ``(verdict, detail, fix)``; ``fix`` names the
    authserv-id (or Exchange Online tenant) to configure when it can tell."""
    tenants = Counter(t for t in map(exchange_tenant, reversed(headers)) if t)
    tenant = tenants.most_common(1)[0][0] if tenants else None
    if trust.sender_auth == "exchange_online":
        return _judge_exchange(trust, len(headers), tenants)
    per_message = [ids for ids in map(authserv_ids, reversed(headers)) if ids]  # newest first
    n = len(headers)
    tops = Counter(ids[0] for ids in per_message)  # ties: the newest message's id wins
    suggestion = next((i for i, _ in tops.most_common() if i), None)
    seen = ", ".join(f"'{i}' ({c})" if i else f"no id ({c})" for i, c in tops.most_common(3))
    if tenant is not None:
        seen += f"; Exchange Online, tenant {tenant} ({tenants[tenant]})"
    exchange_fix = (f'set [trust] sender_auth = "exchange_online" and tenant_id = "{tenant}"'
                    if tenant is not None else "")
    if trust.sender_auth == "allowlist":
        if suggestion is None and tenant is None:
            return "ok", f"no Authentication-Results in the newest {n} messages", ""
        return ("warn", f"your server writes Authentication-Results ({seen}); "
                f"{_ALLOWLIST_RISK}",
                exchange_fix or
                f'set [trust] sender_auth = "dmarc" and authserv_id = "{suggestion}"')
    if not per_message:
        return ("warn", f"none of the newest {n} messages has an Authentication-Results "
                "header: every EG mail would be quarantined",
                'if your server never adds them, set [trust] sender_auth = "allowlist" — '
                f"risk: {_ALLOWLIST_RISK}")
    found = sum(1 for ids in per_message if trust.authserv_id in ids)
    if found:
        return "ok", f"'{trust.authserv_id}' in {found} of the newest {n} messages", ""
    detail = (f"'{trust.authserv_id}' is in none of the newest {n} messages; their topmost "
              f"Authentication-Results come from {seen}")
    if tenant is not None:
        return ("fail", detail, f"your mail is received by Exchange Online; {exchange_fix}")
    if suggestion is None:
        return ("fail", detail, "your server writes Authentication-Results without an "
                f'authserv-id; set [trust] sender_auth = "allowlist" — risk: {_ALLOWLIST_RISK}')
    return ("fail", detail, f"your server writes authserv-id '{suggestion}' — set [trust] "
                            f'authserv_id = "{suggestion}"')


def _judge_exchange(trust: TrustSettings, n: int, tenants: Counter[str]
                    ) -> tuple[Verdict, str, str]:
    found = tenants.get(trust.tenant_id or "", 0)
    if found:
        return ("ok", f"Exchange Online, tenant {trust.tenant_id}, in {found} of the newest "
                f"{n} messages", "")
    if tenants:
        seen = ", ".join(f"{t} ({c})" for t, c in tenants.most_common(3))
        return ("fail", f"the newest {n} messages were received by Exchange Online tenant "
                f"{seen}, not {trust.tenant_id}: every EG mail would be quarantined",
                f'set [trust] tenant_id = "{tenants.most_common(1)[0][0]}"')
    return ("fail", f"none of the newest {n} messages carries Exchange Online's own "
            "Authentication-Results and X-MS-Exchange-CrossTenant-Id: every EG mail would be "
            "quarantined",
            'use sender_auth = "dmarc" with your own server\'s authserv_id (mailtracker check '
            "suggests it once set), or check that this mailbox is in Exchange Online")
