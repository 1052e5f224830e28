"""Orientation templates and the pure renderer: what a recipient's mail client would show."""

from __future__ import annotations

import email
import re
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtracker.addresses import check_display_name
from mailtracker.errors import InvalidInputError, TemplateError
from mailtracker.outbound.render import (
    RenderedMail,
    build_email,
    make_message_id,
    orientation_context,
    render,
    template_root,
)
from mailtracker.resources import data_dir

TASK = "efaktura-8b"
# Labels, titles and template names come from the task definition the templates serve.
TASK_DEF = tomllib.loads((data_dir("config") / "tasks" / f"{TASK}.toml").read_text("utf-8"))
TITLE = {"da": TASK_DEF["task"]["title"], "en": TASK_DEF["task"]["title_en"]}
ROLES = ("system_owner", "agreement_admin", "oeir_coordinator", "finance", "kp_owner")
LABELS = {lang: {r["key"]: r[f"label_{lang}"] for r in TASK_DEF["roles"]} for lang in ("da", "en")}
SUBJECTS = {
    "da": {
        "system_owner": "eFaktura til KP: Opsætning i ØS Indsigt – EG kontakter kommunen",
        "agreement_admin": "eFaktura til KP: EG sender serviceaftale til underskrift (ØS Indsigt)",
        "oeir_coordinator":
            "eFaktura til KP: Orientering til ØiR-koordinator – EG kontakter kommunen",
        "finance": "eFaktura til KP: Orientering til økonomiafdelingen",
        "kp_owner": "Kopi: Orientering om eFaktura til KP er sendt",
    },
    "en": {
        "system_owner": "eFaktura to KP: setup in ØS Indsigt – EG will contact the municipality",
        "agreement_admin":
            "eFaktura to KP: EG will send a service agreement for signature (ØS Indsigt)",
        "oeir_coordinator": "eFaktura to KP: information for the ØiR coordinator – EG will "
                            "contact the municipality",
        "finance": "eFaktura to KP: information for the finance department",
        "kp_owner": "Copy: information about eFaktura to KP has been sent",
    },
}
# Facts each role's mail must state, in both bodies (case-insensitive).
NOT_CONTACT = "i skal ikke kontakte ejerkredsen eller eg"  # the card: "I skal IKKE kontakte …"
AT_ONCE = "på én gang til alle kommuner, der bruger øs indsigt"
FACTS = {
    "da": {
        "system_owner": [NOT_CONTACT, AT_ONCE,
                         "serviceaftale til underskrift", "vejledning",
                         "webinar", "ean-nummer", "ingen ekstra omkostninger", "ejerkredsen",
                         "øs indsigt", "nemhandel", "oioubl", "svar venligst kort"],
        "oeir_coordinator": [NOT_CONTACT, AT_ONCE,
                             "serviceaftale til underskrift", "vejledning",
                             "webinar", "ean-nummer", "ingen ekstra omkostninger",
                             "økonomi i rammearkitekturen", "svar venligst kort"],
        "agreement_admin": ["serviceaftale", "underskriv serviceaftalen", "penneo", "addo sign",
                            NOT_CONTACT, AT_ONCE,
                            "kommunen sætter det selv op i øs indsigt",
                            "ingen ekstra omkostninger",
                            "svar venligst kort"],
        "finance": [NOT_CONTACT, "ean-nummer", "ingen ekstra omkostninger",
                    "du skal ikke gøre noget nu"],
        "kp_owner": ["kopi", NOT_CONTACT, "serviceaftale", "ean-nummer",
                     "ingen ekstra omkostninger", "fuldført", "efaktura 7"],
    },
    "en": {
        "system_owner": ["do not contact eg", "service agreement", "for signature",
                         "setup guide", "webinar", "ean number", "no extra cost",
                         "please reply briefly"],
        "oeir_coordinator": ["do not contact eg", "service agreement", "setup guide",
                             "webinar", "ean number", "no extra cost", "please reply briefly"],
        "agreement_admin": ["service agreement", "please sign the service agreement", "penneo",
                            "addo sign", "do not contact ejerkredsen or eg", "no extra cost",
                            "please reply briefly"],
        "finance": ["do not contact eg", "ean number", "no extra cost",
                    "do not need to do anything now"],
        "kp_owner": ["copy", "do not contact eg", "service agreement", "ean number",
                     "no extra cost", "fuldført", "efaktura 7"],
    },
}
GREETING = {"da": "Kære", "en": "Dear"}
SIGN_OFF = {"da": "Med venlig hilsen", "en": "Kind regards"}
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=timezone(timedelta(hours=1)))


def context(role: str, lang: str, *, recipient_name: str = "Søren Ærø-Åse",
            **overrides: object) -> dict[str, object]:
    ctx = orientation_context(
        recipient_name=recipient_name, recipient_email="soeren@aeroe.dk", role=role,
        role_label=LABELS[lang][role], lang=lang, organisation="Ærø Kommune",
        sender_name="Birgitte Kjær", sender_email="bkj@aeroe.dk", task_title=TITLE[lang],
        kp_owner_name="Kåre Lønborg", kp_owner_email="klo@aeroe.dk",
    )
    ctx.update(overrides)
    return ctx


def send_and_parse(rendered: RenderedMail, to_name: str = "Søren Ærø-Åse",
                   **kwargs: object) -> tuple[bytes, EmailMessage]:
    msg = build_email(rendered, sender_name="Birgitte Kjær", sender_address="bkj@aeroe.dk",
                      to_name=to_name, to_address="soeren@aeroe.dk",
                      message_id="<abc123@aeroe.dk>", date=NOW, **kwargs)  # type: ignore[arg-type]
    raw = msg.as_bytes()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return raw, parsed


def bodies(parsed: EmailMessage) -> tuple[str, str]:
    """The decoded text and HTML parts, with the wire's CRLF turned back into LF."""
    text_part = parsed.get_body(("plain",))
    html_part = parsed.get_body(("html",))
    assert text_part is not None and html_part is not None
    return (text_part.get_content().replace("\r\n", "\n"),
            html_part.get_content().replace("\r\n", "\n"))


def visible(body: str) -> str:
    """What a reader sees, for phrase checks: tags dropped, whitespace runs collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", body).split()).lower()


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("lang", ["da", "en"])
@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_a_complete_template_in_both_languages(role: str, lang: str) -> None:
    directory = template_root() / TASK / lang
    for suffix in (".subject.txt", ".txt", ".html"):
        assert (directory / f"orientation-{role}{suffix}").is_file()


@pytest.mark.parametrize("lang", ["da", "en"])
def test_every_template_the_task_definition_names_renders(lang: str) -> None:
    assert {r["key"] for r in TASK_DEF["roles"]} == set(ROLES)
    for role in TASK_DEF["roles"]:
        rendered = render(template_root(), TASK, lang, role["template"],
                          context(role["key"], lang))
        assert rendered.subject and rendered.text and rendered.html


@pytest.mark.parametrize("lang", ["da", "en"])
@pytest.mark.parametrize("role", ROLES)
def test_delivered_orientation_reads_correctly(role: str, lang: str) -> None:
    rendered = render(template_root(), TASK, lang, f"orientation-{role}", context(role, lang))
    raw, parsed = send_and_parse(rendered)

    assert parsed["Subject"] == SUBJECTS[lang][role]
    assert parsed.get_content_type() == "multipart/alternative"
    text, html = bodies(parsed)
    for body in (text, html):
        assert f"{GREETING[lang]} Søren" in body
        assert SIGN_OFF[lang] in body
        # a person signs: the KP system owner, with title and municipality, once
        title = "KP-systemansvarlig" if lang == "da" else "KP system owner"
        assert "Kåre Lønborg" in body and f"{title}, Ærø Kommune" in body
        assert body.count("Ærø Kommune") >= 1
        # the role as the footer names it, in running text (no capital, no »«)
        assert LABELS[lang][role].lower() in body.lower()
        assert "»" + LABELS[lang][role] not in body
        for fact in FACTS[lang][role]:
            assert fact in visible(body), f"{role}/{lang} does not say {fact!r}"
    assert f'<html lang="{lang}">' in html
    assert f"<title>{SUBJECTS[lang][role]}</title>" in html
    # Everything on the wire is ASCII: headers RFC 2047, bodies quoted-printable.
    assert raw.isascii()
    assert all(len(line) <= 78 for line in header_block(raw).split(b"\r\n"))


@pytest.mark.parametrize("role", ["system_owner", "agreement_admin", "oeir_coordinator",
                                  "finance"])
def test_questions_go_to_the_kp_owner_when_someone_else_sends(role: str) -> None:
    text = render(template_root(), TASK, "da", f"orientation-{role}", context(role, "da")).text
    assert "kontakte Kåre Lønborg (klo@aeroe.dk)" in " ".join(text.split())


def test_without_a_kp_owner_questions_go_to_the_sender() -> None:
    ctx = context("system_owner", "da", kp_owner_name=None, kp_owner_email=None)
    rendered = render(template_root(), TASK, "da", "orientation-system_owner", ctx)
    for body in (rendered.text, rendered.html):
        assert "Har du spørgsmål, så skriv dem gerne i dit svar." in " ".join(body.split())
        assert "None" not in body


def test_kp_owner_who_is_the_sender_is_not_named_as_contact() -> None:
    ctx = context("system_owner", "en", kp_owner_name="Birgitte Kjær",
                  kp_owner_email="BKJ@aeroe.dk")
    rendered = render(template_root(), TASK, "en", "orientation-system_owner", ctx)
    assert "please contact" not in rendered.text
    assert "just reply to this email" in rendered.text


def test_kp_owner_copy_lists_who_was_oriented() -> None:
    ctx = orientation_context(
        recipient_name="Kåre Lønborg", recipient_email="klo@aeroe.dk", role="kp_owner",
        role_label="KP-systemansvarlig", lang="da", organisation="Ærø Kommune",
        sender_name="Kåre Lønborg", sender_email="klo@aeroe.dk", task_title=TITLE["da"],
        recipients=[("Hansen, Bjørn", "bh@aeroe.dk", "Aftaleadministrator"),
                    ("Søren Ærø-Åse", "soeren@aeroe.dk", "ØiR-koordinator")],
    )
    rendered = render(template_root(), TASK, "da", "orientation-kp_owner", ctx)
    assert "- Aftaleadministrator: Hansen, Bjørn (bh@aeroe.dk)" in rendered.text
    assert "- ØiR-koordinator: Søren Ærø-Åse (soeren@aeroe.dk)" in rendered.text
    assert '<a href="mailto:bh@aeroe.dk">' in rendered.html
    assert "Kære Kåre" in rendered.text


def test_headers_are_encoded_and_decode_to_the_names() -> None:
    rendered = render(template_root(), TASK, "da", "orientation-system_owner",
                      context("system_owner", "da"))
    raw, parsed = send_and_parse(rendered)
    head = header_block(raw)
    from_line = next(line for line in head.split(b"\r\n") if line.startswith(b"From:"))
    assert b"=?utf-8?" in from_line
    assert parsed["From"].addresses[0].display_name == "Birgitte Kjær"
    assert parsed["From"].addresses[0].addr_spec == "bkj@aeroe.dk"
    assert parsed["To"].addresses[0].display_name == "Søren Ærø-Åse"
    assert parsed["Message-ID"] == "<abc123@aeroe.dk>"
    assert parsed["Date"].datetime == NOW
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["X-Mailer"].startswith("mailtracker")
    assert "Auto-Submitted" not in parsed


def test_surname_first_name_is_greeted_by_first_name_and_stays_one_address() -> None:
    ctx = context("agreement_admin", "da", recipient_name="Hansen, Bjørn")
    assert ctx["first_name"] == "Bjørn"
    rendered = render(template_root(), TASK, "da", "orientation-agreement_admin", ctx)
    _, parsed = send_and_parse(rendered, to_name="Hansen, Bjørn")
    text, html = bodies(parsed)
    assert text.startswith("Kære Bjørn\n")
    assert "<p>Kære Bjørn</p>" in html
    # The comma must not split the display name into two recipients.
    addresses = parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addresses] == [
        ("Hansen, Bjørn", "soeren@aeroe.dk")]


NAME_CHARS = st.sampled_from(list("abcAB æøåÆØÅé,.-'\"()<>@;:\\"))


@settings(max_examples=300, deadline=None)
@given(st.text(NAME_CHARS, min_size=1, max_size=120))
def test_any_valid_display_name_stays_one_recipient(name: str) -> None:
    try:
        name = check_display_name(name)
    except ValueError:
        return
    raw, parsed = send_and_parse(SIMPLE, to_name=name)
    assert raw.isascii()
    addresses = parsed["To"].addresses
    assert [a.addr_spec for a in addresses] == ["soeren@aeroe.dk"]
    # Long names are folded between adjacent encoded words; RFC 2047 says a decoder drops
    # that whitespace, but CPython's address parser keeps it, so compare without spaces.
    assert addresses[0].display_name.replace(" ", "") == name.replace(" ", "")


def test_markup_in_a_name_is_escaped_in_html_and_literal_in_text() -> None:
    evil = "<script>alert(1)</script>"
    ctx = context("system_owner", "da", first_name=evil, organisation="A & B <Kommune>")
    rendered = render(template_root(), TASK, "da", "orientation-system_owner", ctx)
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "A &amp; B &lt;Kommune&gt;" in rendered.html
    assert f"Kære {evil}" in rendered.text


def test_missing_variable_names_template_and_variable() -> None:
    ctx = context("system_owner", "da")
    del ctx["first_name"]
    with pytest.raises(TemplateError) as info:
        render(template_root(), TASK, "da", "orientation-system_owner", ctx)
    message = str(info.value)
    assert "orientation-system_owner" in message
    assert "first_name" in message
    assert info.value.template == f"{TASK}/da/orientation-system_owner"


def test_missing_variable_in_the_shared_layout_names_the_layout() -> None:
    ctx = context("system_owner", "da")
    del ctx["sender_email"]
    with pytest.raises(TemplateError, match=r"_base\.txt, line \d+: .*sender_email"):
        render(template_root(), TASK, "da", "orientation-system_owner", ctx)


def test_kp_owner_may_be_absent_but_not_undefined() -> None:
    ctx = context("finance", "en")
    del ctx["kp_owner_name"]
    with pytest.raises(TemplateError, match="kp_owner_name"):
        render(template_root(), TASK, "en", "orientation-finance", ctx)


def write_template(root: Path, name: str, subject: str, text: str = "t {{ x }}\n",
                   html: str = "<p>{{ x }}</p>\n", lang: str = "da") -> None:
    directory = root / TASK / lang
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.subject.txt").write_text(subject, encoding="utf-8")
    (directory / f"{name}.txt").write_text(text, encoding="utf-8")
    (directory / f"{name}.html").write_text(html, encoding="utf-8")


@pytest.mark.parametrize("value", ["a\nBcc: evil@example.org", "a\r\nX-Evil: 1", "a\rb",
                                   "a\x00b", "a\x85b", "a\u2028b", "tab\there"])
def test_line_break_in_rendered_subject_is_refused(tmp_path: Path, value: str) -> None:
    write_template(tmp_path, "reminder", "Påmindelse: {{ x }}\n")
    with pytest.raises(TemplateError, match="subject"):
        render(tmp_path, TASK, "da", "reminder", {"x": value})


def test_subject_file_trailing_newline_is_not_a_line_break(tmp_path: Path) -> None:
    write_template(tmp_path, "reminder", "  Påmindelse: {{ x }}  \n\n")
    rendered = render(tmp_path, TASK, "da", "reminder", {"x": "ØiR"})
    assert rendered.subject == "Påmindelse: ØiR"
    assert rendered.text == "t ØiR\n"


def test_empty_subject_is_refused(tmp_path: Path) -> None:
    write_template(tmp_path, "empty", "{{ x }}")
    with pytest.raises(TemplateError, match="empty"):
        render(tmp_path, TASK, "da", "empty", {"x": "  "})


def test_unknown_template_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="orientation-nobody"):
        render(template_root(), TASK, "da", "orientation-nobody", context("finance", "da"))


def test_template_missing_its_html_part_is_a_template_error(tmp_path: Path) -> None:
    write_template(tmp_path, "half", "Emne")
    (tmp_path / TASK / "da" / "half.html").unlink()
    with pytest.raises(TemplateError, match=r"half\.html not found"):
        render(tmp_path, TASK, "da", "half", {"x": 1})


@pytest.mark.parametrize("lang", ["de", "sv", "xx"])
def test_unknown_language_does_not_fall_back(lang: str) -> None:
    with pytest.raises(TemplateError, match=r"language .*available: da, en"):
        render(template_root(), TASK, lang, "orientation-finance", context("finance", "da"))


@pytest.mark.parametrize(("task", "lang", "template"), [
    ("../etc", "da", "x"), (TASK, "../da", "x"), (TASK, "da", "../en/orientation-finance"),
    (TASK, "da", "_base"), ("", "da", "x"),
])
def test_path_like_names_are_refused(task: str, lang: str, template: str) -> None:
    with pytest.raises(TemplateError, match="invalid"):
        render(template_root(), task, lang, template, {})


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write_template(tmp_path, "broken", "Emne", text="ok\n{% if x %}\nno end\n")
    with pytest.raises(TemplateError, match=r"broken\.txt, line \d+: syntax error"):
        render(tmp_path, TASK, "da", "broken", {"x": 1})


def test_template_that_is_not_utf8_is_a_template_error(tmp_path: Path) -> None:
    write_template(tmp_path, "latin", "Emne")
    (tmp_path / TASK / "da" / "latin.txt").write_bytes("Kære\n".encode("latin-1"))
    with pytest.raises(TemplateError, match="not UTF-8"):
        render(tmp_path, TASK, "da", "latin", {"x": 1})


def test_subject_and_txt_are_not_html_escaped(tmp_path: Path) -> None:
    write_template(tmp_path, "amp", "{{ x }}")
    rendered = render(tmp_path, TASK, "da", "amp", {"x": "A & B <c>"})
    assert rendered.subject == "A & B <c>"
    assert rendered.text == "t A & B <c>\n"
    assert rendered.html == "<p>A &amp; B &lt;c&gt;</p>\n"


SIMPLE = RenderedMail(subject="Emne med æøå", text="Kære Søren\n", html="<p>Kære Søren</p>\n")


@pytest.mark.parametrize("field", ["sender_name", "to_name", "sender_address", "to_address"])
@pytest.mark.parametrize("bad", ["x\r\nBcc: evil@example.org", "x\ny", "x\rY"])
def test_build_email_refuses_line_breaks_in_addresses_and_names(field: str, bad: str) -> None:
    kwargs: dict[str, object] = {"sender_name": "A", "sender_address": "a@aeroe.dk",
                                 "to_name": "B", "to_address": "b@aeroe.dk"}
    kwargs[field] = bad
    with pytest.raises(TemplateError, match="control characters"):
        build_email(SIMPLE, message_id="<1@aeroe.dk>", date=NOW, **kwargs)  # type: ignore[arg-type]


def test_build_email_refuses_line_break_in_subject_built_by_hand() -> None:
    bad = RenderedMail(subject="Hej\r\nBcc: evil@example.org", text="t", html="h")
    with pytest.raises(TemplateError, match="Subject"):
        send_and_parse(bad)


@pytest.mark.parametrize("headers", [
    {"In-Reply-To": "<a@b>\r\nBcc: evil@example.org"},
    {"X-Task\r\nBcc": "x"},
    {"Bcc": "evil@example.org"},
    {"cc": "evil@example.org"},
    {"From": "evil@example.org"},
    {"message-id": "<x@y>"},
])
def test_build_email_refuses_unsafe_extra_headers(headers: dict[str, str]) -> None:
    with pytest.raises(TemplateError):
        send_and_parse(SIMPLE, extra_headers=headers)


@pytest.mark.parametrize("message_id", ["abc@aeroe.dk", "<abc>", "<a b@c>", "<a@b>\r\nX: y", ""])
def test_build_email_refuses_malformed_message_id(message_id: str) -> None:
    with pytest.raises(TemplateError, match="Message-ID"):
        build_email(SIMPLE, sender_name="A", sender_address="a@aeroe.dk", to_name="B",
                    to_address="b@aeroe.dk", message_id=message_id, date=NOW)


@pytest.mark.parametrize("address", ["not-an-address", "søren@aeroe.dk", "a@b@c.dk"])
def test_build_email_refuses_invalid_address(address: str) -> None:
    with pytest.raises(TemplateError, match="address"):
        build_email(SIMPLE, sender_name="A", sender_address="a@aeroe.dk", to_name="B",
                    to_address=address, message_id="<1@aeroe.dk>", date=NOW)


def test_build_email_requires_an_aware_date() -> None:
    with pytest.raises(ValueError, match="timezone"):
        build_email(SIMPLE, sender_name="A", sender_address="a@aeroe.dk", to_name="B",
                    to_address="b@aeroe.dk", message_id="<1@aeroe.dk>",
                    date=datetime(2026, 3, 2, 9, 30))


def test_reply_to_and_threading_headers_are_set() -> None:
    _, parsed = send_and_parse(SIMPLE, reply_to="kp-opgaver@aeroe.dk",
                               extra_headers={"In-Reply-To": "<orig@eg.dk>",
                                              "References": "<orig@eg.dk>",
                                              "X-Mailtracker-Task": "efaktura-8b"})
    assert parsed["Reply-To"].addresses[0].addr_spec == "kp-opgaver@aeroe.dk"
    assert parsed["In-Reply-To"] == "<orig@eg.dk>"
    assert parsed["References"] == "<orig@eg.dk>"
    assert parsed["X-Mailtracker-Task"] == "efaktura-8b"
    assert parsed["Subject"] == "Emne med æøå"


def test_attachment_makes_mixed_around_the_alternative() -> None:
    ics = b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
    raw, parsed = send_and_parse(
        SIMPLE, attachments=[("invitation.ics", "text/calendar; method=REQUEST", ics)])
    assert raw.isascii()
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, attachment = parsed.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert attachment.get_content_type() == "text/calendar"
    assert attachment.get_param("method") == "REQUEST"
    assert attachment.get_filename() == "invitation.ics"
    assert attachment.get_payload(decode=True) == ics
    text, html = bodies(parsed)
    assert text == "Kære Søren\n" and "Kære Søren" in html


def test_attachment_with_bad_mime_type_is_refused() -> None:
    with pytest.raises(TemplateError, match="MIME"):
        send_and_parse(SIMPLE, attachments=[("a.bin", "nonsense", b"x")])


def test_date_header_keeps_the_given_offset() -> None:
    _, parsed = send_and_parse(SIMPLE)
    assert parsed["Date"] == "Mon, 02 Mar 2026 09:30:00 +0100"
    assert parsed["Date"].datetime.astimezone(UTC) == datetime(2026, 3, 2, 8, 30, tzinfo=UTC)


def test_message_ids_are_unique_and_well_formed() -> None:
    ids = {make_message_id("Aeroe.DK") for _ in range(200)}
    assert len(ids) == 200
    for mid in ids:
        assert mid.startswith("<") and mid.endswith("@aeroe.dk>")
        assert len(mid.split("@")[0]) - 1 >= 32  # 128 random bits in hex


def test_message_id_with_a_given_token() -> None:
    assert make_message_id("aeroe.dk", token="notify.7f3a") == "<notify.7f3a@aeroe.dk>"


@pytest.mark.parametrize(("domain", "token"), [
    ("aeroe.dk>\r\nX: y", None), ("", None), ("bad domain.dk", None),
    ("aeroe.dk", "a b"), ("aeroe.dk", "a@b"), ("aeroe.dk", "a\nb"), ("aeroe.dk", ""),
])
def test_message_id_refuses_unsafe_parts(domain: str, token: str | None) -> None:
    with pytest.raises(InvalidInputError):
        make_message_id(domain, token=token)


def test_template_root_is_the_repository_templates_in_a_checkout() -> None:
    root = template_root()
    assert (root / TASK / "da" / "_base.html").is_file()


def _stdlib_build(rendered: RenderedMail, *, sender_name: str, to_name: str,
                  reply_to: str | None = None, extra: dict[str, str] | None = None,
                  attachments: list[tuple[str, str, bytes]] | None = None) -> EmailMessage:
    """The message as build_email made it with the email package's own calls, before it
    reused parsed headers and encodings: the reference its output must equal byte for byte
    (address headers: in meaning)."""
    from email.header import Header
    from email.headerregistry import Address
    from email.utils import format_datetime

    from mailtracker import __version__

    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(display_name=sender_name, addr_spec="bkj@aeroe.dk")
    msg["To"] = Address(display_name=to_name, addr_spec="soeren@aeroe.dk")
    if reply_to is not None:
        msg["Reply-To"] = Address(display_name="", addr_spec=reply_to)
    if rendered.subject.isascii():
        msg["Subject"] = rendered.subject
    else:
        msg.set_raw("Subject", Header(rendered.subject, "utf-8", maxlinelen=78,
                                      header_name="Subject").encode(linesep="\n"))
    msg["Date"] = format_datetime(NOW)
    msg["Message-ID"] = "<abc123@aeroe.dk>"
    msg["X-Mailer"] = f"mailtracker {__version__}"
    for name, value in (extra or {}).items():
        msg[name] = value
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for filename, mime_type, data in attachments or []:
        kind, _, param = mime_type.partition(";")
        maintype, _, subtype = kind.partition("/")
        params = dict([param.strip().split("=", 1)]) if param else {}
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename,
                           params=params)
    return msg


def _fixed_boundaries(msg: EmailMessage) -> bytes:
    for i, part in enumerate(p for p in msg.walk() if p.is_multipart()):
        part.set_boundary(f"b{i}")
    return msg.as_bytes(policy=policy.SMTP)


LONG_SUBJECT = ("Påmindelse: eFaktura til KP – serviceaftale fra Ejerkredsen og EG til "
                "underskrift hos aftaleadministratoren i Ærø, Æbeltoft og Øster Højst "
                "(ØS Indsigt) – svar ønskes")


@pytest.mark.parametrize("rendered", [
    SIMPLE,
    RenderedMail(subject="ASCII only", text="plain\n", html="<p>plain</p>\n"),
    RenderedMail(subject=LONG_SUBJECT,
                 text="Kære Søren\n\n.dot first\nFrom the start\ntrailing blank \n"
                      + "ÆØÅ æøå " * 30 + "\n" + "x" * 200 + "\n\ttab\n",
                 html="<p>Kære Søren &amp; Åse</p>\n<p>" + "ø" * 120 + "</p>\n"),
    RenderedMail(subject="=?utf-8?q?not_an_encoded_word?= æ", text="no final newline",
                 html=""),
])
@pytest.mark.parametrize("variant", ["plain", "reply-to+extra", "attachment"])
def test_build_email_equals_the_email_packages_own_build(rendered: RenderedMail,
                                                         variant: str) -> None:
    kwargs: dict[str, object] = {}
    if variant == "reply-to+extra":
        kwargs = {"reply_to": "kp-opgaver@aeroe.dk",
                  "extra": {"In-Reply-To": "<orig@eg.dk>", "X-Mailtracker-Task": "efaktura-8b"}}
    elif variant == "attachment":
        kwargs = {"attachments": [("invitation.ics", "text/calendar; method=REQUEST",
                                   b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n")]}
    expected = _stdlib_build(rendered, sender_name="Birgitte Kjær", to_name="Hansen, Bjørn",
                             **kwargs)  # type: ignore[arg-type]
    for _ in range(2):  # the second build reuses the cached headers and encodings
        got = build_email(
            rendered, sender_name="Birgitte Kjær", sender_address="bkj@aeroe.dk",
            to_name="Hansen, Bjørn", to_address="soeren@aeroe.dk",
            message_id="<abc123@aeroe.dk>", date=NOW,
            reply_to=kwargs.get("reply_to"),  # type: ignore[arg-type]
            extra_headers=kwargs.get("extra"),  # type: ignore[arg-type]
            attachments=kwargs.get("attachments", ()))  # type: ignore[arg-type]
        got_raw, expected_raw = _fixed_boundaries(got), _fixed_boundaries(expected)
        # Address headers are written raw (formataddr), the rest exactly as the email
        # package writes them: the same people, the same bytes elsewhere.
        assert _addresses(got_raw) == _addresses(expected_raw)
        assert _without_address_lines(got_raw) == _without_address_lines(expected_raw)


def _addresses(raw: bytes) -> dict[str, list[tuple[str, str]]]:
    import email

    msg = email.message_from_bytes(raw, policy=policy.default)
    return {name: [(a.display_name, a.addr_spec) for a in msg[name].addresses]
            for name in ("From", "To", "Reply-To") if msg[name] is not None}


def _without_address_lines(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].lower() in (b"from", b"to", b"reply-to")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


@pytest.mark.parametrize("subject", [
    "eFaktura til KP: EG sender serviceaftale til underskrift (ØS Indsigt)", LONG_SUBJECT,
    "Æ", "ø" * 100, "æ ø  å   (dobbelt mellemrum)", "Re: Påmindelse – “citat” € ✓",
])
def test_subject_decodes_to_the_rendered_text_on_every_build(subject: str) -> None:
    rendered = RenderedMail(subject=subject, text="t\n", html="<p>t</p>\n")
    for _ in range(3):
        raw, parsed = send_and_parse(rendered)
        header_block = raw.split(b"\r\n\r\n", 1)[0]
        assert header_block.isascii()
        assert all(len(line) <= 78 for line in header_block.split(b"\r\n"))
        assert parsed["Subject"] == subject


def test_cached_sender_header_is_not_changed_by_one_message() -> None:
    first = build_email(SIMPLE, sender_name="Birgitte Kjær", sender_address="bkj@aeroe.dk",
                        to_name="A", to_address="a@aeroe.dk", message_id="<1@aeroe.dk>",
                        date=NOW)
    first.replace_header("From", "Someone Else <else@aeroe.dk>")
    del first["X-Mailer"]
    first.get_payload()[0].set_param("charset", "us-ascii")  # type: ignore[index, union-attr]
    second = build_email(SIMPLE, sender_name="Birgitte Kjær", sender_address="bkj@aeroe.dk",
                         to_name="A", to_address="a@aeroe.dk", message_id="<2@aeroe.dk>",
                         date=NOW)
    assert str(second["From"]) == "Birgitte Kjær <bkj@aeroe.dk>"
    assert second["X-Mailer"].startswith("mailtracker ")
    assert second.get_payload()[0]["Content-Type"] == 'text/plain; charset="utf-8"'  # type: ignore[index]


def test_a_body_quoting_the_boundary_cannot_end_its_part() -> None:
    # The alternative's boundary is fixed per process; quoted-printable keeps it out of
    # the bodies (a literal "=" is written "=3D").
    from mailtracker.outbound.render import _BOUNDARY

    evil = f"før\n--{_BOUNDARY}\nContent-Type: text/html\n\n<b>x</b>\n--{_BOUNDARY}--\nefter\n"
    rendered = RenderedMail(subject="Grænse", text=evil, html=f"<pre>{evil}</pre>\n")
    raw, parsed = send_and_parse(rendered)
    assert raw.count(f"--{_BOUNDARY}\r\n".encode()) == 2
    text, html = bodies(parsed)
    assert text == evil and html == f"<pre>{evil}</pre>\n"


def test_the_unsafe_character_class_is_exactly_cc_zl_zp() -> None:
    import unicodedata

    from mailtracker.outbound.render import _unsafe_chars

    for code in [*range(0x3000), 0xFEFF, 0xFFFD, 0x1F600, 0xE0001, 0x10FFFF]:
        c = chr(code)
        assert bool(_unsafe_chars(c)) == (unicodedata.category(c) in {"Cc", "Zl", "Zp"}), code


@pytest.mark.parametrize("to_name", [
    "Åse Ærø-Østergaard Kristiansen-Bjørnholm, Økonomi- og Indkøbsafdelingen, Ærø Kommune",
    "Karen Pedersen, KP-systemansvarlig for eFaktura og ØS Indsigt i Ærø og Æbeltoft Kommune",
    'Bo "B" Hansen (IT) <it>', "ø" * 90,
])
def test_long_and_odd_names_are_folded_and_decode_to_the_name(to_name: str) -> None:
    raw, parsed = send_and_parse(SIMPLE, to_name=to_name)
    header_block = raw.split(b"\r\n\r\n", 1)[0]
    assert header_block.isascii()
    assert all(len(line) <= 78 for line in header_block.split(b"\r\n"))
    (to,) = parsed["To"].addresses  # one person, whatever commas the name holds
    assert to.addr_spec == "soeren@aeroe.dk"
    value = re.sub(rb"\r\n(?=[ \t])", b"", header_block).split(b"\r\nTo: ", 1)[1]
    phrase = value.split(b"\r\n", 1)[0].decode("ascii").removesuffix(" <soeren@aeroe.dk>")
    if "=?" in phrase:
        # Adjacent encoded words join without a gap (RFC 2047, 6.2), as mail clients read
        # them; Python's address parser puts a space between them.
        assert str(make_header(decode_header(phrase))) == to_name
    else:
        assert to.display_name == to_name


def test_the_signature_never_names_the_municipality_twice() -> None:
    ctx = orientation_context(
        recipient_name="Søren Ærø-Åse", recipient_email="soeren@aeroe.dk",
        role="system_owner", role_label=LABELS["da"]["system_owner"], lang="da",
        organisation="Ærø Kommune", sender_name="KP-systemansvarlig, Ærø Kommune",
        sender_email="kp@aeroe.dk", task_title=TITLE["da"])
    text = render(template_root(), TASK, "da", "orientation-system_owner", ctx).text
    signature = text.split("Med venlig hilsen\n", 1)[1].split("\n\n", 1)[0]
    assert signature.splitlines() == ["KP-systemansvarlig, Ærø Kommune", "kp@aeroe.dk"]
    owner = render(template_root(), TASK, "da", "orientation-system_owner",
                   context("system_owner", "da")).text
    signed = owner.split("Med venlig hilsen\n", 1)[1].split("\n\n", 1)[0]
    assert signed.splitlines() == ["Kåre Lønborg", "KP-systemansvarlig, Ærø Kommune",
                                   "bkj@aeroe.dk"]


def test_role_labels_read_right_inside_a_sentence() -> None:
    from mailtracker.outbound.render import role_in_text

    assert role_in_text("Aftaleadministrator") == "aftaleadministrator"
    assert role_in_text("Systemansvarlig for kommunens bogføringssystem") == (
        "systemansvarlig for kommunens bogføringssystem")
    assert role_in_text("ØiR-koordinator") == "ØiR-koordinator"
    assert role_in_text("KP-systemansvarlig") == "KP-systemansvarlig"
