"""A local OAuth2 identity provider shaped like Microsoft Entra ID, for tests without network.

Fixture ``fake_idp`` (function scope; one server per session, its state reset for each test;
``fake_idp_server`` is the session one, for session- or module-scoped servers that need its
URLs) runs, on 127.0.0.1:

* an HTTPS server (certificate from ``test_ca``) that msal talks to when its authority is
  ``fake_idp.authority`` (``https://127.0.0.1:PORT/TENANT``, with ``instance_discovery=False``
  and ``REQUESTS_CA_BUNDLE`` = the test CA, which the fixture sets): OpenID discovery, the
  token endpoint (client credentials with a secret or a certificate assertion, device code,
  refresh token) and the device authorization endpoint;
* a plain-HTTP ``/introspect`` endpoint (RFC 7662 shape) for Dovecot's ``oauth2`` passdb
  and the SMTP test server: ``{"active": true, "username": <mailbox>}`` or
  ``{"active": false}``.

Tokens are HS256 JWTs shaped like Entra's (``aud``, ``azp``, ``tid``, ``roles`` or ``scp``,
``exp``, ``jti``) plus a ``username`` claim: the mailbox an app may use (what
``Add-MailboxPermission`` grants in Exchange Online) or the person who signed in. A token is
*active* when its signature is good, it has not expired, it was not revoked, its client is not
blocked and its audience is Exchange Online's (``EXCHANGE``) — as the real resource server
decides. What tests can do::

    idp.register_app("app-id", mailbox=user, secret="s3cret")           # or certificate=
    idp.register_public_client("public-id"); idp.auto_approve = user   # device code flow
    idp.token_requests          # every call of the token endpoint (grant type, client)
    idp.issued_tokens           # every access and refresh token handed out
    idp.hits("client_credentials")
    idp.revoke(token) ; idp.revoke_all() ; idp.block_client("app-id")  # refused from now on
    idp.token_lifetime = 120    # seconds for tokens issued from now on
    idp.validate(token) -> username | None                             # what introspection says
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

if TYPE_CHECKING:  # importing it for real would stop pytest rewriting that plugin's asserts
    from tests.plugins.tlsca import TestCA

TENANT = "11111111-2222-3333-4444-555555555555"
EXCHANGE = "https://outlook.office365.com"
EXCHANGE_AUDIENCES = {EXCHANGE, "https://outlook.office.com"}
APP_ROLES = ("IMAP.AccessAsApp", "SMTP.SendAsApp")
GRAPH = "https://graph.microsoft.com"
GRAPH_ROLES = ("Mail.ReadWrite", "Mail.Send")  # an app token for Graph: what tests/graph use
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_RESERVED = {"openid", "profile", "offline_access"}


@dataclass
class Client:
    client_id: str
    mailbox: str | None = None  # confidential app: the mailbox it was granted
    secret: str | None = None
    certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str  # "client_credentials", "device_code" or "refresh_token"
    client_id: str
    scope: str


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class FakeIdP:
    """See the module docstring."""

    host = "127.0.0.1"

    def __init__(self, ca: TestCA, tenant: str = TENANT):
        self.tenant = tenant
        self._lock = threading.Lock()
        self.reset()
        self._https = ThreadingHTTPServer((self.host, 0), _handler(self, tls=True))
        self._https.socket = ca.server_context().wrap_socket(self._https.socket,
                                                            server_side=True)
        self._http = ThreadingHTTPServer((self.host, 0), _handler(self, tls=False))
        self.port = self._https.server_address[1]
        self.introspection_port = self._http.server_address[1]
        # A short poll interval only makes stop() quick; nothing waits on it otherwise.
        self._threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
                         for s in (self._https, self._http)]
        for t in self._threads:
            t.start()

    def reset(self) -> None:
        """Forget clients, tokens, revocations and counters; a new signing key."""
        self.key = secrets.token_bytes(32)
        self.token_lifetime = 3600
        self.auto_approve: str | None = None  # who "enters the device code" at once
        self.token_requests: list[TokenRequest] = []
        self.introspections = 0
        self._clients: dict[str, Client] = {}
        self._issued: list[str] = []  # jti of every token
        self.issued_tokens: list[str] = []  # every access and refresh token handed out
        self._revoked: set[str] = set()  # jti
        self._blocked: set[str] = set()
        self._refresh: dict[str, tuple[str, str, str]] = {}  # token -> client, user, scope
        self._devices: dict[str, dict[str, Any]] = {}  # device_code -> state
        self.graph_roles: dict[str, tuple[str, ...]] = {}  # client -> roles in Graph tokens

    @property
    def authority(self) -> str:
        return f"https://{self.host}:{self.port}/{self.tenant}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def introspection_url(self) -> str:
        return f"http://{self.host}:{self.introspection_port}/introspect"

    def stop(self) -> None:
        for server in (self._https, self._http):
            server.shutdown()
            server.server_close()

    # -- what tests set up and look at ---------------------------------------------------

    def register_app(self, client_id: str, *, mailbox: str, secret: str | None = None,
                     certificate: x509.Certificate | None = None) -> None:
        self._clients[client_id] = Client(client_id, mailbox, secret, certificate)

    def register_public_client(self, client_id: str) -> None:
        self._clients[client_id] = Client(client_id)

    def hits(self, grant_type: str | None = None) -> int:
        return sum(1 for r in self.token_requests if grant_type in (None, r.grant_type))

    def revoke(self, token: str) -> None:
        self._revoked.add(str(jwt.decode(token, options={"verify_signature": False})["jti"]))

    def revoke_all(self) -> None:
        """Every token issued so far is refused (a new one is accepted)."""
        with self._lock:
            self._revoked.update(self._issued)

    def block_client(self, client_id: str) -> None:
        """Every token of this client, old or new, is refused (mailbox permission removed)."""
        self._blocked.add(client_id)

    def validate(self, token: str) -> str | None:
        """The username the token may log in as, or None if the server must refuse it."""
        try:
            claims = jwt.decode(token, self.key, algorithms=["HS256"],
                                options={"verify_aud": False})
        except jwt.PyJWTError:
            return None
        if (claims["jti"] in self._revoked or claims["azp"] in self._blocked
                or claims["aud"] not in EXCHANGE_AUDIENCES):
            return None
        return str(claims["username"])

    # -- protocol ------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        base = self.authority
        return {"issuer": f"{base}/v2.0", "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": self.token_endpoint,
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                          "private_key_jwt"]}

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        grant = form.get("grant_type", "")
        client = self._client(form)
        scope = form.get("scope", "")
        kind = {"client_credentials": "client_credentials", _DEVICE_GRANT: "device_code",
                "refresh_token": "refresh_token"}.get(grant)
        if kind is None:
            raise OAuthError("unsupported_grant_type", f"AADSTS70003: {grant!r}")
        with self._lock:
            self.token_requests.append(TokenRequest(kind, client.client_id, scope))
        if kind == "client_credentials":
            return self._app_token(client, form, scope)
        if kind == "device_code":
            device = self._devices.get(form.get("device_code", ""))
            if device is None:
                raise OAuthError("expired_token", "AADSTS70019: the code has expired")
            if device["user"] is None:
                raise OAuthError("authorization_pending", "AADSTS70016: waiting for sign-in")
            del self._devices[form["device_code"]]
            return self._user_tokens(client, device["user"], device["scope"])
        entry = self._refresh.pop(form.get("refresh_token", ""), None)
        if entry is None or entry[0] != client.client_id:
            raise OAuthError("invalid_grant", "AADSTS70008: the refresh token has expired or "
                                              "was revoked")
        return self._user_tokens(client, entry[1], entry[2])

    def device_code(self, form: dict[str, str]) -> dict[str, Any]:
        client = self._client(form, public=True)
        code, user_code = secrets.token_urlsafe(24), secrets.token_hex(4).upper()
        self._devices[code] = {"client": client.client_id, "scope": form.get("scope", ""),
                               "user": self.auto_approve, "user_code": user_code}
        uri = f"https://{self.host}:{self.port}/devicelogin"
        return {"device_code": code, "user_code": user_code, "verification_uri": uri,
                "expires_in": 60, "interval": 1,
                "message": f"To sign in, use a web browser to open the page {uri} and enter "
                           f"the code {user_code} to authenticate."}

    def approve(self, user_code: str, user: str) -> None:
        """The person signs in and enters ``user_code`` in the browser."""
        for device in self._devices.values():
            if device["user_code"] == user_code:
                device["user"] = user
                return
        raise KeyError(user_code)

    def introspect(self, form: dict[str, str]) -> dict[str, Any]:
        self.introspections += 1
        user = self.validate(form.get("token", ""))
        return {"active": True, "username": user} if user else {"active": False}

    def _client(self, form: dict[str, str], public: bool = False) -> Client:
        client = self._clients.get(form.get("client_id", ""))
        if client is None:
            raise OAuthError("unauthorized_client", "AADSTS700016: application not found in "
                                                    "the directory", 400)
        if public or client.mailbox is None:
            return client
        if client.secret is not None:
            if form.get("client_secret") != client.secret:
                raise OAuthError("invalid_client", "AADSTS7000215: Invalid client secret "
                                                   "provided.", 401)
            return client
        self._check_assertion(client, form)
        return client

    def _check_assertion(self, client: Client, form: dict[str, str]) -> None:
        assert client.certificate is not None
        assertion = form.get("client_assertion", "")
        if form.get("client_assertion_type") != _ASSERTION_TYPE or not assertion:
            raise OAuthError("invalid_client", "AADSTS7000216: client assertion required", 401)
        header = jwt.get_unverified_header(assertion)
        sha1 = client.certificate.fingerprint(hashes.SHA1())  # Entra x5t is SHA-1
        # msal keeps the base64 padding, the RFC 7515 form has none: accept both
        if str(header.get("x5t")).rstrip("=") != base64.urlsafe_b64encode(sha1).decode(
                ).rstrip("="):
            raise OAuthError("invalid_client", "AADSTS700027: unknown certificate thumbprint",
                             401)
        try:
            jwt.decode(assertion, client.certificate.public_key(),
                       algorithms=["RS256", "PS256"], audience=self.token_endpoint,
                       issuer=client.client_id)
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", f"AADSTS700027: bad assertion: {exc}",
                             401) from None

    def _app_token(self, client: Client, form: dict[str, str], scope: str) -> dict[str, Any]:
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise OAuthError("invalid_scope", "AADSTS1002012: the scope must end in /.default")
        assert client.mailbox is not None
        aud = scopes[0].removesuffix("/.default")
        roles = self.graph_roles.get(client.client_id, GRAPH_ROLES) if aud == GRAPH else APP_ROLES
        claims = {"aud": aud, "roles": list(roles), "username": client.mailbox}
        return self._issue(client, claims)

    def _user_tokens(self, client: Client, user: str, scope: str) -> dict[str, Any]:
        scopes = [s for s in scope.split() if s not in _RESERVED]
        resource = scopes[0].rsplit("/", 1)[0] if scopes else ""
        claims = {"aud": resource, "scp": " ".join(s.rsplit("/", 1)[-1] for s in scopes),
                  "upn": user, "username": user}
        response = self._issue(client, claims)
        refresh = secrets.token_urlsafe(32)
        self._refresh[refresh] = (client.client_id, user, scope)
        self.issued_tokens.append(refresh)
        oid = hashlib.sha256(user.encode()).hexdigest()[:32]
        id_claims = {"aud": client.client_id, "iss": f"{self.authority}/v2.0", "oid": oid,
                     "tid": self.tenant, "preferred_username": user, "sub": oid,
                     "iat": int(time.time()), "exp": int(time.time()) + 3600}
        client_info = json.dumps({"uid": oid, "utid": self.tenant}).encode()
        response.update(refresh_token=refresh, scope=scope,
                        id_token=jwt.encode(id_claims, self.key, algorithm="HS256"),
                        client_info=base64.urlsafe_b64encode(client_info).decode().rstrip("="))
        return response

    def _issue(self, client: Client, claims: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        body = {"iss": f"https://sts.windows.net/{self.tenant}/", "tid": self.tenant,
                "azp": client.client_id, "appid": client.client_id, "sub": client.client_id,
                "iat": int(now), "exp": int(now) + self.token_lifetime,
                "jti": secrets.token_urlsafe(12), **claims}
        token = jwt.encode(body, self.key, algorithm="HS256", headers={"kid": "default"})
        with self._lock:
            self._issued.append(body["jti"])
            self.issued_tokens.append(token)
        return {"token_type": "Bearer", "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime, "access_token": token}


def _handler(idp: FakeIdP, *, tls: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if tls and path == f"/{idp.tenant}/v2.0/.well-known/openid-configuration":
                self._send(200, idp.discovery())
            else:
                self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            path = urllib.parse.urlsplit(self.path).path
            routes = ({f"/{idp.tenant}/oauth2/v2.0/token": idp.token,
                       f"/{idp.tenant}/oauth2/v2.0/devicecode": idp.device_code} if tls
                      else {"/introspect": idp.introspect})
            route = routes.get(path)
            if route is None:
                self._send(404, {"error": "not_found"})
                return
            try:
                self._send(200, route(form))
            except OAuthError as exc:
                self._send(exc.status, {"error": exc.error,
                                        "error_description": exc.description})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture(scope="session")
def fake_idp_server(test_ca: TestCA) -> Iterator[FakeIdP]:
    """The session's :class:`FakeIdP` (use ``fake_idp`` in tests: it resets the state)."""
    idp = FakeIdP(test_ca)
    yield idp
    idp.stop()


@pytest.fixture
def fake_idp(fake_idp_server: FakeIdP, test_ca: TestCA,
             monkeypatch: pytest.MonkeyPatch) -> FakeIdP:
    """The running :class:`FakeIdP` with fresh state; ``REQUESTS_CA_BUNDLE`` points at the
    test CA for the test's duration."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(test_ca.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fake_idp_server.reset()
    return fake_idp_server


__all__ = ["APP_ROLES", "EXCHANGE", "GRAPH", "GRAPH_ROLES", "TENANT", "FakeIdP", "TokenRequest"]
