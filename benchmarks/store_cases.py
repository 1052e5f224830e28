"""A big state file: ``mailtracker status`` start-up, and the cost of one poll batch write.

Both use a store with ``HANDLED`` handled-message records (what a year of a busy shared
mailbox leaves behind) next to three recipients whose orientation mail was sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.environment import Environment
from benchmarks.measure import Row, compare
from mailtracker.app import App, open_app
from mailtracker.models import HandledMessage, Watermark
from mailtracker.store import Store
from mailtracker.store.codec import to_doc
from tests.plugins.workspace import Workspace

BATCH = 500  # the poller's batch size


def handled(count: int, start: int = 0) -> list[HandledMessage]:
    base = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    return [HandledMessage(f"<AM{i:08d}PR04MB{i % 9973}@AM0PR04MB6434.eurprd04.prod.outlook.com>",
                           base + timedelta(minutes=i), "noise" if i % 7 else "quarantined",
                           i + 1, "INBOX") for i in range(start, start + count)]


def big_store(env: Environment, records: int) -> tuple[Workspace, App]:
    """A workspace whose store holds ``records`` handled messages and a watermark."""
    ws, _sent = env.sent_workspace()
    app = open_app(ws.config_path, ws.environ)
    with app.store.transaction() as txn:
        txn.add_handled(handled(records))
        txn.set_watermark(Watermark(f"{ws.sections['imap']['username']}@127.0.0.1", "INBOX",
                                    1, records, app.now()))
    return ws, app


def mailtracker_command(config: Path, *args: str) -> list[str]:
    """The installed ``mailtracker`` script (as a user runs it), else ``python -m``."""
    script = Path(sys.executable).with_name("mailtracker")
    if script.exists():
        return [str(script), "--config", str(config), *args]
    return [sys.executable, "-m", "mailtracker", "--config", str(config), *args]


def compile_package() -> None:
    """Write mailtracker's bytecode, as ``pip install`` does; a checkout run with
    PYTHONDONTWRITEBYTECODE set would otherwise compile every module on every start, while
    the floor's click comes compiled from its wheel."""
    import compileall

    import mailtracker

    compileall.compile_dir(str(Path(mailtracker.__file__).parent), quiet=1)


def cli_start_case(ws: Workspace, records: int, *, reps: int) -> Row:
    env = {**os.environ, **ws.environ}
    command = mailtracker_command(ws.config_path, "status")
    compile_package()
    cwd = Path(__file__).resolve().parents[1]

    def run(args: list[str]) -> None:
        subprocess.run(args, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)

    row = compare(f"CLI start: status, {records:,} handled", lambda: run(command),
                  lambda: run([sys.executable, "-c", "import click"]), reps=reps, goal=3.5)
    row.notes.append(f"floor: python -c 'import click'; ours: {' '.join(command[:2])} … status")
    return row


def _raw_durable_append(payload: bytes, path: Path) -> None:
    """The floor: the batch's records appended to a file and fsynced, nothing else."""
    with path.open("ab") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


class _CommitCounter:
    """Counts the state file's commits and full rewrites by wrapping the real methods (an
    older store without a journal has only its storage's ``write``: each is both)."""

    def __init__(self, app: App) -> None:
        store: Any = app.store
        self.target = getattr(store, "_file", None) or store._storage
        self.names = ("commit", "rewrite") if hasattr(self.target, "commit") else ("write",)
        self.real = {name: getattr(self.target, name) for name in self.names}
        self.commits = self.rewrites = 0

    def __enter__(self) -> _CommitCounter:
        def counting(name: str) -> Any:
            def call(*args: Any) -> Any:
                if name in ("commit", "write"):
                    self.commits += 1
                if name in ("rewrite", "write"):
                    self.rewrites += 1
                return self.real[name](*args)
            return call

        for name in self.names:
            setattr(self.target, name, counting(name))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, method in self.real.items():
            setattr(self.target, name, method)


def batch_write_case(ws: Workspace, app: App, records: int, *, reps: int) -> Row:
    """One poll batch (500 new handled messages and the watermark) beside ``records``, as
    in a running poll: each repetition writes the next batch."""
    batches = iter(range(records, records + (2 * reps + 4) * BATCH, BATCH))
    floor_path = ws.root / "floor-journal"

    def ours() -> None:
        start = next(batches)
        with app.store.transaction() as txn:
            txn.add_handled(handled(BATCH, start=start))
            txn.set_watermark(Watermark("bench@127.0.0.1", "INBOX", 1, start + BATCH,
                                        app.now()))

    def floor() -> None:
        batch = [to_doc(h) for h in handled(BATCH, start=next(batches))]
        _raw_durable_append(json.dumps(batch, ensure_ascii=False).encode("utf-8"), floor_path)

    cold = Store(ws.store_path)
    started = time.perf_counter()
    cold.snapshot()
    first_read = time.perf_counter() - started
    with _CommitCounter(app) as counter:
        row = compare(f"store: one poll batch write ({BATCH} new), {records:,} handled", ours,
                      floor, reps=reps, goal=None)
    runs = reps + 1
    row.notes.append(f"{counter.commits / runs:g} commit(s) per batch, {counter.rewrites} "
                     f"full rewrite(s) in {runs} batches; state file "
                     f"{ws.store_path.stat().st_size / 1e6:.1f} MB, read once per process "
                     f"in {first_read * 1e3:.0f} ms; floor: the batch's records as JSON "
                     "appended to a file and fsynced")
    floor_path.unlink(missing_ok=True)
    return row
