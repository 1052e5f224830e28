"""`mailtracker poll` on a real Dovecot inbox: each EG mail, reply and bounce counts exactly
once, spoofed and forwarded mail never changes the task, hostile mail never crashes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mailtracker.store import Store
from tests.inbound_mail import bounce, eml, noise, reply, require_corpora
from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace

EG_MAILS = ["agreement-eg-pdf.eml", "guide-eg.eml", "webinar-invite.eml"]
SPOOFS = ["spoof-no-authres.eml", "spoof-dkim-fail.eml", "spoof-forged-authres.eml",
          "spoof-two-from.eml", "spoof-paren-from.eml"]
NEGATIVES = ["nets-efaktura.eml", "kombit-serviceplatformen.eml", "kp-dk.eml"]


@dataclass
class Inbox:
    ws: Workspace
    dovecot: Any
    user: str
    smtp: SmtpTestServer

    def deliver(self, raw: bytes) -> int:
        uid: int = self.dovecot.append(self.user, raw)
        return uid

    def poll(self, *args: str) -> Any:
        result = self.ws.cli("poll", *args)
        assert result.exit_code == 0, result.output
        return result

    def sent_id(self, email: str) -> str:
        row = next(r for r in self.ws.status()["recipients"] if r["email"] == email)
        return str(row["message_id"])

    def subject(self, email: str) -> str:
        msg = next(m.message for m in self.smtp.messages if email in m.rcpt_tos)
        return str(msg["Subject"])


@pytest.fixture
def inbox(dovecot: Any, smtp_server: SmtpTestServer,
          make_workspace: Callable[..., Workspace]) -> Inbox:
    user, password = dovecot.add_user()
    ws = make_workspace(smtp=smtp_server, imap=(dovecot, user, password))
    ws.add_recipients(THREE)
    assert ws.cli("notify").exit_code == 0
    return Inbox(ws, dovecot, user, smtp_server)


def _answers(inbox: Inbox) -> None:
    soeren, aase, bjoern = (e for _, _, e in THREE[0:1] + THREE[2:3] + THREE[1:2])
    inbox.deliver(reply(sender=soeren, name="Søren Ærø-Åse", to_message_id=inbox.sent_id(soeren),
                        subject=inbox.subject(soeren)))
    inbox.deliver(reply(sender=aase, name="Åse Øberg", to_message_id=inbox.sent_id(aase),
                        subject=inbox.subject(aase), auto=True))
    inbox.deliver(bounce(failed=bjoern, original_message_id=inbox.sent_id(bjoern),
                         original_subject=inbox.subject(bjoern)))


def _milestones(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status["milestones"].items() if v is not None}


def test_eg_mails_replies_and_bounces_move_the_task(inbox: Inbox) -> None:
    for name in EG_MAILS + SPOOFS + NEGATIVES + ["forwarded-vs.eml"]:
        inbox.deliver(eml(name))
    _answers(inbox)
    result = inbox.poll()
    assert "milestone reached: Service agreement received from EG" in result.output
    assert "acknowledged: soeren@kommune.example replied" in result.output
    assert "not counted as an acknowledgement" in result.output
    assert "bounce: mail to bjoern.hansen@kommune.example" in result.output

    status = inbox.ws.status()
    ms = _milestones(status)
    # The fixture's webinar lies in the past, so it also counts as held (derived).
    assert set(ms) == {"service_agreement_received", "guide_received", "webinar_invited",
                       "webinar_held"}
    assert ms["webinar_held"]["source"] == "derived"
    agreement = ms["service_agreement_received"]
    assert agreement["source"] == "mail" and agreement["from"] == "kundeservice@eg.dk"
    assert agreement["message_id"].startswith("<AM9PR04MB8411")
    assert agreement["subject"] == "Serviceaftale til underskrift"
    webinar = ms["webinar_invited"]
    assert webinar["start"].endswith("+01:00") or webinar["start"].endswith("+02:00")
    assert webinar["join_url"].startswith("https://teams.microsoft.com/")

    rows = {r["email"]: r for r in status["recipients"]}
    assert rows["soeren@kommune.example"]["acknowledged"] is True
    assert rows["aase.oeberg@kommune.example"]["acknowledged"] is False
    assert rows["bjoern.hansen@kommune.example"]["delivery"] == "bounced"
    assert "5.1.1" in rows["bjoern.hansen@kommune.example"]["bounce_reason"]
    # The agreement administrator's mail bounced: that role is no longer oriented.
    assert status["klik_status"] == "i gang"
    assert status["quarantine"] == len(SPOOFS) + 1  # + the forwarded copy

    review = json.loads(inbox.ws.cli("review", "--json").stdout)
    reasons = " ".join(q["reason"] for q in review)
    assert "forwarded" in reasons
    assert all(q["milestone"] for q in review)


def test_second_poll_changes_nothing(inbox: Inbox) -> None:
    for name in EG_MAILS:
        inbox.deliver(eml(name))
    _answers(inbox)
    inbox.poll()
    before = inbox.ws.status()
    again = inbox.poll()
    assert "0 new message(s)" in again.output
    after = inbox.ws.status()
    before.pop("generated_at"), after.pop("generated_at")
    assert after == before


def test_fetching_never_marks_mail_read(inbox: Inbox) -> None:
    for name in EG_MAILS + SPOOFS:
        inbox.deliver(eml(name))
    inbox.poll()
    flags = inbox.dovecot.flags(inbox.user)
    assert flags and all("\\Seen" not in f for f in flags.values())


def test_duplicate_eg_mail_counts_once(inbox: Inbox) -> None:
    inbox.deliver(eml("agreement-eg-pdf.eml"))
    inbox.poll()
    inbox.deliver(eml("agreement-eg-pdf.eml"))  # same Message-ID, new UID
    second = inbox.poll()
    assert "milestone" not in second.output
    timeline = Store(inbox.ws.store_path).snapshot().timeline("efaktura-8b")
    assert [t.kind for t in timeline].count("milestone") == 1


def test_uidvalidity_reset_rescans_without_double_counting(inbox: Inbox) -> None:
    for name in EG_MAILS + SPOOFS:
        inbox.deliver(eml(name))
    _answers(inbox)
    inbox.poll()
    before = inbox.ws.status()
    inbox.dovecot.reset_uidvalidity(inbox.user)
    inbox.deliver(eml("penneo-signed.eml"))
    result = inbox.poll()
    assert "rescanned" in result.output
    after = inbox.ws.status()
    assert after["quarantine"] == before["quarantine"]
    assert after["recipients"] == before["recipients"]
    assert _milestones(after).keys() == _milestones(before).keys() | {"service_agreement_signed"}
    timeline = Store(inbox.ws.store_path).snapshot().timeline("efaktura-8b")
    assert [t.kind for t in timeline].count("milestone") == 4


def test_crash_before_the_batch_write_reprocesses_exactly_once(
        inbox: Inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EG_MAILS:
        inbox.deliver(eml(name))
    _answers(inbox)
    import mailtracker.inbound.pipeline as pipeline

    real = pipeline._write_batch

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # the process dies after fetching, before writing

    monkeypatch.setattr(pipeline, "_write_batch", crash)
    died = inbox.ws.cli("poll")
    assert died.exit_code == 130
    assert _milestones(inbox.ws.status()) == {}
    monkeypatch.setattr(pipeline, "_write_batch", real)
    inbox.poll()
    inbox.poll()
    status = inbox.ws.status()
    assert len(_milestones(status)) == 4  # three from mail + webinar_held (past start)
    timeline = Store(inbox.ws.store_path).snapshot().timeline("efaktura-8b")
    assert [t.kind for t in timeline].count("milestone") == 3
    assert [t.kind for t in timeline].count("acknowledged") == 1


def test_dry_run_stores_nothing(inbox: Inbox) -> None:
    for name in EG_MAILS:
        inbox.deliver(eml(name))
    before = inbox.ws.store_path.read_bytes()
    result = inbox.poll("--dry-run")
    assert "would: milestone reached" in result.output
    assert inbox.ws.store_path.read_bytes() == before
    changes = [line for line in result.output.splitlines() if "milestone reached" in line]
    assert changes and all(line.startswith("would: ") for line in changes)
    assert len(changes) == len(set(changes)), "each change is printed once"
    real = inbox.poll()
    lines = [line for line in real.output.splitlines() if "milestone reached" in line]
    assert len(lines) == len(set(lines)) == len(changes)


def test_post_action_moves_applied_mail_to_unicode_folder(inbox: Inbox) -> None:
    inbox.ws.set("imap", post_action="move", move_to="Behandlet/æøå")
    inbox.deliver(eml("agreement-eg-pdf.eml"))
    inbox.deliver(eml("spoof-no-authres.eml"))
    inbox.deliver(noise(1))
    inbox.poll()
    assert "Behandlet/æøå" in inbox.dovecot.list_folders(inbox.user)
    assert len(inbox.dovecot.uids(inbox.user, "Behandlet/æøå")) == 1
    assert len(inbox.dovecot.uids(inbox.user)) == 2  # the spoof and the noise stay


def test_post_action_keyword(inbox: Inbox) -> None:
    inbox.ws.set("imap", post_action="keyword", keyword="mailtracker")
    uid = inbox.deliver(eml("guide-eg.eml"))
    other = inbox.deliver(noise(2))
    inbox.poll()
    flags = inbox.dovecot.flags(inbox.user)
    assert "mailtracker" in flags[uid] and "mailtracker" not in flags[other]


def test_thousands_of_unrelated_messages(inbox: Inbox) -> None:
    inbox.dovecot.bulk_load(inbox.user, [noise(i) for i in range(3000)])
    for name in EG_MAILS:
        inbox.deliver(eml(name))
    result = inbox.ws.cli("poll", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["new_messages"] == 3003
    assert report["examined"] == 3  # only candidates were fetched whole
    assert len(_milestones(inbox.ws.status())) == 4  # + webinar_held (derived)


def test_review_accept_applies_and_reject_does_not(inbox: Inbox) -> None:
    inbox.deliver(eml("spoof-no-authres.eml"))
    inbox.deliver(eml("spoof-dkim-fail.eml"))
    inbox.poll()
    entries = json.loads(inbox.ws.cli("review", "--json").stdout)
    assert len(entries) == 2 and _milestones(inbox.ws.status()) == {}
    rejected = inbox.ws.cli("review", "reject", entries[0]["id"])
    assert rejected.exit_code == 0
    assert _milestones(inbox.ws.status()) == {}
    accepted = inbox.ws.cli("review", "accept", entries[1]["id"])
    assert accepted.exit_code == 0, accepted.output
    ms = _milestones(inbox.ws.status())
    assert list(ms) == [entries[1]["milestone"]]
    assert "accepted after review" in ms[entries[1]["milestone"]]["note"]
    assert inbox.ws.status()["quarantine"] == 0
    again = inbox.ws.cli("review", "accept", entries[1]["id"])
    assert again.exit_code == 9 and "already accepted" in again.output


def test_every_corpus_file_is_survived_and_none_is_an_event(inbox: Inbox) -> None:
    corpora = require_corpora()
    files = sorted(p for p in corpora.rglob("*") if p.is_file() and p.name != "LICENSE"
                   and not p.name.endswith(".md"))
    assert len(files) > 150
    inbox.dovecot.bulk_load(inbox.user, [p.read_bytes() for p in files])
    result = inbox.ws.cli("poll", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new_messages"] == len(files)
    status = inbox.ws.status()
    assert _milestones(status) == {}
    assert not any(r["acknowledged"] or r["delivery"] == "bounced"
                   for r in status["recipients"])
    unparseable = Store(inbox.ws.store_path).snapshot().unparseable()
    assert all(u.reason for u in unparseable)


def test_mark_records_manual_milestones_only(inbox: Inbox) -> None:
    ok = inbox.ws.cli("mark", "erp_forwarding_configured", "--note", "Opsat pr. EAN",
                      "--by", "Karen")
    assert ok.exit_code == 0, ok.output
    ms = _milestones(inbox.ws.status())["erp_forwarding_configured"]
    assert ms["source"] == "manual" and ms["recorded_by"] == "Karen"
    assert ms["note"] == "Opsat pr. EAN"
    assert "(manual: Opsat pr. EAN (by Karen))" in inbox.ws.cli("status").output
    refused = inbox.ws.cli("mark", "service_agreement_received")
    assert refused.exit_code == 9 and "review accept" in refused.output
    unknown = inbox.ws.cli("mark", "no_such_step")
    assert unknown.exit_code == 9 and "unknown milestone" in unknown.output


def test_status_markdown_is_ready_for_klik(inbox: Inbox) -> None:
    inbox.deliver(eml("agreement-eg-pdf.eml"))
    inbox.poll()
    md = inbox.ws.cli("status", "--format", "markdown")
    assert md.exit_code == 0
    assert "Status: **fuldført**" in md.output
    assert "| Serviceaftale modtaget fra EG |" in md.output
    assert "mail fra kundeservice@eg.dk: »Serviceaftale til underskrift«" in md.output
    assert "“" not in md.output and "”" not in md.output  # Danish quotes, not English
    assert "Næste skridt:" in md.output


def test_a_mail_over_max_message_bytes_is_judged_on_its_header_alone(inbox: Inbox) -> None:
    inbox.ws.set("imap", max_message_bytes=1024)
    raw = eml("agreement-eg-pdf.eml")
    assert len(raw) > 1024
    inbox.deliver(raw)
    report = json.loads(inbox.poll("--json").stdout)
    assert report["new_messages"] == 1 and report["examined"] == 0  # never fetched whole
    assert report["counts"] == {"milestone": 1}
    agreement = inbox.ws.status()["milestones"]["service_agreement_received"]
    assert agreement["from"] == "kundeservice@eg.dk"
    assert agreement["subject"] == "Serviceaftale til underskrift"
    again = json.loads(inbox.poll("--json").stdout)
    assert again["new_messages"] == 0 and again["changes"] == []
