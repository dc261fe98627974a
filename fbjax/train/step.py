"""The training step: ``(state, batch) -> (state, metrics)``, pure and jitted with shardings.

Section by section: forward passes -> sequence statistics -> objective -> one (sum, count)
reduction -> gradients (optionally accumulated over microbatches) -> optax update. Everything
the step depends on (model, objective, optimizer, mesh, rules) is passed in explicitly; nothing is
read from globals, so the same function runs on one CPU or a multi-host pod.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fbjax import sharding as fsh
from fbjax.models import lora as loralib
from fbjax.models import moe
from fbjax.models.config import ModelConfig
from fbjax.models.decoder import Decoder, has_lm_head, output_projection, token_rewards
from fbjax.objectives import logprobs
from fbjax.objectives.logprobs import CHUNK
from fbjax.train.objective import Objective, SequenceStats, apply_objective
from fbjax.train.state import TrainState

Array = jax.Array
Batch = dict[str, Array]
Metrics = dict[str, tuple[Array, Array]]

TOKEN_KEYS = ("tokens", "positions", "segment_ids", "branch_ids", "predictor", "loss_mask", "slot_ids")
# Slot-level keys the step itself consumes; every other slot-level key is handed to the objective.
_STEP_SLOT_KEYS = ("slot_valid", "ref_logps")
# Folded into a microbatch's key for LoRA dropout, so the objective's own draws are unchanged.
_LORA_DROPOUT_STREAM = 0x10AA


# ----------------------------------------------------------------------------- forward passes


def forward(model: Decoder, params: Any, batch: Batch, rngs: Any = None
            ) -> tuple[Array, list[dict[str, Array]]]:
    """Final hidden states and, for a mixture-of-experts model, every MoE layer's router
    statistics over the batch's real tokens (``fbjax.models.moe.router_stats``; [] if dense)."""
    args = (batch["tokens"], batch["positions"], batch["segment_ids"], batch["branch_ids"])
    if not model.config.num_experts:
        hidden, _ = model.apply({"params": params}, *args, rngs=rngs or {})
        return hidden, []
    (hidden, _), sown = model.apply({"params": params}, *args, rngs=rngs or {},
                                    mutable=["intermediates"])
    return hidden, moe.sown_router_stats(sown["intermediates"])


def hidden_states(model: Decoder, params: Any, batch: Batch, rngs: Any = None) -> Array:
    return forward(model, params, batch, rngs)[0]


def _token_logps_from_hidden(
    model: Decoder, params: Any, hidden: Array, batch: Batch, *, chunk_size: int,
    max_scored: int | None, row_groups: int | None = None,
) -> Array:
    w = output_projection(params, model.config)
    return logprobs.token_logps(
        hidden, w, batch["tokens"], batch["predictor"], chunk_size=chunk_size,
        cap=model.config.final_logit_softcap,
        loss_mask_BxL=batch["loss_mask"], max_scored=max_scored, row_groups=row_groups,
    )


def token_logps(
    model: Decoder, params: Any, batch: Batch, *, chunk_size: int, max_scored: int | None = None,
    row_groups: int | None = None,
) -> Array:
    """``[B, L]`` float32 log-probs of the scored tokens under ``params`` (vocab-chunked; 0
    where ``loss_mask`` is 0; the LM head runs at most ``max_scored`` positions a row)."""
    hidden = hidden_states(model, params, batch)
    return _token_logps_from_hidden(
        model, params, hidden, batch, chunk_size=chunk_size, max_scored=max_scored,
        row_groups=row_groups,
    )


def last_token_mask(batch: Batch) -> Array:
    """``[B, L]`` 1.0 at the last scored token of each completion slot (where a reward model
    reads its score): scored, and the next position is unscored or another slot's."""
    mask = batch["loss_mask"] > 0
    slots = batch["slot_ids"]
    next_mask = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
    next_same = jnp.pad(slots[:, 1:] == slots[:, :-1], ((0, 0), (0, 1)))
    return (mask & ~(next_mask & next_same)).astype(jnp.float32)


def sequence_stats(
    model: Decoder,
    params: Any,
    ref_params: Any,
    batch: Batch,
    *,
    need_reference: bool,
    chunk_size: int,
    need_distributions: bool = False,
    reference_model: Decoder | None = None,
    rngs: Any = None,
    max_scored: int | None = None,
    row_groups: int | None = None,
) -> SequenceStats:
    """Per-token and per-completion statistics of a batch (docs/batch_layout.md).

    ``reference_model`` (default ``model``) runs ``ref_params``: with LoRA the policy is the
    adapted model and the reference the plain decoder on the base weights.
    """
    return _sequence_stats_and_router(
        model, params, ref_params, batch, need_reference=need_reference, chunk_size=chunk_size,
        need_distributions=need_distributions, reference_model=reference_model, rngs=rngs,
        max_scored=max_scored, row_groups=row_groups)[0]


def _sequence_stats_and_router(
    model: Decoder, params: Any, ref_params: Any, batch: Batch, *, need_reference: bool,
    chunk_size: int, need_distributions: bool, reference_model: Decoder | None, rngs: Any,
    max_scored: int | None, row_groups: int | None = None,
) -> tuple[SequenceStats, list[dict[str, Array]]]:
    """:func:`sequence_stats` and the policy's router statistics (MoE models; else [])."""
    mask = batch["loss_mask"].astype(jnp.float32)
    num_slots = batch["slot_valid"].shape[1]
    hidden, router = forward(model, params, batch, rngs)
    if has_lm_head(model.config):
        tok = _token_logps_from_hidden(
            model, params, hidden, batch, chunk_size=chunk_size, max_scored=max_scored,
            row_groups=row_groups,
        )
    else:  # a reward model: train_step admits only layouts that read the rewards
        tok = jnp.zeros(mask.shape, jnp.float32)
    rewards = None
    if model.config.reward_head:
        rewards = logprobs.sequence_sums(
            token_rewards(params, model.config, hidden), last_token_mask(batch),
            batch["slot_ids"], num_slots,
        ).reshape(-1)
    seq = logprobs.sequence_sums(tok, mask, batch["slot_ids"], num_slots).reshape(-1)
    lengths = logprobs.sequence_sums(jnp.ones_like(mask), mask, batch["slot_ids"], num_slots)
    ref_seq = ref_tok = None
    if need_reference:
        if "ref_logps" in batch:  # precomputed once and cached (fbjax.train.reference)
            ref_seq = batch["ref_logps"].reshape(-1).astype(jnp.float32)
        else:
            ref_tok = jax.lax.stop_gradient(
                token_logps(reference_model or model, ref_params, batch, chunk_size=chunk_size,
                            max_scored=max_scored, row_groups=row_groups)
            )
            ref_seq = logprobs.sequence_sums(ref_tok, mask, batch["slot_ids"], num_slots).reshape(-1)
    fields = {
        k: v.reshape(-1).astype(jnp.float32)
        for k, v in batch.items()
        if k not in TOKEN_KEYS and k not in _STEP_SLOT_KEYS
    }
    token_kl = token_entropy = None
    if need_distributions:  # ALT: whole next-token distributions, not only the scored token
        ref_hidden = jax.lax.stop_gradient(hidden_states(model, ref_params, batch))
        token_kl, token_entropy = logprobs.token_kl_and_entropy(
            hidden, output_projection(params, model.config),
            ref_hidden, jax.lax.stop_gradient(output_projection(ref_params, model.config)),
            batch["predictor"], chunk_size=chunk_size,
        )
    return SequenceStats(
        logps=seq,
        lengths=lengths.reshape(-1),
        valid=batch["slot_valid"].reshape(-1).astype(jnp.float32),
        ref_logps=ref_seq,
        token_logps=tok,
        token_mask=mask,
        ref_token_logps=ref_tok,
        fields=fields,
        rewards=rewards,
        token_kl=token_kl,
        token_entropy=token_entropy,
    ), router


# ----------------------------------------------------------------------------- the step


def _router_loss(config: ModelConfig, router: list[dict[str, Array]], loss_sum: Array,
                 count: Array, metric_sums: Metrics) -> tuple[Array, Metrics]:
    """Reports a MoE model's load-balancing loss (``fbjax.models.moe.load_balancing_loss``)
    as ``moe/load_balancing_loss`` (a microbatch mean), and with ``add_router_aux_loss`` adds
    ``router_aux_loss_coef`` times it to the mean loss, i.e. ``coef * L * count`` to the
    summed loss (transformers' ``loss + router_aux_loss_coef * aux_loss``)."""
    balance = moe.load_balancing_loss(router, config.num_experts)
    metrics = {**metric_sums, "moe/load_balancing_loss": (balance, jnp.ones((), jnp.float32))}
    if config.add_router_aux_loss:
        loss_sum = loss_sum + config.router_aux_loss_coef * balance * count
    return loss_sum, metrics


def _all_finite(tree: Any) -> Array:
    """Whether every floating-point value in ``tree`` is finite (a scalar bool)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(checks).all() if checks else jnp.bool_(True)


def _split_microbatches(batch: Batch, num: int) -> Batch:
    def split(x):
        if x.shape[0] % num:
            raise ValueError(
                f"batch of {x.shape[0]} rows does not split into train.microbatches={num}"
            )
        return x.reshape(num, x.shape[0] // num, *x.shape[1:])

    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: Decoder,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    microbatches: int = 1,
    chunk_size: int = CHUNK,
    lora: loralib.LoraConfig | None = None,
    base: Any = None,
    max_scored: int | None = None,
    row_groups: int | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer update. Returns metrics as ``name -> (sum, count)``.

    ``max_scored`` (e.g. ``logprobs.max_scored_bound`` of the data's loss masks): the LM head
    runs only at the scored positions' predictors, that many a row per pass (a row with more
    takes another pass, with equal results). None runs it at every position. ``row_groups``
    pools the rows into that many groups for the passes (``logprobs.token_logps``).

    Gradients are of the *summed* loss, divided once by the total example weight, so
    accumulating microbatches (or adding hosts) gives exactly the large-batch gradient.
    A non-finite loss or gradient, or an update that makes any parameter or optimizer-state
    value non-finite (``nonfinite_update`` = 1), leaves the state unchanged (``nonfinite`` metric
    = 1); the loop turns that into an error naming the step, or a rollback.

    With ``lora``, ``state.params`` holds only the adapters and ``base`` the frozen weights
    (an argument, not state: it is neither optimized nor checkpointed). The base alone, i.e.
    the adapters switched off, is the reference, so no second copy of the weights exists.
    """
    if not has_lm_head(model.config) and not objective.reads_rewards:
        raise ValueError(
            f"objective {objective.name} reads log-probs, but the model is a reward model with no "
            "LM head (ModelConfig.reward_head=True, untied embeddings)"
        )
    rng = jax.random.fold_in(state.rng, state.step)
    need_ref = objective.needs_reference_logps

    policy_model = model if lora is None else loralib.adapted(model, lora)

    def loss_fn(params, micro, obj_state, micro_rng):
        ref_params, rngs = state.ref_params, None
        if lora is not None:
            params, ref_params = loralib.combine(base, params), base
            rngs = {"dropout": jax.random.fold_in(micro_rng, _LORA_DROPOUT_STREAM)}
        stats, router = _sequence_stats_and_router(
            policy_model, params, ref_params, micro, need_reference=need_ref,
            chunk_size=chunk_size, need_distributions=objective.reads_distributions,
            reference_model=model, rngs=rngs, max_scored=max_scored, row_groups=row_groups,
        )
        loss_sum, count, metric_sums, new_obj_state = apply_objective(
            objective, stats, obj_state, micro_rng
        )
        if router:
            loss_sum, metric_sums = _router_loss(model.config, router, loss_sum, count,
                                                 metric_sums)
        aux = (count, metric_sums, new_obj_state, jnp.sum(micro["segment_ids"] > 0))
        return loss_sum, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
        (loss_sum, (count, metric_sums, obj_state, ntok)), grads = grad_fn(
            state.params, batch, state.objective_state, rng
        )
    else:
        micro = _split_microbatches(batch, microbatches)
        first = jax.tree.map(lambda x: x[0], micro)
        out_shape = jax.eval_shape(grad_fn, state.params, first, state.objective_state, rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
        (zero_loss, (zero_count, zero_metrics, _, zero_ntok)), zero_grads = zeros

        def body(carry, xs):
            acc, obj_state = carry
            mb, i = xs
            (l, (c, m, obj_state, n)), g = grad_fn(
                state.params, mb, obj_state, jax.random.fold_in(rng, i)
            )
            acc = jax.tree.map(jnp.add, acc, (l, c, m, n, g))
            return (acc, obj_state), None

        init = ((zero_loss, zero_count, zero_metrics, zero_ntok, zero_grads), state.objective_state)
        ((loss_sum, count, metric_sums, ntok, grads), obj_state), _ = jax.lax.scan(
            body, init, (micro, jnp.arange(microbatches))
        )

    denom = jnp.maximum(count, 1e-9)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, objective_state=obj_state
    )
    # An overflowing update (e.g. learning rate 1e39) leaves the loss and gradients finite but
    # the parameters or Adam moments Inf: the update must be rejected as well.
    update_finite = _all_finite((params, opt_state))
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm) & update_finite
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    one = jnp.ones((), jnp.float32)
    metrics = {
        "loss": (loss_sum, count),
        **metric_sums,
        "grad_norm": (grad_norm, one),
        "tokens": (ntok.astype(jnp.float32), one),
        "nonfinite": (1.0 - finite.astype(jnp.float32), one),
        "nonfinite_update": (1.0 - update_finite.astype(jnp.float32), one),
    }
    return new_state, metrics


# ----------------------------------------------------------------------------- state creation


def _dummy_inputs(config: ModelConfig):
    tokens = jnp.zeros((1, 8), jnp.int32)
    positions = jnp.arange(8, dtype=jnp.int32)[None]
    return tokens, positions, jnp.ones((1, 8), jnp.int32)


def init_params_boxed(model: Decoder, rng: Array) -> Any:
    return model.init(rng, *_dummy_inputs(model.config))["params"]


def param_shardings(model: Decoder, mesh: Mesh, rules: fsh.Rules) -> Any:
    boxed = jax.eval_shape(lambda r: init_params_boxed(model, r), jax.random.key(0))
    return fsh.tree_shardings(mesh, rules, boxed)


def init_params(model: Decoder, rng: Array, mesh: Mesh, rules: fsh.Rules) -> Any:
    """Randomly initialised parameters, created directly with their shardings."""
    shardings = param_shardings(model, mesh, rules)
    fn = jax.jit(lambda r: nn.unbox(init_params_boxed(model, r)), out_shardings=shardings)
    return fn(rng)


def adapters_boxed(model: Decoder, lora: loralib.LoraConfig, rng: Array) -> Any:
    """The LoRA adapters of ``model``, boxed with their logical axes (the base is not kept)."""
    full = init_params_boxed(loralib.adapted(model, lora), rng)
    adapters = loralib.split(full)[1]
    loralib.check_targets(nn.unbox(adapters), lora, model.config.family.value)
    return adapters


def init_adapters(
    model: Decoder, lora: loralib.LoraConfig, rng: Array, mesh: Mesh, rules: fsh.Rules
) -> Any:
    """Fresh adapters (``B = 0``) with their shardings. The base's initialisation is traced but
    not returned, so XLA drops it: no second copy of the base is allocated."""
    shardings = fsh.tree_shardings(
        mesh, rules, jax.eval_shape(lambda r: adapters_boxed(model, lora, r), rng))
    fn = jax.jit(lambda r: nn.unbox(adapters_boxed(model, lora, r)), out_shardings=shardings)
    return fn(rng)


def state_shardings(
    model: Decoder,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    mesh: Mesh,
    rules: fsh.Rules,
    *,
    with_reference: bool,
    lora: loralib.LoraConfig | None = None,
) -> TrainState:
    """Shardings of every TrainState leaf, derived from the model's logical axis names.

    With ``lora`` the params (and the optimizer state) are the adapters only."""

    def boxed_state():
        if lora is None:
            params = init_params_boxed(model, jax.random.key(0))
        else:
            params = adapters_boxed(model, lora, jax.random.key(0))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=jax.random.key(0),
            ref_params=params if with_reference else None,
            objective_state=objective.init_state() if objective.init_state else None,
        )

    return fsh.tree_shardings(mesh, rules, jax.eval_shape(boxed_state))


def create_state(
    params: Any,
    *,
    model: Decoder,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    rng: Array,
    mesh: Mesh,
    rules: fsh.Rules,
    reference_params: Any = None,
    lora: loralib.LoraConfig | None = None,
) -> tuple[TrainState, TrainState]:
    """A fresh TrainState around ``params`` and its shardings.

    ``reference_params`` (usually the starting params) is kept only when the objective needs a
    reference and the batches will not carry precomputed reference log-probs. With ``lora``,
    ``params`` are the adapters (:func:`init_adapters`) and ``reference_params`` must be None:
    the frozen base is the reference.
    """
    if lora is not None and reference_params is not None:
        raise ValueError("with lora the frozen base is the reference; pass reference_params=None")
    with_ref = reference_params is not None
    shardings = state_shardings(model, optimizer, objective, mesh, rules, with_reference=with_ref,
                                lora=lora)

    def build(params, ref, rng):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=rng,
            ref_params=ref,
            objective_state=objective.init_state() if objective.init_state else None,
        )

    state = jax.jit(build, out_shardings=shardings)(params, reference_params, rng)
    return state, shardings


def batch_shardings(mesh: Mesh, batch: dict[str, Any]) -> dict[str, NamedSharding]:
    return {k: fsh.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}


def make_train_step(
    *,
    model: Decoder,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: fsh.Rules,
    state_sharding: TrainState,
    batch_sharding: dict[str, NamedSharding],
    microbatches: int = 1,
    chunk_size: int = CHUNK,
    lora: loralib.LoraConfig | None = None,
    base: Any = None,
    max_scored: int | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """``train_step`` jitted with explicit in/out shardings and the state donated.

    The LM head's passes pool each batch shard's rows (``row_groups`` = the number of shards
    of the batch's rows), so that a pass never gathers across devices.

    With ``lora``, ``base`` (the frozen weights, with :func:`param_shardings`) is passed to
    every call as a non-donated argument; the returned function still takes ``(state, batch)``
    and has ``.lower(state, batch)`` for inspecting the compiled step."""
    step = functools.partial(
        train_step,
        model=model,
        objective=objective,
        optimizer=optimizer,
        microbatches=microbatches,
        chunk_size=chunk_size,
        lora=lora,
        max_scored=max_scored,
        row_groups=fsh.batch_shards(mesh, batch_sharding["tokens"]),
    )

    def traced(state, batch, *base):
        # The rules and mesh are bound here, at trace time, for the model's activation
        # constraints; nothing ambient survives outside this function.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return step(state, batch, base=base[0] if base else None)

    replicated = NamedSharding(mesh, PartitionSpec())
    in_shardings = (state_sharding, batch_sharding)
    if lora is not None:
        in_shardings += (param_shardings(model, mesh, rules),)
    jitted = jax.jit(
        traced,
        in_shardings=in_shardings,
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    return jitted if lora is None else _BoundStep(jitted, base)


class _BoundStep:
    """The jitted step with the frozen base (or None) bound as its third argument."""

    def __init__(self, jitted, base):
        self.jitted, self.base = jitted, base

    def __call__(self, state, batch):
        return self.jitted(state, batch, self.base)

    def lower(self, state, batch):
        return self.jitted.lower(state, batch, self.base)


def metric_values(metrics: dict[str, tuple[Any, Any]]) -> dict[str, float]:
    """``(sum, count)`` pairs -> means, for display."""
    out = {}
    for k, (s, c) in metrics.items():
        c = float(c)
        out[k] = float(s) / c if c > 0 else float("nan")
    return out
