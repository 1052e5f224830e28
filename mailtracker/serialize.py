"""Dataclass ⇄ JSON document conversion for the store boundary (pure).

Handles the field types the models use: str, int, bool, float, datetime (ISO-8601 with offset),
date, StrEnum, dict[str, str], tuples/lists of those, nested dataclasses and ``X | None``.
Unknown keys in a document are ignored, missing ones take the field default, so adding a field
to a model needs no migration.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import date, datetime
from enum import Enum
from functools import cache
from typing import Any, TypeVar, cast

T = TypeVar("T")


def to_doc(obj: Any) -> dict[str, Any]:
    """A JSON-safe dict of a dataclass instance."""
    return {f.name: _dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _dump(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_doc(value)
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _dump(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_doc(cls: type[T], doc: dict[str, Any]) -> T:
    """Build ``cls`` from a document written by ``to_doc``."""
    hints = _hints(cast(Any, cls))
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in doc:
            kwargs[f.name] = _load(hints[f.name], doc[f.name])
    return cls(**kwargs)


def _load(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _load(args[0], value) if len(args) == 1 else value
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_load(inner, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        _, vt = typing.get_args(tp)
        return {k: _load(vt, v) for k, v in value.items()}
    if tp is datetime:
        return datetime.fromisoformat(value)
    if tp is date:
        return date.fromisoformat(value)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_doc(tp, value)
    return value
