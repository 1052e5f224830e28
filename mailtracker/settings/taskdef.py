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


def _str(table: Mapping[str, Any], key: str, where: str, path: Path,
         default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise TaskDefinitionError("must be a non-empty string", path=path, key=f"{where}.{key}")
    return value


def _build(data: Mapping[str, Any], path: Path) -> TaskDefinition:
    task = data.get("task", {})
    klik = data.get("klik", {})
    roles = tuple(
        RoleDef(key=_str(r, "key", f"roles[{i}]", path),
                label_da=_str(r, "label_da", f"roles[{i}]", path),
                label_en=_str(r, "label_en", f"roles[{i}]", path),
                required=bool(r.get("required", False)),
                template=_str(r, "template", f"roles[{i}]", path, f"orientation-{r.get('key')}"))
        for i, r in enumerate(data.get("roles", []))
    )
    if not roles:
        raise TaskDefinitionError("defines no roles", path=path, key="roles")
    milestones = tuple(
        MilestoneDef(key=_str(m, "key", f"milestones[{i}]", path),
                     label_da=_str(m, "label_da", f"milestones[{i}]", path),
                     label_en=_str(m, "label_en", f"milestones[{i}]", path),
                     source=m.get("source", "manual"),
                     manual=bool(m.get("manual", m.get("source", "manual") == "manual")),
                     optional=bool(m.get("optional", False)),
                     next_da=m.get("next_da", ""), next_en=m.get("next_en", ""))
        for i, m in enumerate(data.get("milestones", []))
    )
    try:
        rules = rules_from_mapping(data.get("inbound", {}))
    except TaskDefinitionError as exc:
        raise TaskDefinitionError(str(exc), path=path) from None
    followups = followups_from_mapping(data, roles={r.key for r in roles},
                                       milestones={m.key for m in milestones}, path=path)
    return TaskDefinition(
        key=_str(task, "key", "task", path),
        title=_str(task, "title", "task", path),
        title_en=_str(task, "title_en", "task", path, task.get("title")),
        project=task.get("project", ""),
        path=path,
        klik=KlikLabels(
            not_started=_str(klik, "not_started", "klik", path, "ikke startet"),
            in_progress=_str(klik, "in_progress", "klik", path, "i gang"),
            done=_str(klik, "done", "klik", path, "fuldført"),
        ),
        require_acknowledgement=bool(klik.get("require_acknowledgement", False)),
        roles=roles,
        milestones=milestones,
        rules=rules,
        raw=data,
        followups=followups,
    )
