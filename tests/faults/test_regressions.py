"""Bugs the fault campaign found, each pinned down as a deterministic test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailtracker.models import DeliveryState, Notification
from mailtracker.store import Store
from tests.inbound_mail import bounce, eml, reply
from tests.plugins.smtpd import HOLD, SmtpTestServer
from tests.plugins.workspace import THREE, Workspace

REPO = Path(__file__).resolve().parents[2]


def _start(ws: Workspace, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ws.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "mailtracker", "--config",
                                 str(ws.config_path), *args], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)


def _until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for something a user could observe (a log line, the stored state)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(10)


def _notification(ws: Workspace) -> Notification:
    [n] = Store(ws.store_path).snapshot().notifications()
    return n


@pytest.mark.parametrize("answer", ["bounce", "reply"])
def test_bounce_or_reply_recorded_while_notify_waits_for_250_is_kept(
        answer: str, dovecot: Any, smtp_server: SmtpTestServer,
        make_workspace: Callable[..., Workspace], tmp_path: Path,
        processes: list[subprocess.Popen[bytes]]) -> None:
    """A local MTA bounces (or an auto-forwarding colleague replies) before the submission
    server answers 250. ``watch`` records that; ``notify`` then recorded "sent" from the copy
    it had read before sending and wiped the bounce or the acknowledgement."""
    user, password = dovecot.add_user()
    ws = make_workspace(smtp=smtp_server, imap=(dovecot, user, password))
    ws.set("smtp", timeout=20)
    ws.add_recipients(THREE[:1])
    role_name_email = THREE[0]
    watch_log = tmp_path / "watch.log"
    processes.append(_start(ws, watch_log, "watch"))
    _until(lambda: "watching for new mail" in watch_log.read_text(errors="replace"), "watch")

    smtp_server.faults.after_data(HOLD, times=1)  # stored, 250 held back
    notify = _start(ws, tmp_path / "notify.log", "notify")
    processes.append(notify)
    [sent] = smtp_server.wait_for_messages(1, timeout=20)
    mid, subject = str(sent.message["Message-ID"]), str(sent.message["Subject"])
    if answer == "bounce":
        dovecot.append(user, bounce(failed=role_name_email[2], original_message_id=mid,
                                    original_subject=subject))
        _until(lambda: _notification(ws).delivery is DeliveryState.BOUNCED, "the bounce")
    else:
        dovecot.append(user, reply(sender=role_name_email[2], name=role_name_email[1],
                                   to_message_id=mid, subject=subject))
        _until(lambda: _notification(ws).acknowledged_at is not None, "the reply")
    smtp_server.release()
    assert notify.wait(30) == 0, (tmp_path / "notify.log").read_text()

    n = _notification(ws)
    assert n.state.value == "sent"
    if answer == "bounce":
        assert n.delivery is DeliveryState.BOUNCED and n.bounce_reason
    else:
        assert n.acknowledged_at is not None


def test_message_not_sent_because_reconnecting_failed_stays_pending(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace],
        tcp_proxy: Any) -> None:
    """The link drops while the first message waits for its 250 and the server is gone when
    ``notify`` reconnects for the second. Nothing of the second message went out, yet it was
    left ``sending`` and the next run reported it as "may have been delivered" and never
    sent it."""
    proxy = tcp_proxy(smtp_server.host, smtp_server.port)
    ws = make_workspace(smtp=smtp_server)
    ws.set("smtp", port=proxy.port, retries=0)
    ws.add_recipients(THREE[:2])
    smtp_server.faults.after_data(HOLD, times=1)
    cutter = threading.Thread(target=lambda: (smtp_server.wait_for_messages(1, timeout=30),
                                              proxy.close()))
    cutter.start()
    first = ws.cli("notify")
    cutter.join()
    smtp_server.release()
    assert first.exit_code == 6 and "cannot connect" in first.output, first.output
    [delivered] = smtp_server.messages

    ws.set("smtp", port=smtp_server.port)  # the server is reachable again
    second = ws.cli("notify")
    states = {n.recipient: n.state.value for n in Store(ws.store_path).snapshot().notifications()}
    first_rcpt = delivered.rcpt_tos[0]
    other = next(email for _, _, email in THREE[:2] if email != first_rcpt)
    assert states[first_rcpt] == "unknown"  # its payload went out: it may have arrived
    assert states[other] == "sent", second.output
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == [first_rcpt, other]


def test_bounce_of_a_follow_up_marks_that_mail_not_the_orientation(
        dovecot: Any, smtp_server: SmtpTestServer,
        make_workspace: Callable[..., Workspace]) -> None:
    """A DSN names the bounced mail only inside the report (no In-Reply-To). The bounce of an
    event mail was put on the recipient's orientation instead: the orientation showed as
    bounced (and its role as no longer oriented) while the event mail showed as delivered."""
    user, password = dovecot.add_user()
    ws = make_workspace(smtp=smtp_server, imap=(dovecot, user, password))
    admin = THREE[1]  # the agreement administrator gets the "agreement arrived" event mail
    ws.add_recipients([admin])
    assert ws.cli("notify").exit_code == 0
    dovecot.append(user, eml("agreement-eg-pdf.eml"))
    assert ws.cli("poll").exit_code == 0
    tick = ws.cli("tick")
    assert tick.exit_code == 0, tick.output
    event = smtp_server.messages[-1].message
    dovecot.append(user, bounce(failed=admin[2], original_message_id=str(event["Message-ID"]),
                                original_subject=str(event["Subject"])))
    assert ws.cli("poll").exit_code == 0

    notes = {n.template: n for n in Store(ws.store_path).snapshot().notifications()}
    orientation = notes.pop(f"orientation-{admin[0]}")
    [followup] = notes.values()
    assert followup.message_id == event["Message-ID"]
    assert followup.delivery is DeliveryState.BOUNCED
    assert orientation.delivery is DeliveryState.NONE
    row = next(r for r in ws.status()["recipients"] if r["email"] == admin[2])
    assert row["delivery"] != "bounced"
