"""The opened workspace: settings, task definition and store, built once per command."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from mailtracker.errors import ConfigError
from mailtracker.settings.config import Settings as Settings
from mailtracker.settings.config import load_settings
from mailtracker.settings.taskdef import TaskDefinition, find_definition, load_task
from mailtracker.store import Store

NOW_ENV = "MAILTRACKER_NOW"


def utc_now() -> datetime:
    return datetime.now(UTC)


def clock_from_environ(environ: Mapping[str, str],
                       default: Callable[[], datetime] = utc_now) -> Callable[[], datetime]:
    """``default``, or — a testing and demo aid — a clock that starts at ``$MAILTRACKER_NOW``.

    ``MAILTRACKER_NOW=2026-05-18T10:30:00+02:00`` makes every command believe it is that
    moment (the clock then runs on at normal speed), so reminders, escalations and holidays
    can be tried without waiting for them. Never set it in production.
    """
    raw = environ.get(NOW_ENV, "").strip()
    if not raw:
        return default
    try:
        start = datetime.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"not an ISO-8601 time: {raw!r} (e.g. 2026-05-18T10:30:00+02:00)",
                          key=NOW_ENV) from None
    if start.tzinfo is None or start.utcoffset() is None:
        # The example is built from the value itself, so pasting it back is accepted.
        example = start.replace(tzinfo=timezone(timedelta(hours=1))).isoformat()
        raise ConfigError(f"needs a UTC offset: {raw!r} (e.g. {example})", key=NOW_ENV)
    origin = time.monotonic()

    def now() -> datetime:
        return (start + timedelta(seconds=time.monotonic() - origin)).astimezone(UTC)

    return now


@dataclass(frozen=True)
class App:
    """What a command works with: settings, task definition, store, environment, clock."""

    settings: Settings
    task: TaskDefinition
    store: Store
    environ: Mapping[str, str]
    now: Callable[[], datetime] = field(default=utc_now)


def open_app(config_path: Path, environ: Mapping[str, str],
             now: Callable[[], datetime] = utc_now) -> App:
    """Load and validate everything a command needs; errors name the file and key.

    Unless ``now`` is given, the clock honours ``$MAILTRACKER_NOW`` (``clock_from_environ``).
    """
    if now is utc_now:
        now = clock_from_environ(environ)
    settings = load_settings(config_path, environ)
    task = load_task(find_definition(settings.task_definition, settings.config_dir))
    return App(settings=settings, task=task, store=Store(settings.store_path), environ=environ,
               now=now)
