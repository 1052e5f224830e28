"""One run's world: a mailbox on the session's Dovecot, an SMTP server, a loopback proxy in
front of each, a workspace whose state file lives on a tiny tmpfs, ``mailtracker``
subprocesses, and recipients who answer the mail they get (replies, out-of-office replies,
bounces) the moment the SMTP server accepts it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mailtracker.store import StateView, Store
from tests.faults.mails import Ledger, message_id_of
from tests.inbound_mail import bounce, reply
from tests.plugins.smtpd import ReceivedMessage, SmtpTestServer, start_smtp_server
from tests.plugins.tcpproxy import Proxy
from tests.plugins.workspace import Workspace, make_workspace_at

if TYPE_CHECKING:
    from tests.plugins.dovecot import Dovecot
    from tests.plugins.tlsca import TestCA

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1.5  # SMTP and IMAP socket timeouts: short, so stalls turn into errors quickly


class Disk:
    """A tiny tmpfs for the state file (root only), which ``fill`` makes (almost) full."""

    def __init__(self, directory: Path, size: str = "8m"):
        self.directory = directory
        directory.mkdir(parents=True)
        self.ballast = directory / "ballast"
        self.mounted = False
        if os.geteuid() == 0 and shutil.which("mount"):
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                     str(directory)], capture_output=True, check=False)
            self.mounted = result.returncode == 0

    def free_bytes(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def fill(self, headroom: int) -> None:
        """Leave about ``headroom`` bytes free (the next larger state write fails)."""
        want = self.free_bytes() - headroom
        with contextlib.suppress(OSError), self.ballast.open("ab") as out:
            chunk = b"\0" * 65536
            while want > 0:
                out.write(chunk[:want])
                want -= min(want, len(chunk))

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.directory)], capture_output=True,
                           check=False)
            self.mounted = False


@dataclass
class Proc:
    """A ``python -m mailtracker … <command>`` subprocess with its output in a file."""

    command: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    killed: bool = False

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> bool:
        """SIGKILL, if still running. True if the signal was sent."""
        if not self.running():
            return False
        self.killed = True
        self.popen.send_signal(signal.SIGKILL)
        return True

    def terminate(self) -> None:
        if self.running():
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        """stderr (logs, errors), then stdout."""
        return "".join(p.read_text(encoding="utf-8", errors="replace")
                       for p in (self.stderr, self.stdout))


class Responder(threading.Thread):
    """Recipients answering our mail as soon as the SMTP server has accepted it."""

    def __init__(self, world: World):
        super().__init__(name="responder", daemon=True)
        self.world = world
        self.behaviour: dict[str, tuple[str, str]] = {}  # email → (kind, name)
        self._quit = threading.Event()
        self._done = threading.Condition()
        self.handled = 0

    def run(self) -> None:
        smtp = self.world.smtp
        while not self._quit.is_set():
            try:
                smtp.wait_for_messages(self.handled + 1, timeout=0.2)
            except AssertionError:
                continue  # nothing new yet; look at the stop flag again
            for message in list(smtp.messages[self.handled:]):
                self._answer(message)
                with self._done:
                    self.handled += 1
                    self._done.notify_all()

    def _answer(self, message: ReceivedMessage) -> None:
        mid = str(message.message["Message-ID"])
        subject = str(message.message["Subject"])
        for rcpt in message.rcpt_tos:
            kind, name = self.behaviour.get(rcpt.lower(), ("none", ""))
            if kind == "none":
                continue
            if kind == "bounce":
                raw = bounce(failed=rcpt, original_message_id=mid, original_subject=subject)
            else:
                raw = reply(sender=rcpt, name=name, to_message_id=mid, subject=subject,
                            auto=kind == "auto")
            self.world.deliver([raw], answer=True)
            self.world.ledger.responded(rcpt.lower(), kind, mid)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every message the server accepted so far has been answered."""
        target = len(self.world.smtp.messages)
        with self._done:
            return self._done.wait_for(lambda: self.handled >= target, timeout)

    def stop(self) -> None:
        self._quit.set()
        self.join(timeout=10)


@dataclass
class World:
    root: Path
    dovecot: Dovecot
    ca: TestCA
    post_action: str = "none"
    ledger: Ledger = field(default_factory=Ledger)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.user, password = self.dovecot.add_user()
        self.smtp: SmtpTestServer = start_smtp_server(self.ca)
        self.imap_proxy = Proxy(self.dovecot.host, self.dovecot.port_tls or 0)
        self.smtp_proxy = Proxy(self.smtp.host, self.smtp.port)
        self.disk = Disk(self.root / "state")
        self.store_path = self.disk.directory / "mailtracker.json"
        self.ws: Workspace = make_workspace_at(
            self.root, smtp=self.smtp, imap=(self.dovecot, self.user, password),
            store={"path": str(self.store_path)})
        self.ws.set("smtp", port=self.smtp_proxy.port, timeout=TIMEOUT, retries=2,
                    retry_delay=0.05)
        self.ws.set("imap", port=self.imap_proxy.port, timeout=TIMEOUT, watch_interval=3,
                    post_action=self.post_action, move_to="Behandlet")
        self.mailbox_lock = threading.Lock()  # appends vs. UIDVALIDITY resets
        self.responder = Responder(self)
        self.responder.start()

    # -- the inbox -------------------------------------------------------------------------

    def deliver(self, raws: Sequence[bytes], *, answer: bool = False) -> None:
        """Append ``raws`` to INBOX in one MULTIAPPEND (UIDs in order)."""
        if not raws:
            return
        with self.mailbox_lock, self.dovecot.client(self.user) as client:
            response = client.multiappend("INBOX", list(raws))
        text = b" ".join(r for r in response[1] if isinstance(r, bytes))  # ('OK', [b'…'])
        if response[0] != "OK":  # imapclient does not raise for a refused MULTIAPPEND
            raise RuntimeError(f"APPEND refused: {response!r}")
        match = re.search(rb"APPENDUID \d+ (\d+)", text)
        if match:  # for failure reports: which UID each Message-ID got
            first = int(match.group(1))
            with self.ledger.lock:
                for offset, raw in enumerate(raws):
                    self.ledger.uids.setdefault(message_id_of(raw) or "?", []).append(
                        first + offset)
        if answer:
            with self.ledger.lock:
                self.ledger.inbound += len(raws)

    def reset_uidvalidity(self) -> None:
        """New UIDVALIDITY, UIDs from 1. Only call with no poll/watch connected."""
        with self.mailbox_lock:
            self.dovecot.reset_uidvalidity(self.user, "INBOX")

    def wait_until_caught_up(self, timeout: float) -> bool:
        """Until the stored watermark covers every UID in INBOX (or ``timeout`` passes)."""
        with self.mailbox_lock, self.dovecot.client(self.user) as client:
            status = client.folder_status("INBOX", ["UIDNEXT", "UIDVALIDITY"])
        uidnext, uidvalidity = int(status[b"UIDNEXT"]), int(status[b"UIDVALIDITY"])
        account = f"{self.user}@{self.dovecot.host}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # a state file not written yet
                view = self.snapshot()
                mark = view.watermark(account, "INBOX") if view is not None else None
                if mark and mark.uidvalidity == uidvalidity and mark.last_uid >= uidnext - 1:
                    return True
            time.sleep(0.05)  # polling the state file; bounded by ``timeout``
        return False

    # -- processes -------------------------------------------------------------------------

    def start(self, command: str, *args: str) -> Proc:
        base = self.root / f"{len(self.procs):03d}-{command}"
        stdout, stderr = base.with_suffix(".out"), base.with_suffix(".err")
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAILTRACKER_NOW", "MAILTRACKER_DEBUG", "MAILTRACKER_CONFIG")}
        env.update(self.ws.environ)
        env["PYTHONPATH"] = str(REPO)
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "mailtracker", "--config", str(self.ws.config_path),
                 command, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err)
        proc = Proc(command, popen, stdout, stderr)
        self.procs.append(proc)
        return proc

    def snapshot(self) -> StateView | None:
        """The stored state, or None before the first write (raises if it does not parse)."""
        if not self.store_path.exists():
            return None
        return Store(self.store_path).snapshot()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.responder.stop()
        self.imap_proxy.close()
        self.smtp_proxy.close()
        self.smtp.release()
        self.smtp.stop()
        self.disk.close()


def first_to_exit(procs: tuple[Proc, Proc], timeout: float) -> Proc | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.running():
                return p
        time.sleep(0.02)  # polling two process handles; the wait is bounded by ``timeout``
    return None


def wait_for_line(proc: Proc, text: str, timeout: float) -> bool:
    """Until ``text`` is in the process's log, it exits, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.running():
        if text in proc.output():
            return True
        time.sleep(0.05)  # polling a log file; bounded by ``timeout``
    return False


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])
