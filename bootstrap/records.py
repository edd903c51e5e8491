"""Records: the value types the stages pass on, built without :mod:`dataclasses`.

``@frozen`` makes what ``@dataclass(frozen=True)`` makes, and ``@mutable`` what a plain
``@dataclass`` does, for the subset this project uses:

* ``__init__`` over the class's own annotated fields in order (``ClassVar`` ones are not
  fields), positional or by keyword; a field with a default (or ``field(default_factory=
  ...)``) may be left out, and none without one may follow one with it; list, dict and
  set defaults are refused (they would be shared by every instance); ``__post_init__``
  runs last when the class defines one;
* ``__repr__`` of the fields (``field(repr=False)`` leaves one out: a key, a token);
* ``__eq__`` between records of the same class, field by field; a frozen record hashes
  its fields, a mutable one is unhashable (as a dataclass with ``eq`` is);
* a frozen record refuses ``setattr`` and ``delattr`` after ``__init__`` with
  :class:`FrozenError` (an ``AttributeError``, like ``dataclasses.FrozenInstanceError``);
* :func:`asdict` turns a record, recursively, into a dict (for the JSON reports).

Methods a class defines itself are kept. Inheritance between records is refused: none of
ours needs it, and half-supporting it would be a trap.

Why not :mod:`dataclasses`: start-up is budgeted (issue #21: a no-download job's
overhead over bare Python). Measured by callgrind on the no-download job (3.11):
``import dataclasses`` costs 73M instructions (it imports ``inspect``, which imports
``ast``, ``dis`` and ``tokenize``) and each frozen class ~4.6M more (six methods, each
compiled by ``exec``); with the 21 records a job makes before its exec, that was two
thirds of the bootstrap's own work. Here every method is a closure over the class's field
names, so making a record class compiles nothing (0.14 ms a class against 1.27 ms,
measured on 3.11): the no-download job's count went from 237M to 111M instructions
(bare ``python -c pass``: 36M). Construction is what the hot records need: positional
(a listed object), as fast as a dataclass's (1.56 against 1.58 µs for four fields);
by keyword within 10%, with defaults filled ~40% slower, on records made a few
times a job. The checker sees both decorators as dataclasses (``dataclass_transform``,
PEP 681), so fields, defaults and frozenness are type-checked exactly as before.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_options: object) -> object:
        return lambda decorated: decorated

_MISSING: Any = object()
_SHARED_DEFAULTS = (list, dict, set)


class FrozenError(AttributeError):
    """A field of a frozen record was assigned or deleted after ``__init__``."""


class Field:
    """What :func:`field` says about one field (read by the decorators only)."""

    __slots__ = ("default", "default_factory", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool) -> None:
        self.default = default
        self.default_factory = default_factory
        self.repr = repr


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] = _MISSING,
          repr: bool = True) -> Any:
    """A field's default made per instance (``default_factory``), or a field left out of
    the repr; as :func:`dataclasses.field`, for those three options."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("a field takes a default or a default_factory, not both")
    return Field(default, default_factory, repr)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[T]) -> type[T]:
    """An immutable record (see the module's contract)."""
    return _build(cls, is_frozen=True)


@dataclass_transform(field_specifiers=(field,))
def mutable(cls: type[T]) -> type[T]:
    """A record whose fields may be reassigned (a counter, a transfer's state)."""
    return _build(cls, is_frozen=False)


def asdict(value: Any) -> Any:
    """A record as a dict of its fields, records inside it (also in lists, tuples and
    dict values) turned into dicts too; other values are returned as they are."""
    names = getattr(type(value), "__record_fields__", None)
    if names is not None:
        return {name: asdict(getattr(value, name)) for name in names}
    if isinstance(value, (list, tuple)):
        return type(value)(asdict(item) for item in value)
    if isinstance(value, dict):
        return {key: asdict(item) for key, item in value.items()}
    return value


def _is_class_var(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return isinstance(text, str) and text.split("[", 1)[0].rsplit(".", 1)[-1] == "ClassVar"


def _build(cls: type[T], is_frozen: bool) -> type[T]:
    name = cls.__qualname__
    if any(hasattr(base, "__record_fields__") for base in cls.__mro__[1:]):
        raise TypeError(f"{name}: a record cannot inherit from another record")
    # The class's own annotations (3.10+; not the class __dict__, which 3.14 need not fill),
    # as text where the module has `from __future__ import annotations`, as all of ours do.
    annotations = cls.__annotations__
    names = tuple(key for key, hint in annotations.items() if not _is_class_var(hint))
    defaults: dict[str, Any] = {}  # field -> value
    factories: dict[str, Callable[[], Any]] = {}
    hidden = set()  # fields left out of the repr
    for key in names:
        value = cls.__dict__.get(key, _MISSING)
        if isinstance(value, Field):
            if not value.repr:
                hidden.add(key)
            if value.default_factory is not _MISSING:
                factories[key] = value.default_factory
                delattr(cls, key)
                continue
            value = value.default
            if value is _MISSING:
                delattr(cls, key)
            else:
                setattr(cls, key, value)
        if value is not _MISSING:
            if isinstance(value, _SHARED_DEFAULTS):
                raise ValueError(f"{name}.{key}: a mutable default would be shared by every "
                                 "instance; use field(default_factory=...)")
            defaults[key] = value
        elif defaults or factories:
            raise TypeError(f"{name}.{key}: a field without a default follows one with it")
    in_repr = tuple(key for key in names if key not in hidden)
    values: Callable[[Any], Any] = attrgetter(*names) if names else (lambda _self: ())
    post_init = cls.__dict__.get("__post_init__")
    count = len(names)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > count:
            raise TypeError(f"{name}() takes {count} arguments but {len(args)} were given")
        bound = dict(zip(names, args, strict=False))  # fewer args than names: the rest below
        for key in names[len(args):]:
            if key in kwargs:
                bound[key] = kwargs.pop(key)
            elif key in defaults:
                bound[key] = defaults[key]
            elif key in factories:
                bound[key] = factories[key]()
            else:
                raise TypeError(f"{name}() missing the argument {key!r}")
        if kwargs:
            key = next(iter(kwargs))
            raise TypeError(f"{name}() got {key!r} twice" if key in names
                            else f"{name}() got an unexpected argument {key!r}")
        return bound

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # The instance's __dict__ directly: no __setattr__ per field (a frozen record's
        # refuses), one C call on the positional path every hot record takes.
        if len(args) == count and not kwargs:
            self.__dict__.update(zip(names, args, strict=True))
        else:
            self.__dict__.update(bind(args, kwargs))
        if post_init is not None:
            post_init(self)

    def __repr__(self: Any) -> str:
        return f"{name}({', '.join(f'{key}={getattr(self, key)!r}' for key in in_repr)})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return values(self) == values(other)  # type: ignore[no-any-return]

    def __hash__(self: Any) -> int:
        return hash(values(self))

    def __setattr__(self: Any, key: str, value: object) -> None:
        raise FrozenError(f"{name} is frozen: cannot assign to {key!r}")

    def __delattr__(self: Any, key: str) -> None:
        raise FrozenError(f"{name} is frozen: cannot delete {key!r}")

    own_hash = cls.__dict__.get("__hash__")  # None also where the class defines __eq__ alone
    methods: dict[str, Any] = {"__init__": __init__, "__repr__": __repr__, "__eq__": __eq__}
    methods = {method: function for method, function in methods.items()
               if method not in cls.__dict__}
    if is_frozen:
        for method in ("__setattr__", "__delattr__"):
            if method in cls.__dict__:
                raise TypeError(f"{name}: a frozen record cannot define {method}")
        methods.update(__setattr__=__setattr__, __delattr__=__delattr__)
        if own_hash is None:
            methods["__hash__"] = __hash__
    for method, function in methods.items():
        function.__qualname__ = f"{name}.{method}"
        _put(cls, method, function)
    if not is_frozen and own_hash is None:
        _put(cls, "__hash__", None)  # mutable and compared by value: unhashable
    _put(cls, "__record_fields__", names)
    _put(cls, "__match_args__", names)
    return cls


def _put(cls: type, attribute: str, value: Any) -> None:
    setattr(cls, attribute, value)
