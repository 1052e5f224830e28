"""``mailtracker check``: probe SMTP, IMAP and the state file; one finding per line, with a fix.

For each server: DNS, TCP, STARTTLS offered, TLS version and certificate, offered AUTH
mechanisms, login (through the same adapters ``notify`` and ``poll`` use), and for IMAP the
folder, the ``authserv_id`` seen in recent mail and the ``move_to`` folder. For the store: the
directory is writable, the state file parses, its lock is free.

Each probe is independent: when one fails, the probes that need it are reported as skipped
(``"skip"``) instead of failing again, and the other server is still checked. What a server
shows before login comes from ``tlsprobe`` (which never sends a password); what recent mail
says about ``authserv_id`` from ``authserv``.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from mailtracker.app import App
from mailtracker.check.authserv import judge_authserv
from mailtracker.check.tlsprobe import (
    Kind,
    Probe,
    explain_rejection,
    probe,
    read_cert,
    unverified_cert,
)
from mailtracker.errors import (
    ImapAuthError,
    ImapError,
    ImapFolderError,
    OAuth2Error,
    SecretError,
    SmtpAuthError,
    SmtpError,
    StoreError,
    StoreLockedError,
)
from mailtracker.inbound import imap
from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mailbox import FolderState
from mailtracker.outbound.smtp import SmtpSession
from mailtracker.settings.config import ImapSettings, SecretSource, SmtpSettings
from mailtracker.settings.secrets import Section, fetch_token, resolve_password, token_renewer
from mailtracker.store import Store

Status = Literal["ok", "fail", "warn", "skip"]

RECENT_MESSAGES = 20  # how many of the newest messages the authserv_id check reads
EXPIRY_WARN_DAYS = 14
LOCK_WAIT = 1.0  # seconds a normal write may hold the store's lock before it counts as held

_SYMBOL: Mapping[Status, str] = {"ok": "✓", "fail": "✗", "warn": "!", "skip": "-"}
_LABEL = {"password": "password", "token": "OAuth2 token", "dns": "DNS", "tcp": "TCP",
          "starttls": "STARTTLS",
          "tls": "TLS", "auth": "auth mechanisms", "login": "login", "folder": "folder",
          "authserv_id": "authserv_id", "move_to": "move_to folder", "config": "config",
          "directory": "directory", "state_file": "state file", "journal": "journal",
          "lock": "lock", "permissions": "permissions", "mailbox": "mailbox"}
_PORTS = {"smtp": '587 with tls = "starttls", 465 with tls = "implicit"',
          "imap": '993 with tls = "implicit", 143 with tls = "starttls"'}


@dataclass(frozen=True)
class CheckResult:
    """One finding. ``fix`` is what to try (empty when nothing needs doing)."""

    group: str  # "smtp", "imap" or "store"
    name: str  # stable key: "dns", "tcp", "starttls", "tls", "auth", "login", "folder", …
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class CheckReport:
    checks: tuple[CheckResult, ...]
    titles: tuple[tuple[str, str], ...]  # (group, heading such as "SMTP smtp.x.dk:587")

    @property
    def ok(self) -> bool:
        """False if any check failed (warnings and skips do not count)."""
        return not any(c.status == "fail" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """``{"ok", "groups": {group: heading}, "checks": [{group, name, status, detail,
        fix}]}``, ready for ``json.dumps``."""
        return {"ok": self.ok, "groups": dict(self.titles),
                "checks": [asdict(c) for c in self.checks]}


async def run_check(app: App, *, now: datetime) -> CheckReport:
    """Run every probe and collect the findings; never raises for what it finds.

    ``now`` (aware) is the reference for certificate expiry. Blocking probes (DNS, TCP, TLS,
    IMAP) run inline: nothing else runs on the event loop during a check.
    """
    graph = app.settings.graph
    groups = [*([] if graph and graph.send else [await _smtp_group(app, now)]),
              *([] if graph and graph.read else [await _imap_group(app, now)]),
              *([_graph_group(app, now)] if graph else []), _store_group(app.store)]
    return CheckReport(tuple(r for g in groups for r in g.results),
                       tuple((g.key, g.title) for g in groups))


def _graph_group(app: App, now: datetime) -> _Group:
    from mailtracker.check.graph import graph_group  # imports httpx: only when configured

    return graph_group(app, now)


def format_check(report: CheckReport) -> str:
    """The report as text: a heading per group, one line per check, fixes beneath."""
    width = max((len(_LABEL.get(c.name, c.name)) for c in report.checks), default=0)
    lines: list[str] = []
    for group, title in report.titles:
        lines.append(title)
        for c in (c for c in report.checks if c.group == group):
            lines.append(f"  {_SYMBOL[c.status]} {_LABEL.get(c.name, c.name):<{width}}  "
                         f"{c.detail}")
            if c.fix and c.status != "ok":
                lines.append(f"    {'':<{width}}  fix: {c.fix}")
        lines.append("")
    counts = Counter(c.status for c in report.checks)
    if report.ok:
        warned = f", {counts['warn']} warning(s)" if counts["warn"] else ""
        lines.append(f"No problems found ({len(report.checks)} checks{warned}).")
    else:
        lines.append(f"{counts['fail']} problem(s) (✗), {counts['warn']} warning(s) (!), "
                     f"{counts['skip']} skipped, {len(report.checks)} checks: fix the ✗ lines "
                     "from the top and run 'mailtracker check' again.")
    return "\n".join(lines)


class _Group:
    """Findings of one group; ``blocker`` names the failed step later probes needed."""

    def __init__(self, key: str, title: str) -> None:
        self.key, self.title = key, title
        self.results: list[CheckResult] = []
        self.blocker = ""
        self.secret = ""  # masked wherever it would appear, should a server ever echo it

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> None:
        detail, fix = _one_line(detail), _one_line(fix)
        if len(self.secret) >= 4:
            detail, fix = (t.replace(self.secret, "********") for t in (detail, fix))
        self.results.append(CheckResult(self.key, name, status, detail, fix))

    def block(self, needs: str, names: Iterable[str]) -> None:
        self.blocker = self.blocker or needs
        for name in names:
            self.add(name, "skip", f"skipped: needs {self.blocker}")


def _one_line(text: str) -> str:
    """Server text made safe for one output line (no CR/LF or other controls)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _not_configured(key: str, title: str, effect: str) -> _Group:
    g = _Group(key, title)
    g.add("config", "warn", f"not configured (no [{key}] section): {effect}",
          f"add an [{key}] section; 'mailtracker init' writes an example")
    return g


# --------------------------------------------------------------------------- passwords


def _password(g: _Group, section: str, source: SecretSource, username: str | None,
              environ: Mapping[str, str]) -> tuple[bool, str | None]:
    """Resolve the password, adding a "password" line; (usable, password)."""
    if not (source.password_env or source.password_command or source.keyring):
        if username is None:
            g.add("password", "ok", "none needed (no username set)")
            return True, None
        g.add("password", "fail", "no password source configured",
              f"set password_env (or password_command, or keyring = true) in [{section}]")
        return False, None
    try:
        password = resolve_password(source, environ, section=section, username=username)
    except SecretError as exc:
        g.add("password", "fail", str(exc), _secret_fix(source))
        return False, None
    g.secret = password or ""
    g.add("password", "ok", f"from {_secret_text(source)} (not shown)")
    return True, password


# Exchange Online's resource: a token for another (e.g. Microsoft Graph) is refused there.
_EXCHANGE_HOSTS = ("outlook.office365.com", "smtp.office365.com", "outlook.office.com")
_EXCHANGE_AUDIENCES = {"https://outlook.office365.com", "https://outlook.office.com",
                       "00000002-0000-0ff1-ce00-000000000000"}


def _credential(g: _Group, app: App, section: Section, s: SmtpSettings | ImapSettings,
                now: datetime) -> tuple[bool, str | None]:
    """The "password" line, or for ``auth = "oauth2"`` the "token" line; (usable, secret)."""
    if s.auth != "oauth2":
        return _password(g, section, s.secret, s.username, app.environ)
    try:
        token = fetch_token(app.settings, section, app.environ)
    except (SecretError, OAuth2Error) as exc:
        g.add("token", "fail", str(exc), "see docs/oauth2.md; 'mailtracker login' fetches a "
                                         "token and says what the identity provider answered")
        return False, None
    g.secret = token.value
    detail = f"{token.describe(now)} (the token itself is not shown)"
    if token.account and s.username and token.account.lower() != s.username.lower():
        g.add("token", "warn", detail, f"the token is for {token.account} but [{section}] "
              f"username is {s.username!r}: sign in as that mailbox ('mailtracker login')")
    elif (s.host.lower() in _EXCHANGE_HOSTS and token.audience
          and token.audience.lower() not in _EXCHANGE_AUDIENCES):
        g.add("token", "warn", detail, "Exchange Online only takes tokens for "
              "https://outlook.office365.com: set [oauth2] scopes accordingly")
    else:
        g.add("token", "ok", detail)
    return True, token.value


def _secret_text(source: SecretSource) -> str:
    if source.password_env:
        return f"${source.password_env}"
    return "password_command" if source.password_command else "the keyring"


def _secret_fix(source: SecretSource) -> str:
    if source.password_env:
        return f"set {source.password_env} in the environment mailtracker runs in"
    if source.password_command:
        return "run the password_command yourself and fix what it complains about"
    return "store the password in the keyring (see the message for the account)"


def _login_fix(section: str, username: str | None, source: SecretSource, auth: str) -> str:
    if auth == "oauth2":
        permission = "SMTP.SendAsApp" if section == "smtp" else "IMAP.AccessAsApp"
        return (f"[{section}] username ({username!r}) must be the mailbox; in Microsoft 365 "
                f"the app needs {permission} with admin consent, a service principal in "
                "Exchange Online and Add-MailboxPermission on that mailbox (docs/oauth2.md)")
    return (f"check [{section}] username ({username!r}) and the password in "
            f"{_secret_text(source)}")


# --------------------------------------------------------------------------- SMTP


async def _smtp_group(app: App, now: datetime) -> _Group:
    s = app.settings.smtp
    if s is None:
        return _not_configured("smtp", "SMTP", "'notify' cannot send mail")
    g = _Group("smtp", f"SMTP {s.host}:{s.port}")
    usable, password = _credential(g, app, "smtp", s, now)
    talk = await _reach(g, "smtp", s, now)
    if talk is None:
        g.block("TLS", ["auth", "login"])
        return g
    _smtp_auth(g, s, talk.mechanisms)
    if not usable:
        g.block("the token" if s.auth == "oauth2" else "the password", ["login"])
        return g
    try:
        async with SmtpSession(s, password, renew=token_renewer(app.settings, "smtp",
                                                                app.environ)):
            pass
    except SmtpAuthError as exc:
        g.add("login", "fail", str(exc), _login_fix("smtp", s.username, s.secret, s.auth))
    except SmtpError as exc:
        g.add("login", "fail", str(exc))
    else:
        g.add("login", "ok", f"logged in as {s.username!r}" if s.username
              else "connected (no username set, so no login)")
    return g


def _smtp_auth(g: _Group, s: SmtpSettings, mechanisms: Sequence[str]) -> None:
    offered = " ".join(mechanisms) or "none"
    usable = {"XOAUTH2"} if s.auth == "oauth2" else {"PLAIN", "LOGIN", "CRAM-MD5"}
    if s.username is None or usable & set(mechanisms):
        g.add("auth", "ok", f"offered: {offered}")
    elif not mechanisms:
        g.add("auth", "fail", "the server offers no AUTH (after TLS)",
              "is this the submission port (587 or 465)? Port 25 usually offers no login")
    else:
        g.add("auth", "fail", f"offered: {offered}; none usable with auth = {s.auth!r}",
              'set auth = "oauth2"' if "XOAUTH2" in mechanisms else
              "ask the mail administrator to enable AUTH PLAIN or LOGIN over TLS")


# --------------------------------------------------------------------------- IMAP


async def _imap_group(app: App, now: datetime) -> _Group:
    s = app.settings.imap
    if s is None:
        return _not_configured("imap", "IMAP", "'poll' and 'watch' cannot read EG's mail")
    g = _Group("imap", f"IMAP {s.host}:{s.port}")
    mailbox_checks = ["folder", "authserv_id", *(["move_to"] if s.post_action == "move" else [])]
    usable, password = _credential(g, app, "imap", s, now)
    talk = await _reach(g, "imap", s, now)
    if talk is None:
        g.block("TLS", ["auth", "login", *mailbox_checks])
        return g
    _imap_auth(g, s, talk)
    if not usable or password is None:
        g.block("the token" if s.auth == "oauth2" else "the password",
                ["login", *mailbox_checks])
        return g
    try:
        mailbox = imap.connect(s, password, renew=token_renewer(app.settings, "imap",
                                                                app.environ))
    except ImapError as exc:
        fix = _login_fix("imap", s.username, s.secret, s.auth) if isinstance(
            exc, ImapAuthError) else ""
        g.add("login", "fail", str(exc), fix)
        g.block("login", mailbox_checks)
        return g
    with mailbox:
        g.add("login", "ok", f"logged in as {s.username!r}")
        _mailbox_checks(g, mailbox, s, app.settings.trust)
    return g


def _imap_auth(g: _Group, s: ImapSettings, talk: Probe) -> None:
    offered = " ".join(talk.mechanisms) or "none"
    if s.auth == "oauth2" and not {"XOAUTH2", "OAUTHBEARER"} & set(talk.mechanisms):
        g.add("auth", "fail", f"offered: {offered}; no XOAUTH2 or OAUTHBEARER for "
                              'auth = "oauth2"',
              'use auth = "password" if the server takes passwords')
    elif s.auth == "password" and talk.logindisabled and "PLAIN" not in talk.mechanisms:
        g.add("auth", "fail", f"offered: {offered}; the server refuses LOGIN (LOGINDISABLED)",
              'set tls = "implicit" (port 993) or "starttls" (port 143)')
    else:
        g.add("auth", "ok", f"offered: {offered}")


def _mailbox_checks(g: _Group, mailbox: imap.ImapMailbox, s: ImapSettings,
                    trust: TrustSettings) -> None:
    try:
        state = mailbox.select(s.folder)
    except ImapError as exc:
        g.add("folder", "fail", str(exc),
              f"check [imap] folder ({s.folder!r}): names are case-sensitive (except INBOX) "
              "and sub-folders use the server's separator, e.g. 'INBOX/EG' or 'INBOX.EG'")
        g.block("the folder", ["authserv_id"])
    else:
        g.add("folder", "ok", f"{s.folder!r}: {state.exists} messages, "
                              f"UIDVALIDITY {state.uidvalidity}")
        _authserv(g, mailbox, state, trust)
    if s.post_action == "move":
        try:
            mailbox.select(s.move_to)
        except ImapFolderError:
            g.add("move_to", "warn", f"{s.move_to!r} does not exist yet",
                  "nothing to do: it is created the first time a message is moved")
        except ImapError as exc:
            g.add("move_to", "fail", str(exc))
        else:
            g.add("move_to", "ok", f"{s.move_to!r} exists")


def _authserv(g: _Group, mailbox: imap.ImapMailbox, state: FolderState,
              trust: TrustSettings) -> None:
    if state.exists == 0:
        g.add("authserv_id", "warn", "the folder is empty: no mail to learn the authserv-id "
              "from", "run 'mailtracker check' again when some mail has arrived")
        return
    first = max(0, state.uidnext - RECENT_MESSAGES - 1) if state.uidnext else 0
    try:
        uids = mailbox.uids_after(first)[-RECENT_MESSAGES:]
        headers = [h.header_bytes for h in mailbox.fetch_headers(uids)]
    except ImapError as exc:
        g.add("authserv_id", "fail", str(exc))
        return
    g.add("authserv_id", *judge_authserv(trust, headers))


# --------------------------------------------------------------------------- DNS, TCP, TLS


async def _reach(g: _Group, kind: Kind, s: SmtpSettings | ImapSettings, now: datetime
                 ) -> Probe | None:
    """DNS, TCP, STARTTLS and TLS lines; what the server showed, or None if a step failed."""
    rest = ["tcp", *(["starttls"] if s.tls == "starttls" else []), "tls"]
    try:
        infos = socket.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        g.add("dns", "fail", f"cannot resolve {s.host}: {getattr(exc, 'strerror', exc)}",
              f"check the host name ([{kind}] host)")
        g.block("DNS", rest)
        return None
    g.add("dns", "ok", ", ".join(dict.fromkeys(str(info[4][0]) for info in infos)))
    where = f"{s.host}:{s.port}"
    try:
        with socket.create_connection((s.host, s.port), timeout=s.timeout):
            pass
    except OSError as exc:
        g.add("tcp", "fail", f"cannot connect to {where}: {_os_reason(exc, s.timeout)}",
              f"is the port right ({_PORTS[kind]}), or is a firewall in the way?")
        g.block("TCP", rest[1:])
        return None
    g.add("tcp", "ok", f"connected to {where}")
    return await _tls(g, kind, s, now)


def _os_reason(exc: OSError, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__


async def _tls(g: _Group, kind: Kind, s: SmtpSettings | ImapSettings, now: datetime
               ) -> Probe | None:
    try:
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        g.add("tls", "fail", f"cannot load ca_file {s.ca_file}: {_os_reason(exc, 0)}",
              "set ca_file to a PEM file holding the CA certificate")
        g.block("TLS", ["starttls"] if s.tls == "starttls" else [])
        return None
    seen = await probe(kind, s.host, s.port, s.tls, ctx, s.timeout)
    port_fix = f"is the port right for tls = {s.tls!r} ({_PORTS[kind]})?"
    problem: tuple[str, str] | None = None
    if isinstance(seen.error, ssl.SSLCertVerificationError):
        cert = read_cert(await unverified_cert(kind, s.host, s.port, s.tls, s.timeout))
        problem = explain_rejection(seen.error, s.host, s.ca_file, cert, now)
    elif isinstance(seen.error, ssl.SSLError):
        problem = f"TLS handshake failed: {seen.error.reason or seen.error}", port_fix
    elif isinstance(seen.error, OSError):
        problem = _os_reason(seen.error, s.timeout), port_fix
    elif seen.error is not None:
        problem = str(seen.error), port_fix
    if s.tls == "starttls" and not _starttls_line(g, kind, seen, problem):
        return None
    if problem is not None:
        g.add("tls", "fail", *problem)
        g.blocker = "TLS"
        return None
    if s.tls == "none":
        g.add("tls", "warn", 'not encrypted (tls = "none", allowed for loopback only)')
        return seen
    cert = read_cert(seen.cert_der)
    detail = f"{seen.version} ({seen.cipher}); " + (
        cert.describe(now) if cert else "certificate details unreadable")
    if cert is not None and cert.days_left(now) < EXPIRY_WARN_DAYS:
        g.add("tls", "warn", detail, "the server's administrator must renew the certificate "
                                     f"before {cert.not_after:%Y-%m-%d}")
    else:
        g.add("tls", "ok", detail)
    return seen


def _starttls_line(g: _Group, kind: Kind, seen: Probe, problem: tuple[str, str] | None
                   ) -> bool:
    """The STARTTLS line; False (TLS skipped) if the probe did not get through STARTTLS."""
    if seen.starttls_offered is None and problem is not None:
        g.add("starttls", "fail", *problem)
    elif not seen.starttls_offered:
        g.add("starttls", "fail", "the server does not offer STARTTLS",
              f"use the server's implicit-TLS port instead ({_PORTS[kind]})")
    else:
        g.add("starttls", "ok", "offered")
        return True
    g.block("STARTTLS", ["tls"])
    return False


# --------------------------------------------------------------------------- store


def _store_group(store: Store) -> _Group:
    path = store.path
    g = _Group("store", f"Store {path}")
    directory = path.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".mailtracker-check-", dir=directory)
    except OSError as exc:
        g.add("directory", "fail", f"cannot create a file in {directory}: "
                                   f"{exc.strerror or exc}",
              "create the directory and make it writable for the user mailtracker runs as, "
              "or set [store] path to a file in such a directory")
    else:
        os.close(fd)
        Path(probe).unlink()
        g.add("directory", "ok", f"{directory} is writable")
    if not path.exists() and not path.with_name(path.name + ".journal").exists():
        g.add("state_file", "ok", "not created yet (the first command that records "
                                  "something creates it)")
        g.add("lock", "ok", "free (no state file yet)")
        return g
    try:
        view = store.snapshot()
    except StoreError as exc:
        g.add("state_file", "fail", str(exc),
              "restore the file from a backup, or move it away to start afresh")
        g.block("a readable state file", ["lock"])
        return g
    g.add("state_file", "ok", f"schema version {view.schema_version()}, "
                              f"{len(view.recipients())} recipient(s)")
    for warning in store.warnings:
        g.add("journal", "warn", warning, "see README, 'Running unattended'")
    try:
        with Store(path, lock_timeout=LOCK_WAIT).transaction():
            pass  # nothing changes, so nothing is written
    except StoreLockedError:
        g.add("lock", "fail", f"held by another process for more than {LOCK_WAIT:g} s",
              f"wait for it to finish; if it never does, find it with: fuser {path}.lock")
    except StoreError as exc:
        g.add("lock", "fail", str(exc))
    else:
        g.add("lock", "ok", "free")
    return g
