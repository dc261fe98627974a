"""How a pure loss is bound to a batch: by argument name, with one reduction as (sum, count).

A loss in ``fbjax.objectives`` is a plain function of arrays. An :class:`Objective` says which
arrays it gets (an ``inputs`` function turns the step's sequence statistics into named arrays,
e.g. ``policy_chosen_logps``), its hyperparameters, and optional batch-level statistics or state
(KTO's reference point, BCO's reward shift) computed by pure functions before the loss.
The step fills the loss's positional parameters by name, so a new objective is one function.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array

# (named arrays, per-example weights) -> what the loss may ask for by name.
InputsFn = Callable[["SequenceStats"], tuple[dict[str, Array], Array]]
# (named arrays, objective state, rng, hparams) -> (extra named arrays, new objective state)
PrepareFn = Callable[[dict[str, Array], Any, Array, Mapping[str, Any]], tuple[dict[str, Array], Any]]


@dataclasses.dataclass(frozen=True)
class SequenceStats:
    """What the step knows about the batch after the forward passes (all float32).

    ``N = B * K`` completion slots, flattened row-major (docs/batch_layout.md).
    """

    logps: Array  # [N] summed completion log-probs under the policy
    lengths: Array  # [N] completion token counts (sum of loss_mask)
    valid: Array  # [N] 1.0 for real completions
    ref_logps: Array | None  # [N] under the reference (None for reference-free runs)
    token_logps: Array  # [B, L] per-token log-probs under the policy
    token_mask: Array  # [B, L] loss mask
    ref_token_logps: Array | None  # [B, L] under the reference, when computed in-step
    fields: Mapping[str, Array]  # other slot-level batch fields, flattened to [N]
    # [N] scalar-head rewards at each completion's last token; None for models without a head.
    rewards: Array | None = None
    # [B, L] full-vocabulary KL(ref || policy) and policy entropy of each token's predicting
    # distribution; computed only for objectives with ``reads_distributions`` (ALT).
    token_kl: Array | None = None
    token_entropy: Array | None = None


jax.tree_util.register_dataclass(
    SequenceStats,
    data_fields=[f.name for f in dataclasses.fields(SequenceStats)],
    meta_fields=[],
)


def _positional_names(fn: Callable) -> tuple[str, ...]:
    return tuple(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def _keyword_names(fn: Callable) -> tuple[str, ...]:
    return tuple(
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Objective:
    """A pure loss, the arrays it reads, its hyperparameters and optional batch statistics."""

    loss: Callable[..., tuple[Array, dict[str, Array]]]
    inputs: InputsFn
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prepare: PrepareFn | None = None
    init_state: Callable[[], Any] | None = None
    # Metrics reduced over a subset of examples: name -> name of a weight array from ``inputs``.
    metric_weights: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The step computes reference log-probs for losses with ``ref_*`` arguments. Set this when a
    # loss reads them under another name: NFT's ``old_*`` rollout policy is the step's reference.
    reads_reference: bool = False
    # The step computes per-token full-vocabulary KL(ref || policy) and entropy (an extra
    # reference forward) for losses that need whole distributions, not only token log-probs.
    reads_distributions: bool = False

    def __post_init__(self):
        object.__setattr__(self, "hparams", MappingProxyType(dict(self.hparams)))
        valid = _keyword_names(self.loss)
        unknown = sorted(set(self.hparams) - set(valid))
        if unknown:
            import difflib

            hints = {k: difflib.get_close_matches(k, valid, n=2) for k in unknown}
            raise ValueError(
                f"objective {self.loss.__module__}.{self.loss.__name__} has no hyperparameter(s) "
                f"{unknown}; it accepts {list(valid)}"
                + "".join(f"; did you mean {v} for {k!r}?" for k, v in hints.items() if v)
            )

    @property
    def name(self) -> str:
        return self.loss.__name__

    @property
    def needs_reference(self) -> bool:
        """Whether the run keeps reference parameters (for log-probs or distributions)."""
        return self.needs_reference_logps or self.reads_distributions

    @property
    def needs_reference_logps(self) -> bool:
        """Whether the step computes reference log-probs of the scored tokens."""
        return self.reads_reference or any(
            n.startswith("ref_") for n in _positional_names(self.loss)
        )

    @property
    def reads_rewards(self) -> bool:
        """Whether the layout reads a scalar reward head (reward models) instead of log-probs."""
        return bool(getattr(self.inputs, "reads_rewards", False))


def apply_objective(
    objective: Objective, stats: SequenceStats, state: Any, rng: Array
) -> tuple[Array, Array, dict[str, tuple[Array, Array]], Any]:
    """Runs the loss and reduces it once: returns ``(loss_sum, count, metric_sums, new_state)``.

    ``metric_sums`` maps each metric name to ``(sum, count)`` so that gradient accumulation and
    multi-host averaging stay exact: the mean is taken only when a metric is displayed.
    """
    arrays, weights = objective.inputs(stats)
    new_state = state
    if objective.prepare is not None:
        extra, new_state = objective.prepare(arrays, state, rng, objective.hparams)
        arrays = {**arrays, **extra}
    names = _positional_names(objective.loss)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(
            f"objective {objective.name} needs {missing}, but the batch layout "
            f"{getattr(objective.inputs, '__name__', objective.inputs)} provides {sorted(arrays)}"
        )
    loss, metrics = objective.loss(*(arrays[n] for n in names), **objective.hparams)
    weights = weights.astype(jnp.float32)
    count = jnp.sum(weights)
    loss_sum = jnp.sum(jnp.where(weights > 0, loss, 0.0) * weights)
    metric_sums = {}
    for key, value in metrics.items():
        w = arrays[objective.metric_weights[key]] if key in objective.metric_weights else weights
        w = jnp.broadcast_to(w, value.shape).astype(jnp.float32) if value.ndim else w
        if value.ndim == 0:  # batch-level statistic (e.g. KTO's z0): report as is
            metric_sums[key] = (value.astype(jnp.float32), jnp.ones((), jnp.float32))
        else:
            v = jnp.where(w > 0, value.astype(jnp.float32), 0.0)
            metric_sums[key] = (jnp.sum(v * w), jnp.sum(w))
    return loss_sum, count, metric_sums, new_state
