"""Mixture-of-experts pieces of the decoder's MoE layer, as pure functions.

A sparse MoE layer (Shazeer et al. 2017, arXiv:1701.06538; Mixtral, Jiang et al. 2024,
arXiv:2401.04088, Sec. 2.1) replaces the MLP by ``E`` SwiGLU experts and a linear router:
``p = softmax(x W_r)``, the ``k`` experts with the largest ``p`` are run on the token and
their outputs are summed with weights ``p_i`` (Mixtral: renormalised to sum to 1 over the
top ``k``, i.e. ``softmax`` of the top-k logits, its Eq. 1-2; Qwen3-MoE: renormalised only
with ``norm_topk_prob``). Exactly what transformers' ``MixtralSparseMoeBlock`` /
``Qwen3MoeSparseMoeBlock`` compute: router logits in the compute dtype, softmax in float32.

Dispatch is dropless and grouped (as MaxText's "sparse matmul" path): the ``T * k`` (token,
expert) assignments are sorted by expert and each expert's rows go through one
``jax.lax.ragged_dot`` (a grouped matmul), so no token is dropped and no capacity factor
exists. On TPU / GPU ``ragged_dot`` is a grouped-matmul kernel; on CPU XLA expands it to a
masked dense product (correct, with gradients, but ``E`` times the FLOPs), which is fine for
the tests' tiny models.

The router's load-balancing loss (Switch Transformer, Fedus et al. 2021, arXiv:2101.03961,
Eq. 4-6): ``L = E * sum_i f_i P_i`` with ``f_i`` the fraction of assignments routed to expert
``i`` and ``P_i`` the mean router probability of expert ``i``. As in transformers'
``load_balancing_loss_func`` (which Mixtral and Qwen3-MoE use): top-``k`` assignments are
counted (so ``sum_i f_i = k``), padding tokens are excluded, and the counts and probabilities
are pooled over all layers before the product (not a per-layer sum).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

# The per-layer sums a MoE layer sows (``intermediates`` collection) for the balancing loss.
ROUTER_STATS = "router_stats"


def route(logits: Array, k: int, normalize: bool) -> tuple[Array, Array, Array]:
    """``[T, E]`` router logits -> (``[T, k]`` weights, ``[T, k]`` expert ids, ``[T, E]``
    float32 probabilities). Ties go to the lower expert id (as ``torch.topk`` on CPU)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts, probs


def expert_outputs(x: Array, experts: Array, gate: Array, up: Array, down: Array,
                   act: Callable[[Array], Array]) -> Array:
    """Each token's output from each of its chosen SwiGLU experts, ``[T, k, D]``.

    ``x``: ``[T, D]``; ``experts``: ``[T, k]`` ids; ``gate``/``up``: ``[E, D, F]``; ``down``:
    ``[E, F, D]``. The ``T * k`` assignments are sorted by expert (stable, so rows keep token
    order within an expert), run as three grouped matmuls, and unsorted.
    """
    tokens, k = experts.shape
    num_experts = gate.shape[0]
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    rows = jnp.take(x, order // k, axis=0)
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    h = act(jax.lax.ragged_dot(rows, gate, sizes)) * jax.lax.ragged_dot(rows, up, sizes)
    out = jax.lax.ragged_dot(h, down, sizes)
    unsorted = jnp.zeros_like(out).at[order].set(out)
    return unsorted.reshape(tokens, k, out.shape[-1])


def router_stats(probs: Array, experts: Array, mask: Array) -> dict[str, Array]:
    """One layer's sums for the balancing loss over the tokens where ``mask`` ([T]) is true:
    ``assigned`` [E] (top-k assignments per expert), ``probs`` [E] (summed router
    probabilities), ``tokens`` (how many tokens)."""
    m = mask.astype(jnp.float32)
    one_hot = jax.nn.one_hot(experts, probs.shape[-1], dtype=jnp.float32)  # [T, k, E]
    return {
        "assigned": jnp.einsum("t,tke->e", m, one_hot),
        "probs": jnp.einsum("t,te->e", m, probs),
        "tokens": jnp.sum(m),
    }


def load_balancing_loss(stats: Sequence[Mapping[str, Array]], num_experts: int) -> Array:
    """Switch Transformer's auxiliary loss (Fedus et al. 2021, Eq. 4), pooled over layers as
    transformers' ``load_balancing_loss_func`` pools them:
    ``E * sum_i (sum_l assigned_li / N) (sum_l probs_li / N)`` with ``N = sum_l tokens_l``.
    1.0 (times ``k``) for perfectly balanced routing. Gradients reach the router through the
    probabilities only (the counts are piecewise constant)."""
    assigned = sum(s["assigned"] for s in stats)
    probs = sum(s["probs"] for s in stats)
    rows = jnp.maximum(sum(s["tokens"] for s in stats), 1.0)
    return num_experts * jnp.sum((assigned / rows) * (probs / rows))


def sown_router_stats(intermediates: Mapping) -> list[Mapping[str, Array]]:
    """Every MoE layer's :func:`router_stats` from a Decoder's ``intermediates`` collection
    (``apply(..., mutable=['intermediates'])``); the loss pools them, so order is irrelevant."""
    found: list[Mapping[str, Array]] = []
    for key, value in intermediates.items():
        if key == ROUTER_STATS:
            found.extend(value)
        elif isinstance(value, Mapping):
            found.extend(sown_router_stats(value))
    return found
