"""The KLIK dossier of a big state (``report --html``) against ``status --json`` of the same
state, both as whole processes: the dossier reads the same state and adds the timeline and the
page, so the goal is at most twice the time of the status document.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.measure import Row, compare
from benchmarks.store_cases import compile_package, mailtracker_command
from mailtracker.app import App
from mailtracker.models import Notification, NotificationState, Recipient
from tests.plugins.workspace import Workspace

GOAL = 2.0


def add_recipients(app: App, count: int) -> None:
    """``count`` recipients, each with an orientation sent (every fifth answered)."""
    base = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    roles = [r for r in app.task.roles]
    with app.store.transaction() as txn:
        for i in range(count):
            role = roles[i % len(roles)]
            email = f"bench{i:04d}@kommune.example"
            sent = base + timedelta(minutes=i)
            txn.put_recipient(Recipient(email, f"Bench Person {i:04d}", role.key, added_at=base))
            txn.put_notification(Notification(
                app.task.key, email, role.template, f"<bench{i}@kommune.example>",
                state=NotificationState.SENT, attempts=1, created_at=sent, updated_at=sent,
                sent_at=sent, subject="eFaktura til KP",
                acknowledged_at=sent + timedelta(hours=2) if i % 5 == 0 else None))


def report_case(ws: Workspace, app: App, recipients: int, handled: int, *, reps: int) -> Row:
    add_recipients(app, recipients)
    env = {**os.environ, **ws.environ}
    cwd = Path(__file__).resolve().parents[1]
    compile_package()
    out = ws.root / "bench-dossier.html"
    ours = mailtracker_command(ws.config_path, "report", "--html", str(out))
    floor = mailtracker_command(ws.config_path, "status", "--json")

    def run(args: list[str]) -> None:
        subprocess.run(args, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)

    row = compare(f"report --html, {recipients} recipients, {handled:,} handled",
                  lambda: run(ours), lambda: run(floor), reps=reps, goal=GOAL)
    row.notes.append(f"floor: status --json of the same state; dossier "
                     f"{out.stat().st_size / 1e3:.0f} kB")
    return row
