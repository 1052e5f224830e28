"""Render a task's mail templates and build the MIME message. Pure: reads template files only.

Layout: ``<templates_root>/<task>/<lang>/``. A template name ``T`` (for example
``orientation-system_owner``) is three files:

- ``T.subject.txt`` — the subject, one line (stripped; control characters refused);
- ``T.txt`` — the plain-text body;
- ``T.html`` — the HTML body (the only autoescaped kind).

Files whose names start with ``_`` (``_base.txt``, ``_base.html``) are shared layouts that
the bodies extend. Later templates (reminders, event mails) use the same three-file layout.

Context variables of the orientation templates (``orientation_context`` builds them all):

=================== ==================================================================
``recipient_name``  display name as registered, e.g. ``Hansen, Bjørn``
``recipient_email`` the recipient's address
``first_name``      for the greeting: ``Hansen, Bjørn`` → ``Bjørn``
``role``            role key, e.g. ``system_owner``
``role_in_text``    the label as it reads in a sentence (small first letter unless an acronym)
``role_label``      the role's label in the mail's language
``organisation``    the municipality, used in the text and the sign-off
``sender_name``     the configured sender (``[smtp] from_name``)
``signer_name``     who signs: the KP system owner when registered ("Pedersen, Karen" signs
                    "Karen Pedersen"), else ``sender_name``
``signer_line``     the signer's title and organisation, or '' (never the organisation twice)
``sender_email``    the sender's address (shown under the sign-off)
``task_title``      the KLIK task title in the mail's language
``kp_owner_name``   the KP system owner to ask questions, or ``None``
``kp_owner_email``  their address, or ``None``
``recipients``      for the KP owner's copy: list of ``{name, email, role_label}``; may be empty
``milestones``      what has happened so far: milestone key → ``{label, date}`` (the date as
                    the mail's language writes it), e.g. ``"service_agreement_signed" in
                    milestones`` turns "please sign" into "it is signed"; may be empty
``lang``            ``"da"`` or ``"en"`` (``render`` sets it from its ``lang`` argument)
``subject``         the rendered subject (``render`` adds it for the two bodies)
=================== ==================================================================

A variable a template uses but the context lacks is a ``TemplateError``, never an empty string.
"""

from __future__ import annotations

import functools
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import errors as email_errors
from email import policy, quoprimime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from types import TracebackType

import jinja2

from mailtracker import __version__
from mailtracker.addresses import first_name as _first_name
from mailtracker.addresses import natural_name as _natural_name
from mailtracker.errors import InvalidInputError, TemplateError
from mailtracker.resources import data_dir

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LANG_RE = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?$")
_ATEXT_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}$")
_MSGID_RE = re.compile(r"^<[!-;=?-~]+@[!-;=?-~]+>$")  # printable ASCII without '<', '>'
_FIELD_NAME_RE = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
# Recipients come only from To: a Cc/Bcc slipped in through extra headers would make the SMTP
# layer (which derives the envelope from the headers) mail people nobody registered.
_FORBIDDEN_EXTRA = {"cc", "bcc", "sender", "mime-version", "content-type",
                    "content-transfer-encoding", "content-disposition"}


@dataclass(frozen=True)
class RenderedMail:
    """One rendered mail: subject (a safe single line), plain text and HTML bodies."""

    subject: str
    text: str
    html: str


def template_root() -> Path:
    """The packaged ``templates`` directory (inside the wheel, or the checkout's ``templates/``)."""
    return data_dir("templates")


def render(templates_root: Path, task: str, lang: str, template: str,
           context: Mapping[str, object]) -> RenderedMail:
    """Render ``template`` of ``task`` in ``lang`` with ``context``.

    Raises ``TemplateError`` (naming the template) for an unknown task, language or template,
    a missing file, a syntax error, a variable the context lacks, or a subject that is empty
    or contains control characters. There is no fallback to another language.
    """
    label = f"{task}/{lang}/{template}"
    for what, value, pattern in (("task", task, _NAME_RE), ("language", lang, _LANG_RE),
                                 ("template name", template, _NAME_RE)):
        if not pattern.match(value) or ".." in value:
            raise TemplateError(f"invalid {what} {value!r}", template=label)
    directory = templates_root / task / lang
    if not directory.is_dir():
        raise TemplateError(f"no templates for language {lang!r} in {templates_root / task} "
                            f"(available: {_available_langs(templates_root / task)})",
                            template=label)
    env = _environment(directory)
    ctx = {**context, "lang": lang}
    subject = _render_file(env, directory, f"{template}.subject.txt", ctx, label).strip()
    _check_subject(subject, label)
    ctx["subject"] = subject
    text = _tidy_text(_render_file(env, directory, f"{template}.txt", ctx, label))
    html = _render_file(env, directory, f"{template}.html", ctx, label)
    return RenderedMail(subject=subject, text=text, html=html)


def role_in_text(label: str) -> str:
    """A role label as it reads inside a sentence: "Aftaleadministrator" → "aftaleadministrator",
    but "ØiR-koordinator" and "KP-systemansvarlig" keep their capitals."""
    first = re.split(r"[\s-]", label, maxsplit=1)[0]
    if first[1:] != first[1:].lower():
        return label
    return label[:1].lower() + label[1:]


_KP_OWNER_TITLE = {"da": "KP-systemansvarlig", "en": "KP system owner"}


def orientation_context(*, recipient_name: str, recipient_email: str, role: str,
                        role_label: str, lang: str, organisation: str, sender_name: str,
                        sender_email: str, task_title: str, kp_owner_name: str | None = None,
                        kp_owner_email: str | None = None,
                        recipients: Sequence[tuple[str, str, str]] = (),
                        greeting: str | None = None,
                        milestones: Mapping[str, Mapping[str, str]] | None = None,
                        ) -> dict[str, object]:
    """The context the orientation templates expect (see the module docstring).

    ``recipients`` lists ``(name, email, role_label)`` of the people oriented, for the KP
    owner's copy.
    """
    return {
        "recipient_name": recipient_name,
        "recipient_email": recipient_email,
        "first_name": greeting or _first_name(recipient_name),
        # A person signs: the KP system owner when registered, else the configured sender.
        "signer_name": _natural_name(kp_owner_name) if kp_owner_name else sender_name,
        "signer_line": (f"{_KP_OWNER_TITLE.get(lang, _KP_OWNER_TITLE['en'])}, {organisation}"
                        if kp_owner_name else
                        "" if organisation.lower() in sender_name.lower() else organisation),
        "role": role,
        "role_label": role_label,
        "role_in_text": role_in_text(role_label),
        "lang": lang,
        "organisation": organisation,
        "sender_name": sender_name,
        "sender_email": sender_email,
        "task_title": task_title,
        "kp_owner_name": _natural_name(kp_owner_name) if kp_owner_name else None,
        "kp_owner_email": kp_owner_email,
        "recipients": [{"name": n, "email": e, "role_label": r} for n, e, r in recipients],
        "milestones": dict(milestones or {}),
    }


@functools.lru_cache(maxsize=32)
def _environment(directory: Path) -> jinja2.Environment:
    # One per directory, so each template is compiled once per process, not once per mail;
    # Jinja2 still reloads a template whose file changed (auto_reload).
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory, encoding="utf-8"),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",),
                                            default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _available_langs(task_dir: Path) -> str:
    try:
        langs = sorted(p.name for p in task_dir.iterdir() if p.is_dir())
    except OSError:
        langs = []
    return ", ".join(langs) or "none"


def _render_file(env: jinja2.Environment, directory: Path, name: str,
                 context: Mapping[str, object], label: str) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(f"template file {exc.name} not found in {directory}",
                            template=label) from None
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.name or name}, line {exc.lineno}"
        raise TemplateError(f"{where}: syntax error: {exc.message}", template=label) from None
    except jinja2.UndefinedError as exc:
        where = _template_frame(exc.__traceback__, directory) or name
        raise TemplateError(f"{where}: undefined variable: {exc.message}",
                            template=label) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{name}: {exc}", template=label) from None
    except UnicodeDecodeError:
        raise TemplateError(f"{name} is not UTF-8", template=label) from None
    except OSError as exc:
        raise TemplateError(f"cannot read {name}: {exc.strerror}", template=label) from None


def _template_frame(tb: TracebackType | None, directory: Path) -> str | None:
    """``file, line n`` of the innermost template frame: the error may sit in ``_base``."""
    found = None
    prefix = str(directory)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(prefix):
            found = f"{Path(filename).name}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


# Unicode's Cc (C0 controls, DEL, C1 controls), Zl (U+2028) and Zp (U+2029).
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _unsafe_chars(value: str) -> list[str]:
    """Characters that could end or bend a header line: C0/C1 controls, U+2028, U+2029."""
    found: list[str] = _UNSAFE_RE.findall(value)
    return found


def _check_subject(subject: str, label: str) -> None:
    if not subject:
        raise TemplateError("the rendered subject is empty", template=label)
    bad = _unsafe_chars(subject)
    if bad:
        raise TemplateError(f"the rendered subject contains control characters {bad!r} "
                            "(a variable with a line break?)", template=label)


def _tidy_text(text: str) -> str:
    """Trailing blanks off each line, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return tidy.strip("\n") + "\n"


def build_email(rendered: RenderedMail, *, sender_name: str, sender_address: str,
                to_name: str, to_address: str, message_id: str, date: datetime,
                reply_to: str | None = None, extra_headers: Mapping[str, str] | None = None,
                attachments: Sequence[tuple[str, str, bytes]] = ()) -> EmailMessage:
    """A ready-to-send message: multipart/alternative (text, HTML), UTF-8, quoted-printable.

    Names are RFC 2047-encoded as needed. ``date`` must be timezone-aware. ``attachments``
    are ``(filename, mime type, data)``; ``mime type`` may carry parameters, e.g.
    ``text/calendar; method=REQUEST``. With attachments the message is multipart/mixed
    around the alternative. Raises ``TemplateError`` for a header value with CR, LF or
    another control character, an invalid address or Message-ID, or an extra header that
    would add recipients or replace one set here.
    """
    msg = EmailMessage(policy=_POLICY)
    # set_raw: the headers are parsed already, and each is set once on a fresh message.
    for name, value in _main_headers(rendered, sender_name=sender_name,
                                     sender_address=sender_address, to_name=to_name,
                                     to_address=to_address, message_id=message_id, date=date,
                                     reply_to=reply_to):
        msg.set_raw(name, value)
    for name, value in (extra_headers or {}).items():
        if not _FIELD_NAME_RE.match(name):
            raise TemplateError(f"invalid header name {name!r}")
        if name.lower() in _FORBIDDEN_EXTRA or name in msg:
            raise TemplateError(f"header {name} cannot be set as an extra header")
        msg[name] = _header_value(name, value)
    _set_alternative(msg, rendered.text, rendered.html)
    for filename, mime_type, data in attachments:
        _attach(msg, filename, mime_type, data)
    return msg


def _main_headers(rendered: RenderedMail, *, sender_name: str, sender_address: str,
                  to_name: str, to_address: str, message_id: str, date: datetime,
                  reply_to: str | None = None) -> list[tuple[str, str]]:
    """From … X-Mailer, validated and parsed, in the order they are written."""
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    headers = [("From", _address("From", sender_name, sender_address)),
               ("To", _address("To", to_name, to_address))]
    if reply_to is not None:
        headers.append(("Reply-To", _address("Reply-To", "", reply_to)))
    subject = _header_value("Subject", rendered.subject)
    headers.append(("Subject", _subject_header(subject)))
    headers.append(("Date", _parsed_header("Date", format_datetime(date))))  # same per second
    if not _MSGID_RE.match(message_id):
        raise TemplateError(f"Message-ID must look like <left@right>: {message_id!r}")
    headers.append(("Message-ID", _POLICY.header_factory("Message-ID", message_id)))
    headers.append(("X-Mailer", _parsed_header("X-Mailer", f"mailtracker {__version__}")))
    return headers


# Parsing a header value is most of the cost of building a message (the email package makes
# a class and a parse tree per header), and most values recur in every mail of a run: the
# sender, the subject, the parts' Content-Type. Parsed headers are immutable, so each such
# value is parsed once and the same object is put into every message.
_POLICY = policy.SMTP
_MAX_LINE = 78  # no header line longer (RFC 5322), so the generator writes ours as they are


@functools.lru_cache(maxsize=64)
def _parsed_header(name: str, value: str) -> str:
    """``value`` parsed as header ``name``, to be stored as is (``msg.set_raw``)."""
    header: str = _POLICY.header_factory(name, value)
    return header


def _set_alternative(msg: EmailMessage, text: str, html: str) -> None:
    """Make ``msg`` multipart/alternative (plain text, HTML), UTF-8, quoted-printable.

    The same message, byte for byte, as ``msg.set_content(text, subtype="plain",
    charset="utf-8", cte="quoted-printable")`` followed by ``msg.add_alternative(html, …)``
    (tests/test_render.py compares them), without re-parsing the same Content-Type headers
    for every mail. As with those calls, the HTML part carries its own MIME-Version.
    """
    parts: list[EmailMessage] = []
    for subtype, body in (("plain", text), ("html", html)):
        part = EmailMessage(policy=_POLICY)
        part.set_raw("Content-Type",
                     _parsed_header("Content-Type", f'text/{subtype}; charset="utf-8"'))
        part.set_raw("Content-Transfer-Encoding",
                     _parsed_header("Content-Transfer-Encoding", "quoted-printable"))
        part.set_payload(_quoted_printable(body))
        parts.append(part)
    parts[1].set_raw("MIME-Version", _parsed_header("MIME-Version", "1.0"))
    msg.set_raw("MIME-Version", _parsed_header("MIME-Version", "1.0"))
    msg.set_raw("Content-Type", _alternative_type())
    for part in parts:
        msg.attach(part)


def _alternative_type() -> str:
    return _parsed_header("Content-Type", f'multipart/alternative; boundary="{_BOUNDARY}"')


# The alternative's boundary, chosen once per process like the generator chooses one per
# message (which costs a regex compiled for every mail). It cannot occur in the parts: a
# boundary line would be "--" followed by "==", and quoted-printable never writes two "="
# in a row (a literal "=" is "=3D"); nor does base64 (attachments) write "-".
_BOUNDARY = "=" * 15 + f"{secrets.randbelow(sys.maxsize):019d}" + "=="


def _quoted_printable(body: str) -> str:
    """``body`` as UTF-8 quoted-printable, exactly as ``email.contentmanager`` encodes it."""
    data = b"\n".join(body.encode("utf-8").splitlines()) + b"\n"
    return quoprimime.body_encode(data.decode("latin-1"), _POLICY.max_line_length or _MAX_LINE)


def _header_value(header: str, value: str) -> str:
    bad = _unsafe_chars(value)
    if bad:
        raise TemplateError(f"{header} header value contains control characters {bad!r}")
    return value


def _subject_header(subject: str) -> str:
    """The Subject header for ``subject``, decoding to exactly ``subject``.

    Python 3.11's folder, breaking a line just before an encoded word, leaves the space at the
    end of the line and adds the folding space, so "underskrift (ØS Indsigt)" arrives with two
    spaces. ``Header`` encodes the whole value as correctly folded encoded words instead,
    stored raw (a plain string is written as it is).
    """
    if subject.isascii():
        return _parsed_header("Subject", subject)
    return _encoded_subject(subject)


@functools.lru_cache(maxsize=64)
def _encoded_subject(subject: str) -> str:
    # ``Header`` measures the encoded length character by character (~0.3 ms per subject);
    # every recipient of a template gets the same subject, so encode each one once.
    return _encoded_words(subject, "Subject")


def _encoded_words(text: str, header: str) -> str:
    """``text`` as UTF-8 encoded words folded for ``header`` (lines joined by "\\n ")."""
    encoded: str = Header(text, "utf-8", maxlinelen=_MAX_LINE,
                          header_name=header).encode(linesep="\n")
    return encoded


def _address(header: str, name: str, address: str) -> str:
    """The text of ``header`` for ``name <address>``; raises ``TemplateError`` if invalid."""
    _header_value(header, name)
    _header_value(header, address)
    if not address.isascii():
        raise TemplateError(f"{header} address must be ASCII: {address!r}")
    return _address_header(header, name, address)


@functools.lru_cache(maxsize=256)
def _address_header(header: str, name: str, address: str) -> str:
    """``name <address>`` as the header's text, stored raw and written as it is (parsing
    each recipient's header with the registry was the dearest step of building a mail).

    A short ASCII name is a plain or quoted phrase (``formataddr``); any other is encoded
    words folded by ``Header`` (a comma inside an encoded word is no separator, and adjacent
    encoded words decode without a gap), the address on the last line or a line of its own,
    so no line exceeds 78 characters and the generator never refolds it: its refolding of
    a long name splits "Hansen, Bjørn …" into two addresses and adds spaces.
    """
    try:
        result = Address(display_name=name, addr_spec=address)
    except (ValueError, IndexError, email_errors.HeaderParseError) as exc:
        raise TemplateError(f"invalid {header} address {address!r}: {exc}") from None
    if not result.domain:
        raise TemplateError(f"invalid {header} address {address!r}: no domain")
    addr = result.addr_spec
    plain = formataddr((name, addr))
    if not name or (name.isascii() and "=?" not in name
                    and len(header) + 2 + len(plain) <= _MAX_LINE):
        return plain
    encoded = _encoded_words(name, header)
    last = encoded.rsplit("\n", 1)[-1] if "\n" in encoded else f"{header}: {encoded}"
    gap = " " if len(last) + 2 + len(addr) + 1 <= _MAX_LINE else "\n "
    return f"{encoded}{gap}<{addr}>"


def _attach(msg: EmailMessage, filename: str, mime_type: str, data: bytes) -> None:
    _header_value("attachment filename", filename)
    kind, *raw_params = (part.strip() for part in mime_type.split(";"))
    maintype, _, subtype = kind.partition("/")
    if not (_FIELD_NAME_RE.match(maintype) and _FIELD_NAME_RE.match(subtype)):
        raise TemplateError(f"invalid attachment MIME type {mime_type!r}")
    params: dict[str, str] = {}
    for raw in raw_params:
        key, sep, value = raw.partition("=")
        if not sep or not _FIELD_NAME_RE.match(key.strip()):
            raise TemplateError(f"invalid attachment MIME parameter {raw!r}")
        params[key.strip()] = _header_value("attachment MIME parameter", value.strip().strip('"'))
    msg.add_attachment(data, maintype=maintype.lower(), subtype=subtype.lower(),
                       filename=filename, params=params)


def make_message_id(domain: str, *, token: str | None = None) -> str:
    """A new RFC 5322 Message-ID ``<left@domain>``; ``left`` is 128 random bits unless given.

    Raises ``InvalidInputError`` for a domain or token that cannot appear in a Message-ID.
    """
    domain = domain.strip().lower().rstrip(".")
    if not _DOMAIN_RE.match(domain):
        raise InvalidInputError(f"not a valid domain for a Message-ID: {domain!r}")
    left = secrets.token_hex(16) if token is None else token
    if not _ATEXT_RE.match(left):
        raise InvalidInputError(f"not a valid Message-ID token: {left!r}")
    return f"<{left}@{domain}>"
