"""classify(): EG milestones, replies, auto-replies, bounces, spoofs and look-alikes."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from mailtracker.errors import TaskDefinitionError
from mailtracker.inbound.judge.classify import classify
from mailtracker.inbound.judge.rules import DEFAULT_RULES, InboundRules, rules_from_mapping
from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mail.parse import parse
from mailtracker.task.verdict import Classification, Kind

ROOT = Path(__file__).parents[1]
MAIL = Path(__file__).parent / "mail"
TRUST = TrustSettings(authserv_id="mx.kommune.dk")
ALLOWLIST = replace(TRUST, sender_auth="allowlist")
REPLY_ID = "<20260302093000.41872.efaktura-8b.3f9a@kommune.dk>"
AUTO_ID = "<20260302093001.41872.efaktura-8b.77c1@kommune.dk>"
BOUNCED_ID = "<20260302093000.41873.efaktura-8b.d0e4@kommune.dk>"
SENT = {
    REPLY_ID: "systemejer@kommune.dk",
    AUTO_ID: "okonomi@kommune.dk",
    BOUNCED_ID: "oeir-koordinator@kommune.dk",
}
AR_EG = ("Authentication-Results: mx.kommune.dk; dkim=pass header.d=eg.dk; "
         "dmarc=pass header.from=eg.dk\r\n")


def classify_file(name: str, *, trust: TrustSettings = TRUST,
                  rules: InboundRules = DEFAULT_RULES) -> Classification:
    return classify(parse((MAIL / name).read_bytes()), rules, trust, SENT)


def classify_text(text: str, *, trust: TrustSettings = TRUST,
                  sent: dict[str, str] | None = None) -> Classification:
    raw = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    return classify(parse(raw), DEFAULT_RULES, trust, SENT if sent is None else sent)


@pytest.mark.parametrize("name, milestone", [
    ("agreement-eg-pdf.eml", "service_agreement_received"),
    ("penneo-request.eml", "service_agreement_received"),
    ("penneo-signed.eml", "service_agreement_signed"),
    ("addo-signed.eml", "service_agreement_signed"),
    ("guide-eg.eml", "guide_received"),
    ("webinar-invite.eml", "webinar_invited"),
    ("webinar-cancel.eml", "webinar_cancelled"),
])
def test_authenticated_eg_mail_sets_its_milestone(name: str, milestone: str) -> None:
    result = classify_file(name)
    assert (result.kind, result.milestone) == (Kind.MILESTONE, milestone), result.summary


def test_milestone_evidence_names_message_sender_and_subject() -> None:
    result = classify_file("agreement-eg-pdf.eml")
    assert result.evidence.source == "mail"
    assert result.evidence.sender == "kundeservice@eg.dk"
    assert result.evidence.subject == "Serviceaftale til underskrift"
    assert result.evidence.message_id is not None
    assert result.summary == ("service_agreement_received from kundeservice@eg.dk: "
                              "Serviceaftale til underskrift")


def test_webinar_invitation_carries_start_join_link_and_uid() -> None:
    details = classify_file("webinar-invite.eml").evidence.details
    assert details["start"] == "2026-04-15T10:00:00+02:00"
    assert details["join_url"].startswith("https://teams.microsoft.com/l/meetup-join/19%3a")
    assert details["ical_uid"].startswith("040000008200E00074C5B7101A82E008")
    cancelled = classify_file("webinar-cancel.eml").evidence.details
    assert cancelled["ical_uid"] == details["ical_uid"]


def test_signing_request_that_mentions_all_parties_is_not_a_signature() -> None:
    # Its body says "når dokumentet er underskrevet af alle parter, modtager du en kopi".
    result = classify_file("penneo-request.eml")
    assert result.milestone == "service_agreement_received"


def test_relaxed_dkim_alignment_authenticates_a_subdomain_signature() -> None:
    # guide-eg.eml: dmarc=none, dkim=pass header.d=mail.eg.dk for From @eg.dk
    assert classify_file("guide-eg.eml").kind is Kind.MILESTONE


@pytest.mark.parametrize("name, reason", [
    ("spoof-no-authres.eml", "no Authentication-Results from mx.kommune.dk"),
    ("spoof-dkim-fail.eml", "mx.kommune.dk: dmarc=fail for eg.dk"),
    ("spoof-forged-authres.eml", "no Authentication-Results from mx.kommune.dk"),
    ("spoof-two-from.eml", "two From headers"),
    ("spoof-paren-from.eml", "From has 2 addresses"),
    ("forwarded-vs.eml", "forwarded copy from mette.kollega@kommune.dk"),
])
def test_eg_look_alikes_that_fail_authentication_are_quarantined(name: str, reason: str) -> None:
    result = classify_file(name)
    assert result.kind is Kind.QUARANTINE
    assert result.reason == reason
    assert result.milestone == "service_agreement_received"  # what it would have set


@pytest.mark.parametrize("name", [
    "nets-efaktura.eml", "kombit-serviceplatformen.eml", "kp-dk.eml"])
def test_look_alikes_from_other_organisations_are_unrelated(name: str) -> None:
    result = classify_file(name)
    assert result.kind is Kind.UNRELATED
    assert result.reason  # names the negative rule's description


def test_danish_reply_acknowledges_the_recipient_of_our_mail() -> None:
    result = classify_file("reply-da.eml")
    assert (result.kind, result.recipient) == (Kind.ACKNOWLEDGED, "systemejer@kommune.dk")
    assert result.evidence.details == {}


def test_reply_from_another_address_acknowledges_our_recipient_and_notes_the_sender() -> None:
    result = classify_text(f"""From: Vikar <vikar@kommune.dk>
Subject: Re: Orientering
References: <older@kommune.dk> {REPLY_ID}
Message-ID: <r2@kommune.dk>

Modtaget.
""")
    assert (result.kind, result.recipient) == (Kind.ACKNOWLEDGED, "systemejer@kommune.dk")
    assert result.evidence.details == {"from": "vikar@kommune.dk"}


def test_auto_reply_never_acknowledges() -> None:
    result = classify_file("autoreply-da.eml")
    assert (result.kind, result.recipient) == (Kind.AUTO_REPLY, "okonomi@kommune.dk")
    assert result.reason == "Auto-Submitted: auto-replied"


def test_out_of_office_from_eg_quoting_eg_words_is_no_milestone() -> None:
    result = classify_text(f"""{AR_EG}From: EG Kundeservice <kundeservice@eg.dk>
Subject: Automatisk svar: Spørgsmål om serviceaftale
Message-ID: <oof@eg.dk>

Jeg er fraværende.
""")
    assert result.kind is Kind.AUTO_REPLY


def test_dsn_for_our_mail_is_a_bounce_for_its_recipient() -> None:
    result = classify_file("bounce-dsn.eml")
    assert (result.kind, result.recipient) == (Kind.BOUNCE, "oeir-koordinator@kommune.dk")
    assert result.reason == "5.1.1 550 5.1.1 User unknown"


def test_dsn_is_matched_by_failed_recipient_when_the_original_id_is_missing() -> None:
    raw = (MAIL / "bounce-dsn.eml").read_bytes().replace(BOUNCED_ID.encode(), b"<x@y>")
    result = classify(parse(raw), DEFAULT_RULES, TRUST, SENT)
    assert (result.kind, result.recipient) == (Kind.BOUNCE, "oeir-koordinator@kommune.dk")


def test_dsn_about_someone_elses_mail_is_unrelated() -> None:
    result = classify(parse((MAIL / "bounce-dsn.eml").read_bytes()), DEFAULT_RULES, TRUST,
                      {"<other@kommune.dk>": "someone@kommune.dk"})
    assert result.kind is Kind.UNRELATED and result.recipient is None


def test_delayed_dsn_is_not_a_bounce() -> None:
    raw = (MAIL / "bounce-dsn.eml").read_bytes().replace(b"Action: failed", b"Action: delayed")
    raw = raw.replace(b"Status: 5.1.1", b"Status: 4.4.1")
    assert classify(parse(raw), DEFAULT_RULES, TRUST, SENT).kind is Kind.UNRELATED


def test_allowlist_mode_needs_no_authentication_results_but_still_a_clean_from() -> None:
    assert classify_file("spoof-no-authres.eml", trust=ALLOWLIST).kind is Kind.MILESTONE
    result = classify_file("spoof-two-from.eml", trust=ALLOWLIST)
    assert (result.kind, result.reason) == (Kind.QUARANTINE, "two From headers")


def test_authserv_id_is_compared_case_insensitively() -> None:
    result = classify_text("""Authentication-Results: MX.Kommune.DK; dmarc=pass header.from=EG.dk
From: kundeservice@eg.dk
Subject: Serviceaftale til underskrift
""")
    assert result.kind is Kind.MILESTONE


def test_exchange_online_header_without_authserv_id_does_not_authenticate() -> None:
    result = classify_text("""Authentication-Results: spf=pass (sender IP is 40.107.22.51)
 smtp.mailfrom=eg.dk; dkim=pass (signature was verified) header.d=eg.dk;dmarc=pass
 action=none header.from=eg.dk;compauth=pass reason=100
From: kundeservice@eg.dk
Subject: Serviceaftale til underskrift
""")
    assert (result.kind, result.reason) == (
        Kind.QUARANTINE, "no Authentication-Results from mx.kommune.dk")


def test_dmarc_fail_from_our_server_beats_a_forged_pass_with_our_id() -> None:
    result = classify_text("""Authentication-Results: mx.kommune.dk; dkim=fail header.d=eg.dk;
 dmarc=fail header.from=eg.dk
Authentication-Results: mx.kommune.dk; dkim=pass header.d=eg.dk; dmarc=pass header.from=eg.dk
From: kundeservice@eg.dk
Subject: Serviceaftale til underskrift
""")
    assert result.kind is Kind.QUARANTINE


def test_pass_for_another_domain_does_not_authenticate() -> None:
    result = classify_text("""Authentication-Results: mx.kommune.dk; dkim=pass
 header.d=evil.example; dmarc=pass header.from=evil.example
From: kundeservice@eg.dk
Subject: Serviceaftale til underskrift
""")
    assert result.kind is Kind.QUARANTINE
    assert result.reason == "mx.kommune.dk: dkim=pass for evil.example, dmarc=pass for evil.example"


def test_eg_forwarding_its_own_mail_is_authenticated_by_the_outer_sender() -> None:
    inner = (MAIL / "agreement-eg-pdf.eml").read_text("latin-1")
    result = classify_text(f"""{AR_EG}From: EG Kundeservice <kundeservice@eg.dk>
Subject: VS: Påmindelse
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=utf-8

Se vedhæftede.
--b
Content-Type: message/rfc822

{inner}
--b--
""")
    assert (result.kind, result.milestone) == (Kind.MILESTONE, "service_agreement_received")


def test_inline_forward_of_eg_mail_is_quarantined() -> None:
    result = classify_text("""Authentication-Results: mx.kommune.dk;
 dmarc=pass header.from=kommune.dk
From: Mette <mette@kommune.dk>
Subject: VS: Vejledning til opsætning af eFaktura

-----Oprindelig meddelelse-----
Fra: EG Implementering <implementering@eg.dk>
Emne: Vejledning til opsætning af eFaktura
""")
    assert result.kind is Kind.QUARANTINE
    assert result.reason == "forwarded copy from mette@kommune.dk (inline)"
    assert result.milestone == "guide_received"


def test_signing_platform_mail_without_an_eg_document_is_unrelated() -> None:
    result = classify_text("""Authentication-Results: mx.kommune.dk;
 dmarc=pass header.from=penneo.com
From: Penneo <no-reply@penneo.com>
Subject: Dokument til underskrift: Lejeaftale
Message-ID: <p@penneo.com>

Boligselskabet har sendt dig et dokument til underskrift.
""")
    assert result.kind is Kind.UNRELATED


def test_negatives_win_over_eg_rules() -> None:
    result = classify_text(f"""{AR_EG}From: kundeservice@eg.dk
Subject: Vejledning til eFaktura
Message-ID: <n@eg.dk>

Se din e-faktura i din netbank.
""")
    assert (result.kind, result.rule) == (Kind.UNRELATED, "nets_efaktura")


def test_subject_match_beats_body_match() -> None:
    # guide-eg.eml's body mentions the service agreement and a webinar; the subject wins.
    assert classify_file("guide-eg.eml").milestone == "guide_received"


def test_words_match_without_danish_letters_and_inside_compounds() -> None:
    result = classify_text(f"""{AR_EG}From: implementering@eg.dk
Subject: Opsaetningsvejledning til E-FAKTURA
""")
    assert result.milestone == "guide_received"


def test_calendar_request_from_eg_is_a_webinar_invitation_without_words() -> None:
    raw = (MAIL / "webinar-invite.eml").read_bytes().replace(
        b"Subject: Invitation: Webinar: eFaktura til KP", b"Subject: KP-m\xc3\xb8de")
    result = classify(parse(raw), DEFAULT_RULES, TRUST, SENT)
    assert result.milestone == "webinar_invited"


def test_unparseable_message_is_reported_with_its_reason() -> None:
    result = classify(parse(b"\x00\x01garbage"), DEFAULT_RULES, TRUST, SENT)
    assert (result.kind, result.reason) == (Kind.UNPARSEABLE, "no header fields")


def test_mail_that_is_nothing_to_us_is_unrelated() -> None:
    result = classify_text("""From: nyhedsbrev@example.org
Subject: Ugens tilbud
""")
    assert (result.kind, result.summary) == (Kind.UNRELATED, "unrelated")


def test_summaries_have_no_line_breaks() -> None:
    for path in sorted(MAIL.glob("*.eml")):
        result = classify_file(path.name)
        assert "\n" not in result.summary and "\r" not in result.summary


# --- rules as data -------------------------------------------------------------------------

def test_task_file_inbound_section_equals_the_defaults() -> None:
    data = tomllib.loads((ROOT / "config/tasks/efaktura-8b.toml").read_text("utf-8"))
    assert rules_from_mapping(data["inbound"]) == DEFAULT_RULES


def test_missing_keys_fall_back_to_defaults() -> None:
    rules = rules_from_mapping({"eg_document_words": ["EG Digital"]})
    assert rules.rules == DEFAULT_RULES.rules
    assert rules.eg_document_words == ("eg digital",)


def test_custom_rule_words_are_normalised_and_grouped() -> None:
    rules = rules_from_mapping({"rules": [
        {"name": "guide", "milestone": "guide_received", "words": [["Opsætning"], ["KP"]]}]})
    assert rules.rules[0].words == (("opsaetning",), ("kp",))
    assert rules.rules[0].senders == ("eg",)


@pytest.mark.parametrize("data, key", [
    ({"rules": "x"}, "inbound.rules"),
    ({"rules": [{"name": "a", "milestone": "m"}]}, "inbound.rules[0]"),
    ({"rules": [{"name": "a", "milestone": "m", "words": ["x"], "senders": ["nets"]}]},
     "inbound.rules[0].senders"),
    ({"rules": [{"name": "a", "milestone": "m", "words": ["x", ["y"]]}]},
     "inbound.rules[0].words"),
    ({"rules": [{"name": "a", "milestone": "m", "calendar": "INVITE"}]},
     "inbound.rules[0].calendar"),
    ({"rules": [{"name": "a", "milestone": "Bad Name", "words": ["x"]}]},
     "inbound.rules[0].milestone"),
    ({"rules": [{"name": "a", "milestone": "m", "words": ["x"], "colour": "red"}]},
     "inbound.rules[0].colour"),
    ({"rules": [{"name": "a", "milestone": "m", "words": ["x"]},
                {"name": "a", "milestone": "n", "words": ["y"]}]}, "inbound.rules"),
    ({"negatives": [{"name": "n", "from_domains": ["x@kp.dk"]}]},
     "inbound.negatives[0].from_domains"),
    ({"negatives": [{"name": "n"}]}, "inbound.negatives[0]"),
    ({"unknown": 1}, "inbound.unknown"),
])
def test_bad_rules_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(TaskDefinitionError) as info:
        rules_from_mapping(data)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
