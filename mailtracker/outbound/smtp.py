"""SMTP submission: one verified-TLS, authenticated connection per run.

The only module that imports aiosmtplib. ``SmtpSession.send`` walks MAIL, RCPT (one per
recipient) and DATA itself instead of calling ``sendmail``, so that every failure says in
which phase it happened, and therefore whether a retry can deliver a second copy:

* ``SmtpTemporaryFailure`` – a 4xx reply, or the link failed before the payload was sent:
  nothing was delivered, retrying is safe.
* ``SmtpPermanentFailure`` – a 5xx reply for the whole message: do not retry.
* ``SmtpUnknownOutcome`` – the payload was sent but no final reply came (timeout or dropped
  link): the message may have been delivered, so it must never be retried automatically.

Connection-level problems (refused, DNS, TLS, login) are ``SmtpError`` subclasses from
``mailtracker.errors``. The password is only handed to aiosmtplib's AUTH commands: it is never
logged and never part of an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import email.policy
import logging
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from types import TracebackType
from typing import TYPE_CHECKING

import aiosmtplib

from mailtracker.addresses import check_email
from mailtracker.errors import (
    ExitStatus,
    InvalidInputError,
    SmtpAuthError,
    SmtpError,
    SmtpTimeoutError,
    SmtpTlsError,
)
from mailtracker.settings.config import SmtpSettings

if TYPE_CHECKING:
    from mailtracker.settings.oauth2 import AccessToken

log = logging.getLogger(__name__)

_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
_END_OF_DATA = "end of DATA"  # the phase after the payload, when a lost link is ambiguous
# A link failure before the payload went out; aiosmtplib closes the connection on these.
_LINK_ERRORS = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)


@dataclass(frozen=True)
class RecipientRefusal:
    """One recipient the server refused at RCPT; the message was not sent to it."""

    address: str
    code: int
    reply: str

    @property
    def temporary(self) -> bool:
        """A 4xx refusal: sending to this address again later may succeed."""
        return 400 <= self.code < 500


@dataclass(frozen=True)
class SendOutcome:
    """The server accepted the message for ``accepted``; ``refused`` did not get it."""

    accepted: tuple[str, ...]
    refused: tuple[RecipientRefusal, ...] = ()
    reply: str = ""  # the server's final 250 text, often carrying its queue id


class SmtpTransactionError(SmtpError):
    """One message could not be sent; the connection itself may still be usable.

    ``phase`` is ``"MAIL"``, ``"RCPT"``, ``"DATA"`` (the DATA command, before any payload)
    or ``"end of DATA"`` (after the payload). ``code`` and ``reply`` (one line) are the
    server's answer; ``code`` is None and ``reply`` empty when there was none (lost link).
    ``refused`` lists the per-recipient refusals when every recipient was refused.
    """

    def __init__(self, message: str, *, host: str, phase: str, code: int | None = None,
                 reply: str = "", refused: tuple[RecipientRefusal, ...] = ()) -> None:
        self.phase = phase
        self.code = code
        self.reply = reply
        self.refused = refused
        super().__init__(message, host=host)


class SmtpTemporaryFailure(SmtpTransactionError):
    """Nothing was delivered and a later retry may succeed (4xx, or link lost early)."""


class SmtpPermanentFailure(SmtpTransactionError):
    """The server refused the message for good (5xx); retrying will not help."""

    exit_status = ExitStatus.DELIVERY_FAILED


class SmtpUnknownOutcome(SmtpTransactionError):
    """The payload was sent but no final reply arrived; it may have been delivered."""

    exit_status = ExitStatus.DELIVERY_FAILED


def _one_line(text: str) -> str:
    """Server text made safe for a one-line message (no CR/LF or other controls)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _os_reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return _one_line(str(cause)) or type(cause).__name__


def _abort(smtp: aiosmtplib.SMTP) -> None:
    """Close at once. aiosmtplib's close() starts a TLS close_notify exchange that an
    ending event loop does not wait for, leaving the socket to the garbage collector."""
    if isinstance(smtp.transport, asyncio.WriteTransport):
        smtp.transport.abort()
    smtp.close()


def _wire_bytes(message: EmailMessage) -> bytes:
    """The message as sent: CRLF line ends, no Bcc header; refuses one without Message-ID."""
    if not message.get("Message-ID"):
        raise InvalidInputError("the message has no Message-ID; the outbox must assign one "
                                "(and store it) before the first attempt")
    if "Bcc" in message:
        message = copy.deepcopy(message)
        del message["Bcc"]
    try:
        raw = message.as_bytes(policy=email.policy.SMTP)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidInputError(f"the message cannot be serialised: {exc}") from None
    return _LINE_END.sub(b"\r\n", raw)


class SmtpSession:
    """One SMTP connection for a run. Use as ``async with SmtpSession(...) as smtp:``.

    Entering connects, secures the link (implicit TLS, or STARTTLS which must be offered)
    with certificate verification against ``settings.ca_file`` (or the system CAs), and logs
    in when ``settings.username`` is set. Leaving sends QUIT and ignores errors doing so.
    With ``auth = "oauth2"``, ``password`` is the access token; if the server refuses it and
    ``renew`` is given, ``renew()`` supplies a new one for one more attempt.
    """

    def __init__(self, settings: SmtpSettings, password: str | None, *,
                 local_hostname: str | None = None,
                 renew: Callable[[], AccessToken] | None = None) -> None:
        self.settings = settings
        self._password = password
        self._renew = renew if settings.auth == "oauth2" else None
        self._local_hostname = local_hostname
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (f"SmtpSession({self.address}, tls={self.settings.tls!r}, "
                f"user={self.settings.username!r})")

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def is_connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def __aenter__(self) -> SmtpSession:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, secure and log in. Raises ``SmtpError`` (TLS, auth, timeout subclasses)."""
        try:
            await self._connect_once()
        except SmtpAuthError as exc:
            if self._renew is None or not isinstance(exc.__cause__,
                                                     aiosmtplib.SMTPAuthenticationError):
                raise
            log.info("%s; fetching a new OAuth2 token and trying once more", exc)
            token = await asyncio.to_thread(self._renew)
            self._password = token.value
            try:
                await self._connect_once()
            except SmtpAuthError as again:
                raise SmtpAuthError(f"{again} (also with a newly fetched OAuth2 token: "
                                    f"{token.describe()})", host=again.host) from None

    async def _connect_once(self) -> None:
        await self.close()
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout, local_hostname=self._local_hostname,
            use_tls=s.tls == "implicit",
            # STARTTLS is done by hand below: aiosmtplib's default (None) silently goes on in
            # clear when the server does not offer it, and True hides why it failed.
            start_tls=False,
            validate_certs=True,
            tls_context=self._tls_context() if s.tls != "none" else None,
        )
        try:
            with self._connect_errors():
                await smtp.connect()
                await self._secure(smtp)
                await self._login(smtp)
        except BaseException:
            _abort(smtp)
            raise
        self._smtp = smtp
        log.debug("connected to %s (tls=%s)", self.address, s.tls)

    async def reconnect(self) -> None:
        """Drop the current connection (if any) and connect again."""
        await self.connect()

    async def close(self) -> None:
        """QUIT politely; errors on the way out are ignored."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                # QUIT by hand: aiosmtplib's quit() then starts a TLS close_notify exchange
                # that a finishing event loop does not wait for. After 221 nothing is left.
                await smtp.execute_command(b"QUIT", timeout=min(self.settings.timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            _abort(smtp)

    def _tls_context(self) -> ssl.SSLContext:
        ca_file = self.settings.ca_file
        try:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise SmtpTlsError(f"cannot load CA file {ca_file}: {_os_reason(exc)}",
                               host=self.settings.host) from None

    async def _secure(self, smtp: aiosmtplib.SMTP) -> None:
        if self.settings.tls == "starttls":
            await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                raise SmtpTlsError(f"server {self.address} does not offer STARTTLS; refusing "
                                   "to send the password in clear", host=self.settings.host)
            try:
                await smtp.starttls()
            except aiosmtplib.SMTPResponseException as exc:
                raise SmtpTlsError(f"server {self.address} refused STARTTLS ({exc.code} "
                                   f"{_one_line(exc.message)}); refusing to send the password "
                                   "in clear", host=self.settings.host) from None
        if self.settings.tls != "none" and smtp.get_transport_info("sslcontext") is None:
            raise SmtpTlsError(f"connection to {self.address} is not encrypted",
                               host=self.settings.host)
        await smtp.ehlo()  # the extensions offered before TLS must not be trusted

    async def _login(self, smtp: aiosmtplib.SMTP) -> None:
        user = self.settings.username
        if user is None:
            return
        where = f"{self.address} (user {user!r})"
        if self._password is None:
            raise SmtpAuthError(f"no password given for {where}", host=self.settings.host)
        if not smtp.supports_extension("auth"):
            raise SmtpAuthError(f"server {self.address} does not offer AUTH; cannot log in "
                                f"as {user!r}", host=self.settings.host)
        if self.settings.auth == "oauth2":
            if "xoauth2" not in smtp.server_auth_methods:
                raise SmtpAuthError(f"server {self.address} does not offer AUTH XOAUTH2",
                                    host=self.settings.host)
            await smtp.auth_xoauth2(user, self._password)
        elif not smtp.supported_auth_methods:
            offered = " ".join(smtp.server_auth_methods) or "none"
            raise SmtpAuthError(f"server {self.address} offers no AUTH mechanism we support "
                                f"(offered: {offered})", host=self.settings.host)
        else:
            await smtp.login(user, self._password)

    @contextlib.contextmanager
    def _connect_errors(self) -> Iterator[None]:
        """Turn aiosmtplib/OS errors during connect into one-line ``SmtpError``s."""
        host, where = self.settings.host, self.address
        try:
            yield
        except SmtpError:
            raise
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise SmtpAuthError(
                f"{where} refused the login for {self.settings.username!r}: "
                f"{exc.code} {_one_line(exc.message)}", host=host) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            tls_error = _find_ssl_error(exc)
            if isinstance(tls_error, ssl.SSLCertVerificationError):
                raise SmtpTlsError(
                    f"TLS with {where} failed: the server's certificate was not accepted "
                    f"({_one_line(str(tls_error.verify_message))}); is ca_file the CA that "
                    "signed it?", host=host) from exc
            if tls_error is not None:
                reason = _one_line(str(tls_error.reason or tls_error))
                raise SmtpTlsError(f"TLS with {where} failed: {reason}", host=host) from exc
            if isinstance(exc, TimeoutError):
                raise SmtpTimeoutError(f"{where} did not answer within "
                                       f"{self.settings.timeout:g} s", host=host) from exc
            if isinstance(exc, aiosmtplib.SMTPResponseException):
                raise SmtpError(f"{where} refused the session: {exc.code} "
                                f"{_one_line(exc.message)}", host=host) from exc
            raise SmtpError(f"cannot connect to {where}: {_os_reason(exc)}", host=host) from exc

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: EmailMessage, recipients: Sequence[str]) -> SendOutcome:
        """Send ``message`` to ``recipients`` (the envelope; headers are not consulted).

        Returns who accepted it; a partial refusal is not an exception. Raises
        ``SmtpTemporaryFailure``, ``SmtpPermanentFailure`` or ``SmtpUnknownOutcome`` for the
        message (after which the session can send the next one: it resets the transaction,
        or reconnects on the next ``send`` if the link was lost), ``InvalidInputError`` for
        a bad address or message, and ``SmtpError`` if reconnecting fails.
        """
        rcpts = self._envelope_recipients(recipients)
        payload = _wire_bytes(message)
        async with self._lock:
            if not self.is_connected:
                await self.reconnect()
            smtp = self._smtp
            assert smtp is not None
            try:
                await self._mail(smtp, payload)
                accepted, refused = await self._rcpt_all(smtp, rcpts)
                reply = await self._data(smtp, payload)
            except (SmtpTemporaryFailure, SmtpPermanentFailure):
                await self._reset(smtp)
                raise
            except SmtpUnknownOutcome:
                raise
            except BaseException:
                _abort(smtp)  # stopped mid-transaction (e.g. cancelled): start afresh next time
                raise
        log.debug("sent %s to %d recipient(s): %s", message.get("Message-ID"), len(accepted),
                  reply)
        return SendOutcome(tuple(accepted), tuple(refused), reply)

    def _envelope_recipients(self, recipients: Sequence[str]) -> list[str]:
        if isinstance(recipients, str):
            recipients = [recipients]
        unique: dict[str, str] = {}
        for address in recipients:
            try:
                normal = check_email(address)
            except ValueError as exc:
                raise InvalidInputError(f"recipient: {exc}") from None
            unique.setdefault(normal.lower(), normal)
        if not unique:
            raise InvalidInputError("a message needs at least one recipient")
        return list(unique.values())

    def _failure(self, phase: str, code: int | None, text: str, *,
                 refused: tuple[RecipientRefusal, ...] = ()) -> SmtpTransactionError:
        """The exception for a reply (or, with ``code`` None, a lost link) in ``phase``."""
        host, reply = self.settings.host, _one_line(text)
        said = f"{code} {reply}" if code is not None else reply
        if code is None:
            reply = ""  # not the server's words
        if code is not None and 500 <= code < 600:
            return SmtpPermanentFailure(f"{self.address} refused the message at {phase}: {said}",
                                        host=host, phase=phase, code=code, reply=reply,
                                        refused=refused)
        if phase == _END_OF_DATA and not (code is not None and 400 <= code < 500):
            return SmtpUnknownOutcome(
                f"{self.address}: no final reply after the message was sent ({said}); it may "
                "have been delivered, so it is not sent again automatically",
                host=host, phase=phase, code=code, reply=reply)
        return SmtpTemporaryFailure(f"{self.address} did not take the message at {phase}: "
                                    f"{said}", host=host, phase=phase, code=code, reply=reply,
                                    refused=refused)

    def _lost(self, phase: str, exc: Exception) -> SmtpTransactionError:
        if isinstance(exc, TimeoutError):
            return self._failure(phase, None, f"timed out after {self.settings.timeout:g} s")
        return self._failure(phase, None, "connection lost")

    async def _mail(self, smtp: aiosmtplib.SMTP, payload: bytes) -> None:
        options: list[str] = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(payload)}")
        if not payload.isascii():
            if not smtp.supports_extension("8bitmime"):
                raise SmtpPermanentFailure(
                    f"{self.address} does not offer 8BITMIME and the message has 8-bit "
                    "content (render it as quoted-printable or base64)",
                    host=self.settings.host, phase="MAIL")
            options.append("BODY=8BITMIME")
        try:
            await smtp.mail(self.settings.from_address, options=options)
        except aiosmtplib.SMTPResponseException as exc:
            raise self._failure("MAIL", exc.code, exc.message) from None
        except _LINK_ERRORS as exc:
            raise self._lost("MAIL", exc) from None

    async def _rcpt_all(self, smtp: aiosmtplib.SMTP, recipients: list[str]
                        ) -> tuple[list[str], list[RecipientRefusal]]:
        accepted: list[str] = []
        refused: list[RecipientRefusal] = []
        for address in recipients:
            try:
                await smtp.rcpt(address)
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code == 421:  # the server is closing the whole session
                    raise self._failure("RCPT", exc.code, exc.message) from None
                refused.append(RecipientRefusal(address, exc.code, _one_line(exc.message)))
            except _LINK_ERRORS as exc:
                raise self._lost("RCPT", exc) from None
            else:
                accepted.append(address)
        if not accepted:
            # Any 4xx among them means a later attempt may still reach someone.
            first = next((r for r in refused if r.temporary), refused[0])
            raise self._failure("RCPT", first.code, first.reply, refused=tuple(refused))
        return accepted, refused

    async def _data(self, smtp: aiosmtplib.SMTP, payload: bytes) -> str:
        """DATA in two steps, so a lost link is known to be before or after the payload."""
        try:
            start = await smtp.execute_command(b"DATA")
        except _LINK_ERRORS as exc:
            raise self._lost("DATA", exc) from None
        if start.code != 354:
            raise self._failure("DATA", start.code, start.message)
        protocol = smtp.protocol
        if protocol is None:
            raise self._failure("DATA", None, "connection lost")
        body = _LEADING_DOT.sub(b"..", payload)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            # aiosmtplib's data() would send DATA and the payload as one step; its protocol's
            # write/read_response are the same calls it makes for the payload half.
            protocol.write(body + b".\r\n")
            final = await protocol.read_response(timeout=self.settings.timeout)
        except (aiosmtplib.SMTPException, OSError) as exc:
            _abort(smtp)  # the protocol may be out of step with the server now
            raise self._lost(_END_OF_DATA, exc) from None
        if final.code != 250:
            failure = self._failure(_END_OF_DATA, final.code, final.message)
            if isinstance(failure, SmtpUnknownOutcome):
                _abort(smtp)
            raise failure
        return _one_line(final.message)

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        """RSET after a failed transaction so the connection can carry the next message."""
        if not smtp.is_connected:
            return
        try:
            await smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            _abort(smtp)  # the next send() reconnects
