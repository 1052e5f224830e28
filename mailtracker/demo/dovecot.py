"""The demo's real IMAP server: an unprivileged Dovecot on loopback, for one run.

:class:`DovecotMailboxes` starts ``dovecot`` (Debian: ``dovecot-imapd``) from a config in a
short temporary directory: implicit TLS with the demo CA's certificate on a free loopback
port, one passwd-file entry per demo mailbox, Maildirs below. Every Dovecot process runs as
the user running the demo, or as ``nobody`` when that is root (Dovecot serves no mail as
root). The demo MX files mail with ``dovecot-lda``, as a real MTA does, and learns from it
which addresses have no mailbox; the demo reads mail back through mailtracker's own IMAP
adapter, and the poller connects by the workspace's config like any ``mailtracker poll``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from mailtracker.errors import DemoFailedError
from mailtracker.inbound import imap
from mailtracker.inbound.mailbox import Mailbox
from mailtracker.settings.config import ImapSettings, SecretSource

if TYPE_CHECKING:
    from mailtracker.demo.servers import DemoTls

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_GRACE = 0.1  # seconds the master has after SIGTERM before SIGKILL
EX_NOUSER = 67  # sysexits.h: dovecot-lda's answer for an address without a mailbox
_LDA_PLACES = ("/usr/lib/dovecot", "/usr/libexec/dovecot", "/usr/local/libexec/dovecot")

_CONFIG = """\
# Written by 'mailtracker demo' for one run; removed afterwards.
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailtracker-demo-{name}
log_path = {root}/dovecot.log
protocols = imap
listen = {host}
ssl = required
ssl_cert = <{root}/server.pem
ssl_key = <{root}/server.key
auth_mechanisms = plain
auth_failure_delay = 0
postmaster_address = postmaster@demo-kommune.dk
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = {uid}
first_valid_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = {host}
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


@dataclass(frozen=True, slots=True)
class DovecotPrograms:
    dovecot: Path
    lda: Path


def find_dovecot() -> DovecotPrograms | None:
    """``dovecot`` on PATH and its ``dovecot-lda`` (on PATH, beside it, or where packages put
    it); None if either is missing. Debian installs ``dovecot`` in ``/usr/sbin``, which is
    on root's PATH but not a normal user's (``./run demo`` adds it)."""
    found = shutil.which("dovecot")
    if found is None:
        return None
    places = os.pathsep.join([str(Path(found).parent), *_LDA_PLACES])
    lda = shutil.which("dovecot-lda") or shutil.which("dovecot-lda", path=places)
    return DovecotPrograms(Path(found), Path(lda)) if lda else None


def _run_as() -> pwd.struct_passwd:
    """Who Dovecot runs as: the demo's own user, or ``nobody`` instead of root."""
    try:
        if os.geteuid() != 0:
            return pwd.getpwuid(os.geteuid())
        return pwd.getpwnam("nobody")
    except KeyError:
        raise DemoFailedError("Dovecot needs a user to run as: this user has no passwd entry, "
                              "or (as root) there is no user 'nobody'") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class DovecotMailboxes:
    """The demo's mailboxes on a Dovecot of its own; ``with`` starts and stops it."""

    def __init__(self, accounts: dict[str, str], owner: str, tls: DemoTls,
                 programs: DovecotPrograms):
        """``accounts``: address → password; ``owner``: the address the poller reads."""
        self.binary, self.lda, self.tls = programs.dovecot, programs.lda, tls
        self.accounts = {a.lower(): p for a, p in accounts.items()}
        self.owner = owner.lower()
        self.port = _free_port()
        self.version = "?"
        self._user = _run_as()
        # Popen's arguments that drop root to that user (None: the demo's own user).
        dropping = os.geteuid() == 0
        self._uid = self._user.pw_uid if dropping else None
        self._gid = self._user.pw_gid if dropping else None
        self._groups: list[int] | None = [] if dropping else None
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def description(self) -> str:
        return (f"Dovecot {self.version} on {LOOPBACK}:{self.port} (implicit TLS, "
                f"unprivileged: runs as {self._user.pw_name})")

    def __enter__(self) -> DovecotMailboxes:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Write the config and start Dovecot; returns once it accepts connections.
        DemoFailedError (with Dovecot's last words) if it cannot be run or does not start."""
        # Unix sockets live below base_dir: the path must stay under 108 bytes, whatever
        # TMPDIR says. mkdtemp makes the directory private and unique.
        base = "/tmp" if Path("/tmp").is_dir() else None  # noqa: S108
        root = self._root = Path(tempfile.mkdtemp(prefix="mtdemo", dir=base))
        try:
            said = subprocess.run([str(self.binary), "--version"], capture_output=True,
                                  text=True, timeout=30, check=False).stdout.split()
            self.version = said[0] if said else "?"
            self._write_files(root)
            with (root / "dovecot.err").open("wb") as err:
                self._proc = subprocess.Popen(
                    [str(self.binary), "-F", "-c", str(root / "dovecot.conf")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    start_new_session=True, user=self._uid, group=self._gid,
                    extra_groups=self._groups)
            self._wait_until_listening(time.monotonic() + START_TIMEOUT)
        except (OSError, KeyError, subprocess.TimeoutExpired) as exc:
            self.stop()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise DemoFailedError(f"cannot run {self.binary} as {self._user.pw_name}: "
                                  f"{reason}") from None
        except BaseException:
            self.stop()
            raise

    def _write_files(self, root: Path) -> None:
        for sub in ("run", "state", "home"):
            (root / sub).mkdir()
        shutil.copyfile(self.tls.cert_file, root / "server.pem")
        (root / "server.key").touch(mode=0o600)
        shutil.copyfile(self.tls.key_file, root / "server.key")
        (root / "users").write_text("".join(f"{a}:{{PLAIN}}{p}\n"
                                            for a, p in self.accounts.items()),
                                    encoding="utf-8")
        (root / "users").chmod(0o600)
        user = self._user
        (root / "dovecot.conf").write_text(_CONFIG.format(
            root=root, name=root.name, host=LOOPBACK, port=self.port, user=user.pw_name,
            group=grp.getgrgid(user.pw_gid).gr_name, uid=user.pw_uid, gid=user.pw_gid),
            encoding="utf-8")
        if os.geteuid() == 0:
            for path in (root, *root.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _wait_until_listening(self, deadline: float) -> None:
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise DemoFailedError(f"Dovecot exited with {self._proc.returncode}: "
                                      f"{self._log_tail()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise DemoFailedError(f"Dovecot did not listen on {LOOPBACK}:{self.port} "
                                          f"within {START_TIMEOUT:g} s: {self._log_tail()}"
                                          ) from None
                time.sleep(0.01)  # the master binds its port in a few milliseconds

    def _log_tail(self) -> str:
        if self._root is None:
            return "(no log)"
        text = ""
        for name in ("dovecot.err", "dovecot.log"):
            with contextlib.suppress(OSError):
                text += (self._root / name).read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-3:]) or "(nothing logged)"

    def stop(self) -> None:
        """Stop every Dovecot process and remove its directory. Safe to call twice.

        The whole process group gets SIGTERM at once: sent to the master alone, it takes a
        second or more to stop its children. Even so the master sometimes lingers a second
        over children already dead; after a short grace it gets SIGKILL (the demo has read
        all it needs, and the directory goes anyway)."""
        if self._proc is not None and self._proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, START_TIMEOUT)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=grace)
                    break
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    # -- the demo's side -------------------------------------------------------------------

    def deliver(self, address: str, raw: bytes, when: datetime) -> bool:
        """File ``raw`` in ``address``'s INBOX with dovecot-lda; False if Dovecot knows no
        such user. The INTERNALDATE is the time of delivery."""
        del when
        assert self._root is not None, "start() first"
        try:
            proc = subprocess.run(
                [str(self.lda), "-c", str(self._root / "dovecot.conf"), "-e", "-d",
                 address.lower(), "-m", "INBOX"], input=raw, capture_output=True, timeout=30,
                check=False, user=self._uid, group=self._gid, extra_groups=self._groups)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DemoFailedError(f"cannot run {self.lda} as {self._user.pw_name}: "
                                  f"{exc}") from None
        if proc.returncode == EX_NOUSER:
            return False
        if proc.returncode != 0:
            raise DemoFailedError(f"dovecot-lda could not deliver to {address} (exit "
                                  f"{proc.returncode}): {proc.stderr.decode(errors='replace')}"
                                  .strip())
        return True

    def settings(self, address: str) -> ImapSettings:
        return ImapSettings(host=LOOPBACK, port=self.port, tls="implicit", username=address,
                            secret=SecretSource(), ca_file=self.tls.ca_file, timeout=10)

    def open(self, address: str) -> imap.ImapMailbox:
        return imap.connect(self.settings(address), self.accounts[address.lower()])

    def poll_connect(self) -> Callable[[], Mailbox] | None:
        return None  # the poller connects by the workspace's [imap], as 'mailtracker poll'

    def imap_config(self) -> dict[str, object]:
        return {"host": LOOPBACK, "port": self.port, "tls": "implicit",
                "ca_file": str(self.tls.ca_file)}
