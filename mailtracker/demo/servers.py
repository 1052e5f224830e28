"""The demo's submission server on a background event loop, and the run's throwaway CA.

``with SubmissionServer(mailboxes, logins, tls) as smtp:`` starts the aiosmtpd submission
server (STARTTLS) on 127.0.0.1 with a port chosen by the kernel, in a daemon thread; leaving
the block stops it. Certificates come from a CA made with trustme for this run only; clients
(and the demo's Dovecot) use its PEM files (``ca_file`` in the config).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import trustme

from mailtracker.demo.mailbox import DemoMailboxes
from mailtracker.demo.smtpd import (
    MX_HOST,
    SUBMISSION_HOST,
    SubmissionHandler,
    make_submission_server,
)

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 10.0


class _DropLoginDataNotice(logging.Filter):
    """aiosmtpd 1.4 logs a deprecation notice of its own on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_AIOSMTPD_FILTER = _DropLoginDataNotice()


@dataclass(frozen=True)
class DemoTls:
    ca_file: Path  # what clients trust
    cert_file: Path  # the servers' certificate chain
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


def make_demo_ca(directory: Path) -> DemoTls:
    """A fresh CA and a certificate for 127.0.0.1/localhost, written as PEM into ``directory``.

    The key is readable only by its owner; the CA file is what the config's ``ca_file``
    names.
    """
    ca = trustme.CA(organization_name="mailtracker demo CA")
    leaf = ca.issue_cert(LOOPBACK, "localhost", MX_HOST, SUBMISSION_HOST)
    directory.mkdir(parents=True, exist_ok=True)
    tls = DemoTls(directory / "demo-ca.pem", directory / "demo-server.pem",
                  directory / "demo-server.key")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    tls.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    tls.key_file.touch(mode=0o600)
    leaf.private_key_pem.write_to_path(str(tls.key_file))
    return tls


class SubmissionServer:
    """The submission server filing into ``mailboxes``, on a background loop. ``logins``:
    address → password of who may submit."""

    def __init__(self, mailboxes: DemoMailboxes, logins: Mapping[str, str], tls: DemoTls):
        self.tls = tls
        self.logins = dict(logins)
        self.handler = SubmissionHandler(mailboxes)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="mailtracker-demo-smtp", daemon=True)
        self._smtp_server: asyncio.Server | None = None

    def __enter__(self) -> SubmissionServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_START_TIMEOUT)

    def start(self) -> None:
        """Start the server; ``port`` is set when this returns."""
        logging.getLogger("mail.log").addFilter(_AIOSMTPD_FILTER)  # no-op when present
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.stop()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        context = self.tls.server_context()
        self._smtp_server = await loop.create_server(
            lambda: make_submission_server(self.handler, self.logins, context), LOOPBACK, 0)
        self.port = int(self._smtp_server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop the server and the loop thread. Safe to call twice."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_START_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()

    async def _stop(self) -> None:
        if self._smtp_server is not None:
            self._smtp_server.close()
            await self._smtp_server.wait_closed()
        current = asyncio.current_task()
        stragglers = [t for t in asyncio.all_tasks() if t is not current]
        for task in stragglers:  # aiosmtpd sessions a client left open
            task.cancel()
        await asyncio.gather(*stragglers, return_exceptions=True)
