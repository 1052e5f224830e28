"""``@record`` behaves like ``@dataclass(frozen=True)`` where the code relies on it."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from mailtracker.models import Notification, NotificationState, Recipient
from mailtracker.record import record


@record
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    note: str = dataclasses.field(default="", compare=False, repr=False)


@record
class Other:
    x: int
    y: int = 0


def test_equality_hash_and_repr_follow_the_fields() -> None:
    a, b = Point(1, 2, ("t",), note="a"), Point(1, 2, ("t",), note="b")
    assert a == b and hash(a) == hash(b)  # note is not compared
    assert a != Point(1, 3) and len({a, b, Point(1, 3)}) == 2
    assert Point(1) != Other(1) and Point(1).__eq__(Other(1)) is NotImplemented
    assert repr(a) == "Point(x=1, y=2, tags=('t',))"
    assert repr(a) == repr(dataclasses.dataclass(frozen=True)(
        type("Point", (), {"__annotations__": {"x": "int", "y": "int", "tags": "tuple"}}))(
        1, 2, ("t",)))


def test_fields_cannot_be_assigned_or_deleted() -> None:
    p = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.y  # type: ignore[misc]
    assert p.x == 1 and p.y == 0


def test_replace_copy_pickle_and_asdict_work() -> None:
    now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    n = Notification("t", "a@b.dk", "orientation", "<1@b.dk>", created_at=now)
    sent = dataclasses.replace(n, state=NotificationState.SENT)
    assert sent.state is NotificationState.SENT and n.state is NotificationState.PENDING
    assert copy.copy(n) == n and copy.deepcopy(sent) == sent
    assert pickle.loads(pickle.dumps(sent)) == sent
    assert dataclasses.asdict(Recipient("a@b.dk", "Åse", "finance"))["name"] == "Åse"
    assert [f.name for f in dataclasses.fields(Point)] == ["x", "y", "tags", "note"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.copy(n).state = NotificationState.SENT  # type: ignore[misc]


def test_an_own_method_is_kept() -> None:
    @record
    class Loose:
        value: str

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Loose) and self.value.lower() == other.value.lower()

        def __hash__(self) -> int:
            return hash(self.value.lower())

    assert Loose("A") == Loose("a") and hash(Loose("A")) == hash(Loose("a"))
