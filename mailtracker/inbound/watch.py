"""``watch``: poll, then wait for news (IDLE or polling), forever; reconnect with backoff.

Runs for weeks unattended: every failure of the link is logged and retried with exponential
backoff (1 s doubling to ``max_backoff``), a health line is logged every ``health_interval``,
and SIGINT/SIGTERM stop it cleanly — never in the middle of a store write (a signal during a
poll takes effect once the poll's batch is written; during a wait it interrupts the wait).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol, TypeVar

from mailtracker.errors import (
    GraphAuthError,
    GraphError,
    ImapAuthError,
    ImapError,
    ImapFolderError,
    ImapTlsError,
    OAuth2Error,
    OAuth2UnavailableError,
    StoreError,
)

log = logging.getLogger("mailtracker.watch")


class StopRequested(BaseException):
    """Raised by the signal handler to interrupt a blocking wait (not an error)."""


class Watched(Protocol):
    """What ``watch`` needs of a mailbox (IMAP's ``Mailbox``, Graph's ``GraphReader``)."""

    def wait_for_change(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


Mailbox = TypeVar("Mailbox", bound=Watched)


class PollSummary(Protocol):
    @property
    def new_messages(self) -> int: ...

    @property
    def changes(self) -> list[str]: ...


@dataclass
class WatchStats:
    started: float = field(default_factory=time.monotonic)
    polls: int = 0
    messages: int = 0
    changes: int = 0
    reconnects: int = 0
    last_error: str | None = None
    last_poll_at: float | None = None


@dataclass
class _StopState:
    event: threading.Event = field(default_factory=threading.Event)
    interruptible: bool = False


@contextmanager
def _signals(state: _StopState) -> Iterator[None]:
    """SIGINT/SIGTERM set the stop flag; during a wait they also interrupt it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        state.event.set()
        if state.interruptible:
            state.interruptible = False
            raise StopRequested

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def _interruptible(state: _StopState) -> Iterator[None]:
    state.interruptible = True
    try:
        yield
    finally:
        state.interruptible = False


def run_watch(connect: Callable[[], Mailbox], poll: Callable[[Mailbox], PollSummary], *,
              wait_seconds: float, health_interval: float = 3600.0,
              max_backoff: float = 300.0, stop: threading.Event | None = None,
              after_poll: Callable[[], object] | None = None) -> WatchStats:
    """Loop until stopped. ``connect`` opens and selects; ``poll`` processes one pass;
    ``after_poll`` (the follow-up scheduler) runs after each successful poll.

    A refused login, a missing folder or a TLS failure (untrusted certificate, wrong port for
    the TLS mode) before the first poll is configuration: it is raised, so ``watch`` stops
    with ``check``'s advice instead of retrying forever. Once watch has worked, they are
    logged as errors and retried at the slowest backoff, since a password change by IT is a
    normal reason for them to start working again.
    """
    state = _StopState(event=stop or threading.Event())
    stats = WatchStats()
    backoff = 1.0
    next_health = time.monotonic() + health_interval
    with _signals(state):
        while not state.event.is_set():
            mailbox: Watched | None = None
            try:
                with _interruptible(state):
                    mailbox = connect()
                log.info("connected; watching for new mail")
                while not state.event.is_set():
                    summary = poll(mailbox)
                    stats.polls += 1
                    stats.messages += summary.new_messages
                    stats.changes += len(summary.changes)
                    stats.last_poll_at = time.time()
                    for line in summary.changes:
                        log.info("%s", line)
                    if after_poll is not None:
                        after_poll()
                    backoff = 1.0
                    if time.monotonic() >= next_health:
                        _health(stats)
                        next_health = time.monotonic() + health_interval
                    if state.event.is_set():
                        break
                    with _interruptible(state):
                        mailbox.wait_for_change(min(wait_seconds, max(
                            1.0, next_health - time.monotonic())))
            except StopRequested:
                pass
            except (ImapAuthError, ImapFolderError, ImapTlsError, OAuth2Error,
                    GraphAuthError) as exc:
                if isinstance(exc, OAuth2UnavailableError):  # the IdP is down: a lost link
                    backoff = _link_lost(state, stats, exc, backoff, max_backoff)
                    continue
                if stats.polls == 0:  # never worked: configuration, which no retry mends
                    log.error("watch cannot start: %s. Retrying will not help: run "
                              "'mailtracker check' to see what to fix", str(exc).rstrip(". "))
                    raise
                stats.last_error = str(exc)
                log.error("%s; retrying in %.0f s", exc, max_backoff)
                backoff = max_backoff
                _pause(state, backoff)
            except (ImapError, GraphError, OSError, StoreError) as exc:
                backoff = _link_lost(state, stats, exc, backoff, max_backoff)
            finally:
                if mailbox is not None:
                    _close(mailbox, aborted=state.event.is_set())
    log.info("stopped after %d poll(s), %d message(s), %d change(s)", stats.polls,
             stats.messages, stats.changes)
    return stats


def _link_lost(state: _StopState, stats: WatchStats, exc: BaseException, backoff: float,
               max_backoff: float) -> float:
    """Log, wait ``backoff`` (interruptibly) and return the next, doubled backoff."""
    stats.last_error = str(exc)
    stats.reconnects += 1
    log.warning("%s; reconnecting in %.0f s", exc, backoff)
    _pause(state, backoff)
    return min(backoff * 2, max_backoff)


def _pause(state: _StopState, seconds: float) -> None:
    try:
        with _interruptible(state):
            state.event.wait(seconds)
    except StopRequested:
        pass


def _close(mailbox: Watched, *, aborted: bool) -> None:
    abort = getattr(mailbox, "abort", None)
    try:
        if aborted and callable(abort):
            abort()
        else:
            mailbox.close()
    except (ImapError, GraphError, OSError):
        pass


def _health(stats: WatchStats) -> None:
    up = (time.monotonic() - stats.started) / 3600
    log.info("health: up %.1f h, %d poll(s), %d message(s) seen, %d change(s), "
             "%d reconnect(s)%s", up, stats.polls, stats.messages, stats.changes,
             stats.reconnects, f", last error: {stats.last_error}" if stats.last_error else "")
