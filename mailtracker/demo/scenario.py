"""``mailtracker demo``: the whole loop in one process, through the production code paths.

The demo builds a workspace (config, store, throwaway CA), starts a submission server
(aiosmtpd) on loopback and the mailboxes it files into: a real unprivileged Dovecot when one
is installed, else mailboxes in memory (see :mod:`mailtracker.demo.mailbox`). It adds a
fictional recipient per role, sends the orientation mail with the real notify pipeline
(aiosmtplib, STARTTLS, verified TLS, AUTH), lets the world answer (a reply, an out-of-office
auto-reply, a bounce for a mistyped address, EG's agreement, guide and webinar invitation,
one spoofed "EG" mail), polls the inbox with the real poller (over IMAP with implicit TLS,
or the in-memory mailbox behind the same interface), and checks the final state against
what the task's rules must give. :func:`run_demo` is the entry point.
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
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mailtracker.app import App, open_app
from mailtracker.demo.checks import Expected, check_final_state
from mailtracker.demo.dovecot import DovecotMailboxes, find_dovecot
from mailtracker.demo.mailbox import DemoMailboxes, MemoryMailboxes
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
from mailtracker.demo.narrate import Narrator
from mailtracker.demo.servers import DemoTls, SubmissionServer, make_demo_ca
from mailtracker.demo.smtpd import MX_HOST, deliver_local
from mailtracker.dossier.model import build_dossier
from mailtracker.dossier.page import render_html, write_html
from mailtracker.errors import DemoFailedError, InvalidInputError, MissingExtraError
from mailtracker.inbound.poller import run_poll
from mailtracker.outbound.notify import NotifyOptions, run_notify
from mailtracker.recipients import add_recipient, validate_recipient
from mailtracker.settings.trustcheck import trust_warnings
from mailtracker.task.report import TaskReport, build_report, to_json

PASSWORD_ENV = "MAILTRACKER_DEMO_PASSWORD"  # noqa: S105 (the name of a variable)
ORGANISATION = "Demo Kommune"
MAILBOX_MODES = ("auto", "memory", "dovecot")


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


def run_demo(workdir: Path | None, keep: bool, lang: str, out: Callable[[str], None],
             mailbox: str = "auto") -> DemoResult:
    """Run the demo, printing each line through ``out``.

    ``workdir``: where to build the workspace (must be missing or empty; it is kept), or
    None for a temporary directory, removed at the end unless ``keep``. ``lang``: the
    recipients' language (``da``/``en``). ``mailbox``: ``dovecot`` (a real IMAP server),
    ``memory`` (no IMAP), or ``auto``: Dovecot when installed. Returns the result when the
    final state is the expected one; otherwise raises :class:`DemoStateError` (a
    ``DemoFailedError``) after printing which expectation failed.
    """
    if lang not in ("da", "en"):
        raise InvalidInputError(f"unknown language {lang!r} (use da or en)")
    if mailbox not in MAILBOX_MODES:
        raise InvalidInputError(f"unknown mailbox {mailbox!r} (use auto, memory or dovecot)")
    if mailbox == "dovecot" and find_dovecot() is None:
        raise MissingExtraError("--mailbox dovecot: no dovecot (with its dovecot-lda) on PATH; "
                                "install it (Debian: apt-get install dovecot-imapd, into "
                                "/usr/sbin) and put it on PATH, or use --mailbox memory")
    root = _prepare(workdir)
    narrator = Narrator(out)
    try:
        with _poll_log_quiet():
            result = _run(root, lang, narrator, mailbox,
                          kept=workdir is not None or keep)
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


def _run(root: Path, lang: str, say: Narrator, mode: str, *, kept: bool = True
         ) -> DemoResult:
    tls = make_demo_ca(root / "tls")
    password = secrets.token_urlsafe(18)
    owner = _person("sender").email
    # Only the KP owner's password is ever used (SMTP and IMAP); the others guard mailboxes
    # the demo reads back for its dump.
    accounts = {a: password if a == owner else secrets.token_urlsafe(18)
                for a in EXISTING_MAILBOXES}
    with _mailboxes(mode, accounts, tls) as mailboxes, \
            SubmissionServer(mailboxes, {owner: password}, tls) as smtp:
        config_path = write_config(root, smtp.port, mailboxes, tls, lang)
        app = open_app(config_path, {PASSWORD_ENV: password})
        say.workspace(root, config_path, smtp.port, mailboxes.description, tls)
        _add_recipients(app, lang)
        say.recipients(app)
        sent = asyncio.run(run_notify(app, NotifyOptions()))
        sent_dir = _write_sent(root / "sent", smtp)
        say.sent(sent, sent_dir, smtp.handler.bounced)
        answers = _answers(mailboxes, lang)
        for inbound in answers:
            _arrive(mailboxes, inbound)
        say.arrived(3, "Colleagues answer", answers)
        connect = mailboxes.poll_connect()
        poll1 = run_poll(app, connect=connect)
        outside = OutsideMail.build(datetime.now().astimezone())
        for inbound in outside.in_order:
            _arrive(mailboxes, inbound)
        say.arrived(4, "Mail from outside arrives in the KP owner's inbox", outside.in_order)
        poll2 = run_poll(app, connect=connect)
        poll3 = run_poll(app, connect=connect)
        say.polls([poll1, poll2, poll3])
        _dump_mailboxes(root / "mailboxes", mailboxes)
    report = _report(app)
    status = to_json(report)
    _write_dossier(app, root / "report.html")
    if kept:
        say.say(f"The KLIK dossier of this state: {root / 'report.html'} (open it in a "
                "browser; 'mailtracker report --pdf' prints it as a PDF)")
    else:
        say.say("The KLIK dossier of this state is written as report.html in the "
                "workspace: run with --keep DIR to keep it and open it in a browser")
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


@contextlib.contextmanager
def _mailboxes(mode: str, accounts: dict[str, str], tls: DemoTls
               ) -> Iterator[DemoMailboxes]:
    """The demo MX's mailboxes: a Dovecot of its own unless ``mode`` is memory, or (with
    ``auto``) none is installed or it does not start: then in memory, saying why."""
    owner = _person("sender").email
    programs = find_dovecot() if mode != "memory" else None
    if programs is None:
        why = "" if mode == "memory" else "no dovecot on PATH"
        yield MemoryMailboxes(accounts, owner, why)
        return
    try:
        dovecot = DovecotMailboxes(accounts, owner, tls, programs)
        dovecot.start()
    except DemoFailedError as exc:
        if mode == "dovecot":
            raise DemoFailedError(f"{exc}; --mailbox memory runs the demo without it") from None
        yield MemoryMailboxes(accounts, owner, str(exc))
        return
    try:
        yield dovecot
    finally:
        dovecot.stop()


def write_config(root: Path, smtp_port: int, mailboxes: DemoMailboxes, tls: DemoTls,
                 lang: str) -> Path:
    """The workspace's config file (mode 0600). Passwords are named, never written."""
    owner = _person("sender")
    imap: dict[str, Any] = {"host": "127.0.0.1", "tls": "implicit", "ca_file": str(tls.ca_file)}
    imap.update(mailboxes.imap_config())
    sections: dict[str, dict[str, Any]] = {
        "organisation": {"name": ORGANISATION},
        "task": {"definition": "efaktura-8b", "language": lang},
        "store": {"path": "mailtracker.json"},
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "starttls",
                 "username": owner.email, "password_env": PASSWORD_ENV,
                 "ca_file": str(tls.ca_file), "from_address": owner.email,
                 "from_name": owner.name, "timeout": 10,
                 "retries": 1, "retry_delay": 0.2},
        "imap": {**imap, "username": owner.email, "password_env": PASSWORD_ENV,
                 "folder": "INBOX", "timeout": 10},
        "trust": {"authserv_id": MX_HOST, "sender_auth": "dmarc"},
    }
    lines = ["# Written by 'mailtracker demo'. The servers it names ran only during the demo;",
             f"# their password came from ${PASSWORD_ENV}, set for that run only.",
             f"# The mailbox: {mailboxes.description}.", ""]
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


def _write_sent(directory: Path, smtp: SubmissionServer) -> Path:
    """Each message as the submission server received it, one .eml per recipient."""
    directory.mkdir(parents=True, exist_ok=True)
    for number, (rcpts, raw) in enumerate(smtp.handler.accepted, 1):
        name = rcpts[0].replace("@", "_at_").replace("/", "_")
        (directory / f"{number:02d}-orientation-{name}.eml").write_bytes(raw)
    return directory


def _inbox(mailboxes: DemoMailboxes, address: str) -> list[tuple[int, bytes]]:
    """``(uid, message)`` of everything in ``address``'s INBOX, read as the poller reads."""
    with closing(mailboxes.open(address)) as box:
        box.select("INBOX")
        return sorted(box.fetch_full_many(box.uids_after(0)).items())


def _answers(mailboxes: DemoMailboxes, lang: str) -> list[Inbound]:
    """The reply and the out-of-office answer, each to the orientation its author got."""
    now = datetime.now().astimezone()
    out = []
    for part, build in (("reply", reply), ("auto_reply", auto_reply)):
        person = _person(part)
        received = _inbox(mailboxes, person.email)
        if received:  # nothing arrives if notify failed; the checks will say so
            out.append(build(read_original(received[0][1]), (person.name, person.email), lang,
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


def _arrive(mailboxes: DemoMailboxes, inbound: Inbound) -> None:
    """File an answer or outside mail in the KP owner's inbox, as the demo MX does."""
    protocol = "ESMTPS" if inbound.auth_results is not None else "ESMTPSA"
    deliver_local(mailboxes, _person("sender").email, inbound.raw, mail_from=inbound.mail_from,
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


def _dump_mailboxes(directory: Path, mailboxes: DemoMailboxes) -> None:
    """Every demo mailbox's INBOX as .eml files (named by UID), for a look after ``--keep``."""
    for address in EXISTING_MAILBOXES:
        messages = _inbox(mailboxes, address)
        target = directory / address / "INBOX"
        target.mkdir(parents=True, exist_ok=True)
        for uid, raw in messages:
            (target / f"{uid:03d}.eml").write_bytes(raw)
