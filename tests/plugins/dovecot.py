"""A real, throwaway Dovecot IMAP server on loopback for tests.

Fixtures:

* ``dovecot`` (session): one server for the whole test session. Give each test its own user
  (``add_user()`` with no arguments makes a fresh, unique one) instead of restarting Dovecot.
* ``imap_user`` (function): a fresh ``(user, password)`` on ``dovecot``.
* ``dovecot_factory`` (function): ``start(starttls=True, drop_capabilities=())`` starts an extra
  server for tests that need a different one: no STARTTLS offered (``ssl = no``; only
  ``port_starttls``, which then is a plain port, and ``port_tls`` is None) or without some
  capabilities such as ``IDLE`` or ``MOVE`` (the server still accepts those commands; it just
  does not announce them, which is what a client goes by). Stopped at teardown.
  ``start(oauth2_introspection_url=url)`` adds SASL XOAUTH2 and OAUTHBEARER (or only
  ``oauth2_mechanisms``) with an ``oauth2`` passdb that asks ``url`` (RFC 7662 introspection,
  e.g. ``fake_idp.introspection_url``) whether a token is active and whose it is; passwords
  keep working through the passwd-file passdb.

What a :class:`Dovecot` offers (``dovecot.host`` is always ``127.0.0.1``)::

    user, password = dovecot.add_user()                     # fresh empty mailbox
    uid = dovecot.append(user, raw_bytes, folder="INBOX", flags=(), date=None)   # IMAP APPEND
    dovecot.bulk_load(user, [raw, ...], folder="INBOX")     # Maildir files + force-resync
    dovecot.reset_uidvalidity(user, "INBOX")                # new UIDVALIDITY, UIDs from 1
    dovecot.flags(user, "INBOX") -> {uid: frozenset({"\\Seen", ...})}
    dovecot.list_folders(user) -> ["INBOX", "Behandlet/æøå", ...]
    dovecot.uids(user, "INBOX") -> [1, 2, ...]
    dovecot.password(user); dovecot.mailbox_dir(user, folder); dovecot.log_text()
    dovecot.imap_settings(user, tls="starttls", timeout=2) -> ImapSettings
    with dovecot.client(user) as c: ...                     # logged-in imapclient, test CA
    dovecot.doveadm("mailbox", "status", "-u", user, "messages", "INBOX")

The server listens on 127.0.0.1 only, on free high ports: ``port_starttls`` (plain IMAP with
STARTTLS) and ``port_tls`` (implicit TLS), with a certificate from the ``test_ca`` fixture.
The hierarchy separator is ``/``. The authentication failure delay and the brute-force penalty
are off, so a test of a wrong password does not slow down the next logins (a failed login
still takes ~0.5 s: Dovecot answers failures on a 500 ms timer). Mail is owned by the
unprivileged ``mail`` user (Dovecot refuses to run mail processes as root). Logs go to
``<root>/dovecot.log`` (``log_text()``); never to a pipe, which would hang a caller that
captures output.

Without ``/usr/sbin/dovecot`` (Debian ``dovecot-imapd``) or when not root the fixtures skip,
or fail when ``CI=true``. For a dead or cut link in front of a server, combine with the
``tcp_proxy`` fixture (tests/plugins/tcpproxy.py): ``tcp_proxy(dovecot.host, dovecot.port_tls)``
and ``imap_settings(user, port=proxy.port)``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imapclient
import pytest

from mailtracker.settings.config import ImapSettings, SecretSource

if TYPE_CHECKING:  # imported for real by pytest as a plugin; importing it here would
    from tests.plugins.tlsca import TestCA  # stop pytest from rewriting its asserts

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
START_TIMEOUT = 15.0
_user_counter = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require_dovecot() -> None:
    problem = None
    if not Path(DOVECOT).exists() or not Path(DOVEADM).exists():
        problem = f"Dovecot is not installed ({DOVECOT}); apt-get install dovecot-imapd"
    elif os.geteuid() != 0:
        problem = "the test Dovecot must run as root (it switches to the mail user)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = {name}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = {ssl}
{ssl_files}
auth_mechanisms = plain login
auth_failure_delay = 0
disable_plaintext_auth = no
# One file per user: a new user's file is read on first use (a single shared passwd-file is
# only re-read about once a second, so a just-added user could be refused).
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users/%u
}}
userdb {{
  driver = static
  args = home={root}/home/%u
}}
mail_location = maildir:~/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
first_valid_gid = 1
namespace inbox {{
  inbox = yes
  separator = /
}}
{capability}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port_starttls}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port_tls}
    ssl = yes
  }}
}}
# No brute-force penalty: without its socket the auth process skips the penalty lookups.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


class Dovecot:
    """A running Dovecot; see the module docstring."""

    host = "127.0.0.1"

    def __init__(self, ca: TestCA, *, starttls: bool = True, capability: str | None = None,
                 oauth2_introspection_url: str | None = None,
                 oauth2_mechanisms: Sequence[str] = ("xoauth2", "oauthbearer")):
        self.ca_file = ca.ca_file
        # Short path: unix sockets under base_dir must stay below 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="mtdc", dir="/tmp"))
        self.root.chmod(0o755)  # the mail user must reach its home below
        self.conf = self.root / "dovecot.conf"
        self.tls_offered = starttls
        self.port_starttls = free_port()
        self.port_tls: int | None = free_port() if starttls else None
        mail = pwd.getpwnam("mail")
        self._uid, self._gid = mail.pw_uid, mail.pw_gid
        self._passwords: dict[str, str] = {}
        for sub in ("users", "home"):
            (self.root / sub).mkdir()
        os.chown(self.root / "home", self._uid, self._gid)
        ssl_files = (f"ssl_cert = <{ca.cert_file}\nssl_key = <{ca.key_file}" if starttls else "")
        conf = _CONFIG.format(
            root=self.root, name=self.root.name, ssl="yes" if starttls else "no",
            ssl_files=ssl_files, uid=self._uid, gid=self._gid,
            capability=f"imap_capability = {capability}" if capability else "",
            port_starttls=self.port_starttls, port_tls=self.port_tls or 0,
        )
        if oauth2_introspection_url:
            conf = _with_oauth2(conf, self.root, oauth2_introspection_url, oauth2_mechanisms)
        self.conf.write_text(conf)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        with (self.root / "dovecot.out").open("wb") as out:
            self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.port_starttls, self.port_tls):
            if port is not None:
                self._wait_for_port(port, deadline)

    def _wait_for_port(self, port: int, deadline: float) -> None:
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._proc.returncode}:\n"
                                   + self.log_text())
            try:
                with socket.create_connection((self.host, port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dovecot did not listen on {port}:\n"
                                       + self.log_text()) from None
                time.sleep(0.02)  # poll interval while the master starts, not a timing fix

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        parts = []
        for name in ("dovecot.out", "dovecot.log"):
            with contextlib.suppress(OSError):
                parts.append((self.root / name).read_text(errors="replace"))
        return "".join(parts)

    def doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm -c <conf> ARGS``; raise with its stderr if it fails."""
        proc = subprocess.run([DOVEADM, "-c", str(self.conf), *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()}")
        return proc

    # -- users and mail ------------------------------------------------------------------

    def add_user(self, name: str | None = None, password: str | None = None
                 ) -> tuple[str, str]:
        """Create a user with an empty mailbox; returns ``(user, password)``."""
        user = name or f"user{next(_user_counter)}-{os.getpid()}"
        password = password or f"pw-{user}-1"
        if user in self._passwords or "/" in user or ":" in user:
            raise ValueError(f"user {user!r} exists already or is not a valid name")
        pw_file = self.root / "users" / user
        pw_file.write_text(f"{user}:{{PLAIN}}{password}\n", encoding="utf-8")
        pw_file.chmod(0o644)
        home = self.root / "home" / user
        home.mkdir()
        os.chown(home, self._uid, self._gid)
        self._passwords[user] = password
        return user, password

    def password(self, user: str) -> str:
        return self._passwords[user]

    @contextlib.contextmanager
    def client(self, user: str) -> Iterator[imapclient.IMAPClient]:
        """A logged-in imapclient connection for ``user`` (a second client, for checks)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.port_tls is not None:
            c = imapclient.IMAPClient(self.host, self.port_tls, ssl_context=ctx, timeout=30)
        else:
            c = imapclient.IMAPClient(self.host, self.port_starttls, ssl=False, timeout=30)
        try:
            password = self._passwords[user]
            if password.isascii():
                c.login(user, password)
            else:  # LOGIN is ASCII-only in imaplib; SASL PLAIN carries UTF-8
                c.plain_login(user, password)
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def append(self, user: str, raw: bytes, folder: str = "INBOX", flags: Sequence[str] = (),
               date: datetime | None = None) -> int:
        """IMAP APPEND one message; returns its UID. Creates ``folder`` if missing."""
        with self.client(user) as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            resp = c.append(folder, raw, flags=tuple(flags), msg_time=date)
        match = re.search(rb"APPENDUID \d+ (\d+)", resp)
        assert match, resp
        return int(match.group(1))

    def mailbox_dir(self, user: str, folder: str = "INBOX") -> Path:
        """The Maildir directory of ``folder`` (created, with its index, if missing)."""
        if folder != "INBOX":
            with self.client(user) as c:
                if not c.folder_exists(folder):
                    c.create_folder(folder)
        # STATUS makes Dovecot create INBOX's Maildir on first use.
        self.doveadm("mailbox", "status", "-u", user, "messages", folder)
        out = self.doveadm("mailbox", "path", "-u", user, folder).stdout.strip()
        return Path(out)

    def bulk_load(self, user: str, raws: Iterable[bytes], folder: str = "INBOX") -> int:
        """Load many messages fast: Maildir files + ``doveadm force-resync``.

        UIDs follow the order of ``raws``. Returns the number of messages written.
        """
        box = self.mailbox_dir(user, folder)
        stamp = int(time.time())
        count = 0
        for count, raw in enumerate(raws, start=1):
            # Same timestamp, rising M<n> part: Dovecot assigns UIDs in this order.
            path = box / "cur" / f"{stamp}.M{count:07d}P{os.getpid()}.mtdc,S={len(raw)}:2,"
            path.write_bytes(raw)
            os.chown(path, self._uid, self._gid)
        self.doveadm("force-resync", "-u", user, folder)
        return count

    def reset_uidvalidity(self, user: str, folder: str = "INBOX") -> None:
        """Make Dovecot forget the folder's UIDs: new UIDVALIDITY, UIDs renumbered from 1.

        Close your connections to the folder first; an open session may keep the old index.
        """
        box = self.mailbox_dir(user, folder)
        for path in [*box.glob("dovecot.index*"), box / "dovecot-uidlist"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.doveadm("force-resync", "-u", user, folder)

    def flags(self, user: str, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        """``{uid: flags}`` of every message in ``folder`` (without ``\\Recent``), read
        without changing anything."""
        with self.client(user) as c:
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            # imapclient 4.1 cannot fetch "1:*" (it filters the answer by int(messages)).
            data = c.fetch(uids, ["FLAGS"]) if uids else {}
        # \Recent only says which session saw the message first; it is not stored state.
        return {uid: frozenset(_text(f) for f in item[b"FLAGS"] if f != b"\\Recent")
                for uid, item in data.items()}

    def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        with self.client(user) as c:
            c.select_folder(folder, readonly=True)
            return sorted(int(u) for u in c.search("ALL"))

    def list_folders(self, user: str) -> list[str]:
        with self.client(user) as c:
            return [str(name) for _flags, _sep, name in c.list_folders()]

    def imap_settings(self, user: str, password: str | None = None,
                      **overrides: Any) -> ImapSettings:
        """Settings for ``mailtracker.inbound.imap.connect`` as ``user``.

        Implicit TLS and the test CA unless overridden; ``tls="starttls"`` picks the STARTTLS
        port. ``password`` is accepted so ``imap_settings(*add_user())`` reads naturally; the
        password itself goes to ``connect()``, never into settings.
        """
        del password
        tls = overrides.pop("tls", "implicit" if self.port_tls is not None else "starttls")
        port = overrides.pop("port", self.port_tls if tls == "implicit" else self.port_starttls)
        fields: dict[str, Any] = dict(host=self.host, port=port, tls=tls, username=user,
                                      secret=SecretSource(), ca_file=self.ca_file, since=None)
        fields.update(overrides)
        return ImapSettings(**fields)


def _with_oauth2(conf: str, root: Path, url: str, mechanisms: Sequence[str]) -> str:
    """``conf`` plus an oauth2 passdb for ``mechanisms``; the passwd-file passdb keeps
    PLAIN and LOGIN, so a token is never compared with a password."""
    args = root / "oauth2.conf.ext"
    args.write_text("introspection_mode = post\n"
                    f"introspection_url = {url}\n"
                    "username_attribute = username\n"
                    "active_attribute = active\n"
                    "active_value = true\n"
                    "force_introspection = yes\n"
                    "timeout_msecs = 5000\n")
    mechs = " ".join(mechanisms)
    conf = conf.replace("auth_mechanisms = plain login\n",
                        f"auth_mechanisms = plain login {mechs}\n")
    conf = conf.replace("  driver = passwd-file\n",
                        "  driver = passwd-file\n  mechanisms = plain login\n")
    return conf + f"passdb {{\n  driver = oauth2\n  mechanisms = {mechs}\n  args = {args}\n}}\n"


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _start(ca: TestCA, **kwargs: Any) -> Dovecot:
    _require_dovecot()
    server = Dovecot(ca, **kwargs)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def dovecot(test_ca: TestCA) -> Iterator[Dovecot]:
    """One Dovecot for the session; use a fresh user per test (``add_user()``)."""
    server = _start(test_ca)
    yield server
    server.stop()


@pytest.fixture
def imap_user(dovecot: Dovecot) -> tuple[str, str]:
    """A fresh ``(user, password)`` with an empty mailbox on the session's Dovecot."""
    return dovecot.add_user()


@pytest.fixture
def dovecot_factory(test_ca: TestCA, dovecot: Dovecot) -> Iterator[Callable[..., Dovecot]]:
    """``start(starttls=True, drop_capabilities=())`` → an extra Dovecot, stopped at teardown.

    ``drop_capabilities`` removes names (e.g. ``"IDLE"``, ``"MOVE"``) from the capability list
    the session's server announces after login.
    """
    servers: list[Dovecot] = []
    default_caps: list[str] = []

    def start(*, starttls: bool = True, drop_capabilities: Sequence[str] = (),
              oauth2_introspection_url: str | None = None,
              oauth2_mechanisms: Sequence[str] = ("xoauth2", "oauthbearer")) -> Dovecot:
        capability = None
        if drop_capabilities:
            if not default_caps:
                default_caps.extend(_post_login_capabilities(dovecot))
            drop = {c.upper() for c in drop_capabilities}
            capability = " ".join(c for c in default_caps if c.upper() not in drop)
        server = _start(test_ca, starttls=starttls, capability=capability,
                        oauth2_introspection_url=oauth2_introspection_url,
                        oauth2_mechanisms=oauth2_mechanisms)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _post_login_capabilities(server: Dovecot) -> list[str]:
    user, _ = server.add_user()
    with server.client(user) as c:
        caps = [_text(cap) for cap in c.capabilities()]
    # Pre-login additions are the login process's business; keep only the session's list.
    return [c for c in caps if not c.startswith("AUTH=") and c != "STARTTLS"]
