"""Render the dossier as one self-contained HTML page, and print it to PDF with WeasyPrint.

The page has no script and loads nothing: CSS and the SVG timeline are inline, so it reads
the same offline, in a mail client and from an archive years later. Jinja2 autoescapes every
value (names, subjects and notes come from outside). The PDF is the same page through the
same print stylesheet, as PDF/A-3b, with title, language and author in its metadata.
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from mailtracker.dossier.model import Dossier
from mailtracker.dossier.timeline import short_date
from mailtracker.errors import InvalidInputError, MissingExtraError
from mailtracker.resources import data_dir
from mailtracker.store.storage import replace_file

PDF_VARIANT = "pdf/a-3b"

WORDS: dict[str, dict[str, str]] = {
    "da": {
        "dossier": "KLIK-dossier", "project": "Projekt", "municipality": "Kommune",
        "klik_status": "KLIK-status", "since": "siden", "why": "Begrundelse",
        "made": "Rapporten er lavet", "from_state": "ud fra tilstandsfilen",
        "next_step": "Næste skridt", "timeline": "Tidslinje", "legend": "Tegnforklaring",
        "recipients": "Modtagere", "role": "Rolle", "name": "Navn", "address": "Adresse",
        "sent_at": "Sendt", "state": "Tilstand", "acknowledged": "Kvitteret",
        "bounce": "Afvisning", "milestones": "Milepæle", "milestone": "Milepæl",
        "date": "Dato", "how": "Hvordan", "not_reached": "ikke nået endnu",
        "from": "fra", "subject": "emne", "auth": "afsender godkendt", "marked_by": "markeret af",
        "derived": "afledt: webinarets starttid er passeret", "quarantine": "Karantæne",
        "no_quarantine": "Ingen mails i karantæne.", "received": "Modtaget",
        "sender": "Afsender", "reason": "Årsag", "decision": "Beslutning",
        "pending": "afventer gennemgang", "accepted": "godkendt", "rejected": "afvist",
        "followups": "Opfølgning", "kind": "Type", "recipient": "Modtager", "at": "Tidspunkt",
        "no_followups": "Ingen opfølgning sendt eller planlagt.", "due": "skal sendes nu",
        "scheduled": "planlagt", "event": "besked", "reminder": "påmindelse",
        "escalation": "eskalering", "overdue": "Forsinket", "deadline": "frist",
        "data_basis": "Datagrundlag", "no_recipients": "Ingen modtagere registreret endnu.",
        "trust": "Afsendergodkendelse", "warnings": "Advarsler", "server_reply": "serverens svar",
        "today": "I dag", "webinar": "Webinarets start", "lg_sent": "mail sendt",
        "lg_reminder": "påmindelse sendt", "lg_escalation": "eskalering sendt",
        "lg_answered": "svar modtaget", "lg_bounced": "afvist eller fejlet",
        "lg_eg": "mail fra EG eller signeringsplatform", "lg_manual": "markeret i hånden",
        "lg_scheduled": "planlagt", "lg_overdue": "frist overskredet",
        "none": "–", "problem": "Problem",
        "basis": ("mailtracker gemmer modtagere (navn, adresse, rolle), hvilke mails der er "
                  "sendt og hvornår, svar og afvisninger, milepæle med afsender, emne, dato og "
                  "Message-ID, og mails i karantæne med årsag. Mailenes indhold gemmes ikke. "
                  "En person fjernes helt med »mailtracker forget ADRESSE«; tilbage bliver kun, "
                  "uden navn og adresse, at rollen blev orienteret og hvornår."),
        "svg_title": "Tidslinje for opgaven",
        "st_sent": "sendt", "st_failed": "fejlet", "st_unknown": "ukendt",
        "st_pending": "afventer", "st_sending": "sendes", "st_due": "skal sendes nu",
        "st_scheduled": "planlagt",
    },
    "en": {
        "dossier": "KLIK dossier", "project": "Project", "municipality": "Municipality",
        "klik_status": "KLIK status", "since": "since", "why": "Why",
        "made": "Report made", "from_state": "from the state file",
        "next_step": "Next step", "timeline": "Timeline", "legend": "Legend",
        "recipients": "Recipients", "role": "Role", "name": "Name", "address": "Address",
        "sent_at": "Sent", "state": "State", "acknowledged": "Acknowledged",
        "bounce": "Bounce", "milestones": "Milestones", "milestone": "Milestone",
        "date": "Date", "how": "How", "not_reached": "not reached yet",
        "from": "from", "subject": "subject", "auth": "sender authenticated",
        "marked_by": "marked by", "derived": "derived: the webinar's start time has passed",
        "quarantine": "Quarantine", "no_quarantine": "No mail in quarantine.",
        "received": "Received", "sender": "Sender", "reason": "Reason",
        "decision": "Decision", "pending": "awaiting review", "accepted": "accepted",
        "rejected": "rejected", "followups": "Follow-ups", "kind": "Kind",
        "recipient": "Recipient", "at": "When",
        "no_followups": "No follow-up sent or scheduled.", "due": "due now",
        "scheduled": "scheduled", "event": "notice", "reminder": "reminder",
        "escalation": "escalation", "overdue": "Overdue", "deadline": "deadline",
        "data_basis": "Data basis", "no_recipients": "No recipients registered yet.",
        "trust": "Sender authentication", "warnings": "Warnings", "server_reply": "server reply",
        "today": "Today", "webinar": "Webinar start", "lg_sent": "mail sent",
        "lg_reminder": "reminder sent", "lg_escalation": "escalation sent",
        "lg_answered": "reply received", "lg_bounced": "bounced or failed",
        "lg_eg": "mail from EG or a signing platform", "lg_manual": "marked by hand",
        "lg_scheduled": "scheduled", "lg_overdue": "deadline passed",
        "none": "–", "problem": "Problem",
        "basis": ("mailtracker stores recipients (name, address, role), which mails were sent "
                  "and when, replies and bounces, milestones with sender, subject, date and "
                  "Message-ID, and quarantined mail with its reason. It does not store the "
                  "mails' bodies. 'mailtracker forget ADDRESS' removes a person entirely; what "
                  "stays, without name or address, is that the role was oriented and when."),
        "svg_title": "Timeline of the task",
        "st_sent": "sent", "st_failed": "failed", "st_unknown": "unknown",
        "st_pending": "pending", "st_sending": "sending", "st_due": "due now",
        "st_scheduled": "scheduled",
    },
}


def render_html(dossier: Dossier, tz: ZoneInfo) -> str:
    """The whole page, as text."""
    words = WORDS["en" if dossier.lang == "en" else "da"]
    template = _environment().get_template("dossier.html")
    return str(template.render(d=dossier, w=words, tz=tz, author=dossier.organisation))


def write_html(path: Path, html: str) -> None:
    """Write ``html`` to ``path`` whole or not at all (a temp file beside it, renamed)."""
    _atomic_write(path, html.encode("utf-8"))


def write_pdf(path: Path, html: str) -> None:
    """Print ``html`` to a PDF/A-3b at ``path`` with WeasyPrint (the ``pdf`` extra)."""
    try:
        import weasyprint
    except ImportError:
        raise MissingExtraError(
            "--pdf needs WeasyPrint: pip install 'mailtracker[pdf]' "
            "(or write HTML with --html and print it from a browser)") from None
    document = weasyprint.HTML(string=html, base_url=None)
    _atomic_write(path, document.write_pdf(pdf_variant=PDF_VARIANT))


def _atomic_write(path: Path, data: bytes) -> None:
    path = path.expanduser()
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise InvalidInputError(f"the folder {path.parent} does not exist")
    try:
        replace_file(path, data)  # 0600 like the state file: the dossier names people
    except OSError as exc:
        raise InvalidInputError(f"cannot write {path}: {exc.strerror or exc}") from None


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(data_dir("templates") / "report", encoding="utf-8"),
        undefined=jinja2.StrictUndefined, autoescape=True, trim_blocks=True,
        lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["num"] = lambda value: f"{value:.1f}"
    return env


def _when(at: datetime | None, tz: ZoneInfo, lang: str) -> str:
    """``3. mar. 2026 10.02`` / ``3 Mar 2026 10:02`` in the task's time zone."""
    if at is None:
        return "–"
    local = at.astimezone(tz)
    return f"{short_date(local, lang)} {local:%H:%M}" if lang == "en" \
        else f"{short_date(local, lang)} {local:%H.%M}"
