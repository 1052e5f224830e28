"""The one reader of TOML tables: typed values, and every error names the file and the key.

The config file (``ConfigError``) and the task definitions (``TaskDefinitionError``) are read
through it. Pure: it reads mappings that ``tomllib`` made, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from mailtracker.errors import ConfigError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class Table:
    """One TOML table at ``where`` (``"smtp"``, ``"events[2]"``) of the file ``path``."""

    def __init__(self, data: Any, where: str, path: Path | None,
                 error: type[ConfigError] = ConfigError):
        if not isinstance(data, Mapping):
            raise error("must be a table", path=path, key=where)
        self.data: Mapping[str, Any] = data
        self.where, self.path, self.error = where, path, error

    # ----------------------------------------------------------------------- structure

    def fail(self, key: str | None, message: str) -> ConfigError:
        """The error for ``key`` of this table (the table itself when ``key`` is None)."""
        return self.error(message, path=self.path,
                          key=f"{self.where}.{key}" if key else self.where)

    def unknown_keys(self, allowed: Collection[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.fail(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def table(self, key: str) -> Table:
        """The sub-table ``key`` (empty when missing)."""
        return Table(self.data.get(key, {}), f"{self.where}.{key}" if self.where else key,
                     self.path, self.error)

    def tables(self, key: str, default: list[Any] | None = None) -> list[Table]:
        """The array of tables ``key`` (``[[key]]``), each named ``key[i]``."""
        value = self.data.get(key, [] if default is None else default)
        if not isinstance(value, list):
            raise self.fail(key, "must be an array of tables ([[...]])")
        prefix = f"{self.where}.{key}" if self.where else key
        return [Table(item, f"{prefix}[{i}]", self.path, self.error)
                for i, item in enumerate(value)]

    # ----------------------------------------------------------------------- values

    def text(self, key: str, default: str | None = None, *,
             required: bool = False) -> str | None:
        """A string without control characters; ``None`` when missing and not required."""
        value = self.data.get(key, default)
        if value is None:
            if required:
                raise self.fail(key, "is required")
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {type(value).__name__}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise self.fail(key, "must not contain control characters")
        if required and not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def req_str(self, key: str, default: str | None = None) -> str:
        """A string that must be there and not be blank (stripped)."""
        value = self.text(key, default, required=True)
        assert value is not None
        return value.strip()

    def name(self, key: str, default: str | None = None) -> str:
        """A lower-case name such as ``guide_received``."""
        value = self.data.get(key, default)
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise self.fail(key, f"must be a lower-case name such as guide_received, "
                                 f"not {value!r}")
        return value

    def integer(self, key: str, default: int | None, lo: int, hi: int | None = None) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be a whole number, not {value!r}")
        if value < lo or (hi is not None and value > hi):
            raise self.fail(key, f"must be between {lo} and {hi}, not {value}"
                            if hi is not None else f"must be at least {lo}, not {value}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number of seconds, not {value!r}")
        if not lo <= float(value) <= hi:
            raise self.fail(key, f"must be between {lo} and {hi}, not {value}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.req_str(key, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}, "
                                 f"not {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list of strings, as written."""
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of strings")
        return tuple(value)

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A list of strings, stripped and lower-cased (domains, words)."""
        return tuple(v.strip().lower() for v in self.strings(key, default))

    def names(self, key: str, default: tuple[str, ...], known: Collection[str]) -> tuple[str, ...]:
        """Names from ``known`` (a single string counts as a list of one)."""
        value = self.data.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of names")
        for v in value:
            if v not in known:
                raise self.fail(key, f"unknown name {v!r} (known: {', '.join(sorted(known))})")
        return tuple(value)

    def path_(self, key: str, base: Path) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    def existing_file(self, key: str, base: Path) -> Path | None:
        p = self.path_(key, base)
        if p is not None and not p.is_file():
            raise self.fail(key, f"file not found: {p}")
        return p
