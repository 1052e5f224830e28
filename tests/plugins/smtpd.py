"""Real aiosmtpd servers on loopback for tests, with recording and fault injection.

Fixtures
--------
``smtp_server``
    A running server that behaves like a municipal submission server: STARTTLS offered and
    required (certificate from ``test_ca``), AUTH PLAIN/LOGIN required and only offered after
    STARTTLS. Fresh per test.
``make_smtp_server(**kind)``
    Factory for variants; every server it starts is stopped at teardown::

        make_smtp_server(tls="implicit")         # TLS from the first byte (port-465 style)
        make_smtp_server(tls="none")             # no STARTTLS, but AUTH offered in clear (the trap)
        make_smtp_server(cert_ca=other_ca)       # certificate from a CA clients do not trust
        make_smtp_server(auth_required=False)    # MAIL accepted without login
        make_smtp_server(token_check=fn)         # XOAUTH2 asks fn(user, token) -> bool, e.g.
                                                 # lambda u, t: fake_idp.validate(t) == u;
                                                 # AUTH lines up to 16 KB (real tokens)

What a test can observe (``SmtpTestServer``)
------------------------------------------
``messages``      every message the server accepted (``ReceivedMessage``: envelope, raw bytes,
                  parsed ``EmailMessage``), appended *before* the server answers 250;
``auth_attempts`` every credential check (mechanism, login, success, over TLS); PLAIN and
                  LOGIN take ``server.password``, XOAUTH2 takes ``server.token``;
``commands``      every SMTP command verb received (``Command``: verb, over TLS, connection
                  number), recorded before the server acts on it — arguments are not kept, so
                  no credentials end up in test output. ``verbs`` is the list of verbs only.

Fault injection (``server.faults``; thread-safe, the server runs in its own thread)
-------------------------------------------------------------------------------
An *action* is either a reply line such as ``"451 4.3.0 Try again later"`` or one of
``DROP`` (close the connection without answering), ``HOLD`` (do not answer until
``server.release()``, or ``hold_limit`` seconds, then carry on normally) and
``DELIVER_AND_DROP`` (after DATA only: store the message, then close without answering).
``times=None`` means every time; ``times=n`` means the next n times, then normal again::

    server.faults.on_command("MAIL", "451 4.3.0 Try again later", times=1)
    server.faults.on_command("DATA", DROP)          # before the 354: nothing was transferred
    server.faults.on_rcpt("nobody@example.dk", "550 5.1.1 No such user")
    server.faults.on_rcpt("busy@example.dk", "450 4.2.1 Mailbox busy", times=2)
    server.faults.after_data("451 4.3.0 Queue full", times=1)     # payload received, refused
    server.faults.after_data("554 5.6.0 Message rejected")
    server.faults.after_data(HOLD, times=1)   # "late 250": stored, reply held past the timeout

``after_data(HOLD)`` is the measured double-delivery hazard: the message *is* delivered (it is
in ``messages`` when the client gives up) but the 250 comes after the client's timeout.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import email
import enum
import itertools
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailtracker.settings.config import SecretSource, SmtpSettings

if TYPE_CHECKING:  # importing it for real would stop pytest rewriting that plugin's asserts
    from tests.plugins.tlsca import TestCA

ServerTls = Literal["starttls", "implicit", "none"]

USERNAME = "kp-ejer@kommune.example"
PASSWORD = "Kod3ord-med-æøå og mellemrum"  # non-ASCII on purpose: AUTH must carry UTF-8
TOKEN = "ya29.test-access-token"  # accepted by AUTH XOAUTH2
SERVER_NAME = "smtp.test.localhost"


class Action(enum.Enum):
    DROP = "drop"
    HOLD = "hold"
    DELIVER_AND_DROP = "deliver-and-drop"


DROP = Action.DROP
HOLD = Action.HOLD
DELIVER_AND_DROP = Action.DELIVER_AND_DROP

FaultAction = str | Action


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]  # e.g. ("SIZE=1234", "BODY=8BITMIME")
    raw: bytes  # as received, dot-unstuffed, CRLF line ends
    message: EmailMessage  # ``raw`` with LF line ends, parsed with ``policy.default``
    over_tls: bool
    login: str | None  # the authenticated user, if any


@dataclass(frozen=True)
class AuthAttempt:
    mechanism: str
    login: str
    success: bool
    over_tls: bool


@dataclass(frozen=True)
class Command:
    verb: str
    over_tls: bool
    connection: int  # 1 for the first client connection, 2 for the next, …


@dataclass
class _Rule:
    action: FaultAction
    remaining: int | None


class Faults:
    """Scripted misbehaviour; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[tuple[str, str], list[_Rule]] = {}

    def on_command(self, verb: str, action: FaultAction, *, times: int | None = None) -> None:
        """Act instead of (or, for HOLD, before) the server's handling of ``verb``."""
        if action is DELIVER_AND_DROP:
            raise ValueError("DELIVER_AND_DROP only applies after DATA")
        self._add(("command", verb.upper()), action, times)

    def on_rcpt(self, address: str, action: FaultAction, *, times: int | None = None) -> None:
        """Answer ``RCPT TO:<address>`` with ``action`` (HOLD: delay, then accept)."""
        if action is DELIVER_AND_DROP:
            raise ValueError("DELIVER_AND_DROP only applies after DATA")
        self._add(("rcpt", address.lower()), action, times)

    def after_data(self, action: FaultAction, *, times: int | None = None) -> None:
        """Act once the whole payload has been received, instead of answering 250."""
        self._add(("data", ""), action, times)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, key: tuple[str, str], action: FaultAction, times: int | None) -> None:
        if isinstance(action, str) and not (action[:3].isdigit() and action[0] in "2345"):
            raise ValueError(f"a reply must start with an SMTP code, not {action!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every time)")
        with self._lock:
            self._rules.setdefault(key, []).append(_Rule(action, times))

    def take(self, key: tuple[str, str]) -> FaultAction | None:
        """The action for this occurrence of ``key``, consuming one use; None = behave."""
        with self._lock:
            for rule in self._rules.get(key, []):
                if rule.remaining is None:
                    return rule.action
                if rule.remaining > 0:
                    rule.remaining -= 1
                    return rule.action
        return None


class _ServerState:
    """Everything the server thread writes and the test thread reads."""

    def __init__(self, username: str, password: str, hold_limit: float) -> None:
        self.username = username
        self.password = password
        self.token = TOKEN
        self.token_check: Callable[[str, str], bool] | None = None
        self.hold_limit = hold_limit
        self.faults = Faults()
        self.messages: list[ReceivedMessage] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.commands: list[Command] = []
        self.changed = threading.Condition()
        self.connection_numbers = itertools.count(1)
        self.live: set[SMTP] = set()  # open connections, touched only in the server loop
        self._release: asyncio.Event | None = None  # lives in the server loop

    def record(self, item: ReceivedMessage | AuthAttempt | Command) -> None:
        with self.changed:
            if isinstance(item, ReceivedMessage):
                self.messages.append(item)
            elif isinstance(item, AuthAttempt):
                self.auth_attempts.append(item)
            else:
                self.commands.append(item)
            self.changed.notify_all()

    async def hold(self) -> None:
        """Wait in the server loop until ``release_all`` or ``hold_limit`` seconds."""
        if self._release is None:
            self._release = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), self.hold_limit)

    async def close_connections(self) -> None:
        """Runs in the server loop: abort every open connection and wait until they are gone.

        aiosmtpd's Controller.stop() closes the listener but not open connections; their
        sockets would be collected later in another test as ResourceWarnings.
        """
        for smtp in list(self.live):
            for transport in (smtp.transport, smtp._original_transport):
                if transport is not None:
                    transport.abort()  # type: ignore[attr-defined]
        for _ in range(1000):  # each abort needs a few loop turns to reach connection_lost
            if not self.live:
                break
            await asyncio.sleep(0)

    def release_all(self) -> None:
        """Runs in the server loop: let every held reply go; later HOLDs hold again."""
        if self._release is not None:
            self._release.set()
        self._release = None


def _over_tls(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


async def _drop(server: SMTP) -> None:
    """Close the connection abruptly and never return (connection_lost cancels us)."""
    if server.transport is not None:
        server.transport.abort()  # type: ignore[attr-defined]
    await asyncio.get_running_loop().create_future()


async def _apply(server: SMTP, state: _ServerState, action: FaultAction) -> str | None:
    """Carry out ``action``; a reply line to send, or None to carry on normally."""
    if isinstance(action, str):
        return action
    if action is HOLD:
        await state.hold()
        return None
    await _drop(server)
    return None  # not reached


def _login_of(session: Session) -> str | None:
    data = session.auth_data
    return data.login.decode() if session.authenticated and data is not None else None


class _RecordingHandler:
    def __init__(self, state: _ServerState) -> None:
        self.state = state

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """SASL XOAUTH2 (as Microsoft 365 and Gmail use it); the token is ``server.token``."""
        fields: dict[str, str] = {}
        if len(args) == 2:
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode(args[1], validate=True).decode("utf-8")
                fields = dict(f.split("=", 1) for f in decoded.split("\x01") if "=" in f)
        login = fields.get("user", "")
        if self.state.token_check is not None:
            bearer = fields.get("auth", "")
            ok = bearer.startswith("Bearer ") and self.state.token_check(login, bearer[7:])
        else:
            ok = (login == self.state.username
                  and fields.get("auth") == f"Bearer {self.state.token}")
        self.state.record(AuthAttempt("XOAUTH2", login, ok, _over_tls(server)))
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login.encode(), b""))

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        action = self.state.faults.take(("rcpt", address.lower()))
        if action is not None:
            reply = await _apply(server, self.state, action)
            if reply is not None:
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        action = self.state.faults.take(("data", ""))
        if isinstance(action, str):
            return action
        if action is DROP:
            await _drop(server)
        raw = cast(bytes, envelope.original_content)
        self.state.record(ReceivedMessage(
            mail_from=cast(str, envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            mail_options=tuple(envelope.mail_options),
            raw=raw,
            message=email.message_from_bytes(raw.replace(b"\r\n", b"\n"),
                                             policy=policy.default),
            over_tls=_over_tls(server),
            login=_login_of(session),
        ))
        if action is DELIVER_AND_DROP:
            await _drop(server)
        if action is HOLD:
            await self.state.hold()
        return f"250 2.0.0 Ok: queued as Q{len(self.state.messages)}"


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP with every command recorded and open to ``Faults.on_command``."""

    def __init__(self, state: _ServerState, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, authenticator=self._check_credentials, **kwargs)
        self.state = state
        self.connection = next(state.connection_numbers)
        self._smtp_methods = {verb: self._recorded(verb, method)
                              for verb, method in self._smtp_methods.items()}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.state.live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.state.live.discard(self)
        super().connection_lost(error)

    def _recorded(self, verb: str, method: Callable[[str | None], Any]
                  ) -> Callable[[str | None], Any]:
        async def run(arg: str | None) -> None:
            self.state.record(Command(verb, _over_tls(self), self.connection))
            action = self.state.faults.take(("command", verb))
            if action is not None:
                reply = await _apply(self, self.state, action)
                if reply is not None:
                    await self.push(reply)
                    return
            await method(arg)
        return run

    def _check_credentials(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode("utf-8", "replace")
        ok = (login == self.state.username
              and auth_data.password == self.state.password.encode("utf-8"))
        self.state.record(AuthAttempt(mechanism, login, ok, _over_tls(server)))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


class _LongLineSMTP(_RecordingSMTP):
    """Real access tokens are 1.5-3 KB: AUTH lines far beyond aiosmtpd's 512 bytes."""

    command_size_limit = 16384
    command_size_limits: ClassVar[dict[str, int]] = collections.defaultdict(lambda: 16384)
    line_length_limit = 16384


class _Controller(Controller):
    """A Controller on 127.0.0.1, port 0 (the kernel picks a free port)."""

    def __init__(self, state: _ServerState, **kwargs: Any) -> None:
        super().__init__(_RecordingHandler(state), hostname="127.0.0.1", port=0, **kwargs)
        self.state = state

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            # aiosmtpd warns when AUTH does not require its own STARTTLS; for implicit TLS the
            # warning is wrong, and for tls="none" the clear-text AUTH is the point.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            cls = _RecordingSMTP if self.state.token_check is None else _LongLineSMTP
            return cls(self.state, self.handler, **self.SMTP_kwargs)

    def start(self) -> None:
        super().start()
        # The warm-up connection of start() is not a client's: number clients from 1.
        self.state.connection_numbers = itertools.count(1)

    def _trigger_server(self) -> None:
        # The base class connects to self.port to warm the server up; with port 0 it must
        # learn the real port first.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@dataclass
class SmtpTestServer:
    """A running loopback server; see the module docstring for what to do with it."""

    host: str
    port: int
    tls: ServerTls
    username: str
    password: str  # for AUTH PLAIN/LOGIN
    token: str  # the OAuth2 access token AUTH XOAUTH2 accepts
    ca_file: Path  # the CA a correctly configured client trusts (always ``test_ca``)
    _state: _ServerState = field(repr=False)
    _controller: _Controller = field(repr=False)

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self._state.messages

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        return self._state.auth_attempts

    @property
    def commands(self) -> list[Command]:
        return self._state.commands

    @property
    def verbs(self) -> list[str]:
        return [c.verb for c in self._state.commands]

    @property
    def faults(self) -> Faults:
        return self._state.faults

    def settings(self, **overrides: Any) -> SmtpSettings:
        """``SmtpSettings`` for this server; keyword arguments replace fields."""
        base = SmtpSettings(
            host=self.host,
            port=self.port,
            tls=self.tls,
            username=self.username,
            secret=SecretSource(password_env="MAILTRACKER_TEST_SMTP_PASSWORD"),
            ca_file=self.ca_file,
            from_address="kp-ejer@kommune.example",
            from_name="KP-systemansvarlig, Eksempel Kommune",
            timeout=10.0,
        )
        return replace(base, **overrides)

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until ``count`` messages were accepted (for clients running elsewhere)."""
        with self._state.changed:
            if not self._state.changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} messages, got {len(self.messages)}")
        return list(self.messages)

    def release(self) -> None:
        """Let every held reply (``HOLD``) go now."""
        self._controller.loop.call_soon_threadsafe(self._state.release_all)

    def stop(self) -> None:
        if self._controller._thread is not None:
            loop = self._controller.loop
            asyncio.run_coroutine_threadsafe(self._state.close_connections(), loop).result(10)
            self._controller.stop()


def start_smtp_server(
    test_ca: TestCA,
    *,
    tls: ServerTls = "starttls",
    cert_ca: TestCA | None = None,
    auth_required: bool = True,
    enable_smtputf8: bool = True,
    username: str = USERNAME,
    password: str = PASSWORD,
    hold_limit: float = 30.0,
    token_check: Callable[[str, str], bool] | None = None,
) -> SmtpTestServer:
    """Start a server in a thread. ``cert_ca`` signs its certificate (default ``test_ca``).

    aiosmtpd only offers AUTH over TLS it negotiated itself (STARTTLS) when
    ``auth_require_tls`` is on; with implicit TLS the whole connection is encrypted, so it is
    switched off there. With ``tls="none"`` AUTH is offered in clear: that is the trap a client
    configured for STARTTLS must not fall into.
    """
    signer = cert_ca or test_ca
    state = _ServerState(username, password, hold_limit)
    state.token_check = token_check
    kwargs: dict[str, Any] = {
        "server_hostname": SERVER_NAME,
        "auth_required": auth_required,
        "auth_require_tls": tls == "starttls",
        "enable_SMTPUTF8": enable_smtputf8,
    }
    if tls == "starttls":
        kwargs.update(tls_context=signer.server_context(), require_starttls=True)
    elif tls == "implicit":
        kwargs["ssl_context"] = signer.server_context()
    controller = _Controller(state, **kwargs)
    controller.start()
    return SmtpTestServer(
        host="127.0.0.1", port=controller.port, tls=tls, username=username, password=password,
        token=state.token, ca_file=test_ca.ca_file, _state=state, _controller=controller,
    )


@pytest.fixture
def make_smtp_server(test_ca: TestCA) -> Iterator[Callable[..., SmtpTestServer]]:
    """Factory: ``make_smtp_server(tls=..., cert_ca=..., auth_required=..., ...)``."""
    started: list[SmtpTestServer] = []

    def make(**kind: Any) -> SmtpTestServer:
        server = start_smtp_server(test_ca, **kind)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(make_smtp_server: Callable[..., SmtpTestServer]) -> SmtpTestServer:
    """STARTTLS required, AUTH required after STARTTLS, certificate from ``test_ca``."""
    return make_smtp_server()


__all__ = [
    "DELIVER_AND_DROP", "DROP", "HOLD", "PASSWORD", "TOKEN", "USERNAME", "Action", "AuthAttempt",
    "Command", "Faults", "ReceivedMessage", "SmtpTestServer", "start_smtp_server",
]
