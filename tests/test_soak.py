"""Soak: ``watch`` through a simulated month on a real Dovecot, its link cut every few
simulated minutes, now and then silently dead.

The clock is simulated where mailtracker takes ``now`` (``open_app(now=…)``): every stored
timestamp is simulated time. The watch loop's backoff pauses go through its stop event
(``run_watch(stop=…)``), whose ``wait`` here advances the simulated clock instead of
sleeping. IDLE itself runs against the real server in real time, in rounds of
``IDLE_ROUND`` real seconds, each standing for one 25-minute IDLE round. Checked: no
delivered message is missed, memory (tracemalloc) and open file descriptors do not grow,
IDLE is re-issued within its round every time the link is quiet, and nothing escapes.

The CI variant simulates half a day; ``pytest -m slow tests/test_soak.py`` runs the month.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import re
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailtracker.app import open_app
from mailtracker.inbound import imap
from mailtracker.inbound.poller import imap_settings, poll_once
from mailtracker.inbound.watch import run_watch
from mailtracker.store import Store
from tests.faults.mails import message_id_of, with_message_id
from tests.inbound_mail import eml, noise
from tests.plugins.workspace import IMAP_PW_ENV, Workspace

IDLE_ROUND = 0.3  # real seconds; one simulated 25-minute IDLE round
START = datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
EG_MAILS = {"agreement-eg-pdf.eml": "service_agreement_received",
            "guide-eg.eml": "guide_received", "webinar-invite.eml": "webinar_invited",
            "penneo-signed.eml": "service_agreement_signed"}


class SimClock:
    """Simulated UTC time; advanced by the driver and by the watch's backoff pauses."""

    def __init__(self, start: datetime):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


class SimStop(threading.Event):
    """The watch's stop flag, whose timed ``wait`` (a reconnect backoff) passes in simulated
    time: it advances the clock and returns at once."""

    def __init__(self, clock: SimClock):
        super().__init__()
        self.clock = clock
        self.backoffs: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None or self.is_set():
            return super().wait(timeout)
        self.clock.advance(timeout)
        self.backoffs.append(timeout)
        return self.is_set()


@dataclass
class Watcher(logging.Handler):
    """Counts what the watch logs (no records kept: the soak measures memory)."""

    idle_starts: int = 0
    connects: int = 0
    reconnects: int = 0
    longest_idle: float = 0.0
    errors: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self, logging.DEBUG)

    def __hash__(self) -> int:
        return id(self)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        with self.changed:
            if text.startswith("IDLE started"):
                self.idle_starts += 1
                self.longest_idle = max(self.longest_idle, float(text.split()[-2]))
            elif text.startswith("connected; watching"):
                self.connects += 1
            elif "reconnecting in" in text:
                self.reconnects += 1
            elif record.levelno >= logging.ERROR and len(self.errors) < 20:
                self.errors.append(text)
            self.changed.notify_all()

    def wait_for(self, what: Callable[[], bool], label: str, timeout: float = 30.0) -> None:
        with self.changed:
            if not self.changed.wait_for(what, timeout):
                raise AssertionError(f"timed out waiting for {label}")


@dataclass
class Soak:
    ws: Workspace
    dovecot: Any
    user: str
    proxy: Any
    clock: SimClock
    watcher: Watcher
    rng: random.Random
    delivered: dict[str, str] = field(default_factory=dict)  # examined: Message-ID → milestone
    scanned: dict[str, int] = field(default_factory=dict)  # noise: Message-ID → UID
    cuts: int = 0
    dead_links: int = 0

    def tick(self) -> None:
        """One simulated event: a cut link, a dead link, mail, or a quiet IDLE round."""
        roll = self.rng.random()
        if roll < 0.45:
            self.cut()
        elif roll < 0.47:
            self.dead_link()
        elif roll < 0.62:
            self.mail()
        else:
            self.quiet()

    def _idle_again(self, label: str, timeout: float = 30.0) -> None:
        seen = self.watcher.idle_starts
        self.watcher.wait_for(lambda: self.watcher.idle_starts > seen, label, timeout)

    def cut(self) -> None:
        self.clock.advance(self.rng.uniform(120, 600))  # "every few minutes"
        self.cuts += 1
        self.proxy.cut()
        self._idle_again("IDLE after a cut link")

    def dead_link(self) -> None:
        self.dead_links += 1
        seen = self.watcher.reconnects
        self.proxy.blackhole()
        self.watcher.wait_for(lambda: self.watcher.reconnects > seen, "dead link noticed")
        self.proxy.restore()
        self._idle_again("IDLE after a dead link", timeout=60)

    def mail(self, kind: str | None = None) -> None:
        """EG mail (once each), a spoof (examined: it must reach quarantine) or noise (only
        scanned: the watermark must pass it)."""
        self.clock.advance(self.rng.uniform(60, 600))
        n = len(self.delivered) + len(self.scanned) + 1
        eg_sent = [m for m in self.delivered.values() if m]
        kind = kind or self.rng.choice(("spoof", "noise"))
        milestone: str | None
        if kind == "eg":
            name = list(EG_MAILS)[len(eg_sent)]
            raw, milestone = eml(name), EG_MAILS[name]
        elif kind == "spoof":
            raw = with_message_id(eml("spoof-no-authres.eml"), f"<soak-spoof-{n}@evil.example>")
            milestone = ""
        else:
            raw, milestone = noise(n, size=3000), None
        uid = self.dovecot.append(self.user, raw, date=self.clock.now())
        mid = message_id_of(raw)
        assert mid is not None
        if milestone is None:
            self.scanned[mid] = uid
        else:
            self.delivered[mid] = milestone
        # Looked at and recorded, then idle again: the poll and its store write are done.
        self.watcher.wait_for(lambda: self._last_uid() >= uid, "mail looked at")
        self._idle_again("IDLE after mail")

    def warm_up(self) -> None:
        """Every path once (the EG mails arrive now), so one-time imports and caches are
        not counted as growth."""
        self.cut()
        self.dead_link()
        for kind in ["eg"] * len(EG_MAILS) + ["spoof", "noise"]:
            self.mail(kind)
        for _ in range(20):
            self.tick()

    def quiet(self) -> None:
        self._idle_again("IDLE re-issued on a quiet link", timeout=IDLE_ROUND + 10)
        self.clock.advance(25 * 60)

    def _last_uid(self) -> int:
        if not self.ws.store_path.exists():
            return 0
        mark = Store(self.ws.store_path).snapshot().watermark(
            f"{self.user}@{self.dovecot.host}", "INBOX")
        return mark.last_uid if mark else 0


STATE_MODULES = ("*/mailtracker/store/storage.py", "*/mailtracker/store/__init__.py",
                 "*/mailtracker/store/codec.py", "*/json/*")


def _growth() -> tuple[int, int]:
    """Bytes allocated since tracemalloc started and still alive: (in the store's modules,
    elsewhere). The store keeps the state it last wrote in memory, so that part grows with
    the state; nothing else may grow. The test's own harness is left out (the proxy records
    every byte clients send, for other tests)."""
    # Bounded caches are not growth: re keeps up to 512 compiled patterns, and imaplib
    # compiles one per connection (its tag prefix is random); the email header registry
    # makes a class per call, which lives in reference cycles until collected.
    re.purge()
    gc.collect()
    harness = [tracemalloc.Filter(False, f"*/tests/{name}")
               for name in ("plugins/*", "test_soak.py", "inbound_mail.py", "faults/*")]
    snapshot = tracemalloc.take_snapshot().filter_traces(harness)
    state = snapshot.filter_traces([tracemalloc.Filter(True, p) for p in STATE_MODULES])
    other = snapshot.filter_traces([tracemalloc.Filter(False, p) for p in STATE_MODULES])
    if os.environ.get("SOAK_DEBUG"):
        print(*other.statistics("lineno")[:15], sep="\n")
    return (sum(s.size for s in state.statistics("filename")),
            sum(s.size for s in other.statistics("filename")))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    handler = Watcher()
    logger = logging.getLogger("mailtracker")
    old = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # pytest's log capture keeps every record: not the watch's memory
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old[0])
    logger.propagate = old[1]


def _soak(simulated: timedelta, dovecot: Any, make_workspace: Callable[..., Workspace],
          tcp_proxy: Any, watcher: Watcher, seed: int) -> None:
    user, password = dovecot.add_user()
    proxy = tcp_proxy(dovecot.host, dovecot.port_tls)
    ws = make_workspace(imap=(dovecot, user, password))
    ws.set("imap", port=proxy.port, timeout=1, watch_interval=1)
    clock = SimClock(START)
    app = open_app(ws.config_path, ws.environ, now=clock.now)
    settings = imap_settings(app)
    stop = SimStop(clock)
    soak = Soak(ws, dovecot, user, proxy, clock, watcher, random.Random(seed))
    failures: list[BaseException] = []

    def watch() -> None:
        try:
            run_watch(lambda: imap.connect(settings, ws.environ[IMAP_PW_ENV],
                                           idle_round=IDLE_ROUND),
                      lambda mailbox: poll_once(app, mailbox), wait_seconds=1.0,
                      health_interval=5.0, stop=stop)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    thread = threading.Thread(target=watch, name="soak-watch", daemon=True)
    # pytest (9+) attaches its capture handlers to loggers that do not propagate when the
    # test starts: its growing list of records (and what their arguments reference, such as
    # the exceptions of dropped connections) is pytest's memory, not the watch's.
    ours = logging.getLogger("mailtracker")
    for handler in [h for h in ours.handlers if h is not watcher]:
        ours.removeHandler(handler)
    with app.store.exclusive("inbound"):
        thread.start()
        try:
            watcher.wait_for(lambda: watcher.idle_starts > 0, "first IDLE")
            soak.warm_up()
            fds, mails_before = open_fds(), len(soak.delivered) + len(soak.scanned)
            state_before = ws.store_path.stat().st_size
            tracemalloc.start()
            # One-time growth (caches warming, the first reconnects) lands in the first
            # quarter; a leak per reconnect or per message keeps growing after it.
            end, settled = START + simulated, START + simulated / 4
            while clock.now() < settled and not failures:
                soak.tick()
            baseline = _growth()
            while clock.now() < end and not failures:
                soak.tick()
            soak.quiet()
            after = _growth()
            grown = (after[0], after[1] - baseline[1])
            tracemalloc.stop()
            state_grown = ws.store_path.stat().st_size - state_before
            fds_after = open_fds()
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not failures, f"watch died: {failures[0]!r}"
    assert not thread.is_alive(), "watch did not stop"
    _check(soak, app.store, watcher, grown, state_grown,
           len(soak.delivered) + len(soak.scanned) - mails_before, fds, fds_after)


def _check(soak: Soak, store: Store, watcher: Watcher, grown: tuple[int, int],
           state_grown: int, mails: int, fds: int, fds_after: int) -> None:
    view = store.snapshot()
    handled = view.handled_ids()
    missed = [mid for mid in soak.delivered if mid not in handled]
    assert not missed, f"{len(missed)} of {len(soak.delivered)} messages missed: {missed[:5]}"
    assert all(uid <= soak._last_uid() for uid in soak.scanned.values())
    spoofs = [mid for mid, m in soak.delivered.items() if not m]
    assert len(view.quarantine("efaktura-8b")) == len(spoofs)
    milestones = view.milestones("efaktura-8b")
    assert {m for m in soak.delivered.values() if m} <= set(milestones)
    # Stored times are simulated: spread over the period, none in real "now".
    times = sorted(t.at for t in view.timeline("efaktura-8b"))
    assert all(START <= t <= soak.clock.now() for t in times)
    assert not watcher.errors, watcher.errors
    assert watcher.longest_idle <= IDLE_ROUND + 1e-9
    assert watcher.connects >= soak.cuts + soak.dead_links
    # No leak per reconnect or per message: 1 KB per reconnect would show in ``other``. The
    # store's in-memory copy of the state grows with the state file (parsed: ~10 times).
    state, other = grown
    assert other < 256 * 1024, \
        f"memory grew by {other // 1024} KiB after the first quarter ({soak.cuts} cuts and " \
        f"{mails} mails in all)"
    assert state < 256 * 1024 + 16 * state_grown, \
        f"the store's memory grew by {state // 1024} KiB, the state file by {state_grown}"
    assert fds_after <= fds, f"open file descriptors grew from {fds} to {fds_after}"
    print(f"soak: {(soak.clock.now() - START) / timedelta(days=1):.1f} simulated days, "
          f"{soak.cuts} cut links, {soak.dead_links} dead links, {watcher.connects} connects, "
          f"{watcher.idle_starts} IDLE rounds, {len(soak.delivered) + len(soak.scanned)} "
          f"messages, none missed; memory +{other // 1024} KiB (+{state // 1024} KiB state "
          f"for +{state_grown // 1024} KiB of state file), open fds {fds}→{fds_after}")


def test_watch_survives_half_a_day_of_cut_links(dovecot: Any,
                                                make_workspace: Callable[..., Workspace],
                                                tcp_proxy: Any, watcher: Watcher) -> None:
    _soak(timedelta(hours=12), dovecot, make_workspace, tcp_proxy, watcher, seed=1)


@pytest.mark.slow
def test_watch_survives_a_month_of_cut_links(dovecot: Any,
                                             make_workspace: Callable[..., Workspace],
                                             tcp_proxy: Any, watcher: Watcher,
                                             pytestconfig: pytest.Config) -> None:
    selected = str(pytestconfig.getoption("markexpr") or "")
    if "slow" not in selected or "not slow" in selected:
        pytest.skip("takes about 16 minutes: run with -m slow")
    _soak(timedelta(days=30), dovecot, make_workspace, tcp_proxy, watcher, seed=2)

