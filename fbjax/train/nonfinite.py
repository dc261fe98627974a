"""What a run does when a step is not finite: halt (the default) or roll back.

The step never applies a non-finite update (``fbjax.train.step.train_step`` checks the loss, the
gradient norm, and the updated parameters and optimizer state), so the state in hand is always
the last finite one; this policy decides what the loop does next.
"""

from __future__ import annotations

import dataclasses


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN/Inf loss, gradient or update; the update was not applied."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class NonFinitePolicy:
    """``max_rollbacks=0`` (default): halt with :class:`NonFiniteLossError` naming the step.

    ``max_rollbacks=n > 0``: up to ``n`` times per run, go back to the newest good checkpoint
    (or, before the first one, to the last finite state and the batch that failed), multiply the
    learning rate by ``lr_factor`` (for the rest of the run, cumulatively), and continue; the
    ``n+1``-th non-finite step halts. The scale and the count are saved with every checkpoint,
    so a resumed run keeps them. This is the usual recovery from a loss spike (PaLM,
    Chowdhery et al. 2022, arXiv:2204.02311, "Training instability": restart from a checkpoint
    before the spike); halting is the default because a rollback changes the training
    trajectory.
    """

    max_rollbacks: int = 0
    lr_factor: float = 0.5

    def __post_init__(self):
        if self.max_rollbacks < 0:
            raise ValueError(f"nonfinite.max_rollbacks must be >= 0, got {self.max_rollbacks}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ValueError(f"nonfinite.lr_factor must be in (0, 1), got {self.lr_factor}")
