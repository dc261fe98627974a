"""Optimizer and learning-rate schedule from a frozen config."""

from __future__ import annotations

import dataclasses
import math

import optax

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW with warmup and a decay schedule, plus global-norm clipping."""

    learning_rate: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "cosine"  # one of SCHEDULES
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer.schedule={self.schedule!r}; choose one of {SCHEDULES}")
        # A negative rate is gradient ascent and an infinite one poisons the first update:
        # neither is ever what a config means.
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"optimizer.learning_rate must be a finite number > 0, got "
                             f"{self.learning_rate!r}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"optimizer.{name} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"optimizer.eps must be a finite number > 0, got {self.eps!r}")
        if self.weight_decay < 0 or not math.isfinite(self.weight_decay):
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay!r}")
        if isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"optimizer.grad_clip must be > 0 or None, got {self.grad_clip!r}")


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    peak = config.learning_rate
    warmup = max(int(config.warmup_steps), 0)
    decay_steps = max(total_steps - warmup, 1)
    end = peak * config.min_lr_ratio
    if config.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.min_lr_ratio)
    else:
        decay = optax.linear_schedule(peak, end, decay_steps)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if config.grad_clip:
        parts.append(optax.clip_by_global_norm(config.grad_clip))
    parts.append(
        optax.adamw(
            make_schedule(config, total_steps),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
    )
    return optax.chain(*parts)
