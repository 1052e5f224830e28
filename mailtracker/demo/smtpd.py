"""The demo's mail servers on the receiving side: an aiosmtpd submission server and the "MX".

:class:`SubmissionHandler` is what ``mailtracker notify`` talks to: aiosmtpd with STARTTLS
required and AUTH PLAIN/LOGIN (only after STARTTLS) for one demo account. Every accepted
message is handed to :func:`deliver_local`, the demo MX's local delivery, which adds the trace
headers a real MTA adds and files it in the recipient's INBOX (in memory, or through Dovecot's
LDA; see :class:`~mailtracker.demo.mailbox.DemoMailboxes`). A recipient without a mailbox
gets what real life gives: the message is accepted, then a DSN bounce
(``multipart/report; report-type=delivery-status``, Status 5.1.1, the original headers as
``text/rfc822-headers``) lands in the sender's INBOX.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import secrets
import ssl
import textwrap
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailtracker.demo.mailbox import DemoMailboxes, normalise_crlf

log = logging.getLogger(__name__)

MX_HOST = "mx.demo-kommune.dk"  # receives and files mail; writes Authentication-Results
SUBMISSION_HOST = "smtp.demo-kommune.dk"  # takes mail from clients, relays to MX, bounces
MAILER_DAEMON = f"MAILER-DAEMON@{SUBMISSION_HOST}"


def queue_id() -> str:
    return secrets.token_hex(5).upper()


LOCAL_PEER = "localhost (localhost [127.0.0.1])"


def trace_headers(rcpt: str, mail_from: str, *, peer: str, protocol: str,
                  auth_results: str | None, now: datetime) -> bytes:
    """What the MX writes above a message it files: Return-Path and Delivered-To (local
    delivery), its verdict on the sender (Authentication-Results) and its Received line."""
    lines = [f"Return-Path: <{mail_from}>", f"Delivered-To: {rcpt}"]
    if auth_results is not None:
        lines.append(f"Authentication-Results: {auth_results}")
    lines += [f"Received: from {peer}",
              f"\tby {MX_HOST} (mailtracker demo MX) with {protocol} id {queue_id()}",
              f"\tfor <{rcpt}>; {email.utils.format_datetime(now)}"]
    return "\r\n".join(lines).encode() + b"\r\n"


def deliver_local(mailboxes: DemoMailboxes, rcpt: str, raw: bytes, *, mail_from: str,
                  peer: str = LOCAL_PEER, protocol: str = "ESMTPSA",
                  auth_results: str | None = None, now: datetime | None = None) -> bool:
    """File ``raw`` in ``rcpt``'s INBOX under the MX's trace headers; False if ``rcpt`` has
    no mailbox here."""
    when = now or datetime.now().astimezone()
    headers = trace_headers(rcpt, mail_from, peer=peer, protocol=protocol,
                            auth_results=auth_results, now=when)
    return mailboxes.deliver(rcpt, headers + normalise_crlf(raw), when)


def _header_block(raw: bytes) -> bytes:
    raw = normalise_crlf(raw)
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end + 2]


def build_dsn(original: bytes, *, failed_rcpt: str, sender: str, now: datetime,
              queue: str) -> bytes:
    """A Postfix-style delivery status notification for ``failed_rcpt`` (RFC 3464): the
    submission host relayed the message and the MX refused the recipient."""
    boundary = f"{queue}.{secrets.token_hex(6)}/{SUBMISSION_HOST}"
    date = email.utils.format_datetime(now)
    reply = (f"550 5.1.1 <{failed_rcpt}>: Recipient address rejected: User unknown in "
             "virtual mailbox table")
    said = textwrap.fill(f"<{failed_rcpt}>: host {MX_HOST}[127.0.0.1] said: {reply} (in "
                         "reply to RCPT TO command)", width=72, subsequent_indent="    ",
                         break_on_hyphens=False)
    text = (f"This is the mail system at host {SUBMISSION_HOST}.\n\n"
            "I'm sorry to have to inform you that your message could not\n"
            "be delivered to one or more recipients. It's attached below.\n\n"
            "                   The mail system\n\n" + said + "\n").replace("\n", "\r\n")
    status = (f"Reporting-MTA: dns; {SUBMISSION_HOST}\r\nX-Postfix-Queue-ID: {queue}\r\n"
              f"X-Postfix-Sender: rfc822; {sender}\r\nArrival-Date: {date}\r\n\r\n"
              f"Final-Recipient: rfc822; {failed_rcpt}\r\n"
              f"Original-Recipient: rfc822;{failed_rcpt}\r\nAction: failed\r\n"
              f"Status: 5.1.1\r\nRemote-MTA: dns; {MX_HOST}\r\n"
              f"Diagnostic-Code: smtp; {reply}\r\n")
    head = (f"From: Mail Delivery System <{MAILER_DAEMON}>\r\nTo: {sender}\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\n"
            f"Date: {date}\r\nMessage-ID: <{now:%Y%m%d%H%M%S}.{queue}@{SUBMISSION_HOST}>\r\n"
            "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status;\r\n"
            f'\tboundary="{boundary}"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
            "This is a MIME-encapsulated message.\r\n\r\n")
    return (head.encode()
            + _part(boundary, "text/plain; charset=us-ascii", "Notification", text.encode())
            + _part(boundary, "message/delivery-status", "Delivery report", status.encode())
            + _part(boundary, "text/rfc822-headers", "Undelivered Message Headers",
                    _header_block(original))
            + f"--{boundary}--\r\n".encode())


def _part(boundary: str, content_type: str, description: str, body: bytes) -> bytes:
    return (f"--{boundary}\r\nContent-Description: {description}\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + body + b"\r\n"


class SubmissionHandler:
    """aiosmtpd handler: delivers locally, bounces what has no mailbox back to the sender."""

    def __init__(self, mailboxes: DemoMailboxes, now: Callable[[], datetime] | None = None):
        self.mailboxes = mailboxes
        self.now = now or (lambda: datetime.now().astimezone())
        self.bounced: list[str] = []  # recipients a DSN was sent for
        self.accepted: list[tuple[tuple[str, ...], bytes]] = []  # (recipients, message)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        sender = envelope.mail_from or ""
        queue = queue_id()
        self.accepted.append((tuple(envelope.rcpt_tos), raw))
        peer = f"{session.host_name or 'localhost'} (localhost [127.0.0.1])"
        protocol = "ESMTPSA" if session.authenticated else "ESMTPS"
        # Filing may run a program (Dovecot's LDA): off the event loop.
        await asyncio.to_thread(self._deliver, tuple(envelope.rcpt_tos), raw, sender, queue,
                                peer, protocol)
        return f"250 2.0.0 Ok: queued as {queue}"

    def _deliver(self, rcpts: tuple[str, ...], raw: bytes, sender: str, queue: str, peer: str,
                 protocol: str) -> None:
        for rcpt in rcpts:
            filed = deliver_local(self.mailboxes, rcpt, raw, mail_from=sender, peer=peer,
                                  protocol=protocol, now=self.now())
            if not filed and sender:  # never bounce a bounce (null sender)
                self._bounce(raw, rcpt, sender, queue)

    def _bounce(self, raw: bytes, rcpt: str, sender: str, queue: str) -> None:
        log.debug("no mailbox for %s: bouncing to %s", rcpt, sender)
        self.bounced.append(rcpt)
        dsn = build_dsn(raw, failed_rcpt=rcpt, sender=sender, now=self.now(), queue=queue)
        deliver_local(self.mailboxes, sender, dsn, mail_from="", protocol="local",
                      now=self.now())


class PasswordAuthenticator:
    """aiosmtpd authenticator: PLAIN/LOGIN for ``logins`` (address → password)."""

    def __init__(self, logins: Mapping[str, str]):
        self.logins = {address.lower(): password for address, password in logins.items()}

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            known = self.logins.get(login.lower())
            if known is not None and secrets.compare_digest(known.encode(),
                                                            password.encode()):
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)


def make_submission_server(handler: SubmissionHandler, logins: Mapping[str, str],
                           tls_context: ssl.SSLContext) -> SMTP:
    """One aiosmtpd protocol instance (the loop's ``create_server`` calls this per client)."""
    return SMTP(handler, hostname=SUBMISSION_HOST, tls_context=tls_context, require_starttls=True,
                auth_required=True, auth_require_tls=True,
                authenticator=PasswordAuthenticator(logins), timeout=30)
