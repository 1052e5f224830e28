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
from collections.abc import Callable
from datetime import date, datetime
from enum import Enum
from functools import cache
from typing import Any, TypeVar, cast

T = TypeVar("T")


def to_doc(obj: Any) -> dict[str, Any]:
    """A JSON-safe dict of a dataclass instance."""
    return {name: _dump(getattr(obj, name)) for name in _names(cast(Any, type(obj)))}


@cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _dump(value: Any) -> Any:
    if value is None or type(value) in (str, int, bool, float):
        return value
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


def from_doc(cls: type[T], doc: dict[str, Any]) -> T:
    """Build ``cls`` from a document written by ``to_doc``."""
    kwargs = {}
    for name, load in _loaders(cast(Any, cls)):
        if name in doc:
            value = doc[name]
            kwargs[name] = None if value is None else load(value)
    return cls(**kwargs)


@cache
def _loaders(cls: type) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """Each field's name and the function that turns its stored value (not None) back."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, _loader(hints[f.name])) for f in dataclasses.fields(cls))


def _keep(value: Any) -> Any:
    return value


@cache
def _loader(tp: Any) -> Callable[[Any], Any]:
    """The conversion of a stored value to ``tp``, worked out once per type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            return _keep
        inner = _loader(args[0])
        return lambda v: None if v is None else inner(v)
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(tp) or (Any,)
        item = _loader(item_type)
        if origin is tuple:
            return lambda v: tuple(None if x is None else item(x) for x in v)
        return lambda v: [None if x is None else item(x) for x in v]
    if origin is dict:
        _, value_type = typing.get_args(tp)
        value = _loader(value_type)
        return lambda v: {k: None if x is None else value(x) for k, x in v.items()}
    if tp is datetime:
        return datetime.fromisoformat
    if tp is date:
        return date.fromisoformat
    if isinstance(tp, type) and issubclass(tp, Enum):
        return cast(Callable[[Any], Any], tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return lambda v: from_doc(tp, v)
    return _keep
