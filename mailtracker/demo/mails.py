"""The mail the demo's world sends back: EG's three mails, a spoof, a reply, an auto-reply.

Each builder returns an :class:`Inbound`: the message as its author's server sent it, plus
what the demo MX (``mx.demo-kommune.dk``) knows when it receives it: the envelope sender,
the peer it came from and the ``Authentication-Results`` it writes. Genuine EG mail gets
``dkim=pass``/``dmarc=pass`` for eg.dk; the spoof gets ``dmarc=fail`` from the MX and carries
a forged "pass" header from another authserv-id, which mailtracker must ignore.
All names, addresses and links are fictional (documentation IPs, ``.example`` domains).
"""

from __future__ import annotations

import email.utils
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from zoneinfo import ZoneInfo

from mailtracker.demo.smtpd import MX_HOST

DEMO_DOMAIN = "demo-kommune.dk"
EG_SERVICE = ("EG Kundeservice", "kundeservice@eg.dk")
EG_WEBINAR = ("EG Webinarer", "webinar@eg.dk")
EG_PEER = "mx1.eg.dk (mx1.eg.dk [192.0.2.25])"
TEAMS_LINK = ("https://teams.microsoft.com/l/meetup-join/19%3ameeting_ZGVtby1lZmFrdHVyYS1rcA"
              "%40thread.v2/0?context=%7b%22Tid%22%3a%22demo%22%7d")
COPENHAGEN = ZoneInfo("Europe/Copenhagen")
AUTH_PASS = (f"{MX_HOST}; dkim=pass header.d=eg.dk header.s=selector1; "
             "spf=pass smtp.mailfrom=eg.dk; dmarc=pass header.from=eg.dk")


@dataclass(frozen=True)
class Inbound:
    """A message arriving at the demo MX from outside (or from a colleague's mailbox)."""

    label: str  # what the demo prints
    raw: bytes
    mail_from: str
    peer: str  # "host (host [ip])" for the Received header
    auth_results: str | None  # written by the MX; None for internal mail

    @property
    def message_id(self) -> str:
        return str(_headers(self.raw).get("Message-ID", ""))


def _headers(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _base(sender: tuple[str, str], to: tuple[str, str], subject: str, now: datetime,
          domain: str) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = email.utils.formataddr(sender)
    msg["To"] = email.utils.formataddr(to)
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
    return msg


def minimal_pdf(title: str) -> bytes:
    """A small valid one-page PDF showing ``title`` (ASCII)."""
    text = title.encode("ascii", "replace").replace(b"(", b"[").replace(b")", b"]")
    stream = b"BT /F1 14 Tf 72 770 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def eg_agreement(to: tuple[str, str], organisation: str, now: datetime) -> Inbound:
    subject = ("Serviceaftale for ØS Indsigt: videresendelse af eFaktura til KP – "
               "underskrift påkrævet")
    msg = _base(EG_SERVICE, to, subject, now, "eg.dk")
    msg.set_content(
        f"Kære {organisation}\n\n"
        "På vegne af Ejerkredsen sender EG hermed serviceaftalen om videresendelse af "
        "eFaktura fra ØS Indsigt til KP (Kommunernes Pensionssystem) pr. EAN-nummer.\n\n"
        "Aftalen underskrives af kommunens aftaleadministrator. Aftalen medfører ingen "
        "ekstra omkostninger.\n\nMed venlig hilsen\nEG Kundeservice\n")
    msg.add_attachment(minimal_pdf("Serviceaftale - videresendelse af eFaktura til KP"),
                       maintype="application", subtype="pdf",
                       filename="Serviceaftale eFaktura KP – Demo Kommune.pdf")
    return Inbound("EG: service agreement (PDF)", msg.as_bytes(), EG_SERVICE[1], EG_PEER,
                   AUTH_PASS)


def eg_guide(to: tuple[str, str], now: datetime) -> Inbound:
    subject = "Vejledning: opsætning af videresendelse af eFaktura til KP i ØS Indsigt"
    msg = _base(EG_SERVICE, to, subject, now, "eg.dk")
    msg.set_content(
        "Hej\n\nVedhæftet er vejledningen til opsætning af videresendelse af eFaktura "
        "pr. EAN-nummer fra ØS Indsigt til KP. Følg trinene, når aftalen er på plads, og "
        "bekræft derefter, at fakturaerne når frem i KP.\n\n"
        "Med venlig hilsen\nEG Kundeservice\n")
    msg.add_attachment(minimal_pdf("Vejledning - videresendelse af eFaktura til KP"),
                       maintype="application", subtype="pdf",
                       filename="Vejledning videresendelse af eFaktura til KP.pdf")
    return Inbound("EG: setup guide (PDF)", msg.as_bytes(), EG_SERVICE[1], EG_PEER,
                   AUTH_PASS)


def webinar_start(now: datetime) -> datetime:
    """The invitation's start: 10:00 Danish time, three weeks from ``now``."""
    day = (now.astimezone(COPENHAGEN) + timedelta(days=21)).date()
    return datetime(day.year, day.month, day.day, 10, 0, tzinfo=COPENHAGEN)


def _fold(line: str) -> str:
    """RFC 5545 line folding: at most 75 octets per line, continuation lines start with SP."""
    out, current = [], ""
    for char in line:
        if len((current + char).encode()) > 74:
            out.append(current)
            current = " "
        current += char
    return "\r\n".join([*out, current])


def _calendar(to: tuple[str, str], start: datetime, now: datetime, uid: str) -> str:
    fmt = "%Y%m%dT%H%M%S"
    end = start + timedelta(minutes=90)
    lines = [
        "BEGIN:VCALENDAR", "METHOD:REQUEST", "PRODID:Microsoft Exchange Server 2010",
        "VERSION:2.0", "BEGIN:VTIMEZONE", "TZID:Romance Standard Time", "BEGIN:STANDARD",
        "DTSTART:16010101T030000", "TZOFFSETFROM:+0200", "TZOFFSETTO:+0100",
        "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10", "END:STANDARD",
        "BEGIN:DAYLIGHT", "DTSTART:16010101T020000", "TZOFFSETFROM:+0100",
        "TZOFFSETTO:+0200", "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3",
        "END:DAYLIGHT", "END:VTIMEZONE", "BEGIN:VEVENT",
        f"ORGANIZER;CN={EG_WEBINAR[0]}:mailto:{EG_WEBINAR[1]}",
        f'ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN="{to[0]}":'
        f"mailto:{to[1]}",
        "DESCRIPTION;LANGUAGE=da-DK:Webinar om videresendelse af eFaktura fra ØS Indsigt "
        f"til KP.\\n\\nDeltag i Microsoft Teams-mødet\\n<{TEAMS_LINK}>",
        f"UID:{uid}", "SUMMARY;LANGUAGE=da-DK:Webinar: eFaktura fra ØS Indsigt til KP",
        f"DTSTART;TZID=Romance Standard Time:{start.strftime(fmt)}",
        f"DTEND;TZID=Romance Standard Time:{end.strftime(fmt)}",
        "CLASS:PUBLIC", "PRIORITY:5",
        f"DTSTAMP:{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}",
        "TRANSP:OPAQUE", "STATUS:CONFIRMED", "SEQUENCE:0",
        "LOCATION;LANGUAGE=da-DK:Microsoft Teams-møde",
        f"X-MICROSOFT-SKYPETEAMSMEETINGURL:{TEAMS_LINK}", "END:VEVENT", "END:VCALENDAR",
    ]
    return "\r\n".join(_fold(line) for line in lines) + "\r\n"


def eg_webinar(to: tuple[str, str], now: datetime) -> Inbound:
    start = webinar_start(now)
    subject = "Invitation: Webinar om videresendelse af eFaktura til KP"
    msg = _base(EG_WEBINAR, to, subject, now, "eg.dk")
    when = start.strftime("%d.%m.%Y kl. %H:%M")
    msg.set_content(
        f"Kære deltager\n\nEG inviterer til webinar {when} om videresendelse af eFaktura "
        "fra ØS Indsigt til KP.\n\n"
        f"Deltag i Microsoft Teams-mødet:\n{TEAMS_LINK}\n\nMed venlig hilsen\nEG\n")
    uid = "040000008200E00074C5B7101A82E008" + secrets.token_hex(16).upper()
    msg.add_alternative(_calendar(to, start, now, uid),
                        subtype="calendar", params={"method": "REQUEST"})
    return Inbound("EG: webinar invitation (text/calendar, Teams)", msg.as_bytes(),
                   EG_WEBINAR[1], EG_PEER, AUTH_PASS)


def spoofed_agreement(to: tuple[str, str], now: datetime) -> Inbound:
    """Claims to be EG; the MX found no DKIM and a failing DMARC, and the forger added a
    "pass" header in EG's name, which a careful reader must ignore."""
    msg = _base(EG_SERVICE, to, "Serviceaftale – underskrift påkrævet inden fredag", now,
                "eg-signering.example")
    msg["Reply-To"] = "kundeservice@eg-signering.example"
    msg.set_content(
        "Kære kunde\n\nDin serviceaftale udløber. Underskriv straks via linket herunder, "
        "ellers stoppes videresendelsen af eFaktura:\n"
        "https://eg-signering.example/underskriv?id=48213\n\nEG Kundeservice\n")
    forged = (b"Authentication-Results: mx.eg.dk; dkim=pass header.d=eg.dk; "
              b"dmarc=pass header.from=eg.dk\r\n")
    return Inbound("spoofed 'EG' agreement mail", forged + msg.as_bytes(),
                   "bounce@eg-signering.example",
                   "mail.eg-signering.example (unknown [198.51.100.23])",
                   f"{MX_HOST}; dkim=none (message not signed); spf=fail "
                   "smtp.mailfrom=eg-signering.example; dmarc=fail (p=QUARANTINE) "
                   "header.from=eg.dk")


@dataclass(frozen=True)
class Original:
    """The orientation mail as the recipient received it."""

    message_id: str
    references: str
    subject: str
    sender: str


def read_original(raw: bytes) -> Original:
    head = _headers(raw)
    return Original(str(head.get("Message-ID", "")), str(head.get("References", "")),
                    str(head.get("Subject", "")), str(head.get("From", "")))


def reply(original: Original, author: tuple[str, str], lang: str, now: datetime) -> Inbound:
    """A colleague's reply from Outlook (In-Reply-To/References = the orientation)."""
    prefix = "SV: " if lang == "da" else "RE: "
    msg = _base(author, email.utils.parseaddr(original.sender), prefix + original.subject,
                now, DEMO_DOMAIN)
    msg["In-Reply-To"] = original.message_id
    msg["References"] = " ".join(filter(None, [original.references, original.message_id]))
    msg["X-Mailer"] = "Microsoft Outlook 16.0"
    body = ("Tak for orienteringen. Jeg holder øje med serviceaftalen fra EG.\n\n"
            if lang == "da" else
            "Thank you for letting me know. I will look out for EG's service agreement.\n\n")
    msg.set_content(body + f"{author[0]}\n")
    return Inbound(f"reply from {author[0]}", msg.as_bytes(), author[1],
                   "localhost (localhost [127.0.0.1])", None)


def auto_reply(original: Original, author: tuple[str, str], lang: str,
               now: datetime) -> Inbound:
    """An Exchange out-of-office answer: it references our mail but acknowledges nothing."""
    prefix = "Automatisk svar: " if lang == "da" else "Automatic reply: "
    msg = _base(author, email.utils.parseaddr(original.sender), prefix + original.subject,
                now, DEMO_DOMAIN)
    msg["In-Reply-To"] = original.message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    back = (now + timedelta(days=14)).astimezone(COPENHAGEN).strftime("%d.%m.%Y")
    msg.set_content(f"Jeg er på ferie og tilbage {back}. Mails læses ikke i perioden.\n"
                    if lang == "da" else
                    f"I am on holiday until {back} and will not read mail until then.\n")
    return Inbound(f"out-of-office auto-reply from {author[0]}", msg.as_bytes(), "",
                   "localhost (localhost [127.0.0.1])", None)
