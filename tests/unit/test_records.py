"""The records' contract (``bootstrap/records.py``): what ``@dataclass(frozen=True)`` and
``@dataclass`` gave the stages, point by point, and the mistakes a class definition can
make refused when the class is made, as dataclasses refuses them."""

from __future__ import annotations

import copy
import pickle
from typing import Any, ClassVar, Optional

import pytest

from bootstrap.records import FrozenError, asdict, field, frozen, mutable


@frozen
class Part:
    """A test record: one required field, defaults, a factory, a hidden field."""

    name: str
    size: int = 0
    tags: tuple[str, ...] = field(default_factory=tuple)
    token: str = field(default="", repr=False)
    LIMIT: ClassVar[int] = 7

    @property
    def big(self) -> bool:
        return self.size > self.LIMIT


@frozen
class Whole:
    """Records inside a record, for asdict."""

    parts: list[Part]
    first: Optional[Part] = None
    by_name: dict[str, Part] = field(default_factory=dict)


@mutable
class Counter:
    """A mutable record with __post_init__."""

    start: int
    now: int = 0
    seen: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.now = self.start


def test_fields_bind_by_position_and_keyword_with_defaults_and_factories() -> None:
    assert Part("a").size == 0 and Part("a").tags == () and Part("a").token == ""
    assert Part("a", 3, ("x",), "t") == Part(name="a", size=3, tags=("x",), token="t")
    assert Part("a", token="t").token == "t"
    assert Part("a").big is False and Part("a", 8).big is True  # methods kept
    assert Part.__record_fields__ == ("name", "size", "tags", "token")  # type: ignore[attr-defined]
    assert Part.LIMIT == 7 and "LIMIT" not in vars(Part("a"))  # a ClassVar is not a field
    counters = Counter(1), Counter(1)
    counters[0].seen.append(1)
    assert counters[1].seen == []  # a factory's value per instance, never shared


@pytest.mark.parametrize(("call", "message"), [
    # the checker refuses each of these too (the ignores): the records are dataclasses to it
    (lambda: Part(), "missing the argument 'name'"),  # type: ignore[call-arg]
    (lambda: Part("a", 1, (), "t", 5), "takes 4 arguments"),  # type: ignore[call-arg]
    (lambda: Part("a", name="b"), "got 'name' twice"),  # type: ignore[misc]
    (lambda: Part("a", colour="red"), "unexpected argument 'colour'"),  # type: ignore[call-arg]
])
def test_a_wrong_call_is_a_type_error_naming_the_field(call: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


def test_repr_eq_and_hash_are_by_value_and_a_hidden_field_stays_out_of_the_repr() -> None:
    assert repr(Part("a", 2, token="secret")) == "Part(name='a', size=2, tags=())"
    assert Part("a") == Part("a") and Part("a") != Part("b")
    assert hash(Part("a", 1)) == hash(Part("a", 1)) and len({Part("a"), Part("a")}) == 1
    assert Part("a") != ("a", 0, (), "")  # type: ignore[comparison-overlap] # not a tuple, and not equal to one
    assert Counter(1) == Counter(1) and Counter(1) != Counter(2)


def test_a_frozen_record_refuses_assignment_and_deletion() -> None:
    part = Part("a")
    with pytest.raises(FrozenError, match="cannot assign to 'size'"):
        part.size = 3  # type: ignore[misc]
    with pytest.raises(AttributeError, match="cannot delete 'name'"):
        del part.name
    assert part == Part("a")


def test_a_mutable_record_takes_assignment_runs_post_init_and_is_unhashable() -> None:
    counter = Counter(5)
    assert counter.now == 5  # __post_init__ ran
    counter.now += 1
    assert counter.now == 6 and counter != Counter(5)
    with pytest.raises(TypeError, match="unhashable"):
        hash(counter)


def test_copies_and_pickles_come_back_equal() -> None:
    part = Part("a", 2, ("x",), "t")
    assert copy.copy(part) == part and copy.deepcopy(part) == part
    assert pickle.loads(pickle.dumps(part)) == part
    assert pickle.loads(pickle.dumps(Counter(3))).now == 3


def test_asdict_turns_nested_records_into_dicts() -> None:
    whole = Whole([Part("a")], Part("b", 1), {"c": Part("c")})
    assert asdict(whole) == {
        "parts": [{"name": "a", "size": 0, "tags": (), "token": ""}],
        "first": {"name": "b", "size": 1, "tags": (), "token": ""},
        "by_name": {"c": {"name": "c", "size": 0, "tags": (), "token": ""}}}
    assert asdict(Counter(2)) == {"start": 2, "now": 2, "seen": []}


def test_class_definitions_dataclasses_would_refuse_are_refused() -> None:
    with pytest.raises(ValueError, match="mutable default would be shared"):
        @frozen
        class Shared:
            items: list[int] = []  # noqa: RUF012

    with pytest.raises(TypeError, match="without a default follows one with it"):
        @frozen
        class Order:
            a: int = 0
            b: int  # type: ignore[misc]

    with pytest.raises(TypeError, match="cannot inherit from another record"):
        @frozen
        class Child(Part):
            extra: int = 0

    with pytest.raises(TypeError, match="cannot define __setattr__"):
        @frozen
        class Sets:
            a: int

            def __setattr__(self, key: str, value: object) -> None:
                object.__setattr__(self, key, value)

    with pytest.raises(ValueError, match="not both"):
        field(default=1, default_factory=int)
