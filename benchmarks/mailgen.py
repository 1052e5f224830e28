"""Mail for the benchmark mailboxes: unrelated noise of realistic shape, and relevant mail.

Noise imitates a Danish municipality's shared Microsoft 365 mailbox: most messages carry the
long Exchange Online header block (Received chain, ARC, DKIM, anti-spam reports: 4-6 KB),
the rest are newsletters and system notices with shorter headers. Subjects are Danish, often
RFC 2047-encoded, and avoid every word the task's inbound rules look for, so the only
messages the prefilter selects are the relevant ones. Body sizes follow a skewed mix (see
``SIZE_MIX``): mostly a few KB, some HTML newsletters, a few PDF/image attachments.

Relevant mail is the hand-written fixtures in ``tests/mail`` (EG's agreement, guide and
webinar, signing platforms, spoofs, look-alikes, a forwarded copy) plus replies, auto-replies
and bounces to our own sent mail, each with a fresh Message-ID so every copy counts as new.
"""

from __future__ import annotations

import base64
import itertools
import random
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.utils import format_datetime

from tests.inbound_mail import MAIL_DIR, bounce, reply

#: (share of messages, smallest body, largest body) in bytes.
SIZE_MIX: tuple[tuple[float, int, int], ...] = (
    (0.60, 1_500, 8_000),
    (0.30, 10_000, 50_000),
    (0.09, 80_000, 400_000),
    (0.01, 1_000_000, 3_000_000),
)

_SUBJECTS = (
    "Mødeindkaldelse: budgetopfølgning {n}. kvartal",
    "SV: Referat fra afdelingsmøde",
    "Husk at registrere ferie og fravær",
    "Nyhedsbrev fra KL – uge {n}",
    "Ny sag oprettet i Acadre: {n}",
    "Driftsinfo: opdatering af IT-systemer i weekenden",
    "Kantinens menu i uge {n}",
    "Bestilling af kontorartikler",
    "Spørgsmål til lønkørsel for {n}. periode",
    "Årshjul for økonomiafdelingen",
    "Påmindelse: indberetning af timer",
    "Rettelse til kontoplanen",
    "Tilbud på kursus i Excel",
    "Status på projekt {n}",
)
_NAMES = ("Mette Sørensen", "Lars Høj", "Jens Ærbø", "Anne Mølgaard", "Peter Østergaard",
          "Hanne Kjær", "Ole Bæk", "Birgitte Lund", "Søren Dahl", "Rikke Andersen")
_SENDER_DOMAINS = ("kommune.dk", "kl.dk", "medarbejder.kommune.dk", "it-drift.example",
                   "leverandoer.example", "nyhedsbrev.example", "region.example")
_BODY_TEXT = ("Hej alle\n\nHermed materialet til næste møde. Kig det igennem inden da, og "
              "giv besked hvis noget mangler. Der er kaffe og kage i mødelokale 2.\n\n"
              "Med venlig hilsen\nØkonomi og Personale\n")


def _blob(rng: random.Random, length: int) -> str:
    return base64.b64encode(rng.randbytes(length * 3 // 4 + 3)).decode("ascii")[:length]


def _folded(name: str, value: str, width: int = 76) -> str:
    """``name: value`` folded at ``width`` columns, as Exchange writes long headers."""
    line = f"{name}: {value}"
    pieces = [line[i:i + width] for i in range(0, len(line), width)]
    return "\r\n\t".join(pieces)


def _subject(rng: random.Random, n: int) -> str:
    text = rng.choice(_SUBJECTS).format(n=n % 52 + 1)
    if text.isascii() or rng.random() < 0.3:
        return text
    return Header(text, "utf-8").encode()


def _exchange_headers(rng: random.Random, sender: str, when: datetime) -> list[str]:
    stamp = format_datetime(when)
    hosts = [f"AM{rng.randint(0, 9)}PR04MB{rng.randint(1000, 9999)}.eurprd04.prod.outlook.com"
             for _ in range(4)]
    domain = sender.split("@")[1]
    lines = [f"Received: from {a} ({rng.randint(1, 9)}::{rng.randint(10, 99)}) by {b} with "
             f"HTTPS; {stamp}" for a, b in itertools.pairwise(hosts)]
    lines += [
        _folded("ARC-Seal", f"i=1; a=rsa-sha256; s=arcselector9901; d=microsoft.com; cv=none; "
                f"b={_blob(rng, 344)}"),
        _folded("ARC-Message-Signature", "i=1; a=rsa-sha256; c=relaxed/relaxed; "
                "d=microsoft.com; s=arcselector9901; h=From:Date:Subject:Message-ID:"
                f"Content-Type:MIME-Version; bh={_blob(rng, 44)}; b={_blob(rng, 344)}"),
        _folded("DKIM-Signature", f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; "
                f"s=selector1; h=From:Date:Subject:Message-ID; bh={_blob(rng, 44)}; "
                f"b={_blob(rng, 344)}"),
        _folded("Authentication-Results", f"mx.kommune.dk; dkim=pass header.d={domain}; "
                f"spf=pass smtp.mailfrom={domain}; dmarc=pass action=none "
                f"header.from={domain}"),
        f"Thread-Index: {_blob(rng, 40)}",
        "Accept-Language: da-DK, en-US",
        "Content-Language: da-DK",
        "X-MS-Has-Attach: ",
        "X-MS-Exchange-Organization-SCL: 1",
        f"x-ms-office365-filtering-correlation-id: {rng.randbytes(16).hex()}",
        "x-microsoft-antispam: BCL:0;ARA:13230031|366016|1800799024|376014;",
        _folded("x-microsoft-antispam-message-info", _blob(rng, 1400)),
        _folded("x-forefront-antispam-report", "CIP:255.255.255.255;CTRY:;LANG:da;SCL:1;SRV:;"
                f"IPV:NLI;SFV:NSPM;H:{hosts[0]};PTR:;CAT:NONE;SFS:(13230031)(366016)"
                "(1800799024)(376014)(38070700018);DIR:OUT;SFP:1102;"),
        _folded("x-ms-exchange-antispam-messagedata-0", _blob(rng, 900)),
    ]
    return lines


def _short_headers(rng: random.Random, sender: str, when: datetime, newsletter: bool
                   ) -> list[str]:
    domain = sender.split("@")[1]
    lines = [
        f"Received: from mail.{domain} (mail.{domain} [192.0.2.{rng.randint(1, 254)}]) by "
        f"mx.kommune.dk with ESMTPS id {rng.randbytes(6).hex()}; {format_datetime(when)}",
        _folded("Authentication-Results", f"mx.kommune.dk; spf=pass smtp.mailfrom={domain}; "
                f"dkim=pass header.d={domain}; dmarc=pass header.from={domain}"),
    ]
    if newsletter:
        lines += [
            _folded("DKIM-Signature", f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; "
                    f"s=mail; h=From:To:Subject:Date:List-Unsubscribe; bh={_blob(rng, 44)}; "
                    f"b={_blob(rng, 344)}"),
            f"List-Unsubscribe: <https://{domain}/afmeld?id={rng.randbytes(8).hex()}>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Precedence: bulk",
        ]
    return lines


def _body_size(rng: random.Random) -> int:
    pick = rng.random()
    for share, low, high in SIZE_MIX:
        if pick < share:
            return rng.randint(low, high)
        pick -= share
    return SIZE_MIX[0][1]


def noise(rng: random.Random, n: int, when: datetime) -> bytes:
    """One unrelated message of realistic header block and body size."""
    name = rng.choice(_NAMES)
    sender = f"{name.split()[0].lower()}.{n % 89}@{rng.choice(_SENDER_DOMAINS)}"
    kind = rng.random()
    if kind < 0.7:
        trace = _exchange_headers(rng, sender, when)
    else:
        trace = _short_headers(rng, sender, when, newsletter=kind < 0.9)
    boundary = f"_000_{rng.randbytes(12).hex()}_"
    head = [*trace,
            f"From: {Header(name, 'utf-8').encode()} <{sender}>",
            "To: KP-postkasse <kp-postkasse@kommune.dk>",
            f"Subject: {_subject(rng, n)}",
            f"Date: {format_datetime(when)}",
            f"Message-ID: <noise-{n}-{rng.randbytes(6).hex()}@kommune.dk>",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{boundary}"']
    size = _body_size(rng)
    text = (_BODY_TEXT * (1 + min(size, 6000) // len(_BODY_TEXT)))[:min(size, 6000)]
    parts = [f"--{boundary}", "Content-Type: text/plain; charset=utf-8",
             "Content-Transfer-Encoding: 8bit", "", text]
    if size > 6000:
        payload = _blob(rng, size - 6000)
        lines = "\r\n".join(payload[i:i + 76] for i in range(0, len(payload), 76))
        parts += [f"--{boundary}", 'Content-Type: application/pdf; name="bilag.pdf"',
                  'Content-Disposition: attachment; filename="bilag.pdf"',
                  "Content-Transfer-Encoding: base64", "", lines]
    parts.append(f"--{boundary}--")
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(parts) + "\r\n").encode("utf-8")


_MSGID_LINE = re.compile(rb"(?im)^message-id:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")


def with_fresh_message_id(raw: bytes, message_id: str) -> bytes:
    """``raw`` with the outer header's Message-ID replaced (a forwarded inner one stays)."""
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    head, body = raw[:end], raw[end:]
    new_head, count = _MSGID_LINE.subn(f"Message-ID: {message_id}".encode(), head, count=1)
    if count == 0:
        new_head = head + f"\r\nMessage-ID: {message_id}".encode()
    return new_head + body


def fixture_mails() -> list[bytes]:
    """The relevant fixtures from ``tests/mail`` (EG, signing platforms, spoofs, look-alikes)."""
    return [p.read_bytes() for p in sorted(MAIL_DIR.glob("*.eml"))]


def answers(sent: Sequence[tuple[str, str, str]]) -> list[bytes]:
    """A reply, an auto-reply and a bounce for each ``(email, message_id, subject)`` sent."""
    out = []
    for email, message_id, subject in sent:
        out.append(reply(sender=email, name="Kollega", to_message_id=message_id,
                         subject=subject))
        out.append(reply(sender=email, name="Kollega", to_message_id=message_id,
                         subject=subject, auto=True))
        out.append(bounce(failed=email, original_message_id=message_id,
                          original_subject=subject))
    return out


def relevant_stream(templates: Sequence[bytes], tag: str) -> Iterator[bytes]:
    """Endless copies of ``templates`` in turn, each with a new Message-ID."""
    n = 0
    while True:
        for raw in templates:
            n += 1
            yield with_fresh_message_id(raw, f"<bench-{tag}-{n}@relevant.example>")


def mailbox(count: int, relevant: Sequence[bytes], *, share: float = 0.01, seed: int = 1,
            tag: str = "m") -> Iterator[bytes]:
    """``count`` messages, one in ``1/share`` relevant (spread evenly), the rest noise."""
    rng = random.Random(seed)
    every = max(1, round(1 / share))
    stream = relevant_stream(relevant, tag)
    start = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    for i in range(count):
        if i % every == every // 2:
            yield next(stream)
        else:
            yield noise(rng, i, start + timedelta(minutes=7 * i))
