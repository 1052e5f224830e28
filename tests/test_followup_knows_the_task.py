"""Follow-up and late mail know what has happened: no mail asks for what is already done.

Real aiosmtpd and Dovecot, the real CLI and scheduler (the ``scene`` of test_followup.py). Each
test reads the mail the SMTP server accepted, as its reader would.
"""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest

from mailtracker.errors import TaskDefinitionError
from mailtracker.followup.definition import followups_from_mapping
from tests.plugins.workspace import THREE
from tests.test_followup import AASE, BJOERN, KAREN, SOEREN, Scene, _text, cph, scene

__all__ = ["scene"]  # the fixture, used by name below


DATE = r"\w+dag den \d{1,2}\. \w+ \d{4}"  # e.g. "torsdag den 19. marts 2026"


def _html(msg: EmailMessage) -> str:
    body = msg.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def test_no_reminder_asks_the_agreement_administrator_to_sign_a_signed_agreement(
        scene: Scene) -> None:
    scene.notify(cph(2026, 3, 9, 10, 0))
    # EG's agreement, Penneo's "signed by all parties" and EG's guide arrive before reminders.
    scene.poll(cph(2026, 3, 19, 12, 0), "agreement-eg-pdf.eml", "penneo-signed.eml",
               "guide-eg.eml")
    before = len(scene.smtp.messages)
    report = scene.tick(cph(2026, 3, 20, 8, 30))
    reminders = {rcpt: msg for rcpt, msg in scene.mail(before)
                 if str(msg["Subject"]).startswith("Påmindelse")}
    # The agreement administrator is not reminded: what the reminder asks for has happened.
    assert sorted(reminders) == sorted([SOEREN, AASE])
    assert BJOERN not in {r.recipient for r in report.results if r.key.startswith("reminder")}
    # The system owner's reminder says the guide has come, and what is done so far.
    text = _text(reminders[SOEREN])
    assert re.search(rf"EG's vejledning kom {DATE}\. Som\n  systemansvarlig", text)
    assert "når vejledningen" not in text
    assert "Det er sket indtil nu" in text
    assert re.search(rf"^- Serviceaftale underskrevet: {DATE}$", text, re.M)
    assert re.search(rf"<li>Serviceaftale underskrevet: {DATE}</li>", _html(reminders[SOEREN]))
    # A later round does not remind him either.
    assert not [r for r in scene.tick(cph(2026, 4, 20, 9, 0)).results if r.recipient == BJOERN]


def test_a_reminder_after_the_agreement_came_asks_to_sign_that_one(scene: Scene) -> None:
    scene.notify(cph(2026, 3, 2, 10, 0))
    scene.poll(cph(2026, 3, 10, 12, 0), "agreement-eg-pdf.eml")
    before = len(scene.smtp.messages)
    scene.tick(cph(2026, 3, 10, 12, 5))
    reminder = next(m for r, m in scene.mail(before)
                    if r == BJOERN and str(m["Subject"]).startswith("Påmindelse"))
    text = _text(reminder)
    assert re.search(rf"Serviceaftalen kom fra EG {DATE}\.\n  Som aftaleadministrator skal du "
                     r"underskrive den\.", text)
    assert "når den\n  kommer" not in text and "når den kommer" not in text


def test_the_kp_owners_copy_after_signing_and_a_cancelled_webinar_says_so(
        scene: Scene) -> None:
    # Only the three are told at first; the KP system owner is registered later.
    scene.ws.cli("recipients", "remove", KAREN, env=scene.env(cph(2026, 3, 2, 9, 0)))
    scene.notify(cph(2026, 3, 2, 10, 0))
    scene.poll(cph(2026, 4, 2, 12, 0), "agreement-eg-pdf.eml", "penneo-signed.eml",
               "webinar-invite.eml", "webinar-cancel.eml")
    scene.cli(cph(2026, 4, 2, 13, 0), "recipients", "add", "--email", KAREN,
              "--name", "Pedersen, Karen", "--role", "kp_owner")
    before = len(scene.smtp.messages)
    scene.notify(cph(2026, 4, 2, 13, 5))
    copy = next(m for r, m in scene.mail(before) if r == KAREN)
    text, html = _text(copy), _html(copy)
    assert "Serviceaftalen er allerede underskrevet." in text
    assert "bedes underskrive" not in text and "bedes underskrive" not in html
    assert re.search(rf"^- Webinar aflyst: {DATE}$", text, re.M)
    assert re.search(rf"<li>Webinar aflyst: {DATE}</li>", html)


def test_a_late_orientation_does_not_ask_to_sign_a_signed_agreement_in_english(
        scene: Scene) -> None:
    scene.ws.cli("recipients", "remove", BJOERN, env=scene.env(cph(2026, 3, 2, 9, 0)))
    scene.notify(cph(2026, 3, 2, 10, 0))
    scene.poll(cph(2026, 3, 17, 12, 0), "agreement-eg-pdf.eml", "penneo-signed.eml")
    name = next(n for role, n, e in THREE if e == BJOERN)
    scene.cli(cph(2026, 3, 17, 13, 0), "recipients", "add", "--email", BJOERN, "--name", name,
              "--role", "agreement_admin", "--lang", "en")
    before = len(scene.smtp.messages)
    scene.notify(cph(2026, 3, 17, 13, 5))
    text = _text(next(m for r, m in scene.mail(before) if r == BJOERN))
    assert "already been signed, so there is nothing\n  left to sign" in text
    assert "when it arrives" not in text
    assert "What has happened so far" in text


def test_reminder_unless_names_roles_and_milestones_the_task_has() -> None:
    def read(unless: object) -> object:
        return followups_from_mapping({"reminders": {"unless": unless}},
                                      roles={"agreement_admin"},
                                      milestones={"service_agreement_signed"})
    ok = read({"agreement_admin": ["service_agreement_signed"]})
    assert ok.reminders.unless == {  # type: ignore[attr-defined]
        "agreement_admin": ("service_agreement_signed",)}
    with pytest.raises(TaskDefinitionError, match=r"reminders\.unless\.nobody"):
        read({"nobody": ["service_agreement_signed"]})
    with pytest.raises(TaskDefinitionError, match=r"reminders\.unless\.agreement_admin"):
        read({"agreement_admin": ["no_such_milestone"]})


def test_status_shows_the_event_mail_due_before_tick_sends_it(scene: Scene) -> None:
    scene.notify(cph(2026, 3, 2, 9, 0))
    scene.poll(cph(2026, 3, 20, 10, 0), "agreement-eg-pdf.eml", "guide-eg.eml")
    now = cph(2026, 3, 20, 10, 5)
    due = scene.status(now)["followups_due"]
    assert sorted((d["recipient"], d["template"]) for d in due if d["kind"] == "event") == [
        (BJOERN, "event-service_agreement_received"), (SOEREN, "event-guide_received")]
    text = scene.cli(now, "status").stdout
    assert "due now   event      event-guide_received" in text and SOEREN in text
    assert f"{len(due)} follow-up mail(s) due now: 'mailtracker tick' sends them" in text
    before = len(scene.smtp.messages)
    scene.cli(now, "tick")
    assert len(scene.smtp.messages) == before + len(due)
    after = scene.status(cph(2026, 3, 20, 10, 6))
    assert after["followups_due"] == []
    assert "due now" not in scene.cli(cph(2026, 3, 20, 10, 6), "status").stdout


def test_the_guide_mail_knows_the_webinar_invitation_already_came(scene: Scene) -> None:
    scene.notify(cph(2026, 3, 2, 9, 0))
    scene.poll(cph(2026, 3, 19, 12, 0), "webinar-invite.eml")
    scene.poll(cph(2026, 3, 19, 12, 5), "guide-eg.eml")
    before = len(scene.smtp.messages)
    scene.tick(cph(2026, 3, 19, 12, 10))
    guide = next(m for r, m in scene.mail(before)
                 if r == SOEREN and str(m["Subject"]).startswith("Vejledningen fra EG"))
    text = _text(guide)
    assert re.search(rf"Invitationen er allerede kommet\n\({DATE}\)", text) or re.search(
        rf"Invitationen er allerede kommet \({DATE}\)", text), text
    assert "når invitationen kommer" not in text
    assert "informeres samlet" in text


def test_a_person_signs_with_the_name_as_it_is_said(scene: Scene) -> None:
    """The KP system owner registered as "Pedersen, Karen" signs "Karen Pedersen", and the
    mail asks the reader to contact "Karen Pedersen", not "Pedersen, Karen"."""
    scene.notify(cph(2026, 3, 2, 9, 0))
    text = _text(next(m for r, m in scene.mail() if r == SOEREN))
    assert "Med venlig hilsen\nKaren Pedersen\nKP-systemansvarlig, Eksempel Kommune" in text
    assert "kontakte Karen Pedersen" in text
    assert "Pedersen, Karen" not in text
