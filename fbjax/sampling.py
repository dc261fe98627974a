"""Batched autoregressive generation with a KV cache, compiled once per shape.

``generate`` left-pads the prompts so that every row continues from the same cache slot, runs
the prompts through the model in one call (prefill), then decodes one token per step in a
``jax.lax.while_loop`` that stops as soon as every row has emitted a stop token.

Layout of one row of the cache (``P`` = bucketed prompt length, ``N`` = ``max_new_tokens``; the
last generated token is never fed back, so there are ``P + N - 1`` slots)::

    slot:        0 .. P-len-1  | P-len .. P-1  | P .. P+N-2
    segment_id:  0 (padding)   | 1 (prompt)    | 1 (generated)
    position:    0             | 0 .. len-1    | len .. len+N-2

Padding slots have segment id 0, which the decoder never attends to, so a left-padded row
computes exactly what the unpadded prompt would. Positions restart at 0 at the first real
token, so RoPE, learned positions and sliding windows see the same values as without padding.

Compilation: one executable per (model config, batch size, bucketed prompt length,
``max_new_tokens``). Prompt lengths are rounded up to a multiple of ``prompt_bucket`` so that
calls with different prompts reuse it; temperature, top-k, top-p, ``pad_id`` and the stop-token
ids (up to 8 of them) are traced values, so changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fbjax import sharding as fsh
from fbjax.models.config import ModelConfig, Positions
from fbjax.models.decoder import Decoder, DecodeCache, LayerCache, init_cache, logits

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How to pick tokens. Of these, only ``max_new_tokens`` and ``prompt_bucket`` (and
    ``len(stop_tokens)`` past 8) affect compilation; the rest are traced values.

    Filters apply in the usual order: temperature scaling, then top-k, then top-p on the
    renormalised top-k distribution.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy (argmax; top-k/top-p are then irrelevant)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    stop_tokens: tuple[int, ...] = ()  # e.g. (eos_id,); the stop token itself is emitted
    pad_id: int = 0  # fills prompt padding and every output slot after a row stops
    prompt_bucket: int = 16  # prompt lengths are rounded up to a multiple of this

    def __post_init__(self):
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p={self.top_p} must be in (0, 1] (1 = off)")
        if self.prompt_bucket < 1:
            raise ValueError(f"sampling.prompt_bucket={self.prompt_bucket} must be >= 1")


class GenerateOutput(NamedTuple):
    """What ``generate`` returns; row order follows the prompts.

    ``tokens``: ``[B, N]`` int32 generated tokens; slots after a row's stop token hold ``pad_id``.
    ``lengths``: ``[B]`` int32 number of generated tokens, the stop token included.
    ``logps``: ``[B, N]`` float32 log-prob of each generated token under the model's own
    distribution, i.e. ``log_softmax(logits)`` at temperature 1 with no top-k/top-p filtering,
    whatever the sampling settings (this is what a policy-gradient objective or a KL estimate
    scores); 0 after the row stops.
    ``done``: ``[B]`` bool, True where the row emitted a stop token (False: hit ``max_new``).
    """

    tokens: Array
    lengths: Array
    logps: Array
    done: Array

    @property
    def mask(self) -> Array:
        """``[B, N]`` bool: True on generated tokens (stop token included), False on padding."""
        return jnp.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]


# ------------------------------------------------------------------------------------------------
# Token selection


def filter_logits(logits_BxV: Array, *, top_k: Any = 0, top_p: Any = 1.0) -> Array:
    """Set the logits of tokens removed by top-k / top-p to -inf (float32).

    top-k keeps the ``top_k`` largest logits (``top_k <= 0``: off). top-p then keeps the smallest
    set of the most likely remaining tokens whose total probability is >= ``top_p``: a token
    survives when the probability of the tokens ranked strictly above it is < ``top_p``, so the
    top token always survives (``top_p >= 1``: off). Ties are broken by token id (one stable
    sort ranks all tokens), so exactly ``top_k`` tokens survive top-k even when logits tie.
    ``top_k``/``top_p`` may be traced scalars.
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    vocab = logits_BxV.shape[-1]
    order = jnp.argsort(-logits_BxV, axis=-1, stable=True)  # descending, ties by id
    sorted_logits = jnp.take_along_axis(logits_BxV, order, axis=-1)
    rank = jnp.arange(vocab)
    top_k = jnp.asarray(top_k, jnp.int32)
    keep_sorted = jnp.broadcast_to((top_k <= 0) | (rank < top_k), sorted_logits.shape)
    sorted_logits = jnp.where(keep_sorted, sorted_logits, -jnp.inf)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs  # exclusive cumsum
    # ``top_p >= 1`` is tested explicitly: rounding can push the tail's mass_above to 1.0.
    keep_sorted &= (top_p >= 1.0) | (mass_above < top_p) | (rank == 0)
    # Back from rank order to token order: the inverse permutation of ``order``.
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(keep, logits_BxV, -jnp.inf)


def sample_tokens(
    logits_BxV: Array, key: Array, *, temperature: Any, top_k: Any = 0, top_p: Any = 1.0
) -> Array:
    """One token id per row (int32) from float32 logits.

    ``temperature == 0`` is greedy. The knobs may be traced scalars; ``lax.cond`` skips the
    vocabulary sort when no filter is active and the sampling when greedy.
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, jnp.float32)

    def sample(logits):
        scaled = logits / temperature
        scaled = jax.lax.cond(
            (top_k > 0) | (top_p < 1.0),
            lambda x: filter_logits(x, top_k=top_k, top_p=top_p),
            lambda x: x,
            scaled,
        )
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, sample, greedy, logits_BxV)


# ------------------------------------------------------------------------------------------------
# The compiled core

# Incremented each time ``_generate_core`` is traced (i.e. compiled); tests read it to check
# that prompt-length bucketing avoids recompilation.
_num_traces = 0


def _constrain_cache(cache: DecodeCache) -> DecodeCache:
    """Keep the cache split over the batch axes (a no-op unless logical rules are bound)."""
    kv_axes = ("batch", "length", "kv_heads", "head_dim")
    layers = tuple(
        LayerCache(
            nn.with_logical_constraint(layer.k, kv_axes),
            nn.with_logical_constraint(layer.v, kv_axes),
        )
        for layer in cache.layers
    )
    return cache._replace(
        layers=layers,
        segment_ids=nn.with_logical_constraint(cache.segment_ids, ("batch", "length")),
        positions=nn.with_logical_constraint(cache.positions, ("batch", "length")),
    )


def _knobs(config: SamplingConfig) -> dict[str, Array]:
    """The sampling settings passed as traced values, so changing them never recompiles."""
    return dict(
        temperature=jnp.float32(config.temperature),
        top_k=jnp.int32(config.top_k),
        top_p=jnp.float32(config.top_p),
        pad_id=jnp.int32(config.pad_id),
        stop_tokens=jnp.asarray(_padded_stops(config.stop_tokens), jnp.int32),
    )


def _padded_stops(stop_tokens: tuple[int, ...]) -> list[int]:
    """Stop ids padded with -1 (never a token) to a multiple of 8 slots, so that the number of
    stop tokens does not change the compiled shape in the usual case (<= 8)."""
    size = max(8, -(-len(stop_tokens) // 8) * 8)
    return list(stop_tokens) + [-1] * (size - len(stop_tokens))


def _generate_core(
    params: Any,
    prompt_BxP: Array,
    prompt_mask_BxP: Array,
    rng: Array,
    knobs: dict[str, Array],
    *,
    model_config: ModelConfig,
    max_new: int,
) -> tuple[Array, Array, Array, Array]:
    global _num_traces
    _num_traces += 1

    model = Decoder(model_config)
    batch, prompt_len = prompt_BxP.shape
    pad_id, stop = knobs["pad_id"], knobs["stop_tokens"]

    def forward(tokens, positions, segment_ids, cache):
        hidden, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache)
        # Only the last position's distribution is needed: never build [B, P, V].
        return logits(params, model_config, hidden[:, -1]), _constrain_cache(cache)

    def pick(logits_BxV, step, done):
        """Sample the token of ``step``; rows already done get pad_id and log-prob 0."""
        token = sample_tokens(
            logits_BxV, jax.random.fold_in(rng, step), temperature=knobs["temperature"],
            top_k=knobs["top_k"], top_p=knobs["top_p"],
        )
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits_BxV, axis=-1), token[:, None], -1)
        token = jnp.where(done, pad_id, token)
        logp = jnp.where(done, 0.0, logp[:, 0])
        return token, logp, done | jnp.any(token[:, None] == stop[None, :], axis=-1)

    # Prefill every prompt token but the last. Left padding puts each row's last prompt token
    # in column P - 1, so the decode loop can start uniformly by feeding that column: step s
    # feeds one token (the last prompt token, then the token of step s - 1) at slot P - 1 + s
    # and samples the token of step s. One sampling site and no wasted forward pass.
    segment_ids = prompt_mask_BxP.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    last_positions = positions[:, -1]
    cache = _constrain_cache(init_cache(model_config, batch, prompt_len - 1 + max_new))
    if prompt_len > 1:
        _, cache = model.apply(
            {"params": params}, prompt_BxP[:, :-1], positions[:, :-1], segment_ids[:, :-1],
            cache=cache,
        )
        cache = _constrain_cache(cache)

    def cond(state):
        step, _, _, _, _, _, done = state
        return (step < max_new) & ~jnp.all(done)

    def body(state):
        step, cache, prev, tokens, logps, lengths, done = state
        ones = jnp.ones((batch, 1), jnp.int32)
        logits_BxV, cache = forward(prev[:, None], (last_positions + step)[:, None], ones, cache)
        token, logp, new_done = pick(logits_BxV, step, done)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], step, 1)
        logps = jax.lax.dynamic_update_slice_in_dim(logps, logp[:, None], step, 1)
        lengths = lengths + (~done).astype(jnp.int32)
        return step + 1, cache, token, tokens, logps, lengths, new_done

    tokens = jnp.full((batch, max_new), pad_id, jnp.int32)
    logps = jnp.zeros((batch, max_new), jnp.float32)
    lengths = jnp.zeros((batch,), jnp.int32)
    done = jnp.zeros((batch,), bool)
    state = (jnp.int32(0), cache, prompt_BxP[:, -1], tokens, logps, lengths, done)
    _, _, _, tokens, logps, lengths, done = jax.lax.while_loop(cond, body, state)
    return tokens, lengths, logps, done


@functools.lru_cache(maxsize=None)
def _compiled(model_config: ModelConfig, max_new: int, mesh: Mesh | None, rules):
    """One jitted core per (model config, max_new, mesh); jit caches the shapes inside."""
    core = functools.partial(_generate_core, model_config=model_config, max_new=max_new)
    if mesh is None:
        return jax.jit(core)

    def traced(params, prompt, mask, rng, knobs):
        # Bind the mesh and rules at trace time for the model's activation constraints, as the
        # train step does; params keep whatever sharding they arrive with.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return core(params, prompt, mask, rng, knobs)

    rows, row = fsh.batch_sharding(mesh, 2), fsh.batch_sharding(mesh, 1)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        traced,
        in_shardings=(None, rows, rows, replicated, replicated),
        out_shardings=(rows, row, rows, row),
    )


# ------------------------------------------------------------------------------------------------
# Host-side entry points


def _prompt_lists(prompts: Any, prompt_mask: Any | None) -> list[list[int]]:
    """Prompts as lists of token ids, from lists or from a padded ``[B, L]`` array + mask."""
    if prompt_mask is None and isinstance(prompts, (list, tuple)):
        return [[int(t) for t in np.asarray(p).reshape(-1)] for p in prompts]
    array = np.asarray(prompts)
    if array.ndim != 2:
        raise ValueError(f"padded prompts must be a [batch, length] array, got shape {array.shape}")
    mask = np.ones(array.shape, bool) if prompt_mask is None else np.asarray(prompt_mask) > 0
    if mask.shape != array.shape:
        raise ValueError(f"prompt_mask shape {mask.shape} != prompts shape {array.shape}")
    return [[int(t) for t in row[m]] for row, m in zip(array, mask)]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def generate(
    params: Any,
    model_config: ModelConfig,
    prompts: Sequence[Sequence[int]] | np.ndarray | Array,
    *,
    config: SamplingConfig,
    rng: Array,
    prompt_mask: np.ndarray | Array | None = None,
    mesh: Mesh | None = None,
    rules: fsh.Rules = fsh.RULES_FSDP_TP,
) -> GenerateOutput:
    """Sample ``config.max_new_tokens`` continuations of each prompt.

    ``params``: the model parameters (unboxed; a ``{'params': ...}`` wrapper is accepted).
    ``prompts``: a list of token-id lists of any lengths (each non-empty), or a padded
    ``[B, L]`` array with ``prompt_mask`` (1 = real token; padding may be on either side).
    ``rng``: a PRNG key; the token of step ``i`` uses ``fold_in(rng, i)``.
    ``mesh``: optional; the batch is split over ``('data', 'fsdp')`` (padded with dummy rows to
    a multiple of that size) and ``rules`` bind the model's activation constraints. ``params``
    are used with whatever sharding they already have.
    """
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    rows = _prompt_lists(prompts, prompt_mask)
    if not rows:
        raise ValueError("generate() needs at least one prompt")
    lengths = [len(r) for r in rows]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty; every prompt needs >= 1 token")
    longest = max(lengths)
    if model_config.positions is Positions.LEARNED:
        # The last token fed to the model sits at position longest + max_new - 2.
        if longest + config.max_new_tokens - 1 > model_config.max_seq_len:
            raise ValueError(
                f"prompt length {longest} + max_new_tokens {config.max_new_tokens} exceeds the "
                f"learned position table (model.max_seq_len={model_config.max_seq_len})"
            )

    batch = len(rows)
    padded_batch = batch
    if mesh is not None:
        padded_batch = _round_up(batch, fsh.batch_devices(mesh))
    prompt_len = _round_up(longest, config.prompt_bucket)
    tokens = np.full((padded_batch, prompt_len), config.pad_id, np.int32)
    mask = np.zeros((padded_batch, prompt_len), np.int32)
    for i, row in enumerate(rows):
        tokens[i, prompt_len - len(row):] = row
        mask[i, prompt_len - len(row):] = 1
    # Dummy rows (mesh padding) get a one-token prompt so that they are ordinary rows.
    mask[batch:, -1] = 1

    fn = _compiled(model_config, config.max_new_tokens, mesh, rules if mesh is not None else None)
    out = fn(params, jnp.asarray(tokens), jnp.asarray(mask), rng, _knobs(config))
    return GenerateOutput(*(x[:batch] for x in out))


def sample_texts(
    params: Any,
    model_config: ModelConfig,
    tokenizer: Any,
    prompt_texts: Sequence[str],
    *,
    config: SamplingConfig,
    rng: Array,
    add_bos: bool = True,
    mesh: Mesh | None = None,
    rules: fsh.Rules = fsh.RULES_FSDP_TP,
) -> list[str]:
    """Generate from text prompts and decode each completion up to (not including) its stop.

    ``tokenizer`` is duck-typed: ``encode(text, add_bos=...) -> list[int]``,
    ``decode(ids) -> str`` and an ``eos_id`` attribute, which is added to the stop tokens when
    missing.
    """
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None and int(eos) not in config.stop_tokens:
        config = dataclasses.replace(config, stop_tokens=config.stop_tokens + (int(eos),))
    prompts = [list(tokenizer.encode(text, add_bos=add_bos)) for text in prompt_texts]
    out = generate(params, model_config, prompts, config=config, rng=rng, mesh=mesh, rules=rules)
    tokens, lengths, done = (np.asarray(x) for x in (out.tokens, out.lengths, out.done))
    texts = []
    for row, n, stopped in zip(tokens, lengths, done):
        n = int(n) - 1 if stopped else int(n)  # drop the stop token itself
        texts.append(tokenizer.decode([int(t) for t in row[:n]]))
    return texts
