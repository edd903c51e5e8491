"""The value types the stages pass on are standard dataclasses with two house rules: each
is slotted (a misspelt attribute is an error, not a new attribute), frozen unless it is
one of the few that hold a transfer's running state, and no field that holds a secret
shows in a repr (a stray ``log.info(f"{plan}")`` must not print a key)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re

import pytest

import bootstrap

# The mutable ones: a transfer's counters and the restore's tally, changed as work lands.
MUTABLE = {"bootstrap.restart.restore.Restored", "bootstrap.transfer.upload.SyncState",
           "bootstrap.transfer.upload.UploadStats", "bootstrap.transfer.download.Stats",
           "bootstrap.transfer.plan.Segment", "bootstrap.transfer.ranges._Landed",
           "bootstrap.transfer.plan.LargeFile"}
SECRET_FIELD = re.compile(r"(secret|token|password|^key$|_key$)")
NOT_SECRET = {"bootstrap.transfer.listing.RemoteObject.key",  # an object's name
              "bootstrap.config.settings.Launch.secret_file"}  # where the secret is


def value_types() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(bootstrap.__path__, "bootstrap."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [v for v in vars(module).values() if isinstance(v, type)
                  and dataclasses.is_dataclass(v) and v.__module__ == info.name]
    return found


def name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_scan_finds_the_value_types() -> None:
    names = {name(cls) for cls in value_types()}
    assert {"bootstrap.config.settings.Settings", "bootstrap.cluster.topology.Topology",
            "bootstrap.mpi.plan.Plan"} <= names, names
    assert names >= MUTABLE, MUTABLE - names  # a renamed one must be renamed here too


@pytest.mark.parametrize("cls", value_types(), ids=name)
def test_each_value_type_is_slotted_and_frozen_unless_it_holds_running_state(cls: type) -> None:
    assert "__slots__" in vars(cls), f"{name(cls)}: @dataclass(..., slots=True)"
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen is (name(cls) not in MUTABLE), name(cls)


@pytest.mark.parametrize("cls", value_types(), ids=name)
def test_no_secret_field_shows_in_a_repr(cls: type) -> None:
    shown = [f.name for f in dataclasses.fields(cls) if f.repr and SECRET_FIELD.search(f.name)
             and f"{name(cls)}.{f.name}" not in NOT_SECRET]
    assert shown == [] or _writes_its_own_repr(cls), f"{name(cls)} shows {shown}"


def _writes_its_own_repr(cls: type) -> bool:
    """A class may write its own ``__repr__`` (Credentials shows the key's first letters);
    the one dataclasses generates is compiled from a string."""
    written: str = inspect.unwrap(vars(cls)["__repr__"]).__code__.co_filename
    return written != "<string>"


def test_the_secret_scan_sees_a_shown_secret() -> None:
    """The control: a value type that prints its token fails the rule above."""
    @dataclasses.dataclass(frozen=True, slots=True)
    class Leaky:
        host: str
        token: str

    shown = [f.name for f in dataclasses.fields(Leaky) if f.repr and SECRET_FIELD.search(f.name)]
    assert shown == ["token"] and not _writes_its_own_repr(Leaky)
    assert "s3cr3t" in repr(Leaky("h", "s3cr3t"))
