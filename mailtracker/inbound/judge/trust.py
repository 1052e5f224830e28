"""``[trust]`` as the judge reads it: whose mail may change the task, and how it is
authenticated. Pure data; ``settings/config.py`` reads it from the config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SenderAuth = Literal["dmarc", "exchange_online", "allowlist"]


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """``[trust]``: whose mail may change the task, and how it is authenticated."""

    authserv_id: str | None
    sender_auth: SenderAuth = "dmarc"
    sender_domains: tuple[str, ...] = ("eg.dk",)
    signing_domains: tuple[str, ...] = ("penneo.com", "addo.dk", "addosign.com")
    # the Exchange Online tenant (directory id) whose verdict counts, for "exchange_online"
    tenant_id: str | None = None
