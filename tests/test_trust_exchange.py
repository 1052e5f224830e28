"""``[trust] sender_auth = "exchange_online"``: Exchange Online's own verdict, read safely.

Header shapes follow Microsoft's "Anti-spam message headers" page (defender-docs,
message-headers-eop-mdo.md) and what parsers met in the wild: the older format with stray
tokens and missing spaces after ``;`` (MimeKit#490, dkim_verifier#547), and upstream headers
renamed to ``Authentication-Results-Original`` on arrival (dkim_verifier#423).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailtracker.check.authserv import judge_authserv
from mailtracker.errors import ConfigError
from mailtracker.inbound.judge.classify import classify
from mailtracker.inbound.judge.rules import DEFAULT_RULES
from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mail.parse import parse
from mailtracker.settings.config import load_settings
from mailtracker.task.verdict import Classification, Kind
from tests.plugins.workspace import THREE, Workspace, render_toml

MAIL = Path(__file__).parent / "mail"
TENANT = "3f1c2a9e-7b4d-4e21-9c5a-0d8e6f4b2a17"
OTHER_TENANT = "9d0b6c1a-2e3f-4a5b-8c7d-1e2f3a4b5c6d"
TRUST = TrustSettings(authserv_id=None, sender_auth="exchange_online", tenant_id=TENANT)

NEW_FORMAT = ("spf=pass (sender IP is 40.107.22.51) smtp.mailfrom=eg.dk; dkim=pass (signature "
              "was verified) header.d=eg.dk;dmarc=pass action=none header.from=eg.dk;"
              "compauth=pass reason=100")
OLD_FORMAT = ("spf=pass (sender IP is 40.107.22.51) smtp.mailfrom=eg.dk; kommune.dk; "
              "dkim=pass (signature was verified) header.d=eg.dk;kommune.dk; dmarc=pass "
              "action=none header.from=eg.dk;")


def exchange_mail(authres: str | None = NEW_FORMAT, *, tenants: tuple[str, ...] = (TENANT,),
                  extra_top: str = "", extra_bottom: str = "",
                  name: str = "agreement-eg-pdf.eml") -> bytes:
    """EG's agreement mail as Exchange Online hands it over: its own header on top, the
    upstream server's ``Authentication-Results`` renamed to ``…-Original``."""
    raw = (MAIL / name).read_bytes()
    raw = re.sub(rb"(?m)^Authentication-Results:", b"Authentication-Results-Original:", raw)
    top = extra_top
    if authres is not None:
        top += f"Authentication-Results: {authres}\r\n"
    top += "".join(f"X-MS-Exchange-CrossTenant-Id: {t}\r\n" for t in tenants)
    body_start = raw.index(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.index(b"\n\n")
    head, rest = raw[:body_start], raw[body_start:]
    return top.encode() + head + extra_bottom.encode() + rest


def judge(raw: bytes, trust: TrustSettings = TRUST) -> Classification:
    return classify(parse(raw), DEFAULT_RULES, trust, {})


@pytest.mark.parametrize("authres", [NEW_FORMAT, OLD_FORMAT], ids=["new", "old-format"])
def test_exchange_online_pass_sets_the_milestone(authres: str) -> None:
    result = judge(exchange_mail(authres))
    assert (result.kind, result.milestone) == (Kind.MILESTONE, "service_agreement_received")


@pytest.mark.parametrize("authres, extra_top, tenants, reason", [
    ("spf=pass smtp.mailfrom=eg.dk; dkim=none (message not signed) header.d=none;"
     "dmarc=bestguesspass action=none header.from=eg.dk;compauth=pass reason=109", "",
     (TENANT,), "Exchange Online: dmarc=bestguesspass for eg.dk"),
    ("spf=fail (sender IP is 203.0.113.9) smtp.mailfrom=eg.dk; dkim=none header.d=none;"
     "dmarc=fail action=oreject header.from=eg.dk;compauth=fail reason=000", "",
     (TENANT,), "Exchange Online: dmarc=fail for eg.dk"),
    ("spf=pass smtp.mailfrom=evil.example; dkim=pass header.d=evil.example;"
     "dmarc=pass action=none header.from=evil.example;compauth=pass reason=100", "",
     (TENANT,), "Exchange Online: dmarc=pass for evil.example, not eg.dk"),
    (NEW_FORMAT, "", (OTHER_TENANT,),
     f"received by Exchange Online tenant {OTHER_TENANT}, not {TENANT}"),
    (NEW_FORMAT, "", (), "no X-MS-Exchange-CrossTenant-Id: not received by Exchange Online"),
    (None, "", (TENANT,), "no Authentication-Results from Exchange Online"),
    ("spf=pass smtp.mailfrom=eg.dk; dkim=pass header.d=eg.dk", "", (TENANT,),
     "Exchange Online: no dmarc result"),
    (NEW_FORMAT, "Authentication-Results: relay.kommune.dk; dmarc=pass header.from=eg.dk\r\n",
     (TENANT,), "the topmost Authentication-Results is from relay.kommune.dk, not Exchange "
                "Online's own (which has no authserv-id)"),
], ids=["bestguesspass", "dmarc-fail", "pass-for-another-domain", "foreign-tenant",
        "no-tenant-header", "no-authres", "no-dmarc", "topmost-has-an-id"])
def test_exchange_shaped_spoofs_are_quarantined_with_the_reason(
        authres: str | None, extra_top: str, tenants: tuple[str, ...], reason: str) -> None:
    result = judge(exchange_mail(authres, tenants=tenants, extra_top=extra_top))
    assert (result.kind, result.reason) == (Kind.QUARANTINE, reason)


def test_a_forged_original_header_saying_pass_counts_for_nothing() -> None:
    # The sender wrote a perfect verdict; Exchange renamed it and wrote its own: fail.
    forged = ("Authentication-Results-Original: mx.kommune.dk; dkim=pass header.d=eg.dk; "
              "dmarc=pass header.from=eg.dk\r\n"
              f"Authentication-Results-Original: {NEW_FORMAT}\r\n")
    failing = ("spf=fail smtp.mailfrom=eg.dk; dkim=none header.d=none;dmarc=fail action=none "
               "header.from=eg.dk;compauth=fail reason=000")
    result = judge(exchange_mail(failing, extra_bottom=forged))
    assert (result.kind, result.reason) == (Kind.QUARANTINE,
                                            "Exchange Online: dmarc=fail for eg.dk")


def test_a_forged_lower_verdict_and_tenant_id_count_for_nothing() -> None:
    # Headers the sender adds sit below Exchange's own; only the topmost ones are read.
    forged = (f"Authentication-Results: {NEW_FORMAT}\r\n"
              f"X-MS-Exchange-CrossTenant-Id: {TENANT}\r\n")
    failing = "spf=fail smtp.mailfrom=eg.dk; dmarc=fail action=none header.from=eg.dk"
    result = judge(exchange_mail(failing, extra_bottom=forged))
    assert result.kind is Kind.QUARANTINE
    result = judge(exchange_mail(NEW_FORMAT, tenants=(OTHER_TENANT,), extra_bottom=forged))
    assert (result.kind, result.reason) == (
        Kind.QUARANTINE, f"received by Exchange Online tenant {OTHER_TENANT}, not {TENANT}")


def test_the_tenant_id_is_compared_case_insensitively() -> None:
    result = judge(exchange_mail(tenants=(TENANT.upper(),)))
    assert result.kind is Kind.MILESTONE


def test_dmarc_mode_still_refuses_the_exchange_header() -> None:
    result = judge(exchange_mail(), TrustSettings(authserv_id="mx.kommune.dk"))
    assert (result.kind, result.reason) == (Kind.QUARANTINE,
                                            "no Authentication-Results from mx.kommune.dk")


# --- configuration ---------------------------------------------------------------------------

def _config(tmp_path: Path, trust: dict[str, Any], oauth2_tenant: str | None = None) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "organisation": {"name": "Ærø Kommune"},
        "trust": trust,
    }
    if oauth2_tenant is not None:
        sections["oauth2"] = {"tenant_id": oauth2_tenant, "client_id": "app",
                              "client_secret_env": "SECRET"}
    path = tmp_path / "mailtracker.toml"
    path.write_text(render_toml(sections), encoding="utf-8")
    path.chmod(0o600)
    return path


def test_config_takes_the_tenant_from_trust_or_from_oauth2(tmp_path: Path) -> None:
    path = _config(tmp_path, {"sender_auth": "exchange_online", "tenant_id": TENANT.upper()})
    assert load_settings(path, {}).trust.tenant_id == TENANT
    path = _config(tmp_path, {"sender_auth": "exchange_online"}, oauth2_tenant=TENANT)
    assert load_settings(path, {}).trust.tenant_id == TENANT


@pytest.mark.parametrize("trust, oauth2_tenant, fragment", [
    ({"sender_auth": "exchange_online"}, None, "trust.tenant_id"),
    ({"sender_auth": "exchange_online"}, "kommune.onmicrosoft.com", "trust.tenant_id"),
    ({"sender_auth": "exchange_online", "tenant_id": "kommune.dk"}, None, "GUID"),
])
def test_config_without_a_usable_tenant_id_is_refused_naming_the_key(
        tmp_path: Path, trust: dict[str, Any], oauth2_tenant: str | None, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_config(tmp_path, trust, oauth2_tenant), {})
    assert fragment in str(err.value)


# --- check ---------------------------------------------------------------------------------

def _headers(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"


def test_check_recognises_exchange_online_and_suggests_the_mode() -> None:
    headers = [_headers(exchange_mail()) for _ in range(3)]
    verdict, detail, fix = judge_authserv(TrustSettings(authserv_id="mx.kommune.dk"), headers)
    assert verdict == "fail"
    assert "Exchange Online" in detail
    assert 'sender_auth = "exchange_online"' in fix and TENANT in fix
    verdict, _, fix = judge_authserv(replace(TRUST, sender_auth="allowlist"), headers)
    assert verdict == "warn" and 'sender_auth = "exchange_online"' in fix


def test_check_accepts_exchange_online_mode_for_its_own_tenant() -> None:
    headers = [_headers(exchange_mail()) for _ in range(2)]
    assert judge_authserv(TRUST, headers)[0] == "ok"
    other = [_headers(exchange_mail(tenants=(OTHER_TENANT,))) for _ in range(2)]
    verdict, _, fix = judge_authserv(TRUST, other)
    assert verdict == "fail" and OTHER_TENANT in fix


# --- through a real mailbox ------------------------------------------------------------------

def test_poll_on_dovecot_applies_exchanges_verdict(
        dovecot: Any, make_workspace: Callable[..., Workspace]) -> None:
    user, password = dovecot.add_user()
    ws = make_workspace(imap=(dovecot, user, password))
    ws.sections["trust"] = {"sender_auth": "exchange_online", "tenant_id": TENANT}
    ws.write()
    ws.add_recipients(THREE)
    dovecot.append(user, exchange_mail(name="guide-eg.eml"))
    dovecot.append(user, exchange_mail(
        "spf=fail smtp.mailfrom=eg.dk; dmarc=fail action=none header.from=eg.dk",
        extra_bottom=f"Authentication-Results-Original: {NEW_FORMAT}\r\n"))
    result = ws.cli("poll")
    assert result.exit_code == 0, result.output
    status = ws.status()
    assert status["milestones"]["guide_received"] is not None
    assert status["milestones"]["service_agreement_received"] is None
    assert status["quarantine"] == 1
