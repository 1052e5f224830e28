"""The demo's IMAP server: a small, correct asyncio IMAP4rev1 server over a :class:`MailStore`.

It speaks implicit TLS on loopback and implements what mailtracker and a typical client need:
CAPABILITY, NOOP, LOGOUT, LOGIN, AUTHENTICATE PLAIN, SELECT/EXAMINE (with UIDVALIDITY,
UIDNEXT, EXISTS), CREATE, LIST, STATUS, APPEND, CHECK, CLOSE, UNSELECT, EXPUNGE, IDLE
(RFC 2177, pushing ``* n EXISTS`` as mail is delivered), and SEARCH, FETCH, STORE, COPY, MOVE
(RFC 6851), EXPUNGE (RFC 4315) with and without UID. FETCH serves ``BODY[…]``/
``BODY.PEEK[…]`` (whole message, HEADER, TEXT), RFC822*, FLAGS, UID, INTERNALDATE and
RFC822.SIZE as literals; only non-PEEK body fetches set ``\\Seen``.

Like Dovecot, a session searches and fetches the messages it has been told about: new mail
is announced (``* n EXISTS``) at the end of a command or during IDLE.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from mailtracker.demo.imapproto import (
    Command,
    ImapSyntaxError,
    literal_length,
    parse_command,
    string_args,
)
from mailtracker.demo.imapsession import AccountCommands, Mailbox, NoResponse, SyncHandler
from mailtracker.demo.mailstore import Account, MailStore

log = logging.getLogger(__name__)

CAPABILITIES = "IMAP4rev1 AUTH=PLAIN IDLE MOVE UIDPLUS"
MAX_LITERAL = 50 * 1024 * 1024
_LINE_LIMIT = 64 * 1024


class DemoImapServer:
    """Serves ``store`` over implicit TLS. Start and stop it on the event loop it runs on."""

    def __init__(self, store: MailStore, ssl_context: ssl.SSLContext, *,
                 greeting: str = "mailtracker demo IMAP server ready"):
        self.store = store
        self.ssl_context = ssl_context
        self.greeting = greeting
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port."""
        self._server = await asyncio.start_server(self._connected, host, port,
                                                  ssl=self.ssl_context, limit=_LINE_LIMIT)
        self.host, self.port = host, int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and end every open session."""
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _connected(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        session = _Connection(self, reader, writer)
        try:
            await session.run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        finally:
            self._sessions.discard(task)
            session.close()


Handler = Callable[[Command], Awaitable[str]]


class _Connection:
    """One client connection: reads commands, dispatches, writes responses."""

    def __init__(self, server: DemoImapServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.account: Account | None = None
        self.mailbox: Mailbox | None = None
        self.wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._token = server.store.subscribe(lambda: _wake_threadsafe(loop, self.wake))
        self.handlers: dict[str, Handler] = {
            "CAPABILITY": self.capability, "NOOP": self.noop, "CHECK": self.noop,
            "LOGOUT": self.logout, "LOGIN": self.login, "AUTHENTICATE": self.authenticate,
            "SELECT": self.select, "EXAMINE": self.select, "IDLE": self.idle,
            "CLOSE": self.close_mailbox, "UNSELECT": self.close_mailbox,
        }
        self.closing = False

    def close(self) -> None:
        self.server.store.unsubscribe(self._token)
        with contextlib.suppress(Exception):
            self.writer.close()

    async def send(self, *lines: bytes) -> None:
        for line in lines:
            self.writer.write(line if line.endswith(b"\r\n") else line + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.send(f"* OK [CAPABILITY {CAPABILITIES}] {self.server.greeting}".encode())
        while not self.closing:
            data = await self.read_command()
            if data is None:
                return
            try:
                cmd = parse_command(data)
            except ImapSyntaxError as exc:
                await self.send(f"* BAD {exc}".encode())
                continue
            log.debug("C: %s %s", cmd.tag, cmd.name)
            await self.dispatch(cmd)

    async def read_command(self) -> bytes | None:
        """One command with its literals inlined, or None at end of stream."""
        self.ack_quickly()
        try:
            line = await self.reader.readline()
        except ValueError:  # longer than the line limit
            await self.send(b"* BYE Line too long")
            return None
        data = line
        while (announced := literal_length(line)) is not None:
            size, non_sync = announced
            if size > MAX_LITERAL:
                await self.send(b"* BYE Literal too large")
                return None
            if not non_sync:
                await self.send(b"+ Ready for literal data")
            data += await self.reader.readexactly(size)
            line = await self.reader.readline()
            data += line
        return data or None

    def ack_quickly(self) -> None:
        """Acknowledge the next segment at once (Linux; re-armed before every read).

        imapclient sends a command's CRLF in a separate write. With Nagle's algorithm on the
        client and delayed ACKs on the server, that write waits ~40 ms for an ACK.
        """
        sock = self.writer.get_extra_info("socket")
        quickack = getattr(socket, "TCP_QUICKACK", None)
        if sock is not None and quickack is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)

    async def dispatch(self, cmd: Command) -> None:
        handler = self.handlers.get(cmd.name)
        lines: list[bytes] = []
        try:
            if handler is not None:
                status_text = await handler(cmd)
            else:
                state_handler = self.state_handler(cmd.name)
                if state_handler is None:
                    await self.send(f"{cmd.tag} BAD Unknown command or wrong state: "
                                    f"{cmd.name}".encode())
                    return
                lines, status_text = state_handler(cmd)
        except ImapSyntaxError as exc:
            await self.send(f"{cmd.tag} BAD {exc}".encode())
            return
        except NoResponse as exc:
            status_text = f"NO {exc}"
        await self.send(*lines)
        await self.flush_updates(cmd.name)
        await self.send(f"{cmd.tag} {status_text}".encode())

    def state_handler(self, name: str) -> SyncHandler | None:
        """The handler for ``name`` in the current state (authenticated or selected)."""
        if self.mailbox is not None:
            return self.mailbox.handler(name)
        if self.account is not None:
            return AccountCommands(self.server.store, self.account).handler(name)
        return None

    async def flush_updates(self, command: str) -> None:
        if self.mailbox is not None:
            # RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH by sequence number.
            quiet = command in ("FETCH", "STORE", "SEARCH")
            await self.send(*self.mailbox.updates(allow_expunge=not quiet))

    # -- commands of any state -------------------------------------------------------------

    async def capability(self, cmd: Command) -> str:
        await self.send(f"* CAPABILITY {CAPABILITIES}".encode())
        return "OK CAPABILITY completed"

    async def noop(self, cmd: Command) -> str:
        return f"OK {cmd.name} completed"

    async def logout(self, cmd: Command) -> str:
        await self.send(b"* BYE Logging out")
        self.closing = True
        return "OK LOGOUT completed"

    async def login(self, cmd: Command) -> str:
        user, password = string_args(cmd.args, 2)
        return self._logged_in(user, password)

    async def authenticate(self, cmd: Command) -> str:
        if self.account is not None:
            raise NoResponse("Already authenticated")
        if not cmd.args or str(cmd.args[0]).upper() != "PLAIN":
            raise NoResponse("[CANNOT] Only AUTH=PLAIN is supported")
        if len(cmd.args) > 1:
            answer = str(cmd.args[1]).encode()
        else:
            await self.send(b"+ ")
            answer = (await self.reader.readline()).strip()
        if answer == b"*":
            raise ImapSyntaxError("Authentication cancelled")
        try:
            _authz, user, password = base64.b64decode(answer, validate=True).split(b"\0")
        except (binascii.Error, ValueError):
            raise ImapSyntaxError("Malformed PLAIN response") from None
        return self._logged_in(user.decode("utf-8", "replace"),
                               password.decode("utf-8", "replace"))

    def _logged_in(self, user: str, password: str) -> str:
        if self.account is not None:
            raise NoResponse("Already authenticated")
        account = self.server.store.check_login(user, password)
        if account is None:
            raise NoResponse("[AUTHENTICATIONFAILED] Authentication failed")
        self.account = account
        return f"OK [CAPABILITY {CAPABILITIES}] Logged in"

    async def select(self, cmd: Command) -> str:
        if self.account is None:
            raise NoResponse("Log in first")
        (name,) = string_args(cmd.args, 1)
        self.mailbox = None
        folder = self.server.store.folder(self.account, name)
        if folder is None:
            raise NoResponse("[NONEXISTENT] No such mailbox")
        readonly = cmd.name == "EXAMINE"
        self.mailbox = Mailbox(self.server.store, self.account, folder, readonly=readonly)
        await self.send(*self.mailbox.select_lines())
        return f"OK [{'READ-ONLY' if readonly else 'READ-WRITE'}] {cmd.name} completed"

    async def close_mailbox(self, cmd: Command) -> str:
        if self.mailbox is None:
            raise NoResponse("No mailbox selected")
        if cmd.name == "CLOSE":
            self.mailbox.expunge_silently()
        self.mailbox = None
        return f"OK {cmd.name} completed"

    async def idle(self, cmd: Command) -> str:
        if self.account is None:
            raise NoResponse("Log in first")
        await self.send(b"+ idling")
        done = asyncio.ensure_future(self.reader.readline())
        try:
            while True:
                await self.flush_updates("IDLE")
                self.wake.clear()
                woke = asyncio.ensure_future(self.wake.wait())
                finished, _ = await asyncio.wait({done, woke},
                                                 return_when=asyncio.FIRST_COMPLETED)
                if done in finished:
                    woke.cancel()
                    break
        finally:
            if not done.done():
                done.cancel()
        if done.result().strip().upper() != b"DONE":
            raise ImapSyntaxError("Expected DONE")
        return "OK IDLE terminated"


def _wake_threadsafe(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is already closed
        loop.call_soon_threadsafe(event.set)

