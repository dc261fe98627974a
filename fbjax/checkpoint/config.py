"""When to save, what to keep, and how much of each step is hashed."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When to save and what to keep.

    ``every_steps`` / ``every_minutes``: save when either is due (None = never for that rule).
    ``keep``: the last K checkpoints are kept (None = all), plus the newest *committed* one until
    the next save, so a good checkpoint is never deleted while a newer one is still being written
    (with ``keep=1`` two can be on disk). ``keep_milestones_every``: steps that are multiples of
    it (an int) or listed (a tuple) are kept forever. ``hash_max_bytes``: files up to this size
    are sha256-hashed into the commit marker (0: none), so the static check (``fbjax inspect
    --no-verify``, retention) catches their damage without reading arrays; every array, whatever
    its size, is checked against its content fingerprint on restore and by ``fbjax inspect``.
    """

    every_steps: int | None = None
    every_minutes: float | None = None
    keep: int | None = 3
    keep_milestones_every: int | tuple[int, ...] | None = None
    async_save: bool = True
    hash_max_bytes: int = 1 << 20

    def __post_init__(self):
        if self.every_steps is not None and self.every_steps <= 0:
            raise ValueError(f"checkpoint.every_steps must be positive, got {self.every_steps}")
        if self.every_minutes is not None and not self.every_minutes > 0:
            raise ValueError(f"checkpoint.every_minutes must be positive, got {self.every_minutes}")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1 or None, got {self.keep}")
        milestones = self.keep_milestones_every
        if isinstance(milestones, (list, tuple)):
            object.__setattr__(self, "keep_milestones_every", tuple(int(s) for s in milestones))
        elif milestones is not None and milestones <= 0:
            raise ValueError(f"checkpoint.keep_milestones_every must be positive, got {milestones}")
