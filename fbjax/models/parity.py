"""Checks that an imported checkpoint computes what its reference implementation computes.

``layout_diffs`` runs a set of sequences through the decoder in the four layouts training and
sampling use (one full row, a right-padded batch, a left-padded batch with positions restarting
at each row's first token, and a packed row holding several sequences told apart by segment
ids) and returns each layout's max abs logit difference from reference logits of every
sequence run alone. ``sampler_matches_recompute`` compares KV-cache generation with greedy
decoding by full recomputation. Used by the parity tests and ``tools/model_parity_table.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fbjax.models.config import ModelConfig


def _forward(config: ModelConfig, params: Any, ids, positions, segments) -> np.ndarray:
    from fbjax.models.decoder import Decoder, logits

    hidden, _ = Decoder(config).apply(
        {"params": params}, np.asarray(ids, np.int32), np.asarray(positions, np.int32),
        np.asarray(segments, np.int32))
    return np.asarray(logits(params, config, hidden))


def layout_diffs(config: ModelConfig, params: Any, ids: np.ndarray, mask: np.ndarray,
                 reference: np.ndarray) -> dict[str, float]:
    """``{'full', 'right_pad', 'left_pad', 'packed': max abs diff}`` against ``reference``.

    ``ids``/``mask``: ``[N, L]`` right-padded sequences (row 0 full length; rows 1.. must fit
    in one row of L together, they form the packed row). ``reference``: ``[N, L, V]`` logits of
    each sequence alone.
    """
    lengths = mask.sum(axis=1).astype(int)
    n, length = ids.shape
    seqs = [ids[i, :lengths[i]] for i in range(n)]
    refs = [reference[i, :lengths[i]] for i in range(n)]
    out: dict[str, float] = {}

    full = _forward(config, params, ids[:1, :lengths[0]], np.arange(lengths[0])[None],
                    np.ones((1, lengths[0])))
    out["full"] = float(np.abs(full[0] - refs[0]).max())

    positions = np.broadcast_to(np.arange(length), ids.shape)
    right = _forward(config, params, ids, positions * mask, mask)
    out["right_pad"] = max(float(np.abs(right[i, :lengths[i]] - refs[i]).max()) for i in range(n))

    left_ids = np.zeros_like(ids)
    left_mask = np.zeros_like(mask)
    for i, s in enumerate(seqs):
        left_ids[i, length - len(s):] = s
        left_mask[i, length - len(s):] = 1
    left_pos = np.maximum(np.cumsum(left_mask, axis=1) - 1, 0)
    left = _forward(config, params, left_ids, left_pos, left_mask)
    out["left_pad"] = max(float(np.abs(left[i, length - len(s):] - refs[i]).max())
                          for i, s in enumerate(seqs))

    packed_ids, packed_pos, packed_seg = [], [], []
    for i, s in enumerate(seqs[1:], start=1):
        packed_ids += list(s)
        packed_pos += list(range(len(s)))
        packed_seg += [i] * len(s)
    if len(packed_ids) > length:
        raise ValueError(f"sequences 1.. ({len(packed_ids)} tokens) do not fit one row of {length}")
    pad = length - len(packed_ids)
    packed = _forward(config, params, [packed_ids + [0] * pad], [packed_pos + [0] * pad],
                      [packed_seg + [0] * pad])[0]
    start, diffs = 0, []
    for s, ref in zip(seqs[1:], refs[1:]):
        diffs.append(float(np.abs(packed[start:start + len(s)] - ref).max()))
        start += len(s)
    out["packed"] = max(diffs)
    return out


def sampler_matches_recompute(config: ModelConfig, params: Any, prompts: list[list[int]],
                              max_new_tokens: int) -> tuple[bool, float]:
    """Greedy KV-cache generation (``fbjax.sampling.generate``) against greedy decoding that
    recomputes the whole sequence every step. Returns (tokens equal, max abs difference of the
    chosen tokens' log-probs)."""
    import jax

    from fbjax.sampling import SamplingConfig, generate

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, prompt_bucket=4)
    out = generate(params, config, prompts, config=sampling, rng=jax.random.key(0))
    tokens, logps = np.asarray(out.tokens), np.asarray(out.logps)
    same, worst = True, 0.0
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for step in range(max_new_tokens):
            n = len(seq)
            logits = _forward(config, params, [seq], [list(range(n))], [[1] * n])[0, -1]
            logp = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
            token = int(np.argmax(logits))
            same &= token == int(tokens[row, step])
            worst = max(worst, abs(float(logp[token]) - float(logps[row, step])))
            seq.append(token)
    return bool(same), worst
