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
    import jax

    from fbjax.models.decoder import Decoder, logits

    @jax.jit  # compiling once is faster than running the tiny model op by op
    def run(params, ids, positions, segments):
        hidden, _ = Decoder(config).apply({"params": params}, ids, positions, segments)
        return logits(params, config, hidden)

    return np.asarray(run(params, np.asarray(ids, np.int32), np.asarray(positions, np.int32),
                          np.asarray(segments, np.int32)))


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

    # All layouts go through one forward as rows of one batch (rows never see each other):
    # row 0 the first sequence alone, then the right-padded rows, the left-padded rows, and the
    # packed row.
    rows_ids, rows_pos, rows_seg = [], [], []

    def add(tokens, positions, segments):
        pad = length - len(tokens)
        rows_ids.append(list(tokens) + [0] * pad)
        rows_pos.append(list(positions) + [0] * pad)
        rows_seg.append(list(segments) + [0] * pad)

    add(seqs[0], range(len(seqs[0])), [1] * len(seqs[0]))
    for s in seqs:
        add(s, range(len(s)), [1] * len(s))
    for s in seqs:  # left padding: built right-padded, then rolled
        add(s, range(len(s)), [1] * len(s))
        shift = length - len(s)
        for row in (rows_ids, rows_pos, rows_seg):
            row[-1] = row[-1][len(s):] + row[-1][:len(s)] if shift else row[-1]
    packed = [(t, p, i) for i, s in enumerate(seqs[1:], 1) for p, t in enumerate(s)]
    if len(packed) > length:
        raise ValueError(f"sequences 1.. ({len(packed)} tokens) do not fit one row of {length}")
    add(*zip(*packed))
    out = _forward(config, params, rows_ids, rows_pos, rows_seg)

    def diff(row, start, i):
        return float(np.abs(out[row, start:start + lengths[i]] - refs[i]).max())

    packed_starts = np.cumsum([0] + [len(s) for s in seqs[1:]])
    return {
        "full": diff(0, 0, 0),
        "right_pad": max(diff(1 + i, 0, i) for i in range(n)),
        "left_pad": max(diff(1 + n + i, length - lengths[i], i) for i in range(n)),
        "packed": max(diff(1 + 2 * n, int(packed_starts[i - 1]), i) for i in range(1, n)),
    }


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
    from fbjax.models.decoder import Decoder
    from fbjax.models.decoder import logits as project

    # One compiled forward over a fixed-length row; right padding (segment 0) changes nothing.
    total = max(len(p) for p in prompts) + max_new_tokens

    @jax.jit
    def last_logits(ids, positions, segments, last):
        hidden, _ = Decoder(config).apply({"params": params}, ids, positions, segments)
        return project(params, config, hidden[0, last])

    same, worst = True, 0.0
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for step in range(max_new_tokens):
            n = len(seq)
            pad = [0] * (total - n)
            logits = np.asarray(last_logits(
                np.asarray([seq + pad], np.int32), np.asarray([list(range(n)) + pad], np.int32),
                np.asarray([[1] * n + pad], np.int32), n - 1))
            logp = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
            token = int(np.argmax(logits))
            same &= token == int(tokens[row, step])
            worst = max(worst, abs(float(logp[token]) - float(logps[row, step])))
            seq.append(token)
    return bool(same), worst
