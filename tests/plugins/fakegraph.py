"""A stateful fake of Microsoft Graph's mail API (v1.0), over real HTTPS on loopback.

Fixture ``fake_graph`` (function scope; one server per session, state reset per test). Tokens
are the fake identity provider's (``tests/plugins/fakeidp.py``): HS256 JWTs whose audience
must be ``https://graph.microsoft.com`` and whose ``roles`` (or ``scp``) decide what the app
may do. What tests can do::

    g = fake_graph
    g.add_mailbox("efaktura8b@kommune.example", owner="app-id")  # RBAC: the app's mailbox
    g.deliver(mailbox, raw_bytes, dmarc="pass")      # as Exchange Online would (stamped)
    g.fail("POST", "/send", status=429, retry_after=1, times=1)   # fault injection
    g.drop_after("POST", "/send")    # the send is accepted, then the connection is cut
    g.expire_delta_tokens()          # every delta/skip token answers 410 syncStateNotFound
    g.sent_delay = 2                 # Sent Items shows a sent copy only from the 3rd look
    g.replay_next_delta = True       # the next delta round repeats what it already gave
    g.quota_exceeded = True          # 403 ErrorQuotaExceeded on every write
    g.outgoing                       # the MIME of every mail the fake "delivered"
    g.requests                       # (method, path) of every request, in order

Documented behaviour this follows (Microsoft Graph docs, microsoft-graph-docs-contrib):
* delta per folder, ``@odata.nextLink`` (``$skiptoken``) until ``@odata.deltaLink``
  (``$deltatoken``); the tokens carry the ``$select``; ``Prefer: odata.maxpagesize`` with
  default page size 10; ``@removed`` for items that left the folder
  (``api-reference/v1.0/api/message-delta.md``, ``concepts/delta-query-messages.md``);
* an expired sync state answers ``410 Gone`` / ``syncStateNotFound``
  (``concepts/delta-query-overview.md``);
* ``GET /messages/{id}/$value`` gives the MIME (``api-reference/v1.0/api/message-get.md``);
* ``POST /users/{id}/messages`` with JSON or base64 MIME (``Content-Type: text/plain``)
  creates a draft, ``201`` with the message; ``POST /messages/{id}/send`` answers ``202``
  with no body (``message-send.md``, ``user-post-messages.md``);
* ``internetMessageId`` can only be set while ``isDraft`` is true; ``internetMessageHeaders``
  are ``x-`` headers only (``resources/message.md``);
* ``Prefer: IdType="ImmutableId"``: ids survive a move (``concepts/outlook-immutable-id.md``);
* ``429`` with ``Retry-After``; at most 4 concurrent requests per app and mailbox
  (``concepts/throttling-limits.md``) — the fake answers the 5th concurrent one with 429;
* ``ErrorAccessDenied`` (403) when the app lacks the permission or the mailbox is outside its
  RBAC scope (``concepts/auth-limit-mailbox-access.md``); ``401 InvalidAuthenticationToken``
  for expired or revoked tokens;
* Exchange Online's ``Authentication-Results`` has no authserv-id; upstream ones become
  ``Authentication-Results-Original``; ``X-MS-Exchange-CrossTenant-Id`` names the receiving
  tenant (defender-docs ``message-headers-eop-mdo.md``; lieser/dkim_verifier#423).

Assumed (not documented, or not precisely):
* the exact shape and opacity of tokens (here base64 JSON) and of ids (here random);
* that a delta ``$select`` may include ``internetMessageHeaders`` and returns them for
  received mail (absent on drafts and Sent Items, as microsoft-graph-docs#18761 reports);
* that a MIME draft keeps its ``Message-ID`` as ``internetMessageId`` and keeps
  ``In-Reply-To``/``References`` (the fake keeps the MIME byte for byte);
* that a sent message leaves Drafts at once and shows up in Sent Items after a delay
  (``sent_delay`` looks), never in both;
* that ``$filter=internetMessageId eq '…'`` works on a folder's messages;
* the order of delta entries (oldest change first) and that a replay repeats whole rounds;
* that ``ErrorQuotaExceeded`` answers writes (create, move, category) with 403; reads work;
* that a revoked token is refused at once (real Graph may accept it until it expires).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import functools
import itertools
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import jwt
import pytest

if TYPE_CHECKING:  # a real import would stop pytest rewriting that plugin's asserts
    from tests.plugins.fakeidp import FakeIdP
    from tests.plugins.tlsca import TestCA
    from tests.plugins.workspace import Workspace

GRAPH = "https://graph.microsoft.com"  # the audience of Graph tokens
WELL_KNOWN = {"inbox": "Inbox", "drafts": "Drafts", "sentitems": "Sent Items",
              "deleteditems": "Deleted Items"}
MAX_CONCURRENT = 4


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass
class Folder:
    id: str
    name: str
    parent: str | None = None
    well_known: str | None = None


@dataclass
class Message:
    id: str
    folder: str
    mime: bytes
    received: datetime
    is_draft: bool = False
    categories: list[str] = field(default_factory=list)
    seq: int = 0  # the change counter when it last changed
    hidden_looks: int = 0  # Sent Items: looks left before it shows

    @functools.cached_property
    def parsed(self) -> email.message.Message:
        """The header block, parsed once (the MIME of a message never changes)."""
        head = self.mime.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        return email.message_from_bytes(head + b"\r\n\r\n", policy=email.policy.compat32)

    def header_list(self) -> list[dict[str, str]]:
        return [{"name": k, "value": str(v)} for k, v in self.parsed.items()]

    def header(self, name: str) -> str | None:
        value = self.parsed.get(name)
        return None if value is None else " ".join(str(value).split())


@dataclass
class Mailbox:
    address: str
    owner: str  # the app id RBAC for Applications lets in
    folders: dict[str, Folder] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    removed: list[tuple[int, str, str]] = field(default_factory=list)  # seq, folder, id
    headers_in_delta: bool = True  # False: internetMessageHeaders never returned

    def well_known(self, name: str) -> Folder:
        return next(f for f in self.folders.values() if f.well_known == name)


@dataclass
class Fault:
    method: str
    path_part: str
    status: int
    code: str
    retry_after: int | None
    times: int
    drop: bool = False  # do the work, then cut the connection without answering


class FakeGraph:
    """See the module docstring."""

    host = "127.0.0.1"

    def __init__(self, ca: TestCA, idp: FakeIdP):
        self.idp = idp
        self._lock = threading.RLock()
        self.reset()
        from tests.plugins.fakegraph_routes import handler  # a plugin too: imported late

        self._server = ThreadingHTTPServer((self.host, 0), handler(self))
        self._server.socket = ca.server_context().wrap_socket(self._server.socket,
                                                              server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}/v1.0"

    def reset(self) -> None:
        self.mailboxes: dict[str, Mailbox] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.outgoing: list[bytes] = []
        self.sent_delay = 0
        self.replay_next_delta = False
        self.quota_exceeded = False
        self.generation = 0  # bumped by expire_delta_tokens
        self.in_flight = 0
        self.max_in_flight = 0
        self._seq = itertools.count(1)
        self.last_seq = 0

    def bump(self) -> int:
        """The next change number (every change in any mailbox gets one)."""
        with self._lock:
            self.last_seq = next(self._seq)
            return self.last_seq

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what tests set up -----------------------------------------------------------------

    def add_mailbox(self, address: str, *, owner: str) -> Mailbox:
        box = Mailbox(address.lower(), owner)
        for well_known, name in WELL_KNOWN.items():
            fid = _new_id()
            box.folders[fid] = Folder(fid, name, None, well_known)
        self.mailboxes[box.address] = box
        return box

    def add_folder(self, address: str, path: str) -> Folder:
        """``path`` like ``"Inbox/EG"``: each part a display name under the previous one."""
        box = self.mailboxes[address.lower()]
        parent: str | None = None
        folder: Folder | None = None
        for part in path.split("/"):
            folder = next((f for f in box.folders.values()
                           if f.parent == parent and f.name == part), None)
            if folder is None:
                folder = Folder(_new_id(), part, parent)
                box.folders[folder.id] = folder
            parent = folder.id
        assert folder is not None
        return folder

    def deliver(self, address: str, raw: bytes, *, folder: str = "inbox", dmarc: str = "pass",
                header_from: str | None = None, tenant: str | None = None,
                received: datetime | None = None) -> Message:
        """Mail arriving from the Internet, stamped as Exchange Online stamps it."""
        box = self.mailboxes[address.lower()]
        target = (box.well_known(folder) if folder in WELL_KNOWN
                  else next(f for f in box.folders.values() if f.name == folder))
        from tests.plugins.fakegraph_routes import exchange_stamp

        stamped = exchange_stamp(raw, dmarc=dmarc, header_from=header_from,
                                 tenant=tenant or self.idp.tenant)
        with self._lock:
            msg = Message(_new_id(), target.id, stamped, received or datetime.now(UTC),
                          seq=self.bump())
            box.messages[msg.id] = msg
        return msg

    def fail(self, method: str, path_part: str, *, status: int, code: str = "",
             retry_after: int | None = None, times: int = 1) -> None:
        default = {429: "TooManyRequests", 503: "ServiceUnavailable", 410: "syncStateNotFound",
                   403: "ErrorAccessDenied", 500: "InternalServerError"}
        self.faults.append(Fault(method, path_part, status, code or default.get(status, "Error"),
                                 retry_after, times))

    def drop_after(self, method: str, path_part: str, times: int = 1) -> None:
        self.faults.append(Fault(method, path_part, 0, "", None, times, drop=True))

    def expire_delta_tokens(self) -> None:
        self.generation += 1

    def folder_messages(self, address: str, well_known: str) -> list[Message]:
        box = self.mailboxes[address.lower()]
        fid = box.well_known(well_known).id
        return [m for m in box.messages.values() if m.folder == fid]

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    # -- the protocol --------------------------------------------------------------------

    def authorize(self, header: str | None, need: str, box: Mailbox) -> None:
        if not header or not header.startswith("Bearer "):
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        try:
            claims = jwt.decode(header[7:], self.idp.key, algorithms=["HS256"],
                                options={"verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise GraphError(401, "InvalidAuthenticationToken",
                             "Lifetime validation failed, the token is expired.") from None
        except jwt.PyJWTError:
            raise GraphError(401, "InvalidAuthenticationToken",
                             "Access token validation failure.") from None
        if claims.get("jti") in self.idp._revoked or claims.get("azp") in self.idp._blocked:
            raise GraphError(401, "InvalidAuthenticationToken",
                             "Access token has been revoked.")
        if claims.get("aud") != GRAPH:
            raise GraphError(401, "InvalidAuthenticationToken", "Invalid audience.")
        granted = set(claims.get("roles") or []) | set(str(claims.get("scp", "")).split())
        implied = {"Mail.ReadBasic": {"Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite"},
                   "Mail.Read": {"Mail.Read", "Mail.ReadWrite"},
                   "Mail.ReadWrite": {"Mail.ReadWrite"}, "Mail.Send": {"Mail.Send"}}[need]
        if not granted & implied:
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials "
                                                       "and try again.")
        if "roles" in claims and claims.get("azp") != box.owner:
            raise GraphError(403, "ErrorAccessDenied", "Access to OData is disabled: the "
                                                       "application is not in scope.")

    def mailbox(self, user: str) -> Mailbox:
        box = self.mailboxes.get(urllib.parse.unquote(user).lower())
        if box is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        return box

    def folder(self, box: Mailbox, ref: str) -> Folder:
        ref = urllib.parse.unquote(ref)
        if ref.lower() in WELL_KNOWN:
            return box.well_known(ref.lower())
        if ref in box.folders:
            return box.folders[ref]
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the "
                                                   "store.")

    def message(self, box: Mailbox, mid: str) -> Message:
        msg = box.messages.get(urllib.parse.unquote(mid))
        if msg is None:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in "
                                                       "the store.")
        return msg

    def visible(self, box: Mailbox, msg: Message) -> bool:
        """A sent copy is invisible for ``sent_delay`` looks at Sent Items."""
        if msg.hidden_looks > 0:
            msg.hidden_looks -= 1
            return False
        return True


def _new_id() -> str:
    return "AAMk" + secrets.token_urlsafe(24)


APP_ID = "mt-graph-app"
SECRET_ENV = "MT_TEST_GRAPH_SECRET"
MAILBOX = "efaktura8b@kommune.example"


@pytest.fixture
def graph_workspace(fake_graph: FakeGraph, fake_idp: FakeIdP, test_ca: TestCA,
                    tmp_path: Path) -> Workspace:
    """A workspace with only ``[graph]`` and ``[oauth2]`` (plus ``exchange_online`` trust),
    its app registered at the fake IdP and its mailbox in the fake Graph."""
    from tests.plugins.workspace import make_workspace_at

    fake_idp.register_app(APP_ID, mailbox=MAILBOX, secret="graph-s3cret")
    fake_graph.add_mailbox(MAILBOX, owner=APP_ID)
    ws = make_workspace_at(tmp_path / "graphws")
    ws.environ[SECRET_ENV] = "graph-s3cret"
    ws.environ["REQUESTS_CA_BUNDLE"] = str(test_ca.ca_file)
    ws.sections["oauth2"] = {"tenant_id": fake_idp.tenant, "client_id": APP_ID,
                             "client_secret_env": SECRET_ENV, "authority": fake_idp.authority}
    ws.sections["graph"] = {"mailbox": MAILBOX, "endpoint": fake_graph.endpoint,
                            "ca_file": str(test_ca.ca_file), "since": "2020-01-01",
                            "timeout": 10}
    ws.sections["trust"] = {"sender_auth": "exchange_online"}
    ws.write()
    return ws


@pytest.fixture(scope="session")
def fake_graph_server(test_ca: TestCA, fake_idp_server: FakeIdP) -> Iterator[FakeGraph]:
    server = FakeGraph(test_ca, fake_idp_server)
    yield server
    server.stop()


@pytest.fixture
def fake_graph(fake_graph_server: FakeGraph, fake_idp: FakeIdP) -> FakeGraph:
    """The running :class:`FakeGraph` with no mailboxes, faults or history."""
    fake_graph_server.reset()
    return fake_graph_server


__all__ = ["APP_ID", "MAILBOX", "SECRET_ENV", "FakeGraph", "GraphError", "Message"]
