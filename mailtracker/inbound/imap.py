"""Mailbox access over IMAP: a small :class:`Mailbox` interface and its imapclient adapter.

This is the only module that imports imapclient. Everything leaving it is plain data
(:class:`FolderState`, :class:`HeaderInfo`, ``bytes``, ``int``) or a
:class:`~mailtracker.errors.ImapError` subclass; imapclient's bytes-keyed dicts and imaplib's
exceptions stop here. Reconnection policy belongs to the caller: after an
:class:`~mailtracker.errors.ImapTimeoutError` or a lost connection the mailbox refuses further
use, and the caller connects again.

Guarantees: TLS is verified (implicit or STARTTLS; no password is sent before TLS unless
``tls = "none"``); every socket read has ``settings.timeout``; fetching uses ``BODY.PEEK`` and
never sets ``\\Seen``; passwords never appear in errors or logs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailtracker.errors import (
    ImapAuthError,
    ImapError,
    ImapFolderError,
    ImapTimeoutError,
    ImapTlsError,
)
from mailtracker.inbound.mailbox import HEADER_BATCH, FolderState, HeaderInfo
from mailtracker.settings.config import ImapSettings

if TYPE_CHECKING:
    from mailtracker.settings.oauth2 import AccessToken

log = logging.getLogger(__name__)
_PROTOCOL_LOG = logging.getLogger("imapclient.imaplib")

#: RFC 2177: a server may drop a client idling for 30 minutes; re-issue IDLE well before.
IDLE_ROUND_SECONDS = 25 * 60.0
#: Without IDLE, how often ``wait_for_change`` asks the server with NOOP.
POLL_INTERVAL_SECONDS = 30.0

_HEADER_ITEMS = ("BODY.PEEK[HEADER]", "RFC822.SIZE", "FLAGS", "INTERNALDATE")
# What a scan needs of every message: parsing size, flags and INTERNALDATE of all of them
# took over a third of a big scan's fetch time, and only the few relevant ones need them.
_LEAN_HEADER_ITEMS = ("BODY.PEEK[HEADER]",)


def connect(settings: ImapSettings, password: str, *,
            idle_round: float = IDLE_ROUND_SECONDS,
            poll_interval: float = POLL_INTERVAL_SECONDS,
            renew: Callable[[], AccessToken] | None = None) -> ImapMailbox:
    """Open a verified TLS connection (per ``settings.tls``) and log in.

    ``password`` is the password, or the OAuth2 access token when ``settings.auth`` is
    ``"oauth2"`` (SASL XOAUTH2, or OAUTHBEARER when only that is offered). If the server
    refuses a token and ``renew`` is given, it is called once for a new token and the login
    is tried once more on a new connection. Raises ImapTlsError (nothing was sent),
    ImapAuthError, ImapTimeoutError or ImapError naming ``host:port``.
    """
    try:
        return _connect_once(settings, password, idle_round, poll_interval)
    except ImapAuthError as exc:
        if renew is None or settings.auth != "oauth2":
            raise
        log.info("%s; fetching a new OAuth2 token and trying once more", exc)
        token = renew()
        try:
            return _connect_once(settings, token.value, idle_round, poll_interval)
        except ImapAuthError as again:
            raise ImapAuthError(f"{again} (also with a newly fetched OAuth2 token: "
                                f"{token.describe()})", host=again.host) from None


def _connect_once(settings: ImapSettings, password: str, idle_round: float,
                  poll_interval: float) -> ImapMailbox:
    guard = _Guard(settings)
    client = guard.run("connecting", _open, settings, tls_phase=True)
    try:
        guard.run("logging in", _authenticate, client, settings, password, login_phase=True)
        client.normalise_times = False  # keep INTERNALDATE's zone instead of local naive time
        return ImapMailbox(client, settings, idle_round=idle_round, poll_interval=poll_interval)
    except BaseException:
        _shutdown(client)
        raise


def _set_protocol_debug(client: Any) -> None:
    """imapclient sets imaplib's debug level to 5 and sends its messages to the
    ``imapclient.imaplib`` logger, which drops them unless that logger is enabled for DEBUG.
    At level 5 imaplib formats them all the same, including the repr of every literal it
    receives (every header block of a scan) and of each whole FETCH answer: a fifth of a
    big scan's time. So the level is 4 (commands and response lines) while the logger
    wants them, else 0."""
    imap = getattr(client, "_imap", None)
    if imap is not None:
        imap.debug = 4 if _PROTOCOL_LOG.isEnabledFor(logging.DEBUG) else 0


def _item_bytes(data: Any, name: bytes) -> dict[int, bytes]:
    """``{uid: item}`` of a parsed FETCH answer for the one data item ``name``; messages
    without it (expunged meanwhile) are left out."""
    return {int(uid): bytes(item[name]) for uid, item in data.items()
            if item.get(name) is not None}


def _open(settings: ImapSettings) -> Any:
    where = f"{settings.host}:{settings.port}"
    if settings.tls == "implicit":
        client = IMAPClient(settings.host, settings.port, ssl=True,
                            ssl_context=_tls_context(settings), timeout=settings.timeout)
    else:
        client = IMAPClient(settings.host, settings.port, ssl=False, timeout=settings.timeout)
        if settings.tls == "starttls":
            try:
                if not client.has_capability("STARTTLS"):
                    raise ImapTlsError(f"{where} does not offer STARTTLS; refusing to log in "
                                       "without TLS", host=where)
                client.starttls(_tls_context(settings))
            except BaseException:
                _shutdown(client)
                raise
    _enable_keepalive(client.socket())
    return client


def _tls_context(settings: ImapSettings) -> ssl.SSLContext:
    cafile = str(settings.ca_file) if settings.ca_file is not None else None
    return ssl.create_default_context(cafile=cafile)


def _enable_keepalive(sock: socket.socket) -> None:
    # Lets the kernel notice a dead peer during long IDLEs and keeps NAT mappings alive.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _authenticate(client: Any, settings: ImapSettings, secret: str) -> None:
    """The one place that knows how to log in (password, or an OAuth2 token via XOAUTH2)."""
    if settings.auth == "oauth2":
        # XOAUTH2 is what Exchange Online and Gmail document; OAUTHBEARER (RFC 7628) is used
        # only by a server that offers nothing else.
        if not client.has_capability("AUTH=XOAUTH2") and client.has_capability(
                "AUTH=OAUTHBEARER"):
            client.oauthbearer_login(settings.username, secret)
        else:
            client.oauth2_login(settings.username, secret)
    elif secret.isascii() and settings.username.isascii():
        client.login(settings.username, secret)
    else:  # imaplib's LOGIN is ASCII-only; SASL PLAIN carries UTF-8
        client.plain_login(settings.username, secret)


def _shutdown(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.shutdown()


def _server_text(exc: BaseException) -> str:
    """imapclient's message without its ``b'…'`` wrapping and ``command failed:`` prefix."""
    text = str(exc)
    text = re.sub(r"^[a-z]+ failed: ", "", text)
    match = re.fullmatch(r"b(['\"])(.*)\1", text)
    return match.group(2) if match else text


class _Guard:
    """Turns imapclient/imaplib/socket failures into mailtracker's IMAP errors."""

    def __init__(self, settings: ImapSettings):
        self.where = f"{settings.host}:{settings.port}"
        self.timeout = settings.timeout
        self.username = settings.username
        self.broken = False

    def run(self, action: str, fn: Callable[..., Any], *args: Any, tls_phase: bool = False,
            login_phase: bool = False, refused: type[ImapError] = ImapError) -> Any:
        """Call ``fn(*args)``; ``refused`` is raised when the server answers NO/BAD."""
        if self.broken:
            raise ImapError(f"{self.where}: the connection was lost earlier; reconnect",
                            host=self.where)
        try:
            return fn(*args)
        except ImapError:
            raise
        except (IMAPClientError, OSError) as exc:
            raise self._translate(exc, action, tls_phase, login_phase, refused) from exc

    def _translate(self, exc: Exception, action: str, tls_phase: bool, login_phase: bool,
                   refused: type[ImapError]) -> ImapError:
        where = self.where
        if isinstance(exc, IMAPClientError) and not isinstance(exc, IMAPClientAbortError):
            text = _server_text(exc)
            if login_phase and "socket error" not in text:  # imapclient wraps aborts too
                return ImapAuthError(f"{where}: login as {self.username!r} refused: {text}",
                                     host=where)
            if not isinstance(exc, LoginError):
                return refused(f"{where}: {action} failed: {text}", host=where)
        self.broken = True  # from here on the connection's state is unknown
        if isinstance(exc, TimeoutError):
            return ImapTimeoutError(f"{where}: no answer within {self.timeout:g} s while "
                                    f"{action} (dead link or unresponsive server)", host=where)
        if isinstance(exc, ssl.SSLError) and tls_phase:
            reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            return ImapTlsError(f"{where}: TLS failed while {action}: {reason}; "
                                "nothing was sent", host=where)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            if tls_phase:
                return ImapError(f"cannot connect to {where}: {reason}", host=where)
        else:
            reason = _server_text(exc)
        return ImapError(f"{where}: connection lost while {action}: {reason}", host=where)


class ImapMailbox:
    """A logged-in IMAP connection; see :class:`Mailbox` for the operations."""

    def __init__(self, client: Any, settings: ImapSettings, *,
                 idle_round: float = IDLE_ROUND_SECONDS,
                 poll_interval: float = POLL_INTERVAL_SECONDS):
        self._client = client
        self._guard = _Guard(settings)
        self._idle_round = max(0.0, min(idle_round, IDLE_ROUND_SECONDS))
        self._poll_interval = poll_interval
        self._news_pending = False
        self.folder: str | None = None
        self.uses_idle: bool = settings.idle and self._run("reading capabilities",
                                                           client.has_capability, "IDLE")

    @property
    def idle_round(self) -> float:
        """Longest single IDLE, in seconds (never above :data:`IDLE_ROUND_SECONDS`)."""
        return self._idle_round

    def __enter__(self) -> ImapMailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, action: str, fn: Callable[..., Any], *args: Any,
             refused: type[ImapError] = ImapError) -> Any:
        _set_protocol_debug(self._client)
        return self._guard.run(action, fn, *args, refused=refused)

    def select(self, folder: str) -> FolderState:
        """SELECT ``folder`` (read-write). Raises ImapFolderError if it cannot be selected."""
        resp = self._run(f"selecting folder {folder!r}", self._client.select_folder, folder,
                         refused=ImapFolderError)
        self.folder = folder
        self._news_pending = False
        uidnext = resp.get(b"UIDNEXT")
        return FolderState(uidvalidity=int(resp[b"UIDVALIDITY"]),
                           uidnext=int(uidnext) if uidnext is not None else None,
                           exists=int(resp.get(b"EXISTS", 0)))

    def uids_after(self, last_uid: int, since: date | None = None) -> list[int]:
        """UIDs greater than ``last_uid``, ascending; with ``since``, only messages whose
        INTERNALDATE is on or after that day (filtered by the server).

        Includes mail that arrived up to this call: a server searches only the messages it
        has announced to this session (Dovecot announces at the end of a command), so a NOOP
        first brings the session's view up to date.
        """
        criteria: list[Any] = ["UID", f"{last_uid + 1}:*"]
        if since is not None:
            criteria += ["SINCE", since]
        self._run("sending NOOP", self._client.noop)
        self._news_pending = False
        found = self._run("searching for new messages", self._client.search, criteria)
        # "UID n:*" always matches the highest UID, even when it is below n (RFC 3501).
        return sorted(uid for uid in (int(u) for u in found) if uid > last_uid)

    def fetch_headers(self, uids: Sequence[int], batch: int = HEADER_BATCH, *,
                      lean: bool = False) -> Iterator[HeaderInfo]:
        """Header block, size, flags and INTERNALDATE of each UID, ``batch`` per command.
        With ``lean`` only the header block (size 0, no flags, ``internaldate`` None; see
        :meth:`sizes_and_dates`).

        Yields in ascending UID order; UIDs that no longer exist are skipped.
        """
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), max(1, batch)):
            chunk = ordered[start:start + max(1, batch)]
            if lean:
                blocks = _item_bytes(self._run("fetching headers", self._client.fetch, chunk,
                                               _LEAN_HEADER_ITEMS), b"BODY[HEADER]")
                for uid in chunk:
                    if uid in blocks:
                        yield HeaderInfo(uid, 0, (), blocks[uid], None)
                continue
            data = self._run("fetching headers", self._client.fetch, chunk, _HEADER_ITEMS)
            for uid in chunk:
                item = data.get(uid)
                if item is None or b"BODY[HEADER]" not in item:
                    continue
                yield HeaderInfo(
                    uid=uid,
                    size=int(item.get(b"RFC822.SIZE", 0)),
                    flags=tuple(_flag_text(f) for f in item.get(b"FLAGS", ())),
                    header_bytes=bytes(item[b"BODY[HEADER]"] or b""),
                    internaldate=item.get(b"INTERNALDATE"),
                )

    def sizes_and_dates(self, uids: Sequence[int]
                        ) -> dict[int, tuple[int, datetime | None]]:
        """``(RFC822.SIZE, INTERNALDATE)`` of each UID that still exists, in one command."""
        if not uids:
            return {}
        data = self._run("fetching sizes and dates", self._client.fetch, sorted(set(uids)),
                         ["RFC822.SIZE", "INTERNALDATE"])
        return {int(uid): (int(item.get(b"RFC822.SIZE", 0)), item.get(b"INTERNALDATE"))
                for uid, item in data.items()}

    def fetch_full_many(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The whole messages (``BODY.PEEK[]``) of ``uids`` in one command, by UID; those that
        no longer exist are missing."""
        if not uids:
            return {}
        return _item_bytes(self._run("fetching messages", self._client.fetch,
                                     sorted(set(uids)), ["BODY.PEEK[]"]), b"BODY[]")

    def add_keyword(self, uids: Sequence[int], keyword: str) -> None:
        """Set the IMAP keyword (a flag without backslash) on ``uids``."""
        if uids:
            self._run(f"adding keyword {keyword!r}", self._client.add_flags, list(uids),
                      [keyword], True)

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move ``uids`` to ``folder``, creating it if missing.

        Uses MOVE when offered, else COPY + ``\\Deleted`` + UID EXPUNGE of exactly these
        UIDs. A server with neither MOVE nor UIDPLUS keeps the originals marked ``\\Deleted``
        (a plain EXPUNGE would also remove other messages someone marked deleted).
        """
        if not uids:
            return
        self._ensure_folder(folder)
        action = f"moving {len(uids)} message(s) to {folder!r}"
        client, uid_list = self._client, list(uids)
        if self._run(action, client.has_capability, "MOVE"):
            self._run(action, client.move, uid_list, folder, refused=ImapFolderError)
            return
        self._run(action, client.copy, uid_list, folder, refused=ImapFolderError)
        self._run(action, client.add_flags, uid_list, [b"\\Deleted"], True)
        if self._run(action, client.has_capability, "UIDPLUS"):
            self._run(action, client.uid_expunge, uid_list)
        else:
            log.warning("%s: server offers neither MOVE nor UIDPLUS; the originals stay in "
                        "%s marked as deleted", self._guard.where, self.folder)

    def _ensure_folder(self, folder: str) -> None:
        if self._run(f"looking up folder {folder!r}", self._client.folder_exists, folder):
            return
        try:
            self._run(f"creating folder {folder!r}", self._client.create_folder, folder,
                      refused=ImapFolderError)
        except ImapFolderError:
            # Someone else may have created it meanwhile; only then is the failure harmless.
            if not self._run(f"looking up folder {folder!r}", self._client.folder_exists,
                             folder):
                raise

    def noop(self) -> None:
        """Send NOOP: proves the link is alive (ImapTimeoutError if not) and collects news."""
        self._news_pending |= self._noop_news()

    def wait_for_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for new mail in the selected folder.

        Returns True as soon as something may have arrived, False if nothing did. Uses IDLE
        when the server offers it (and ``settings.idle``), in rounds of at most
        ``idle_round`` seconds, each ended with DONE whose answer must come within the socket
        timeout; so a dead link raises ImapTimeoutError within one round plus
        ``settings.timeout``. Otherwise polls with NOOP every ``poll_interval`` seconds.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self._news_pending or self._noop_news():
            self._news_pending = False
            return True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.uses_idle:
                if self._idle_once(min(left, self._idle_round)):
                    return True
            else:
                time.sleep(min(left, self._poll_interval))
                if self._noop_news():
                    return True

    def _idle_once(self, period: float) -> bool:
        client = self._client
        self._run("starting IDLE", client.idle)
        log.debug("IDLE started on %s for up to %.1f s", self.folder, period)
        end = time.monotonic() + period
        news = False
        while not news:
            left = end - time.monotonic()
            if left <= 0:
                break
            responses = self._run("waiting in IDLE", client.idle_check, left)
            news = _has_news(responses)
            if not responses:
                # The period ended, or the socket woke with nothing to read (EOF among
                # others): ending IDLE now tells which.
                break
        _text, responses = self._run("ending IDLE", client.idle_done)
        return news or _has_news(responses)

    def _noop_news(self) -> bool:
        _text, responses = self._run("sending NOOP", self._client.noop)
        return _has_news(responses)

    def abort(self) -> None:
        """Close the socket at once, without LOGOUT (e.g. on SIGTERM in the middle of IDLE,
        where a LOGOUT would only be answered after the socket timeout)."""
        self._guard.broken = True
        _shutdown(self._client)

    def close(self) -> None:
        """Log out (best effort) and close the socket. Safe to call twice."""
        if not self._guard.broken:
            with contextlib.suppress(Exception):
                self._client.logout()
        self._guard.broken = True
        _shutdown(self._client)


def _has_news(responses: Sequence[Any]) -> bool:
    """True if untagged responses say the message count changed (``* n EXISTS``)."""
    return any(isinstance(r, tuple) and len(r) >= 2 and r[1] == b"EXISTS"
               for r in responses)


def _flag_text(flag: bytes | str) -> str:
    return flag.decode("ascii", "replace") if isinstance(flag, bytes) else flag
