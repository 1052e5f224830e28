"""`mailtracker watch` as a user runs it: a process that follows the inbox, survives a dead
link, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailtracker.store import Store
from tests.inbound_mail import eml
from tests.plugins.workspace import Workspace


class WatchProcess:
    def __init__(self, ws: Workspace, log: Path):
        self.log = log
        self.ws = ws
        env = {**os.environ, **ws.environ}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailtracker", "--config", str(ws.config_path), "watch",
             "--health-interval", "1"],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), stdin=subprocess.DEVNULL, env=env)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, what: Callable[[], bool], label: str, timeout: float = 30.0) -> None:
        """Wait for a condition the user could observe (log line, status); not a fixed sleep."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited ({self.proc.returncode}) waiting for "
                                     f"{label}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {label}:\n{self.log_text()}")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        self.wait_for(lambda: text in self.log_text(), repr(text), timeout)

    def milestones(self) -> set[str]:
        if not self.ws.store_path.exists():
            return set()
        return set(Store(self.ws.store_path).snapshot().milestones("efaktura-8b"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def start_watch(tmp_path: Path) -> Iterator[Callable[[Workspace], WatchProcess]]:
    started: list[WatchProcess] = []

    def start(ws: Workspace) -> WatchProcess:
        w = WatchProcess(ws, tmp_path / f"watch{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


def test_watch_picks_up_new_mail_and_stops_on_sigterm(
        dovecot: Any, make_workspace: Callable[..., Workspace],
        start_watch: Callable[[Workspace], WatchProcess]) -> None:
    user, password = dovecot.add_user()
    ws = make_workspace(imap=(dovecot, user, password))
    watch = start_watch(ws)
    watch.wait_log("watching for new mail")
    dovecot.append(user, eml("agreement-eg-pdf.eml"))
    watch.wait_for(lambda: "service_agreement_received" in watch.milestones(), "milestone")
    watch.wait_log("health:")
    assert watch.stop() == 0
    log = watch.log_text()
    assert "milestone reached: Service agreement received" in log
    assert "stopped after" in log
    assert "Traceback" not in log and ws.environ["MT_TEST_IMAP_PASSWORD"] not in log


def test_second_watch_is_refused(dovecot: Any, make_workspace: Callable[..., Workspace],
                                 start_watch: Callable[[Workspace], WatchProcess]) -> None:
    user, password = dovecot.add_user()
    ws = make_workspace(imap=(dovecot, user, password))
    first = start_watch(ws)
    first.wait_log("watching for new mail")
    second = ws.cli("poll")
    assert second.exit_code == 5
    assert "already running" in second.output
    assert first.stop() == 0


def test_watch_survives_a_silently_dead_link(
        dovecot: Any, make_workspace: Callable[..., Workspace], tcp_proxy: Any,
        start_watch: Callable[[Workspace], WatchProcess]) -> None:
    user, password = dovecot.add_user()
    proxy = tcp_proxy(dovecot.host, dovecot.port_tls)
    ws = make_workspace(imap=(dovecot, user, password))
    ws.set("imap", port=proxy.port, timeout=2, watch_interval=2)
    watch = start_watch(ws)
    watch.wait_log("watching for new mail")
    proxy.blackhole()
    dovecot.append(user, eml("guide-eg.eml"))
    watch.wait_log("reconnecting in", timeout=30)
    assert "guide_received" not in watch.milestones()
    proxy.restore()
    watch.wait_for(lambda: "guide_received" in watch.milestones(), "milestone after restore",
                   timeout=60)
    assert watch.stop() == 0


@pytest.mark.parametrize("fault, expected, code", [
    ("password", "login as", 13),
    ("folder", "Indbakke-der-ikke-findes", 7),
    ("tls-port", "TLS failed while", 7),
])
def test_watch_stops_at_start_on_misconfiguration_with_checks_advice(
        dovecot: Any, make_workspace: Callable[..., Workspace], fault: str,
        expected: str, code: int) -> None:
    user, password = dovecot.add_user()
    ws = make_workspace(imap=(dovecot, user, password))
    if fault == "password":
        ws.environ["MT_TEST_IMAP_PASSWORD"] = "wrong"
    elif fault == "folder":
        ws.set("imap", folder="Indbakke-der-ikke-findes")
    else:  # implicit TLS spoken to the plain STARTTLS port
        ws.set("imap", port=dovecot.port_starttls)
    env = {**os.environ, **ws.environ}
    done = subprocess.run([sys.executable, "-m", "mailtracker", "--config", str(ws.config_path),
                           "watch"], capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == code, done.stderr
    assert "watch cannot start" in done.stderr and "mailtracker check" in done.stderr
    assert expected in done.stderr
    assert "reconnecting in" not in done.stderr
