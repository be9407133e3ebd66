"""A migration's lifecycle: the phases a workspace goes through on its way to another node, each change with
its reason, and how far the image has got (what `xos ws migrate` draws while it waits)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from xos.lifecycle import Lifecycle, Transition


class Phase(enum.StrEnum):
    """Where a migration is."""

    STARTING = "starting"
    PRE_DUMP = "pre-dump"  # live: memory copied while the workspace runs, round after round
    DUMP = "dump"  # stopped, its state written
    TRANSFER = "transfer"  # the image on its way; the target restores it
    MEMORY_FOLLOWING = "memory following"  # post-copy: it runs there, its memory still comes from here
    RESUMING_HERE = "resuming here"  # the target failed: restored here from the same image
    DONE = "done"
    FAILED = "failed"


P = Phase
MIGRATION = Lifecycle("migration of workspace", {
    P.STARTING: {P.PRE_DUMP, P.DUMP, P.FAILED},
    P.PRE_DUMP: {P.DUMP, P.FAILED},
    P.DUMP: {P.TRANSFER, P.FAILED},
    P.TRANSFER: {P.DONE, P.MEMORY_FOLLOWING, P.RESUMING_HERE, P.FAILED},
    P.MEMORY_FOLLOWING: {P.DONE, P.FAILED},
    P.RESUMING_HERE: {P.FAILED},
    P.DONE: set(),
    P.FAILED: set(),
})


@dataclass
class Migration:
    """One migration under way: its phase, its history and the bytes of the image sent so far."""

    workspace: str
    to: str
    phase: Phase = Phase.STARTING
    sent: int = 0
    total: int = 0
    history: list[Transition] = field(default_factory=list)

    def enter(self, new: Phase, reason: str = "") -> None:
        """Move to phase `new` (IllegalTransition if it cannot follow this one), keeping why."""
        self.history.append(MIGRATION.step(self.workspace, self.phase, new, reason or str(new)))
        self.phase = new

    def sending(self, total: int) -> None:
        """The image, `total` bytes of it, starts on its way."""
        self.enter(Phase.TRANSFER, f"{total} bytes to {self.to}")
        self.sent, self.total = 0, total

    def sent_more(self, n: int) -> None:
        """`n` more bytes of the image went (tar headers aside: never past the total)."""
        self.sent = min(self.sent + n, self.total)

    def to_json(self) -> dict[str, Any]:
        """As `GET /v1/workspaces/NAME/migrate` answers."""
        return {"phase": self.phase.value, "to": self.to, "sent": self.sent, "total": self.total,
                "history": [t.to_json() for t in self.history]}
