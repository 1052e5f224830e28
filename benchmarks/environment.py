"""The servers and workspaces the benchmarks run against, all on loopback in one temp dir.

Reuses the test harness: a throwaway Dovecot (``tests/plugins/dovecot.py``), the recording
aiosmtpd server (``tests/plugins/smtpd.py``), a trustme CA (``tests/plugins/tlsca.py``) and
the workspace writer (``tests/plugins/workspace.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailtracker.app import App, open_app
from tests.plugins.dovecot import DOVEADM, DOVECOT, Dovecot
from tests.plugins.tlsca import TestCA, _make
from tests.plugins.workspace import THREE, Workspace, make_workspace_at


def require_root_and_dovecot() -> None:
    if not (Path(DOVECOT).exists() and Path(DOVEADM).exists()):
        raise SystemExit(f"Dovecot is not installed ({DOVECOT}); apt-get install dovecot-imapd "
                         "(or use ./run bench, which installs it when run as root)")
    if os.geteuid() != 0:
        raise SystemExit("the benchmark Dovecot must be started as root (it switches to the "
                         "mail user), like the test suite's")


@dataclass
class Mailbox:
    """A Dovecot user filled with mail, and a workspace whose [imap] points at it."""

    user: str
    password: str
    ws: Workspace
    size: int

    def app(self) -> App:
        return open_app(self.ws.config_path, self.ws.environ)


@dataclass
class SmtpServer:
    """The recording SMTP server running in a child process (see ``smtp_server.py``);
    STARTTLS and AUTH required, certificate from the benchmark CA."""

    host: str
    port: int
    username: str
    password: str
    ca_file: Path
    proc: subprocess.Popen[str]
    tls: str = "starttls"

    @classmethod
    def start(cls, ca: TestCA) -> SmtpServer:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.smtp_server", str(ca.ca_file),
             str(ca.cert_file), str(ca.key_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise RuntimeError(f"the SMTP server did not start (exit {proc.returncode})")
        info = json.loads(line)
        return cls(info["host"], info["port"], info["username"], info["password"],
                   ca.ca_file, proc)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Environment:
    root: Path
    ca: TestCA
    dovecot: Dovecot
    smtp: SmtpServer
    _counter: int = 0

    @classmethod
    def start(cls) -> Environment:
        require_root_and_dovecot()
        root = Path(tempfile.mkdtemp(prefix="mtbench", dir="/tmp"))
        root.chmod(0o755)
        ca = _make(root / "tls", "bench")
        dovecot = Dovecot(ca)
        try:
            dovecot.start()
        except BaseException:
            dovecot.stop()
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            smtp = SmtpServer.start(ca)
        except BaseException:
            dovecot.stop()
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root=root, ca=ca, dovecot=dovecot, smtp=smtp)

    def stop(self) -> None:
        self.smtp.stop()
        self.dovecot.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def workspace(self, *, imap: bool = True, smtp: bool = True) -> Workspace:
        self._counter += 1
        imap_arg = None
        if imap:
            user, password = self.dovecot.add_user()
            imap_arg = (self.dovecot, user, password)
        ws = make_workspace_at(self.root / f"ws{self._counter}", smtp=self.smtp if smtp else None,
                               imap=imap_arg)
        return ws

    def sent_workspace(self) -> tuple[Workspace, list[tuple[str, str, str]]]:
        """A workspace with three recipients already notified; returns it and what was sent
        as ``(email, message_id, subject)`` (replies and bounces refer to those)."""
        from mailtracker.outbound.notify import NotifyOptions, run_notify

        ws = self.workspace()
        ws.add_recipients(THREE)
        app = open_app(ws.config_path, ws.environ)
        results = asyncio.run(run_notify(app, NotifyOptions()))
        assert all(r.outcome == "sent" for r in results), results
        sent = [(n.recipient, n.message_id, n.subject or "")
                for n in app.store.snapshot().notifications()]
        return ws, sent

    def fill(self, ws: Workspace, raws: Iterable[bytes], size: int) -> Mailbox:
        """Load ``raws`` into the INBOX of ``ws``'s IMAP user (Maildir files +
        force-resync, in this order)."""
        user = str(ws.sections["imap"]["username"])
        password = self.dovecot.password(user)
        loaded = self.dovecot.bulk_load(user, raws)
        assert loaded == size, (loaded, size)
        # Let the kernel write the gigabytes out now: its writeback would otherwise slow the
        # fsyncs of the cases that follow, which a floor without fsyncs never notices.
        os.sync()
        return Mailbox(user, password, ws, size)


def copy_store(source: Path, target: Path) -> None:
    """Copy a state file with its journal and sent ledger (``<file>.journal``, ``<file>.sent``,
    if any) over another's, so a repetition starts from exactly the earlier state; lock files
    are left alone."""
    shutil.copyfile(source, target)
    for suffix in (".journal", ".sent"):
        beside, target_beside = _beside(source, suffix), _beside(target, suffix)
        if beside.exists():
            shutil.copyfile(beside, target_beside)
        else:
            target_beside.unlink(missing_ok=True)


def _beside(state_file: Path, suffix: str) -> Path:
    return state_file.with_name(state_file.name + suffix)
