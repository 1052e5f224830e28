"""Task definitions (``config/tasks/<name>.toml``): roles, milestones, KLIK labels, inbound rules.

Data, not code: the engine knows no role or milestone by name except through a definition,
so a municipality can add a neighbouring KLIK task by adding a file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailtracker.errors import TaskDefinitionError
from mailtracker.followup.definition import Followups, followups_from_mapping
from mailtracker.inbound.judge.rules import InboundRules, rules_from_mapping
from mailtracker.resources import data_dir
from mailtracker.tables import Table


@dataclass(frozen=True, slots=True)
class RoleDef:
    """A role to orient (``[[roles]]``) and the template of its orientation mail."""

    key: str
    label_da: str
    label_en: str
    required: bool
    template: str

    def label(self, lang: str) -> str:
        return self.label_da if lang == "da" else self.label_en


@dataclass(frozen=True, slots=True)
class MilestoneDef:
    """A milestone of the task (``[[milestones]]``) and how it is reached."""

    key: str
    label_da: str
    label_en: str
    source: str  # "mail" | "manual" | "derived"
    manual: bool  # may be recorded by hand with `mark`
    optional: bool
    next_da: str
    next_en: str

    def label(self, lang: str) -> str:
        return self.label_da if lang == "da" else self.label_en

    def next_step(self, lang: str) -> str:
        return self.next_da if lang == "da" else self.next_en


@dataclass(frozen=True, slots=True)
class KlikLabels:
    """The KLIK status words, as KLIK shows them."""

    not_started: str = "ikke startet"
    in_progress: str = "i gang"
    done: str = "fuldført"


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """A task definition file, read and checked."""

    key: str
    title: str
    title_en: str
    project: str
    path: Path
    klik: KlikLabels
    require_acknowledgement: bool
    roles: tuple[RoleDef, ...]
    milestones: tuple[MilestoneDef, ...]
    rules: InboundRules
    raw: Mapping[str, Any]  # for later sections (follow-ups) that read their own tables
    followups: Followups = field(default_factory=Followups)  # [schedule], [[events]], …

    def role(self, key: str) -> RoleDef | None:
        return next((r for r in self.roles if r.key == key), None)

    def milestone(self, key: str) -> MilestoneDef | None:
        return next((m for m in self.milestones if m.key == key), None)

    def title_for(self, lang: str) -> str:
        return self.title if lang == "da" else self.title_en


def find_definition(name: str, config_dir: Path) -> Path:
    """A path, or a name looked up in ``<config dir>/tasks/`` then the packaged tasks."""
    candidate = Path(name).expanduser()
    if candidate.suffix == ".toml" or "/" in name:
        path = candidate if candidate.is_absolute() else config_dir / candidate
        if not path.is_file():
            raise TaskDefinitionError(f"task definition not found: {path}", key="task.definition")
        return path
    for base in (config_dir / "tasks", data_dir("config") / "tasks"):
        path = base / f"{name}.toml"
        if path.is_file():
            return path
    raise TaskDefinitionError(f"no task definition named {name!r} (looked in "
                              f"{config_dir / 'tasks'} and the packaged tasks)",
                              key="task.definition")


def load_task(path: Path) -> TaskDefinition:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TaskDefinitionError(f"cannot read: {exc.strerror}", path=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskDefinitionError(f"invalid TOML: {exc}", path=path) from None
    try:
        return _build(data, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise TaskDefinitionError(f"invalid task definition: {exc!r}", path=path) from None


def _build(data: Mapping[str, Any], path: Path) -> TaskDefinition:
    top = Table(data, "", path, TaskDefinitionError)
    top.unknown_keys({"task", "klik", "roles", "milestones", "inbound", "schedule", "events",
                      "reminders", "escalations"})
    task, klik = top.table("task"), top.table("klik")
    task.unknown_keys({"key", "title", "title_en", "project"})
    klik.unknown_keys({"not_started", "in_progress", "done", "require_acknowledgement"})
    for r in top.tables("roles"):
        r.unknown_keys({"key", "label_da", "label_en", "required", "template"})
    for m in top.tables("milestones"):
        m.unknown_keys({"key", "label_da", "label_en", "source", "manual", "optional",
                        "next_da", "next_en"})
    roles = tuple(
        RoleDef(key=r.req_str("key"), label_da=r.req_str("label_da"),
                label_en=r.req_str("label_en"), required=r.flag("required", False),
                template=r.req_str("template", f"orientation-{r.data.get('key')}"))
        for r in top.tables("roles"))
    if not roles:
        raise top.fail("roles", "defines no roles")
    milestones = tuple(
        MilestoneDef(key=m.req_str("key"), label_da=m.req_str("label_da"),
                     label_en=m.req_str("label_en"),
                     source=m.choice("source", "manual", ("mail", "manual", "derived")),
                     manual=m.flag("manual", m.data.get("source", "manual") == "manual"),
                     optional=m.flag("optional", False),
                     next_da=m.text("next_da", "") or "", next_en=m.text("next_en", "") or "")
        for m in top.tables("milestones"))
    rules = rules_from_mapping(data.get("inbound", {}), path=path)
    followups = followups_from_mapping(data, roles={r.key for r in roles},
                                       milestones={m.key for m in milestones}, path=path)
    return TaskDefinition(
        key=task.req_str("key"),
        title=task.req_str("title"),
        title_en=task.req_str("title_en", task.data.get("title")),
        project=task.text("project", "") or "",
        path=path,
        klik=KlikLabels(
            not_started=klik.req_str("not_started", "ikke startet"),
            in_progress=klik.req_str("in_progress", "i gang"),
            done=klik.req_str("done", "fuldført"),
        ),
        require_acknowledgement=klik.flag("require_acknowledgement", False),
        roles=roles,
        milestones=milestones,
        rules=rules,
        raw=data,
        followups=followups,
    )
