"""``@record``: a frozen dataclass that costs less to define.

``@dataclass(frozen=True)`` writes six methods per class as source text and compiles each
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``).
Every command imports some forty such classes before it does anything: about half of
``mailtracker status``'s start-up was spent compiling them. A record compiles only its
``__init__``; the other five are shared functions that read the class's fields:

- ``==`` compares records of the very same class field by field (``compare=True`` fields),
  ``hash`` hashes the same fields (or those with ``hash=True``), ``repr`` reads like a
  dataclass's;
- a field set by ``__init__`` cannot be assigned or deleted again
  (``dataclasses.FrozenInstanceError``); ``dataclasses.replace``, ``fields``, ``asdict``,
  copy and pickle work as for any dataclass.

A method the class defines itself is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")


def _fields_of(cls: type, attr: str) -> tuple[str, ...]:
    names: tuple[str, ...] = getattr(cls, attr)
    return names


def _eq(self: Any, other: object) -> object:
    if other.__class__ is not self.__class__:
        return NotImplemented
    names = _fields_of(self.__class__, "_record_compare")
    equal: bool = tuple(getattr(self, n) for n in names) == tuple(getattr(other, n)
                                                                 for n in names)
    return equal


def _hash(self: Any) -> int:
    return hash(tuple(getattr(self, n) for n in _fields_of(self.__class__, "_record_hash")))


def _repr(self: Any) -> str:
    shown = ", ".join(f"{n}={getattr(self, n)!r}"
                      for n in _fields_of(self.__class__, "_record_repr"))
    return f"{self.__class__.__qualname__}({shown})"


def _setattr(self: Any, name: str, value: Any) -> None:
    if name in self.__dict__:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _make(cls: type[T]) -> type[T]:
    made = dataclasses.dataclass(cls, frozen=False, eq=False, repr=False)
    fields = dataclasses.fields(made)  # type: ignore[arg-type]
    made._record_compare = tuple(f.name for f in fields if f.compare)  # type: ignore[attr-defined]
    made._record_hash = tuple(  # type: ignore[attr-defined]
        f.name for f in fields if (f.compare if f.hash is None else f.hash))
    made._record_repr = tuple(f.name for f in fields if f.repr)  # type: ignore[attr-defined]
    own = made.__dict__
    for name, method in (("__eq__", _eq), ("__repr__", _repr), ("__setattr__", _setattr),
                         ("__delattr__", _delattr)):
        if name not in own:
            setattr(made, name, method)
    if own.get("__hash__") is None:
        made.__hash__ = _hash  # type: ignore[method-assign]
    return made


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(cls: None = None, /) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, eq_default=True)
def record(cls: type[T] | None = None, /) -> type[T] | Callable[[type[T]], type[T]]:
    """Use as ``@record`` (like ``@dataclass(frozen=True)``)."""
    if cls is None:
        return _make
    return _make(cls)
