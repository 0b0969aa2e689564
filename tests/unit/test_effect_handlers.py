"""The round driver carries out every effect :class:`ftmpi.core.cluster.ClusterState` can return, each by one
handler in :attr:`ftmpi.coordinator.driver.Coordinator.HANDLERS`. No MPI launch (mpi4py is imported without
``MPI_Init``)."""
from __future__ import annotations

import dataclasses
import inspect
import typing

import numpy as np
import pytest

from ftmpi.core import events
from ftmpi.core import protocol as P
from ftmpi.core.cluster import ClusterState


def _driver():
    pytest.importorskip("mpi4py").rc.initialize = False
    from ftmpi.coordinator.driver import Coordinator

    return Coordinator


def _event_types() -> set[type]:
    """What ClusterState.apply consumes, from its signature."""
    hint = typing.get_type_hints(ClusterState.apply)["events"]  # list[Heard | Lost | Chosen]
    (item,) = typing.get_args(hint)
    return set(typing.get_args(item))


def _effect_types() -> set[type]:
    """Every dataclass ftmpi.core.events defines that is not an event: an effect, whether or not it was added
    to the ``Effect`` union."""
    defined = {c for _, c in inspect.getmembers(events, inspect.isclass)
               if c.__module__ == events.__name__ and dataclasses.is_dataclass(c)}
    return defined - _event_types()


def test_the_effect_types_are_found():
    found = _effect_types()
    assert {events.Accept, events.Log, events.SendHandoff, events.WriteHandoff} <= found
    assert not found & {events.Heard, events.Lost, events.Chosen}
    assert found == set(typing.get_args(events.Effect)), "a dataclass in events.py that is neither an event " \
                                                         "ClusterState.apply takes nor in the Effect union"


def test_every_effect_type_has_exactly_one_handler():
    handlers = _driver().HANDLERS
    missing = sorted(t.__name__ for t in _effect_types() - set(handlers))
    assert not missing, f"effects with no handler in Coordinator.HANDLERS: {missing}"
    stale = sorted(t.__name__ for t in set(handlers) - _effect_types())
    assert not stale, f"handlers for types that are not effects: {stale}"
    for t, fn in handlers.items():
        assert callable(fn) and fn.__name__.startswith("_on_"), t


def test_apply_dispatches_by_type():
    """``apply`` goes through the table (an accepted reply lands in the round's replies); a type with no
    handler is an error, not silently skipped."""
    coordinator = _driver()
    c = coordinator.__new__(coordinator)  # the handlers used here touch no MPI and no attribute
    reply = P.Reply(0, 3, 2, np.zeros(2, np.float32), 0.5, 10.0, 10, np.zeros(0, np.int64))
    replies: dict[int, P.Reply] = {}
    c.apply([events.Accept(2, reply)], replies)
    assert replies == {2: reply}
    with pytest.raises(KeyError):
        c.apply([object()], replies)  # type: ignore[list-item]
