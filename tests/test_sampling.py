"""Tests for fbjax.sampling: cached decoding against a no-cache reference, stops, filters."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax import sampling
from fbjax import sharding as fsh
from fbjax.models import config as mc
from fbjax.models.decoder import Decoder, logits as decoder_logits
from fbjax.sampling import SamplingConfig, filter_logits, generate, sample_texts

SIZES = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
             init_std=0.3)  # large enough that greedy outputs vary
CONFIGS = {
    "llama": mc.llama(**SIZES),
    "gpt2": mc.gpt2(**{**SIZES, "num_kv_heads": 4}),
    # A window smaller than the prompts, so the cache path must apply it.
    "mistral": mc.mistral(**SIZES, sliding_window=3),
}

# Both sets have 4 rows and fit one 16-token bucket, so they share one compiled executable.
EQUAL_PROMPTS = [[5, 9, 2, 33, 17, 40], [1, 2, 3, 4, 5, 6], [60, 12, 7, 7, 30, 8],
                 [19, 38, 57, 15, 34, 53]]
RAGGED_PROMPTS = [[5, 9, 2, 33, 17, 40, 11, 3, 29], [44], [8, 21, 34, 55], [13, 26, 39, 52, 4]]


def abstract_boxed(cfg):
    """The boxed (logically partitioned) parameter tree as shapes only: nothing is compiled."""
    tokens = jnp.zeros((1, 4), jnp.int32)
    return jax.eval_shape(
        lambda: Decoder(cfg).init(jax.random.PRNGKey(0), tokens, jnp.arange(4)[None], tokens + 1)
    )


@functools.lru_cache(maxsize=None)
def params_for(name):
    """Random parameters drawn with numpy (much faster than running ``init`` on CPU): every
    weight and bias ~ N(0, init_std), norm scales 1."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if path[-1].key == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, cfg.init_std, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract_boxed(cfg))["params"])


@functools.lru_cache(maxsize=None)
def _full_logits_fn(cfg):
    """Jitted no-cache forward: ``[B, L]`` right-padded rows -> float32 logits ``[B, L, V]``."""

    @jax.jit
    def fn(params, tokens, segment_ids):
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        hidden, _ = Decoder(cfg).apply({"params": params}, tokens, positions, segment_ids)
        return decoder_logits(params, cfg, hidden)

    return fn


def reference_greedy(params, cfg, prompts, max_new, buf_len=32):
    """Greedy decoding by recomputing the full sequence every step (no cache).

    Rows are right-padded to a fixed buffer (segment 0 = padding), which causal attention makes
    invisible to the real tokens, so one compiled forward serves every step.
    """
    fn = _full_logits_fn(cfg)
    seqs = [list(p) for p in prompts]
    for _ in range(max_new):
        tokens = np.zeros((len(seqs), buf_len), np.int32)
        segs = np.zeros((len(seqs), buf_len), np.int32)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
            segs[i, : len(s)] = 1
        out = np.asarray(fn(params, tokens, segs))
        for i, s in enumerate(seqs):
            s.append(int(np.argmax(out[i, len(s) - 1])))
    return np.array([s[len(p):] for s, p in zip(seqs, prompts)])


def reference_logps(params, cfg, prompts, completions, buf_len=32):
    """Full-recompute ``log_softmax`` at each completion token, teacher-forced."""
    fn = _full_logits_fn(cfg)
    tokens = np.zeros((len(prompts), buf_len), np.int32)
    segs = np.zeros((len(prompts), buf_len), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        row = list(p) + list(c)
        tokens[i, : len(row)] = row
        segs[i, : len(row)] = 1
    logp = np.asarray(jax.nn.log_softmax(fn(params, tokens, segs), axis=-1))
    out = np.zeros(np.shape(completions), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        for j, t in enumerate(c):
            out[i, j] = logp[i, len(p) + j - 1, t]
    return out


GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "mistral"])
@pytest.mark.parametrize("prompts", [EQUAL_PROMPTS, RAGGED_PROMPTS], ids=["equal", "ragged"])
def test_greedy_cache_matches_full_recompute(name, prompts):
    cfg, params = CONFIGS[name], params_for(name)
    out = generate(params, cfg, prompts, config=GREEDY, rng=jax.random.PRNGKey(0))
    expected = reference_greedy(params, cfg, prompts, GREEDY.max_new_tokens)
    # The random model must not collapse to one token, or the comparison would be vacuous.
    assert len(np.unique(expected)) > 3
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    np.testing.assert_array_equal(np.asarray(out.lengths), GREEDY.max_new_tokens)
    assert not np.asarray(out.done).any()
    # Returned log-probs are the full-recompute log-softmax at the chosen tokens.
    # float32 round-off differs between the cached and the full computation (different key
    # counts and summation orders); observed differences are a few 1e-6.
    ref = reference_logps(params, cfg, prompts, expected)
    np.testing.assert_allclose(np.asarray(out.logps), ref, rtol=1e-5, atol=1e-5)


def test_sampled_logps_match_full_recompute():
    cfg, params = CONFIGS["llama"], params_for("llama")
    config = SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=10, top_p=0.9)
    out = generate(params, cfg, RAGGED_PROMPTS, config=config, rng=jax.random.PRNGKey(3))
    tokens = np.asarray(out.tokens)
    # Unfiltered, temperature-1 log-probs, whatever the sampling settings.
    ref = reference_logps(params, cfg, RAGGED_PROMPTS, tokens)
    np.testing.assert_allclose(np.asarray(out.logps), ref, rtol=1e-5, atol=1e-5)


def test_padded_array_prompts_equal_list_prompts():
    cfg, params = CONFIGS["llama"], params_for("llama")
    # Right-padded array input with a mask; generate repacks it to left padding.
    arr = np.full((len(RAGGED_PROMPTS), 10), 7, np.int32)
    mask = np.zeros_like(arr)
    for i, p in enumerate(RAGGED_PROMPTS):
        arr[i, : len(p)] = p
        mask[i, : len(p)] = 1
    a = generate(params, cfg, arr, prompt_mask=mask, config=GREEDY, rng=jax.random.PRNGKey(0))
    b = generate(params, cfg, RAGGED_PROMPTS, config=GREEDY, rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_stop_tokens_end_rows_and_pad():
    cfg, params = CONFIGS["llama"], params_for("llama")
    free = np.asarray(generate(params, cfg, RAGGED_PROMPTS, config=GREEDY,
                               rng=jax.random.PRNGKey(0)).tokens)
    stop = int(free[0, 2])  # some row is guaranteed to stop mid-way
    pad = 60 if stop != 60 else 59
    config = dataclasses.replace(GREEDY, stop_tokens=(stop,), pad_id=pad)
    out = generate(params, cfg, RAGGED_PROMPTS, config=config, rng=jax.random.PRNGKey(0))
    tokens, lengths, done = (np.asarray(x) for x in (out.tokens, out.lengths, out.done))
    logps, mask = np.asarray(out.logps), np.asarray(out.mask)
    for i, row in enumerate(free):
        hits = np.flatnonzero(row == stop)
        n = int(hits[0]) + 1 if hits.size else len(row)
        assert lengths[i] == n and done[i] == bool(hits.size)
        np.testing.assert_array_equal(tokens[i, :n], row[:n])
        assert (tokens[i, n:] == pad).all() and (logps[i, n:] == 0).all()
        assert mask[i].sum() == n and mask[i, :n].all()
    assert done[0] and lengths[0] <= 3


def test_all_rows_stopping_exits_early_with_padding():
    cfg, params = CONFIGS["llama"], params_for("llama")
    free = np.asarray(generate(params, cfg, EQUAL_PROMPTS, config=GREEDY,
                               rng=jax.random.PRNGKey(0)).tokens)
    # Every row's first token is a stop token: one token each, the rest padding.
    config = dataclasses.replace(GREEDY, stop_tokens=tuple(int(t) for t in free[:, 0]), pad_id=0)
    out = generate(params, cfg, EQUAL_PROMPTS, config=config, rng=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(out.lengths), 1)
    assert np.asarray(out.done).all()
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], free[:, 0])
    assert (np.asarray(out.tokens)[:, 1:] == 0).all()


def test_top_k_1_and_tiny_top_p_equal_greedy():
    cfg, params = CONFIGS["llama"], params_for("llama")
    greedy = np.asarray(generate(params, cfg, RAGGED_PROMPTS, config=GREEDY,
                                 rng=jax.random.PRNGKey(0)).tokens)
    for config in (SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=1),
                   SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1e-6)):
        out = generate(params, cfg, RAGGED_PROMPTS, config=config, rng=jax.random.PRNGKey(5))
        np.testing.assert_array_equal(np.asarray(out.tokens), greedy)


def test_temperature_sampling_is_deterministic_per_rng():
    cfg, params = CONFIGS["llama"], params_for("llama")
    config = SamplingConfig(max_new_tokens=8, temperature=1.0)
    a = generate(params, cfg, RAGGED_PROMPTS, config=config, rng=jax.random.PRNGKey(1)).tokens
    b = generate(params, cfg, RAGGED_PROMPTS, config=config, rng=jax.random.PRNGKey(1)).tokens
    c = generate(params, cfg, RAGGED_PROMPTS, config=config, rng=jax.random.PRNGKey(2)).tokens
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (np.asarray(a) != np.asarray(c)).any()


# Jitted with traced knobs (as generate uses it): one compile per logits shape.
_filter = jax.jit(lambda x, k, p: filter_logits(x, top_k=k, top_p=p))


def _kept(logits, top_k=0, top_p=1.0):
    out = np.asarray(_filter(jnp.asarray(logits, jnp.float32), top_k, top_p))
    return [set(np.flatnonzero(np.isfinite(row)).tolist()) for row in np.atleast_2d(out)]


def test_filter_logits_top_k():
    logits = [[2.0, 1.0, 0.5, 3.0, -1.0, 1.0]]
    assert _kept(logits, top_k=2) == [{3, 0}]
    # Tied logits (ids 1 and 5): exactly k survive, ties broken by id.
    assert _kept(logits, top_k=3) == [{3, 0, 1}]
    assert _kept(logits, top_k=0) == [set(range(6))]
    assert _kept(logits, top_k=10) == [set(range(6))]
    # Survivors keep their original logits.
    out = np.asarray(_filter(jnp.asarray(logits, jnp.float32), 2, 1.0))
    np.testing.assert_array_equal(out[0, [0, 3]], [2.0, 3.0])


def test_filter_logits_top_p():
    # Probabilities 0.5, 0.2, 0.15, 0.1, 0.05 in shuffled token order.
    probs = np.array([0.1, 0.5, 0.05, 0.2, 0.15])
    logits = np.log(probs)[None]
    assert _kept(logits, top_p=0.05) == [{1}]  # the top token always survives
    assert _kept(logits, top_p=0.6) == [{1, 3}]  # 0.5 < 0.6 <= 0.7
    assert _kept(logits, top_p=0.71) == [{1, 3, 4}]  # 0.7 < 0.71 <= 0.85
    assert _kept(logits, top_p=0.99) == [set(range(5))]
    assert _kept(logits, top_p=1.0) == [set(range(5))]
    # Rows are filtered independently.
    two = np.stack([np.log(probs), np.log(np.roll(probs, 1))])
    assert _kept(two, top_p=0.6) == [{1, 3}, {2, 4}]
    # top-p applies to the renormalised top-k distribution: {0.5, 0.2} -> {0.714, 0.286}.
    assert _kept(logits, top_k=2, top_p=0.7) == [{1}]
    assert _kept(logits, top_k=2, top_p=0.72) == [{1, 3}]


def test_bucketed_prompt_lengths_compile_once():
    cfg, params = CONFIGS["llama"], params_for("llama")
    rng = jax.random.PRNGKey(0)
    short = [[1, 2, 3, 4, 5], [6, 7], [8], [9, 10, 11]]
    long = [[9] * 16, [3, 1, 4, 1, 5, 9, 2, 6, 5], [7] * 12, [2, 7]]
    before = sampling._num_traces
    generate(params, cfg, short, config=GREEDY, rng=rng)
    traced = sampling._num_traces
    assert traced - before <= 1  # 0 if an earlier test already compiled this shape
    generate(params, cfg, long, config=GREEDY, rng=rng)
    # Sampling knobs and stop tokens are traced values: changing them does not recompile.
    other = dataclasses.replace(GREEDY, temperature=0.8, top_k=5, top_p=0.9, pad_id=3,
                                stop_tokens=(4, 5, 6))
    generate(params, cfg, short, config=other, rng=rng)
    assert sampling._num_traces == traced
    # A prompt past the bucket boundary is a new shape: exactly one more trace.
    generate(params, cfg, [[1] * 17] + short[1:], config=GREEDY, rng=rng)
    assert sampling._num_traces == traced + 1


def test_mesh_sharded_generation_matches_single_device():
    cfg = CONFIGS["llama"]
    # The test vocabulary (61) cannot be split over a tensor axis, so plain FSDP; 2 devices
    # (3 rows padded to 4) keep the test fast.
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 2, 1)), jax.devices()[:2])
    rules = fsh.RULES_FSDP
    shardings = fsh.tree_shardings(mesh, rules, abstract_boxed(cfg))["params"]
    params = jax.device_put(params_for("llama"), shardings)
    out = generate(params, cfg, RAGGED_PROMPTS[:3], config=GREEDY, rng=jax.random.PRNGKey(0),
                   mesh=mesh, rules=rules)
    assert not params["embedding"].sharding.is_fully_replicated
    # Rows are independent, so the first 3 rows of the 4-row single-device run are the reference.
    ref = generate(params_for("llama"), cfg, RAGGED_PROMPTS, config=GREEDY,
                   rng=jax.random.PRNGKey(0))
    assert out.tokens.shape == (3, GREEDY.max_new_tokens)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens)[:3])
    np.testing.assert_allclose(np.asarray(out.logps), np.asarray(ref.logps)[:3], atol=1e-5)


class CharTokenizer:
    """Duck-typed stand-in for an fbjax tokenizer: token id i <-> chr(ord('A') + i)."""

    bos_id = 1
    eos_id = 2

    def encode(self, text, add_bos=True):
        return ([self.bos_id] if add_bos else []) + [(ord(c) - ord("A")) % 61 for c in text]

    def decode(self, ids):
        return "".join(chr(ord("A") + i) for i in ids)


def test_sample_texts_decodes_up_to_stop():
    cfg, params = CONFIGS["llama"], params_for("llama")
    tok = CharTokenizer()
    texts = ["hello", "abc", "zz top", "q"]
    prompts = [tok.encode(t) for t in texts]
    free = np.asarray(generate(params, cfg, prompts, config=GREEDY,
                               rng=jax.random.PRNGKey(0)).tokens)
    # Make a token that some row generates the tokenizer's EOS.
    tok.eos_id = int(free[1, 3])
    got = sample_texts(params, cfg, tok, texts, config=GREEDY, rng=jax.random.PRNGKey(0))
    for row, text in zip(free, got):
        hits = np.flatnonzero(row == tok.eos_id)
        n = int(hits[0]) if hits.size else len(row)
        assert text == tok.decode(row[:n].tolist())
    assert len(got[1]) <= 3
