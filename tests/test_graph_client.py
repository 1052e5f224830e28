"""The Graph HTTP client against the fake Graph over real HTTPS, tokens from the fake IdP:
paging, throttling, token refresh, permissions, and where the token may go."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailtracker.errors import GraphAuthError, GraphError, GraphLinkError
from mailtracker.graph import open_client
from mailtracker.graph.http import GraphClient
from mailtracker.settings.config import load_settings
from tests.plugins.fakegraph import APP_ID, MAILBOX, FakeGraph
from tests.plugins.fakeidp import FakeIdP
from tests.plugins.workspace import Workspace

EG_MAIL = (b"From: EG <kundeservice@eg.dk>\r\nTo: efaktura8b@kommune.example\r\n"
           b"Subject: Hej\r\nMessage-ID: <m%d@eg.dk>\r\n\r\nHej\r\n")


@pytest.fixture
def client(graph_workspace: Workspace) -> Iterator[GraphClient]:
    settings = load_settings(graph_workspace.config_path)
    sleeps: list[float] = []
    with open_client(settings, graph_workspace.environ) as c:
        c._sleep = sleeps.append  # record instead of waiting: no test waits for real
        c.sleeps = sleeps  # type: ignore[attr-defined]
        yield c


def _delta(client: GraphClient, url: str | None = None, page: int = 3) -> tuple[list[str], str]:
    url = url or client.user_url("/mailFolders/inbox/messages/delta")
    ids: list[str] = []
    params = None if "?" in url else {"$select": "internetMessageId"}
    while True:
        data = client.request("GET", url, need="Mail.Read", params=params,
                              headers={"Prefer": f"odata.maxpagesize={page}"}).json()
        ids += [m.get("internetMessageId", "@removed") for m in data["value"]]
        params = None
        if "@odata.nextLink" in data:
            url = data["@odata.nextLink"]
            continue
        return ids, data["@odata.deltaLink"]


def test_delta_pages_then_reports_only_news(client: GraphClient, fake_graph: FakeGraph) -> None:
    for i in range(7):
        fake_graph.deliver(MAILBOX, EG_MAIL % i)
    ids, link = _delta(client)
    assert ids == [f"<m{i}@eg.dk>" for i in range(7)]
    assert fake_graph.count("GET", "/delta") == 3  # pages of 3, 3, 1
    assert _delta(client, link)[0] == []  # a no-news round
    fake_graph.deliver(MAILBOX, EG_MAIL % 7)
    news, _ = _delta(client, link)
    assert news == ["<m7@eg.dk>"]


def test_expired_delta_state_is_410(client: GraphClient, fake_graph: FakeGraph) -> None:
    _, link = _delta(client)
    fake_graph.expire_delta_tokens()
    with pytest.raises(GraphError) as info:
        _delta(client, link)
    assert (info.value.status, info.value.code) == (410, "syncStateNotFound")


def test_429_and_503_wait_as_told(client: GraphClient, fake_graph: FakeGraph) -> None:
    fake_graph.fail("GET", "/delta", status=429, retry_after=7)
    fake_graph.fail("GET", "/delta", status=503, retry_after=2)
    ids, _ = _delta(client)
    assert ids == []
    assert client.sleeps == [7.0, 2.0]  # type: ignore[attr-defined]


def test_throttling_gives_up_after_the_retries(client: GraphClient,
                                               fake_graph: FakeGraph) -> None:
    fake_graph.fail("GET", "/delta", status=429, retry_after=1, times=50)
    with pytest.raises(GraphError) as info:
        _delta(client)
    assert info.value.status == 429
    assert len(client.sleeps) == 5  # type: ignore[attr-defined]


def test_backoff_without_retry_after_grows_with_jitter(client: GraphClient,
                                                       fake_graph: FakeGraph) -> None:
    fake_graph.fail("GET", "/delta", status=429, times=1)
    client._jitter = lambda: 1.0
    _delta(client)
    assert client.sleeps == [1.0]  # type: ignore[attr-defined]
    assert [client._backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    client._jitter = lambda: 0.0
    assert client._backoff(3) == 2.0


def test_revoked_token_is_renewed_once(client: GraphClient, fake_graph: FakeGraph,
                                       fake_idp: FakeIdP) -> None:
    _delta(client)
    fake_idp.revoke_all()
    _delta(client)  # one 401, a fresh token, success
    assert fake_idp.hits("client_credentials") == 2


def test_refused_twice_is_an_auth_error(client: GraphClient, fake_idp: FakeIdP) -> None:
    fake_idp.block_client(APP_ID)
    with pytest.raises(GraphAuthError) as info:
        _delta(client)
    assert info.value.exit_status == 13
    assert "refused the access token even after a fresh one" in str(info.value)


def test_missing_permission_is_named(client: GraphClient, fake_idp: FakeIdP) -> None:
    fake_idp.graph_roles[APP_ID] = ("Mail.ReadWrite",)
    with pytest.raises(GraphAuthError) as info:
        client.request("POST", client.user_url("/messages/x/send"), need="Mail.Send")
    assert "Mail.Send (application permission)" in str(info.value)
    assert "RBAC for Applications" in str(info.value)


def test_mailbox_outside_rbac_scope(client: GraphClient, fake_graph: FakeGraph) -> None:
    fake_graph.add_mailbox("ceo@kommune.example", owner="someone-else")
    url = client.user_url("/mailFolders/inbox").replace(MAILBOX, "ceo@kommune.example")
    with pytest.raises(GraphAuthError, match="ErrorAccessDenied"):
        client.request("GET", url, need="Mail.Read")


def test_token_goes_only_to_the_endpoint(client: GraphClient) -> None:
    with pytest.raises(GraphError, match="refusing to send the access token"):
        client.request("GET", "https://evil.example/v1.0/users/x/messages", need="Mail.Read")
    evil = client.settings.endpoint.replace("/v1.0", "/v1.0.evil.example")
    with pytest.raises(GraphError, match="refusing"):
        client.request("GET", evil, need="Mail.Read")


def test_refused_connection_provably_never_reached(graph_workspace: Workspace) -> None:
    graph_workspace.set("graph", endpoint="https://127.0.0.1:9/v1.0")
    settings = load_settings(graph_workspace.config_path)
    with open_client(settings, graph_workspace.environ) as c:
        c._sleep = lambda s: None
        with pytest.raises(GraphLinkError) as info:
            c.request("POST", c.user_url("/messages"), need="Mail.ReadWrite", body={})
    assert info.value.reached is False


def test_at_most_four_requests_in_flight(client: GraphClient, fake_graph: FakeGraph) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for i in range(3):
        fake_graph.deliver(MAILBOX, EG_MAIL % i)
    url = client.user_url("/mailFolders/inbox/messages")
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda _: client.request("GET", url, need="Mail.Read"), range(60)))
    assert fake_graph.max_in_flight <= 4
    assert client.sleeps == []  # type: ignore[attr-defined]  # never throttled
