"""Builders for mail that answers our own: replies, auto-replies and DSN bounces.

The EG mails themselves are the hand-written fixtures in tests/mail/*.eml.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest

MAIL_DIR = Path(__file__).parent / "mail"
OUR_ADDRESS = "kp-ejer@kommune.example"


def eml(name: str) -> bytes:
    return (MAIL_DIR / name).read_bytes()


def reply(*, sender: str, name: str, to_message_id: str, subject: str,
          body: str = "Tak, jeg har læst det og er klar.\n", auto: bool = False) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = OUR_ADDRESS
    msg["Subject"] = ("Automatisk svar: " if auto else "SV: ") + subject
    msg["Date"] = format_datetime(datetime(2026, 11, 26, 9, 30, tzinfo=UTC))
    msg["Message-ID"] = make_msgid(domain="kommune.example")
    msg["In-Reply-To"] = to_message_id
    msg["References"] = to_message_id
    if auto:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
        body = "Jeg er på ferie til og med 7. december og læser ikke mail.\n"
    msg.set_content(body)
    return msg.as_bytes()


def bounce(*, failed: str, original_message_id: str, original_subject: str) -> bytes:
    """A DSN (RFC 3464) as Postfix writes it."""
    boundary = "dsn-boundary-1"
    original_subject = Header(original_subject, "utf-8").encode()
    date = format_datetime(datetime(2026, 11, 26, 8, 0, tzinfo=UTC))
    text = f"""From: MAILER-DAEMON@mx.kommune.example (Mail Delivery System)
To: {OUR_ADDRESS}
Subject: Undelivered Mail Returned to Sender
Date: {date}
Message-ID: {make_msgid(domain="mx.kommune.example")}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.kommune.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{failed}>: host mail.kommune.example said: 550 5.1.1 <{failed}>:
    Recipient address rejected: User unknown in virtual mailbox table

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.kommune.example
Arrival-Date: {date}

Final-Recipient: rfc822; {failed}
Original-Recipient: rfc822;{failed}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.kommune.example
Diagnostic-Code: smtp; 550 5.1.1 <{failed}>: Recipient address rejected: User
    unknown in virtual mailbox table

--{boundary}
Content-Type: text/rfc822-headers

From: {OUR_ADDRESS}
To: {failed}
Subject: {original_subject}
Message-ID: {original_message_id}

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode("ascii")


def noise(i: int, size: int = 2000) -> bytes:
    """Unrelated municipal mail of a realistic size."""
    msg = EmailMessage()
    msg["From"] = f"Kollega {i} <kollega{i % 97}@kommune.example>"
    msg["To"] = OUR_ADDRESS
    msg["Subject"] = f"Mødeindkaldelse {i}: budgetopfølgning for afdeling {i % 13}"
    msg["Date"] = format_datetime(datetime(2026, 10, 1, 8, i % 60, tzinfo=UTC))
    msg["Message-ID"] = f"<noise-{i}@kommune.example>"
    msg.set_content(("Hej alle, her er dagsordenen for mødet. " * (size // 40))[:size])
    return msg.as_bytes()


CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def require_corpora() -> Path:
    """The real-world corpora in ``../shared/corpora``: a test without them skips with the
    reason on a developer's clone, and fails in CI, which always has them."""
    if not CORPORA.is_dir():
        message = f"mail corpora not found at {CORPORA} (they live in ../shared beside the repo)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CORPORA
