"""BCO's underlying distribution matching (UDM) as a data stage before training.

Thumbs-up and thumbs-down feedback often come from different prompt distributions (users rate
some kinds of prompt more harshly). BCO-UDM fits a logistic classifier "was this prompt's
feedback desirable?" on frozen prompt embeddings and weights each undesirable example by the
density ratio ``p_D(x) / p_U(x)`` (Jung et al. 2024, arXiv:2404.04656, Sec. 4). The classifier and
the embedder are fixed for the whole run (TRL fits its classifier once, before training), so the
weights are computed once here and travel with the data as the slot field ``udm_weights`` that
:func:`fbjax.train.presets.bco_udm` reads; nothing about them needs to live in the train state.

The embedder is any ``prompts -> [M, D]`` function. :func:`mean_hidden_states` (the frozen
starting model's mean final hidden state over the prompt) needs nothing beyond the policy; the
paper used a separate sentence embedder, which can be passed in instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fbjax.data.packing import Group
from fbjax.models.config import ModelConfig
from fbjax.models.decoder import Decoder
from fbjax.objectives import binary

Embedder = Callable[[Sequence[np.ndarray]], np.ndarray]


def mean_hidden_states(
    model_config: ModelConfig, params: Any, *, batch_size: int = 64, bucket: int = 32
) -> Embedder:
    """An embedder: each prompt's final hidden states under ``params``, averaged over its tokens.

    Prompts are right-padded to a multiple of ``bucket`` tokens so a handful of shapes are
    compiled, whatever the prompt lengths.
    """
    model = Decoder(model_config)

    @jax.jit
    def embed(tokens, mask):
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        hidden, _ = model.apply({"params": params}, tokens, positions, mask)
        m = mask.astype(jnp.float32)[..., None]
        return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(m.sum(axis=1), 1.0)

    def embedder(prompts: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = -(-max(len(p) for p in chunk) // bucket) * bucket
            tokens = np.zeros((batch_size, width), np.int32)
            mask = np.zeros((batch_size, width), np.int32)
            for i, p in enumerate(chunk):
                tokens[i, :len(p)], mask[i, :len(p)] = p, 1
            out.append(np.asarray(embed(tokens, mask))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, model_config.hidden_size), np.float32)

    return embedder


def attach_udm_weights(
    groups: Sequence[Group],
    embed: Embedder,
    *,
    l2_penalty: float = 1.0,
    min_ratio: float = 0.5,
    max_ratio: float = 10.0,
) -> list[Group]:
    """Thumbs up/down groups (one completion each, slot field ``labels``) with ``udm_weights``
    added: the clipped density ratio for undesirable examples, 1 for desirable ones.

    The classifier is :func:`fbjax.objectives.binary.udm_fit_classifier` (class-balanced,
    L2-regularised logistic regression, scikit-learn's defaults as TRL uses them) on every
    group's prompt embedding; the clip range is TRL's ``min/max_density_ratio`` defaults.
    """
    for i, g in enumerate(groups):
        if "labels" not in g.slot_fields:
            raise ValueError(f"group {i} has no 'labels' slot field; UDM needs thumbs up/down")
        if "is_kl" in g.slot_fields and any(g.slot_fields["is_kl"]):
            raise ValueError(f"group {i} carries KTO's mismatched (is_kl) slots; BCO reads none")
    labels = np.array([g.slot_fields["labels"][0] for g in groups], np.float32)
    if labels.min(initial=1.0) == labels.max(initial=0.0):
        raise ValueError("UDM needs both desirable and undesirable examples to fit its classifier")
    emb = jnp.asarray(embed([g.prompt for g in groups]), jnp.float32)
    classifier = binary.udm_fit_classifier(emb, labels, np.ones_like(labels),
                                           l2_penalty=l2_penalty)
    weights = np.asarray(binary.udm_density_ratio_weights(
        classifier, emb, labels, min_ratio=min_ratio, max_ratio=max_ratio))
    return [
        dataclasses.replace(g, slot_fields={**g.slot_fields,
                                            "udm_weights": (float(w),) * len(g.completions)})
        for g, w in zip(groups, weights)
    ]
