"""Lifecycles: a table of states and the transitions allowed between them, the one check every transition
makes, and the record each leaves (from, to, when, why). Workspaces, jobs and migrations share this shape,
as runc's containers do (libcontainer/state_linux.go)."""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from xos.errors import IllegalTransition

S = TypeVar("S", bound=enum.StrEnum)


@dataclass(frozen=True)
class Transition:
    """One change of state and why it happened."""

    old: str
    new: str
    at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        """As the APIs show it."""
        return {"from": self.old, "to": self.new, "at": self.at, "reason": self.reason}


class Lifecycle(Generic[S]):
    """The states of one kind of thing (`what`: "job", "workspace") and the transitions each allows."""

    def __init__(self, what: str, legal: Mapping[S, Collection[S]]) -> None:
        states = set(type(next(iter(legal))))
        if set(legal) != states:
            raise ValueError(f"the {what} lifecycle has no row for {sorted(states - set(legal))}")
        self.what = what
        self.legal = {old: frozenset(new) for old, new in legal.items()}

    def allows(self, old: S, new: S) -> bool:
        """Whether `old` may become `new`."""
        return new in self.legal[old]

    def final(self, state: S) -> bool:
        """Whether nothing follows `state`."""
        return not self.legal[state]

    def step(self, name: str, old: S, new: S, reason: str, **details: Any) -> Transition:
        """The transition of `name` from `old` to `new`; IllegalTransition (with `details`) if not allowed."""
        if not self.allows(old, new):
            raise IllegalTransition(f"{self.what} {name} is {old.value}; it cannot become {new.value}",
                                    state=old.value, wanted=new.value, **details)
        return Transition(old.value, new.value, time.time(), reason)
