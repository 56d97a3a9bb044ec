"""Checkpoint policy: which position of a shard is safe to record as done.

A *position* is a Kinesis sequence number plus a sub-sequence number (the index of a user record
inside a KPL aggregate; 0 for a plain record). Sequence numbers are decimal strings of up to 128
bits that compare as integers. A checkpoint at position ``p`` promises that every user record at or
before ``p`` has been fully handled (its result acknowledged by the sink, or its dead letter stored),
so a successor resumes *after* ``p``.

:class:`CheckpointTracker` decides it: records are registered in shard order, acknowledged in any
order, and :meth:`~CheckpointTracker.safe_position` is the last position of the longest fully
acknowledged prefix. It never passes an unacknowledged record.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "SHARD_END",
    "TRIM_HORIZON",
    "CheckpointTracker",
    "Position",
    "is_after",
]

# sentinel checkpoints (stored in the sequence column, never confused with a number)
SHARD_END = "SHARD_END"
TRIM_HORIZON = "TRIM_HORIZON"


@dataclass(frozen=True, slots=True, order=False)
class Position:
    """A user record's place in its shard: (sequence number, sub-sequence number)."""

    sequence: str
    sub: int = 0
    key: tuple[int, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # parsed once: positions are compared on every registration and checkpoint decision
        object.__setattr__(self, "key", (int(self.sequence), self.sub))

    def __lt__(self, other: Position) -> bool:
        return self.key < other.key

    def __le__(self, other: Position) -> bool:
        return self.key <= other.key

    def __str__(self) -> str:
        return f"{self.sequence}:{self.sub}"


def is_after(position: Position, checkpoint: Position | None) -> bool:
    """True when ``position`` has not been covered by ``checkpoint`` (resume *after* the checkpoint)."""
    return checkpoint is None or checkpoint.key < position.key


class CheckpointTracker:
    """Records registered in shard order, acknowledged in any order; the safe prefix is checkpointable.

    ``register`` requires strictly increasing positions (a shard's order); ``ack`` of an unknown
    position is an error (it would mean a result for a record that was never read).
    """

    def __init__(self, checkpoint: Position | None = None) -> None:
        self._pending: deque[Position] = deque()
        self._pending_keys: set[Position] = set()
        self._acked: set[Position] = set()
        self._last_registered: Position | None = checkpoint
        self._safe: Position | None = checkpoint
        self._checkpointed: Position | None = checkpoint

    def register(self, position: Position) -> None:
        if self._last_registered is not None and not self._last_registered < position:
            raise ValueError(f"position {position} is not after {self._last_registered}")
        self._pending.append(position)
        self._pending_keys.add(position)
        self._last_registered = position

    def ack(self, position: Position) -> None:
        if position in self._acked:
            return
        if position not in self._pending_keys:
            raise KeyError(f"position {position} is not pending")
        self._acked.add(position)
        while self._pending and self._pending[0] in self._acked:
            done = self._pending.popleft()
            self._acked.discard(done)
            self._pending_keys.discard(done)
            self._safe = done

    @property
    def pending(self) -> int:
        """Registered records not yet covered by the safe position."""
        return len(self._pending)

    def safe_position(self) -> Position | None:
        """The furthest position every record up to which is acknowledged (or the initial checkpoint)."""
        return self._safe

    def to_checkpoint(self) -> Position | None:
        """The safe position if it moved past the last recorded checkpoint, else ``None``."""
        if self._safe is None or (self._checkpointed is not None and self._safe <= self._checkpointed):
            return None
        return self._safe

    def checkpointed(self, position: Position) -> None:
        """Note that ``position`` was durably recorded."""
        if self._checkpointed is None or self._checkpointed < position:
            self._checkpointed = position
