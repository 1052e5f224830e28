"""``mailtracker demo``: the whole loop in one process, through the production code paths.

The demo builds a workspace (config, store, throwaway CA), starts the embedded submission
and IMAP servers on loopback, adds a fictional recipient per role, sends the orientation mail
with the real notify pipeline (aiosmtplib, STARTTLS, verified TLS, AUTH), lets the world
answer (a reply, an out-of-office auto-reply, a bounce for a mistyped address, EG's
agreement, guide and webinar invitation, one spoofed "EG" mail), polls the inbox with the
real poller (imapclient, implicit TLS), and checks the final state against what the task's
rules must give. :func:`run_demo` is the entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mailtracker.app import App, open_app
from mailtracker.demo.checks import Expected, check_final_state
from mailtracker.demo.mails import (
    DEMO_DOMAIN,
    TEAMS_LINK,
    Inbound,
    auto_reply,
    eg_agreement,
    eg_guide,
    eg_webinar,
    read_original,
    reply,
    spoofed_agreement,
    webinar_start,
)
from mailtracker.demo.mailstore import MailStore
from mailtracker.demo.narrate import Narrator
from mailtracker.demo.servers import DemoServers, DemoTls, make_demo_ca
from mailtracker.demo.smtpd import MX_HOST, deliver_local
from mailtracker.dossier.model import build_dossier
from mailtracker.dossier.page import render_html, write_html
from mailtracker.errors import DemoFailedError, InvalidInputError
from mailtracker.inbound.poller import run_poll
from mailtracker.outbound.notify import NotifyOptions, run_notify
from mailtracker.recipients import add_recipient, validate_recipient
from mailtracker.settings.trustcheck import trust_warnings
from mailtracker.task.report import TaskReport, build_report, to_json

PASSWORD_ENV = "MAILTRACKER_DEMO_PASSWORD"  # noqa: S105 (the name of a variable)
ORGANISATION = "Demo Kommune"


@dataclass(frozen=True)
class Person:
    role: str
    name: str
    email: str
    part: str  # what they do in the story: sender, reply, auto_reply, silent, bounce


#: The cast. The finance address is mistyped (the real mailbox is oekonomi@), so it bounces;
#: finance is an optional role, so the task still reaches "fuldført".
CAST = (
    Person("kp_owner", "Karen Østergaard", f"kp-systemansvarlig@{DEMO_DOMAIN}", "sender"),
    Person("system_owner", "Søren Ærø-Åberg", f"soeren.aeroe@{DEMO_DOMAIN}", "reply"),
    Person("agreement_admin", "Bjørn Kjærgård", f"bjoern.kjaergaard@{DEMO_DOMAIN}",
           "auto_reply"),
    Person("oeir_coordinator", "Åse Mølgaard", f"aase.moelgaard@{DEMO_DOMAIN}", "silent"),
    Person("finance", "Økonomiafdelingen", f"okonomi@{DEMO_DOMAIN}", "bounce"),
)
EXISTING_MAILBOXES = (*(p.email for p in CAST if p.part != "bounce"), f"oekonomi@{DEMO_DOMAIN}")


def _person(part: str) -> Person:
    return next(p for p in CAST if p.part == part)


@dataclass
class DemoResult:
    """``ok``: the final state is the expected one; ``status``: the ``status --json``
    document; ``lines``: everything printed."""

    ok: bool
    status: dict[str, Any]
    workdir: Path
    lines: list[str] = field(default_factory=list)


class DemoStateError(DemoFailedError):
    """The demo ran, but its final state is not the expected one (``result`` says how)."""

    def __init__(self, message: str, result: DemoResult):
        self.result = result
        super().__init__(message)


def run_demo(workdir: Path | None, keep: bool, lang: str,
             out: Callable[[str], None]) -> DemoResult:
    """Run the demo, printing each line through ``out``.

    ``workdir``: where to build the workspace (must be missing or empty; it is kept), or
    None for a temporary directory, removed at the end unless ``keep``. ``lang``: the
    recipients' language (``da``/``en``). Returns the result when the final state is the
    expected one; otherwise raises :class:`DemoStateError` (a ``DemoFailedError``) after
    printing which expectation failed.
    """
    if lang not in ("da", "en"):
        raise InvalidInputError(f"unknown language {lang!r} (use da or en)")
    root = _prepare(workdir)
    narrator = Narrator(out)
    try:
        with _poll_log_quiet():
            result = _run(root, lang, narrator)
    finally:
        if workdir is None and not keep:
            shutil.rmtree(root, ignore_errors=True)
    if workdir is None and not keep:
        narrator.say(f"The workspace {root} was removed; run with --keep DIR to keep it.")
    result.lines = narrator.lines
    if not result.ok:
        raise DemoStateError("the demo did not reach the expected final state (see above)",
                             result)
    return result


@contextlib.contextmanager
def _poll_log_quiet() -> Iterator[None]:
    """The narration shows each change; the poller's INFO lines would repeat them on stderr.
    With ``--debug`` (DEBUG level) they stay."""
    logger = logging.getLogger("mailtracker.poll")
    level = logger.level
    if logger.getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _prepare(workdir: Path | None) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="mailtracker-demo-"))
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise InvalidInputError(f"{workdir} exists and is not an empty directory; "
                                "give a new path to --keep")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir.resolve()


def _run(root: Path, lang: str, say: Narrator) -> DemoResult:
    tls = make_demo_ca(root / "tls")
    password = secrets.token_urlsafe(18)
    store = _mailboxes(password)
    with DemoServers(store, tls) as servers:
        config_path = write_config(root, servers, tls, lang)
        app = open_app(config_path, {PASSWORD_ENV: password})
        say.workspace(root, config_path, servers, tls)
        _add_recipients(app, lang)
        say.recipients(app)
        sent = asyncio.run(run_notify(app, NotifyOptions()))
        sent_dir = _write_sent(root / "sent", servers)
        say.sent(sent, sent_dir, servers.smtp_handler.bounced)
        answers = _answers(store, lang)
        for inbound in answers:
            _arrive(store, inbound)
        say.arrived(3, "Colleagues answer", answers)
        poll1 = run_poll(app)
        outside = OutsideMail.build(datetime.now().astimezone())
        for inbound in outside.in_order:
            _arrive(store, inbound)
        say.arrived(4, "Mail from outside arrives in the KP owner's inbox", outside.in_order)
        poll2 = run_poll(app)
        poll3 = run_poll(app)
        say.polls([poll1, poll2, poll3])
    report = _report(app)
    status = to_json(report)
    _dump_mailboxes(root / "mailboxes", store)
    _write_dossier(app, root / "report.html")
    say.say(f"The KLIK dossier of this state: {root / 'report.html'} (open it in a browser; "
            "'mailtracker report --pdf' prints it as a PDF)")
    say.outcome(report, root, [m.message_id for m in (*answers, *outside.in_order)])
    expected = Expected(
        agreement_id=outside.agreement.message_id, guide_id=outside.guide.message_id,
        webinar_id=outside.webinar.message_id, spoof_id=outside.spoof.message_id,
        webinar_start=webinar_start(outside.now), join_url=TEAMS_LINK,
        replied=_person("reply").email, auto_replied=_person("auto_reply").email,
        bounced=_person("bounce").email, last_poll_changes=len(poll3.changes),
        last_poll_scanned=poll3.scanned)
    checks = check_final_state(status, [q.message_id for q in report.quarantine], expected)
    say.checks(checks)
    return DemoResult(ok=all(ok for _text, ok in checks), status=status, workdir=root)


def _mailboxes(password: str) -> MailStore:
    """The demo MX's mailboxes; only the KP owner's password is ever used (SMTP and IMAP)."""
    store = MailStore()
    for address in EXISTING_MAILBOXES:
        owner = address == _person("sender").email
        store.add_account(address, password if owner else secrets.token_urlsafe(18))
    return store


def write_config(root: Path, servers: DemoServers, tls: DemoTls, lang: str) -> Path:
    """The workspace's config file (mode 0600). Passwords are named, never written."""
    owner = _person("sender")
    sections: dict[str, dict[str, Any]] = {
        "organisation": {"name": ORGANISATION},
        "task": {"definition": "efaktura-8b", "language": lang},
        "store": {"path": "mailtracker.json"},
        "smtp": {"host": "127.0.0.1", "port": servers.smtp_port, "tls": "starttls",
                 "username": owner.email, "password_env": PASSWORD_ENV,
                 "ca_file": str(tls.ca_file), "from_address": owner.email,
                 "from_name": owner.name, "timeout": 10,
                 "retries": 1, "retry_delay": 0.2},
        "imap": {"host": "127.0.0.1", "port": servers.imap_port, "tls": "implicit",
                 "username": owner.email, "password_env": PASSWORD_ENV,
                 "ca_file": str(tls.ca_file), "folder": "INBOX", "timeout": 10},
        "trust": {"authserv_id": MX_HOST, "sender_auth": "dmarc"},
    }
    lines = ["# Written by 'mailtracker demo'. The servers it names ran only during the demo;",
             f"# their password came from ${PASSWORD_ENV}, set for that run only.", ""]
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value, ensure_ascii=False)}"
                  for key, value in table.items()]
        lines.append("")
    path = root / "config" / "mailtracker.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _add_recipients(app: App, lang: str) -> None:
    for person in CAST:
        add_recipient(app.store, validate_recipient(
            app.task, role=person.role, name=person.name, email=person.email, lang=lang,
            now=app.now()))


def _write_sent(directory: Path, servers: DemoServers) -> Path:
    """Each message as the submission server received it, one .eml per recipient."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, (rcpts, raw) in enumerate(servers.smtp_handler.accepted, 1):
        name = rcpts[0].replace("@", "_at_").replace("/", "_")
        (directory / f"{number:02d}-orientation-{name}.eml").write_bytes(raw)
    return directory


def _answers(store: MailStore, lang: str) -> list[Inbound]:
    """The reply and the out-of-office answer, each to the orientation its author got."""
    now = datetime.now().astimezone()
    out = []
    for part, build in (("reply", reply), ("auto_reply", auto_reply)):
        person = _person(part)
        received = store.messages(person.email)
        if received:  # nothing arrives if notify failed; the checks will say so
            out.append(build(read_original(received[0]), (person.name, person.email), lang,
                             now))
    return out


@dataclass(frozen=True)
class OutsideMail:
    """What arrives from outside: EG's three mails and the spoof, built at ``now``."""

    now: datetime
    spoof: Inbound
    agreement: Inbound
    guide: Inbound
    webinar: Inbound

    @classmethod
    def build(cls, now: datetime) -> OutsideMail:
        owner = _person("sender")
        to = (owner.name, owner.email)
        return cls(now, spoofed_agreement(to, now), eg_agreement(to, ORGANISATION, now),
                   eg_guide(to, now), eg_webinar(to, now))

    @property
    def in_order(self) -> list[Inbound]:
        """The spoof first: if it were ever applied, the agreement milestone would name it."""
        return [self.spoof, self.agreement, self.guide, self.webinar]


def _arrive(store: MailStore, inbound: Inbound) -> None:
    """File an answer or outside mail in the KP owner's inbox, as the demo MX does."""
    protocol = "ESMTPS" if inbound.auth_results is not None else "ESMTPSA"
    deliver_local(store, _person("sender").email, inbound.raw, mail_from=inbound.mail_from,
                  peer=inbound.peer, protocol=protocol, auth_results=inbound.auth_results)


def _report(app: App) -> TaskReport:
    return build_report(app.task, app.store.snapshot(), organisation=app.settings.organisation,
                        now=app.now(), warnings=trust_warnings(app.settings))


def _write_dossier(app: App, path: Path) -> None:
    """The dossier a KP system owner would file, made from the demo's state."""
    dossier = build_dossier(app.task, app.store.snapshot(),
                            organisation=app.settings.organisation, now=app.now(),
                            lang=app.settings.language, state_file=app.store.path)
    write_html(path, render_html(dossier, app.task.followups.calendar.tz))


def _dump_mailboxes(directory: Path, store: MailStore) -> None:
    """Every demo mailbox as .eml files, for a look after ``--keep``."""
    for account in store.accounts():
        for folder in account.folders.values():
            target = directory / account.address / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for message in folder.messages:
                (target / f"{message.uid:03d}.eml").write_bytes(message.raw)

