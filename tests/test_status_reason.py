"""``status`` says why the KLIK status is what it is, and which sender authentication is used."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace


def test_status_explains_fuldfoert_by_the_cards_rule(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    before = ws.status()
    assert before["klik_status_code"] == "not_started"
    assert before["klik_status_reason"].startswith("no orientation sent yet; required roles: ")
    assert ws.cli("notify").exit_code == 0
    after = ws.status()
    assert after["klik_status"] == "fuldført"
    assert re.fullmatch(r"all 3 required roles oriented \(last accepted \d{4}-\d\d-\d\d "
                        r"\d\d:\d\d, no bounce\); acknowledgements 0 of 3",
                        after["klik_status_reason"]), after["klik_status_reason"]
    text = ws.cli("status").output
    assert f"KLIK status: fuldført: {after['klik_status_reason']}" in text


def test_status_names_the_sender_authentication_in_use(
        make_workspace: Callable[..., Workspace]) -> None:
    ws = make_workspace()
    ws.sections["trust"] = {"sender_auth": "exchange_online",
                            "tenant_id": "3f1c2a9e-7b4d-4e21-9c5a-0d8e6f4b2a17"}
    ws.write()
    assert ws.status()["trust"] == ("exchange_online (Exchange Online's verdict, tenant "
                                    "3f1c2a9e-7b4d-4e21-9c5a-0d8e6f4b2a17)")
    assert "Sender authentication: exchange_online" in ws.cli("status").output
