"""Follow-ups end to end: real aiosmtpd (STARTTLS + AUTH), real Dovecot for EG's mail and the
replies, the real CLI for notify/poll/status, and the clock set with ``MAILTRACKER_NOW``.

Each test observes what a user would: the mail that arrived at the SMTP server (and its .ics),
the ``status --json`` document, and that a second round sends nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest

from mailtracker.app import NOW_ENV, open_app
from mailtracker.errors import StoreLockedError
from mailtracker.followup.runner import TickReport, run_tick, tick_sync
from tests.inbound_mail import eml, reply
from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace

CPH = ZoneInfo("Europe/Copenhagen")
ROOT = Path(__file__).resolve().parents[1]
SOEREN, BJOERN, AASE = (email for _, _, email in THREE)
KAREN = "karen.pedersen@kommune.example"
EVERYONE = [*THREE, ("kp_owner", "Pedersen, Karen", KAREN)]


def cph(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=CPH)


@dataclass
class Scene:
    ws: Workspace
    dovecot: Any
    user: str
    smtp: SmtpTestServer

    def env(self, now: datetime) -> dict[str, str]:
        return {NOW_ENV: now.isoformat()}

    def cli(self, now: datetime, *args: str) -> Any:
        result = self.ws.cli(*args, env=self.env(now))
        assert result.exit_code == 0, result.output
        return result

    def notify(self, now: datetime) -> None:
        self.cli(now, "notify")

    def poll(self, now: datetime, *names: str) -> None:
        for name in names:
            self.dovecot.append(self.user, eml(name))
        self.cli(now, "poll")

    def status(self, now: datetime) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cli(now, "status", "--json").stdout)
        return data

    def tick(self, now: datetime) -> TickReport:
        """One scheduler round in this process, as ``mailtracker tick`` runs it."""
        app = open_app(self.ws.config_path, {**self.ws.environ, **self.env(now)})
        return asyncio.run(run_tick(app))

    def mail(self, since: int = 0) -> list[tuple[str, EmailMessage]]:
        """(recipient, message) of everything the SMTP server accepted after ``since``."""
        return [(rcpt, m.message) for m in self.smtp.messages[since:] for rcpt in m.rcpt_tos]

    def delivered(self, report: TickReport, prefix: str) -> list[tuple[str, EmailMessage]]:
        """(recipient, message) the server accepted for the round's mails of ``prefix``."""
        ids = {r.message_id for r in report.results
               if r.key.startswith(prefix) and r.outcome == "sent"}
        return [(rcpt, msg) for rcpt, msg in self.mail() if msg["Message-ID"] in ids]

    def reply_to(self, now: datetime, email: str, name: str, message_id: str,
                 subject: str) -> None:
        self.dovecot.append(self.user, reply(sender=email, name=name, to_message_id=message_id,
                                             subject=subject))
        self.cli(now, "poll")


@pytest.fixture
def scene(dovecot: Any, smtp_server: SmtpTestServer,
          make_workspace: Callable[..., Workspace]) -> Scene:
    user, password = dovecot.add_user()
    ws = make_workspace(smtp=smtp_server, imap=(dovecot, user, password))
    ws.add_recipients(EVERYONE)
    return Scene(ws, dovecot, user, smtp_server)


def _text(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def _ics(msg: EmailMessage) -> Any:
    parts = [p for p in msg.iter_attachments() if p.get_content_type() == "text/calendar"]
    assert len(parts) == 1, [p.get_content_type() for p in msg.iter_attachments()]
    assert parts[0].get_filename() == "webinar.ics"
    assert parts[0].get_content_charset() == "utf-8"
    # Read as a calendar reads it: the text decoded by the charset the part declares.
    return icalendar.Calendar.from_ical(parts[0].get_content())


def _followups(status: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [f for f in status["followups"] if f["template"].startswith(prefix)]


# ------------------------------------------------------------------------------- reminders


def test_reminder_on_the_fifth_working_day_not_on_holiday_weekend_or_after_a_reply(
        scene: Scene) -> None:
    sent = cph(2026, 5, 8, 10, 0)  # Friday; Thursday 14 May is Kristi himmelfartsdag
    scene.notify(sent)
    orientation = {rcpt: msg for rcpt, msg in scene.mail()}
    scene.reply_to(cph(2026, 5, 11, 9, 0), SOEREN, "Søren Ærø-Åse",
                   str(orientation[SOEREN]["Message-ID"]), str(orientation[SOEREN]["Subject"]))
    before = len(scene.smtp.messages)
    for now in (cph(2026, 5, 14, 12, 0),  # the 4th day if it were a working day: a holiday
                cph(2026, 5, 16, 10, 0),  # Saturday
                cph(2026, 5, 18, 9, 59)):  # the 5th working day, before the hour it was sent
        report = scene.tick(now)
        assert report.results == () and scene.mail(before) == []
    next_due = scene.tick(cph(2026, 5, 18, 9, 59)).next_due_at
    assert next_due is not None and next_due.replace(microsecond=0) == cph(2026, 5, 18, 10, 0)

    report = scene.tick(cph(2026, 5, 18, 10, 30))
    reminders = scene.mail(before)
    assert sorted(r for r, _ in reminders) == sorted([BJOERN, AASE])  # not Søren, not Karen
    assert {r.outcome for r in report.results} == {"sent"}
    msg = dict(reminders)[BJOERN]
    assert str(msg["Subject"]) == f"Påmindelse: {orientation[BJOERN]['Subject']}"
    text = _text(msg)
    assert "Fredag den 8. maj 2026 skrev jeg til dig som aftaleadministrator" in text
    assert "underskrive serviceaftalen" in text

    # Later rounds (a restart, the next day) send nothing more: max_count is 1.
    assert scene.tick(cph(2026, 5, 18, 10, 31)).results == ()
    assert scene.tick(cph(2026, 5, 26, 10, 0)).results == ()
    assert len(scene.smtp.messages) == before + 2
    status = scene.status(cph(2026, 5, 18, 11, 0))
    assert {(f["recipient"], f["state"]) for f in _followups(status, "reminder-")} == {
        (BJOERN, "sent"), (AASE, "sent")}


def test_two_processes_ticking_at_once_send_each_reminder_once(scene: Scene) -> None:
    scene.notify(cph(2026, 5, 8, 10, 0))
    before = len(scene.smtp.messages)
    script = ("import json, sys\n"
              "from pathlib import Path\n"
              "from mailtracker.app import open_app\n"
              "from mailtracker.followup.runner import tick_sync\n"
              "import os\n"
              "report = tick_sync(open_app(Path(sys.argv[1]), dict(os.environ)))\n"
              "print(json.dumps(report.to_json()))\n")
    env = {**os.environ, **scene.ws.environ, **scene.env(cph(2026, 5, 18, 10, 30)),
           "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(scene.ws.config_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    sent = sorted(r["recipient"] for rep in reports for r in rep["results"]
                  if r["outcome"] == "sent")
    assert sent == sorted([SOEREN, BJOERN, AASE])
    assert sorted(r for r, _ in scene.mail(before)) == sorted([SOEREN, BJOERN, AASE])
    # One of them either found the lock taken (skipped) or nothing left to do.
    assert any(rep["skipped"] or not rep["results"] for rep in reports)


def test_deferred_reminder_is_retried_next_round_with_the_same_message_id(
        scene: Scene) -> None:
    scene.notify(cph(2026, 5, 8, 10, 0))
    scene.smtp.faults.on_rcpt(BJOERN, "450 4.2.1 Mailbox busy", times=4)  # 1 try + 3 retries
    first = scene.tick(cph(2026, 5, 18, 10, 30))
    outcome = {r.recipient: r for r in first.results}
    assert outcome[BJOERN].outcome == "deferred" and outcome[AASE].outcome == "sent"
    status = scene.status(cph(2026, 5, 18, 10, 31))
    row = next(f for f in _followups(status, "reminder-") if f["recipient"] == BJOERN)
    assert row["state"] == "pending" and "Mailbox busy" in row["last_error"]
    second = scene.tick(cph(2026, 5, 18, 11, 0))
    assert [(r.recipient, r.outcome) for r in second.results] == [(BJOERN, "sent")]
    assert second.results[0].message_id == outcome[BJOERN].message_id
    delivered = [m for r, m in scene.mail() if r == BJOERN]
    assert delivered[-1]["Message-ID"] == outcome[BJOERN].message_id


def test_a_reply_to_the_reminder_acknowledges_the_orientation(scene: Scene) -> None:
    scene.notify(cph(2026, 5, 8, 10, 0))
    report = scene.tick(cph(2026, 5, 18, 10, 30))
    reminder = next(r for r in report.results if r.recipient == AASE)
    assert reminder.message_id is not None
    scene.reply_to(cph(2026, 5, 18, 12, 0), AASE, "Åse Øberg", reminder.message_id,
                   "Påmindelse: eFaktura til KP")
    status = scene.status(cph(2026, 5, 18, 12, 1))
    row = next(r for r in status["recipients"] if r["email"] == AASE)
    assert row["acknowledged"] is True
    assert next(f for f in _followups(status, "reminder-")
                if f["recipient"] == AASE)["acknowledged"] is True


# ------------------------------------------------------------------------------- events


def test_event_mails_go_out_once_even_when_the_same_eg_mail_is_seen_twice(
        scene: Scene) -> None:
    scene.notify(cph(2026, 3, 2, 9, 0))
    scene.poll(cph(2026, 3, 20, 21, 0), "agreement-eg-pdf.eml", "guide-eg.eml")
    report = scene.tick(cph(2026, 3, 20, 22, 0))  # Friday night: event mail does not wait
    assert sorted((r.recipient, r.key) for r in report.results) == [
        (BJOERN, "event-service_agreement_received"), (SOEREN, "event-guide_received")]
    mails = dict(scene.delivered(report, "event-"))
    agreement = mails[BJOERN]
    assert str(agreement["Subject"]).startswith("Serviceaftalen fra EG er kommet")
    text = _text(agreement)
    assert "Fra: kundeservice@eg.dk" in text and "Emne: Serviceaftale til underskrift" in text
    assert "Modtaget: " in text
    assert "opsæt" in str(mails[SOEREN]["Subject"]).lower()

    scene.poll(cph(2026, 3, 23, 9, 0), "agreement-eg-pdf.eml")  # same Message-ID, new UID
    again = scene.tick(cph(2026, 3, 23, 9, 5))  # (the reminders are due by now)
    assert [r for r in again.results if r.kind == "event"] == []
    status = scene.status(cph(2026, 3, 23, 9, 10))
    assert [(f["kind"], f["state"]) for f in _followups(status, "event-")] == [
        ("event", "sent"), ("event", "sent")]


def test_webinar_invitation_has_a_valid_ics_and_the_cancellation_removes_it(
        scene: Scene) -> None:
    scene.notify(cph(2026, 3, 2, 9, 0))
    scene.poll(cph(2026, 3, 20, 10, 0), "webinar-invite.eml")
    webinar = scene.status(cph(2026, 3, 20, 10, 1))["milestones"]["webinar_invited"]
    invitations = scene.delivered(scene.tick(cph(2026, 3, 20, 10, 5)), "event-webinar")
    assert sorted(r for r, _ in invitations) == sorted([SOEREN, BJOERN, AASE, KAREN])
    for rcpt, msg in invitations:
        assert "15. april 2026 kl. 10.00" in str(msg["Subject"])
        text = _text(msg)
        assert "onsdag den 15. april 2026 kl. 10.00 (dansk tid)" in text
        assert webinar["join_url"] in text
        cal = _ics(msg)
        assert str(cal["METHOD"]) == "REQUEST"
        (event,) = cal.walk("VEVENT")
        assert str(event["UID"]) == webinar["ical_uid"]
        names = {SOEREN: "Søren", BJOERN: "Bjørn", AASE: "Åse", KAREN: "Karen"}
        assert names[rcpt] in event["ATTENDEE"].params["CN"]  # æ, ø, å arrive whole
        assert event["DTSTART"].params["TZID"] == "Europe/Copenhagen"
        assert event["DTSTART"].dt == cph(2026, 4, 15, 10, 0)
        assert event["DTSTART"].dt.utcoffset().total_seconds() == 7200  # summer time
        assert str(event["URL"]) == webinar["join_url"]
        assert str(event["ATTENDEE"]) == f"mailto:{rcpt}"
        assert event["ATTENDEE"].params["RSVP"] == "FALSE"
        assert int(event["SEQUENCE"]) == 0

    scene.poll(cph(2026, 4, 1, 14, 0), "webinar-cancel.eml")
    cancellations = scene.delivered(scene.tick(cph(2026, 4, 1, 14, 5)), "event-webinar")
    assert sorted(r for r, _ in cancellations) == sorted([SOEREN, BJOERN, AASE, KAREN])
    for _, msg in cancellations:
        assert str(msg["Subject"]).startswith("Aflyst: ")
        (event,) = (cal := _ics(msg)).walk("VEVENT")
        assert str(cal["METHOD"]) == "CANCEL" and str(event["STATUS"]) == "CANCELLED"
        assert str(event["UID"]) == webinar["ical_uid"] and int(event["SEQUENCE"]) == 1
    assert scene.tick(cph(2026, 4, 1, 14, 10)).results == ()


# ------------------------------------------------------------------------------- escalation


def test_escalation_once_after_the_holiday_and_status_shows_overdue(scene: Scene) -> None:
    scene.notify(cph(2026, 2, 23, 9, 0))  # six weeks later is 2. påskedag, 6 April 09:00
    quiet = scene.status(cph(2026, 4, 6, 8, 59))
    assert quiet["overdue"] == []
    assert any(s["template"] == "escalation-service_agreement_received"
               for s in quiet["followups_scheduled"])

    status = scene.status(cph(2026, 4, 6, 12, 0))
    assert [(o["milestone"], o["deadline"][:19], o["escalated_to"])
            for o in status["overdue"]] == [("service_agreement_received", "2026-04-06T09:00:00",
                                            [])]
    text = scene.cli(cph(2026, 4, 6, 12, 0), "status").stdout
    assert "OVERDUE: Service agreement received from EG (deadline 2026-04-06 09:00)" in text
    markdown = scene.cli(cph(2026, 4, 6, 12, 0), "status", "--format", "markdown").stdout
    assert "**Forsinket:** Serviceaftale modtaget fra EG" in markdown

    assert scene.tick(cph(2026, 4, 6, 12, 0)).results == ()  # a public holiday: no mail
    before = len(scene.smtp.messages)
    scene.tick(cph(2026, 4, 7, 8, 0))
    to_karen = [m for r, m in scene.mail(before) if r == KAREN]
    assert len(to_karen) == 1
    assert str(to_karen[0]["Subject"]) == (
        "Forsinket: ingen serviceaftale fra EG 6 uger efter orienteringen (eFaktura 8b)")
    assert "mandag den 23. februar 2026" in _text(to_karen[0])
    assert scene.tick(cph(2026, 4, 8, 9, 0)).results == ()

    after = scene.status(cph(2026, 4, 8, 9, 0))
    assert after["overdue"][0]["escalated_to"] == [KAREN]
    scene.cli(cph(2026, 4, 8, 10, 0), "mark", "service_agreement_signed", "--note",
              "kom til aftaleadministratorens egen indbakke og er underskrevet")
    assert scene.status(cph(2026, 4, 8, 10, 1))["overdue"] == []


# ------------------------------------------------------------------------------- rounds


def test_a_round_is_skipped_while_another_process_holds_the_outbox(scene: Scene) -> None:
    scene.notify(cph(2026, 5, 8, 10, 0))
    app = open_app(scene.ws.config_path,
                   {**scene.ws.environ, **scene.env(cph(2026, 5, 18, 10, 30))})
    before = len(scene.smtp.messages)
    with app.store.exclusive("notify"):
        report = tick_sync(app)
        assert report.skipped and "already running" in report.skipped
        with pytest.raises(StoreLockedError):
            asyncio.run(run_tick(app))
    assert len(scene.smtp.messages) == before
    assert len(tick_sync(app).results) == 3  # the next round does the work


def test_dry_run_renders_but_sends_and_stores_nothing(scene: Scene) -> None:
    scene.notify(cph(2026, 5, 8, 10, 0))
    state = scene.ws.store_path.read_bytes()
    before = len(scene.smtp.messages)
    app = open_app(scene.ws.config_path,
                   {**scene.ws.environ, **scene.env(cph(2026, 5, 18, 10, 30))})
    report = asyncio.run(run_tick(app, dry_run=True))
    assert {r.outcome for r in report.results} == {"would-send"} and len(report.results) == 3
    assert all(r.detail.startswith("Påmindelse: ") for r in report.results)
    assert scene.ws.store_path.read_bytes() == state and len(scene.smtp.messages) == before


def test_an_smtp_failure_in_a_watch_round_is_logged_not_raised(
        scene: Scene, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    scene.notify(cph(2026, 5, 8, 10, 0))
    monkeypatch.setattr(logging.getLogger("mailtracker"), "propagate", True)
    scene.ws.set("smtp", port=1)  # nothing listens there
    app = open_app(scene.ws.config_path,
                   {**scene.ws.environ, **scene.env(cph(2026, 5, 18, 10, 30))})
    report = tick_sync(app)
    assert report.error and report.results == ()
    assert any("follow-ups failed this round" in r.message for r in caplog.records)


def test_bad_mailtracker_now_is_a_config_error(scene: Scene) -> None:
    result = scene.ws.cli("status", env={NOW_ENV: "next tuesday"})
    assert result.exit_code == 3 and "MAILTRACKER_NOW" in result.output
    naive = scene.ws.cli("status", env={NOW_ENV: "2026-05-18T10:30"})
    assert naive.exit_code == 3 and "UTC offset" in naive.output


# ------------------------------------------------------------------------------- templates


def _followup_templates() -> list[str]:
    from mailtracker.resources import data_dir
    from mailtracker.settings.taskdef import load_task

    fu = load_task(data_dir("config") / "tasks" / "efaktura-8b.toml").followups
    assert fu.reminders is not None
    return ([e.template for e in fu.events] + [fu.reminders.template]
            + [e.template for e in fu.escalations])


FULL = {"kind": "event", "milestone": "service_agreement_received",
        "milestone_label": "Serviceaftale modtaget fra EG", "evidence_sender": "kundeservice@eg.dk",
        "evidence_subject": "Serviceaftale til underskrift",
        "evidence_date": "fredag den 20. marts 2026 kl. 09.12",
        "webinar_start": "onsdag den 15. april 2026 kl. 10.00",
        "webinar_date": "onsdag den 15. april 2026", "webinar_time": "10.00",
        "webinar_timezone": "dansk tid", "join_url": "https://teams.microsoft.com/l/x",
        "webinar_updated": True, "has_calendar": True, "reminder_number": 1,
        "orientation_subject": "eFaktura til KP", "orientation_sent": "mandag den 2. marts 2026",
        "working_days": 5, "deadline": "mandag den 13. april 2026", "waited": "6 uger",
        "anchor_label": "orienteringen", "anchor_date": "mandag den 2. marts 2026",
        "next_step": "Vent på serviceaftalen fra EG."}


@pytest.mark.parametrize("lang", ["da", "en"])
@pytest.mark.parametrize("template", _followup_templates())
@pytest.mark.parametrize("known", [True, False], ids=["all-known", "nothing-known"])
def test_every_follow_up_template_renders_in_both_languages(template: str, lang: str,
                                                            known: bool) -> None:
    from mailtracker.outbound.render import orientation_context, render, template_root

    context = orientation_context(
        recipient_name="Hansen, Bjørn", recipient_email=BJOERN, role="agreement_admin",
        role_label="Aftaleadministrator", lang=lang, organisation="Eksempel Kommune",
        sender_name="Karen Pedersen", sender_email="kp-ejer@kommune.example",
        task_title="(eFaktura 8b) Serviceaftaler og vejledning fra Ejerkredsen og EG")
    # Whatever the mail could not learn (a hand-recorded milestone, an invitation without a
    # calendar part) is None: the template must still read, never print "None".
    context.update(FULL if known else {k: (v if isinstance(v, bool | int) else None)
                                       for k, v in FULL.items()})
    context.update(webinar_updated=known and template.endswith("invited"),
                   has_calendar=known, webinar_timezone=FULL["webinar_timezone"])
    rendered = render(template_root(), "efaktura-8b", lang, template, context)
    for part in (rendered.subject, rendered.text, rendered.html):
        assert "None" not in part and "  " not in rendered.subject
    assert ("Kære Bjørn" if lang == "da" else "Dear Bjørn") in rendered.text


def test_a_broken_template_stops_only_its_own_mail(scene: Scene, tmp_path: Path) -> None:
    from mailtracker.errors import TemplateError
    from mailtracker.outbound.render import template_root

    copy = tmp_path / "templates"
    shutil.copytree(template_root(), copy)
    (copy / "efaktura-8b" / "da" / "reminder-orientation.html").unlink()
    scene.ws.set("templates", dir=str(copy))
    scene.notify(cph(2026, 3, 2, 9, 0))
    scene.poll(cph(2026, 3, 20, 10, 0), "guide-eg.eml")
    report = scene.tick(cph(2026, 3, 20, 10, 5))
    outcomes = {(r.kind, r.outcome) for r in report.results}
    assert outcomes == {("event", "sent"), ("reminder", "template-error")}
    assert "reminder-orientation.html not found" in report.problems[0].detail
    with pytest.raises(TemplateError, match="3 follow-up"):
        report.raise_for_problems()
    status = scene.status(cph(2026, 3, 20, 10, 6))
    assert _followups(status, "reminder-") == []  # nothing stored: fixed, it goes next round


@pytest.mark.parametrize("role, expected, absent", [
    ("system_owner", "Deltag helst selv: det er dig, der laver opsætningen i ØS Indsigt.",
     "Den systemansvarlige for bogføringssystemet bør deltage"),
    ("agreement_admin", "Den systemansvarlige for bogføringssystemet bør deltage",
     "det er dig, der laver opsætningen"),
])
def test_the_webinar_mail_speaks_to_the_reader_not_about_them(
        role: str, expected: str, absent: str) -> None:
    from mailtracker.outbound.render import orientation_context, render, template_root

    context = orientation_context(
        recipient_name="Søren Ærø-Åse", recipient_email=SOEREN, role=role,
        role_label="Systemansvarlig for kommunens bogføringssystem", lang="da",
        organisation="Eksempel Kommune", sender_name="Karen Pedersen",
        sender_email="kp-ejer@kommune.example",
        task_title="(eFaktura 8b) Serviceaftaler og vejledning fra Ejerkredsen og EG")
    context.update(FULL)
    rendered = render(template_root(), "efaktura-8b", "da", "event-webinar_invited", context)
    for part in (rendered.text, rendered.html):
        flat = " ".join(part.split())
        assert expected in flat and absent not in flat
        assert "Systemejeren" not in flat
