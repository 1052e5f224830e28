"""The opened workspace: settings, task definition and store, built once per command."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mailtracker.config import Settings as Settings
from mailtracker.config import load_settings
from mailtracker.store import Store
from mailtracker.taskdef import TaskDefinition, find_definition, load_task


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class App:
    settings: Settings
    task: TaskDefinition
    store: Store
    environ: Mapping[str, str]
    now: Callable[[], datetime] = field(default=utc_now)


def open_app(config_path: Path, environ: Mapping[str, str],
             now: Callable[[], datetime] = utc_now) -> App:
    """Load and validate everything a command needs; errors name the file and key."""
    settings = load_settings(config_path, environ)
    task = load_task(find_definition(settings.task_definition, settings.config_dir))
    return App(settings=settings, task=task, store=Store(settings.store_path), environ=environ,
               now=now)
