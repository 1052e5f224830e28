"""``mailtracker check`` with ``[graph]``: what is wrong, and the fix, on one line each; the
token described (audience, permissions, expiry), never shown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.plugins.fakegraph import APP_ID, MAILBOX, FakeGraph
from tests.plugins.fakeidp import FakeIdP
from tests.plugins.workspace import Workspace


def check(ws: Workspace, code: int) -> dict[str, Any]:
    result = ws.cli("check", "--json")
    assert result.exit_code == code, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return {c["name"]: c for c in data["checks"] if c["group"] == "graph"}


def test_all_good(graph_workspace: Workspace, fake_idp: FakeIdP) -> None:
    found = check(graph_workspace, 0)
    assert [c["status"] for c in found.values()] == ["ok"] * 4
    assert "audience https://graph.microsoft.com" in found["token"]["detail"]
    assert "Mail.ReadWrite Mail.Send" in found["token"]["detail"]
    result = graph_workspace.cli("check")
    assert not any(t in result.output for t in fake_idp.issued_tokens)
    assert "SMTP" not in result.output and "IMAP" not in result.output


def test_missing_send_permission(graph_workspace: Workspace, fake_idp: FakeIdP) -> None:
    fake_idp.graph_roles[APP_ID] = ("Mail.Read",)
    found = check(graph_workspace, 10)
    assert found["permissions"]["status"] == "fail"
    assert "missing Mail.ReadWrite, Mail.Send" in found["permissions"]["detail"]
    assert "admin consent" in found["permissions"]["fix"]


def test_read_only_needs_only_mail_read(graph_workspace: Workspace, fake_idp: FakeIdP,
                                        smtp_server: Any) -> None:
    fake_idp.graph_roles[APP_ID] = ("Mail.Read",)
    graph_workspace.set("graph", send=False)
    graph_workspace.sections["smtp"] = {
        "host": smtp_server.host, "port": smtp_server.port, "tls": smtp_server.tls,
        "username": smtp_server.username, "password_env": "MT_SMTP_PW",
        "ca_file": str(smtp_server.ca_file), "from_address": "kp@kommune.example"}
    graph_workspace.environ["MT_SMTP_PW"] = smtp_server.password
    graph_workspace.write()
    result = graph_workspace.cli("check", "--json")
    data = json.loads(result.stdout)
    groups = {c["group"] for c in data["checks"]}
    assert {"graph", "smtp"} <= groups and "imap" not in groups
    graph = {c["name"]: c for c in data["checks"] if c["group"] == "graph"}
    assert graph["permissions"]["status"] == "ok"


def test_mailbox_outside_the_apps_scope(graph_workspace: Workspace,
                                        fake_graph: FakeGraph) -> None:
    fake_graph.mailboxes[MAILBOX].owner = "another-app"
    found = check(graph_workspace, 10)
    assert found["mailbox"]["status"] == "fail"
    assert "RBAC for Applications" in found["mailbox"]["fix"]
    assert found["folder"]["status"] == "skip"


def test_folder_and_move_to_not_found(graph_workspace: Workspace) -> None:
    graph_workspace.set("graph", folder="Indbakke/EG", post_action="move", move_to="Arkiv")
    found = check(graph_workspace, 10)
    assert found["folder"]["status"] == "fail"
    assert "'Indbakke/EG' not found" in found["folder"]["detail"]
    assert found["move_to"]["status"] == "fail"


@pytest.mark.parametrize("secret", ["wrong", None])
def test_bad_credentials(graph_workspace: Workspace, secret: str | None) -> None:
    if secret is None:
        graph_workspace.environ.pop("MT_TEST_GRAPH_SECRET")
    else:
        graph_workspace.environ["MT_TEST_GRAPH_SECRET"] = secret
    found = check(graph_workspace, 10)
    assert found["token"]["status"] == "fail"
    assert found["mailbox"]["status"] == "skip"


def test_init_graph_and_login(graph_workspace: Workspace, fake_idp: FakeIdP) -> None:
    result = graph_workspace.cli("login")
    assert result.exit_code == 0, result.output
    assert "audience https://graph.microsoft.com" in result.output
    assert not any(t in result.output for t in fake_idp.issued_tokens)
