"""The whole task loop over Microsoft Graph as a user runs it, with only ``[graph]`` and
``[oauth2]``: init --graph → recipients add → check → notify → poll → tick (.ics) → status;
against the fake Graph and the fake identity provider, over real HTTPS. No token anywhere."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import tomllib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
from click.testing import CliRunner

from mailtracker.app import NOW_ENV
from mailtracker.cli import main
from tests.inbound_mail import bounce, eml, reply
from tests.plugins.fakegraph import APP_ID, MAILBOX, SECRET_ENV, FakeGraph
from tests.plugins.fakeidp import FakeIdP
from tests.plugins.workspace import THREE, Workspace, render_toml

if TYPE_CHECKING:
    from tests.plugins.tlsca import TestCA

CPH = ZoneInfo("Europe/Copenhagen")


def at(y: int, m: int, d: int, hh: int = 9) -> dict[str, str]:
    return {NOW_ENV: datetime(y, m, d, hh, 0, tzinfo=CPH).isoformat()}


@pytest.fixture
def user(tmp_path: Path, fake_graph: FakeGraph, fake_idp: FakeIdP, test_ca: TestCA) -> Workspace:
    """``init --graph``, then the user fills in the app registration and the mailbox (here:
    the fakes' addresses instead of Microsoft's)."""
    fake_idp.register_app(APP_ID, mailbox=MAILBOX, secret="graph-s3cret")
    fake_graph.add_mailbox(MAILBOX, owner=APP_ID)
    config = tmp_path / "config" / "mailtracker.toml"
    result = CliRunner().invoke(main, ["init", "--graph", "--path", str(config), "-m",
                                       "Eksempel Kommune"])
    assert result.exit_code == 0, result.output
    assert "[graph] and [oauth2]" in result.output
    data = tomllib.loads(config.read_text())
    assert "imap" not in data and "smtp" not in data
    assert data["trust"]["sender_auth"] == "exchange_online"
    data["graph"].update(mailbox=MAILBOX, endpoint=fake_graph.endpoint,
                         ca_file=str(test_ca.ca_file), since="2026-01-01")
    data["oauth2"].update(tenant_id=fake_idp.tenant, client_id=APP_ID,
                          client_secret_env=SECRET_ENV, authority=fake_idp.authority)
    ws = Workspace(tmp_path, config, {SECRET_ENV: "graph-s3cret",
                                      "REQUESTS_CA_BUNDLE": str(test_ca.ca_file)}, data)
    config.write_text(render_toml(data), encoding="utf-8")
    return ws


def run(ws: Workspace, when: dict[str, str], *args: str, code: int = 0) -> Any:
    result = ws.cli(*args, env=when)
    assert result.exit_code == code, result.output
    outputs.append(result.output)
    print("$ mailtracker", *args, "\n" + result.output)  # shown with pytest -s
    return result


outputs: list[str] = []


def sent(fake: FakeGraph, since: int = 0) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(m, policy=email.policy.default)  # type: ignore[misc]
            for m in fake.outgoing[since:]]


def test_the_whole_loop_over_graph(user: Workspace, fake_graph: FakeGraph, fake_idp: FakeIdP,
                                   caplog: pytest.LogCaptureFixture) -> None:
    outputs.clear()
    caplog.set_level(logging.DEBUG)
    march = at(2026, 3, 2)
    for role, name, address in THREE:
        run(user, march, "recipients", "add", "--role", role, "--name", name, "--email",
            address)
    checked = run(user, march, "check")
    assert "Microsoft Graph" in checked.output
    for line in ("OAuth2 token", "permissions", "mailbox", "folder"):
        assert any(row.strip().startswith(f"✓ {line}") for row in checked.output.splitlines()
                   ), (line, checked.output)
    assert "SMTP" not in checked.output and "IMAP" not in checked.output

    run(user, march, "notify")
    orientation = sent(fake_graph)
    assert len(orientation) == 3
    ids = {str(m["To"].addresses[0].addr_spec): str(m["Message-ID"]) for m in orientation}

    # Replies thread by our Message-ID, which survived the draft: they are matched.
    soeren, bjoern, aase = (a for _, _, a in THREE)
    subject = {str(m["To"].addresses[0].addr_spec): str(m["Subject"]) for m in orientation}
    fake_graph.deliver(MAILBOX, reply(sender=soeren, name="Søren Ærø-Åse",
                                      to_message_id=ids[soeren], subject=subject[soeren]))
    fake_graph.deliver(MAILBOX, reply(sender=aase, name="Åse Øberg", to_message_id=ids[aase],
                                      subject=subject[aase], auto=True))
    fake_graph.deliver(MAILBOX, bounce(failed=bjoern, original_message_id=ids[bjoern],
                                       original_subject=subject[bjoern]))
    polled = run(user, at(2026, 3, 3), "poll")
    assert f"acknowledged: {soeren} replied" in polled.output
    assert "not counted as an acknowledgement" in polled.output  # the auto-reply
    rows = {r["email"]: r for r in json.loads(run(user, at(2026, 3, 3), "status", "--json")
                                              .stdout)["recipients"]}
    assert rows[soeren]["acknowledged"] and not rows[aase]["acknowledged"]
    assert rows[bjoern]["delivery"] == "bounced"

    for name in ("agreement-eg-pdf.eml", "guide-eg.eml", "webinar-invite.eml"):
        fake_graph.deliver(MAILBOX, eml(name))
    run(user, at(2026, 3, 20, 10), "poll")
    before = len(fake_graph.outgoing)
    run(user, at(2026, 3, 20, 11), "tick")
    invitations = [m for m in sent(fake_graph, before) if _ics(m) is not None]
    assert invitations, "the webinar invitation went out with its .ics"
    assert str(_ics(invitations[0])["METHOD"]) == "REQUEST"

    fake_graph.deliver(MAILBOX, eml("webinar-cancel.eml"))
    run(user, at(2026, 4, 1, 14), "poll")
    before = len(fake_graph.outgoing)
    run(user, at(2026, 4, 1, 15), "tick")
    cancels = [m for m in sent(fake_graph, before) if _ics(m) is not None]
    assert cancels and str(_ics(cancels[0])["METHOD"]) == "CANCEL"

    fake_graph.deliver(MAILBOX, eml("penneo-signed.eml"))
    run(user, at(2026, 4, 2), "poll")
    status = json.loads(run(user, at(2026, 4, 2), "status", "--json").stdout)
    reached = {k for k, v in status["milestones"].items() if v is not None}
    assert {"service_agreement_received", "guide_received", "webinar_invited",
            "webinar_cancelled", "service_agreement_signed"} <= reached
    text = run(user, at(2026, 4, 2), "status").output
    assert "exchange_online" in text or "Exchange Online" in text

    # Nothing was sent twice; no draft left behind.
    all_ids = [str(m["Message-ID"]) for m in sent(fake_graph)]
    assert len(all_ids) == len(set(all_ids))
    assert fake_graph.folder_messages(MAILBOX, "drafts") == []

    # No token or secret in any output, log line or file but msal's own token cache.
    secrets = [*fake_idp.issued_tokens, "graph-s3cret"]
    assert secrets
    leaks = [p for p in user.root.rglob("*") if p.is_file() and p.name !=
             "oauth2-token-cache.json" and any(s in p.read_text(errors="replace")
                                               for s in secrets)]
    assert leaks == []
    assert not any(s in out for s in secrets for out in outputs)
    assert not any(s in caplog.text for s in secrets)


def _ics(msg: email.message.EmailMessage) -> Any:
    for part in msg.iter_attachments():
        if part.get_content_type() == "text/calendar":
            return icalendar.Calendar.from_ical(part.get_content())
    return None
