"""Inbox cases: initial scan, no-news poll and incremental poll, each against a bare client.

The floors use one imapclient connection over the same implicit-TLS port as mailtracker:
* scan: LOGIN, SELECT, ``UID SEARCH``, then ``UID FETCH BODY.PEEK[HEADER]`` in batches of 500;
* no news: LOGIN, SELECT, LOGOUT;
* incremental: LOGIN, SELECT, ``UID SEARCH UID n:*``, ``UID FETCH`` of the new headers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from benchmarks.environment import Environment, Mailbox, copy_store
from benchmarks.measure import Row, compare
from mailtracker.app import App
from mailtracker.inbound.judge.prefilter import clear_caches
from mailtracker.inbound.poller import PollReport, run_poll

FLOOR_BATCH = 500


@dataclass(frozen=True)
class ImapTarget:
    """Where a bare client connects: everything it needs, as plain data (child processes)."""

    host: str
    port: int
    ca_file: str
    user: str
    password: str

    @classmethod
    def of(cls, env: Environment, mb: Mailbox) -> ImapTarget:
        assert env.dovecot.port_tls is not None
        return cls(env.dovecot.host, env.dovecot.port_tls, str(env.ca.ca_file), mb.user,
                   mb.password)

    def connect(self) -> IMAPClient:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        client = IMAPClient(self.host, self.port, ssl=True, ssl_context=ctx, timeout=60)
        client.login(self.user, self.password)
        return client


def floor_scan(target: ImapTarget) -> int:
    """Fetch every header block in batches; returns how many were fetched."""
    client = target.connect()
    client.select_folder("INBOX")
    uids = client.search(["UID", "1:*"])
    fetched = 0
    for start in range(0, len(uids), FLOOR_BATCH):
        fetched += len(client.fetch(uids[start:start + FLOOR_BATCH], ["BODY.PEEK[HEADER]"]))
    client.logout()
    return fetched


def floor_no_news(target: ImapTarget) -> None:
    client = target.connect()
    client.select_folder("INBOX")
    client.logout()


def floor_incremental(target: ImapTarget, last_uid: int) -> int:
    client = target.connect()
    client.select_folder("INBOX")
    uids = [u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid]
    data = client.fetch(uids, ["BODY.PEEK[HEADER]"]) if uids else {}
    client.logout()
    return len(data)


def poll(app: App) -> PollReport:
    return run_poll(app)


# --------------------------------------------------------------------------- protocol log

_COMMAND = re.compile(r"^> b'[A-Z0-9]+ ([A-Z]+(?: [A-Z]+)?)")


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.commands: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _COMMAND.match(record.getMessage())
        if match:
            verb = match.group(1)
            self.commands.append(verb if verb.startswith("UID ") else verb.split()[0])


@contextmanager
def protocol_log() -> Iterator[list[str]]:
    """Collect the IMAP commands sent, in order, from the client's protocol log: imaplib's
    debug output (routed by imapclient to ``imapclient.imaplib``) for the commands imaplib
    sends, and ``imapclient.imapclient`` for those imapclient writes itself (SEARCH, FETCH)."""
    loggers = [logging.getLogger(n) for n in ("imapclient.imaplib", "imapclient.imapclient")]
    recorder = _Recorder()
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
        lg.addHandler(recorder)
    try:
        yield recorder.commands
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(recorder)
            lg.setLevel(level)
            lg.propagate = propagate


def after_login(commands: list[str]) -> list[str]:
    return commands[commands.index("LOGIN") + 1:] if "LOGIN" in commands else commands


# --------------------------------------------------------------------------- cases


def scan_case(env: Environment, mb: Mailbox, base_store: Path, *, reps: int) -> Row:
    """Initial scan: a fresh store (recipients and sent mail only) against the full box."""
    app = mb.app()
    target = ImapTarget.of(env, mb)
    last: dict[str, PollReport] = {}

    def ours() -> None:
        last["report"] = poll(app)

    def fresh_start() -> None:  # a fresh state file, and no answers remembered in-process
        copy_store(base_store, mb.ws.store_path)
        clear_caches()

    row = compare(f"initial scan, {mb.size:,} messages", ours, lambda: floor_scan(target),
                  reps=reps, goal=1.5, prepare=fresh_start)
    report = last["report"]
    assert report.scanned == mb.size, (report.scanned, mb.size)
    row.notes.append(f"{report.fetched} fetched whole ({report.fetched / mb.size:.1%})")
    return row


def no_news_case(env: Environment, mb: Mailbox, *, reps: int) -> Row:
    """A poll when nothing arrived since the last one (the store holds the watermark)."""
    app = mb.app()
    target = ImapTarget.of(env, mb)
    row = compare(f"no-news poll, {mb.size:,} messages", lambda: poll(app),
                  lambda: floor_no_news(target), reps=reps, goal=1.3)
    with protocol_log() as commands:
        report = poll(app)
    assert report.scanned == 0, report
    used = after_login(commands)
    row.notes.append(f"{len(used)} IMAP commands after LOGIN ({' '.join(used)}; goal ≤ 3)")
    if len(used) > 3:
        row.notes.append("ABOVE GOAL: more than 3 commands after LOGIN")
    return row


def incremental_case(env: Environment, mb: Mailbox, scanned_store: Path, new: list[bytes], *,
                     reps: int) -> Row:
    """``new`` messages arrive in the scanned box; each repetition starts from the store of
    the scan, so it handles the same messages again."""
    for raw in new:
        env.dovecot.append(mb.user, raw)
    app = mb.app()
    target = ImapTarget.of(env, mb)
    mark = app.store.snapshot().watermark(f"{mb.user}@{env.dovecot.host}", "INBOX")
    assert mark is not None
    restore = lambda: copy_store(scanned_store, mb.ws.store_path)  # noqa: E731
    row = compare(f"incremental poll, {len(new)} new in {mb.size:,}", lambda: poll(app),
                  lambda: floor_incremental(target, mark.last_uid), reps=reps, goal=1.5,
                  prepare=restore)
    restore()
    with protocol_log() as commands:
        report = poll(app)
    assert report.scanned == len(new), report
    used = after_login(commands)
    row.notes.append(f"{report.fetched} fetched whole; {len(used)} IMAP commands after LOGIN "
                     f"({' '.join(used)})")
    return row


# --------------------------------------------------------------------------- peak RSS


def rss_of_scan(mb: Mailbox, base_store: Path, target: ImapTarget) -> dict[str, Any]:
    """Peak RSS of one scan in a fresh process, for mailtracker and for the floor."""
    copy_store(base_store, mb.ws.store_path)
    env = {**os.environ, **mb.ws.environ}
    ours = _child(["scan", str(mb.ws.config_path)], env)
    floor = _child(["floor-scan", json.dumps(target.__dict__)], env)
    ours["store_mb"] = mb.ws.store_path.stat().st_size / 1e6
    return {"ours": ours, "floor": floor}


def _child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.child", *args], env=env,
                          capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args[0]} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
