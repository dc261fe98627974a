"""Evaluation metrics with hand-derived values: implicit-reward margins, preference accuracy,
KL to the reference, response lengths and win rates.

The models are hand-set "bigram" decoders (tests/feedback/helpers.py): the residual stream is
the one-hot embedding of the current token, so the LM head's row of a token is the next-token
logits, ``sqrt(D) * W[token]``. The reference has ``W = 0`` (uniform over V = 32 tokens); the
policy adds ``delta`` to the logit of token ``T`` everywhere. Per token ``y``:

    log pi(y) - log ref(y) = delta [y == T] - log((V - 1 + e^delta) / V)
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fbjax import evaluation
from fbjax.data import packing
from fbjax.sampling import SamplingConfig
from tests.feedback.helpers import CharTokenizer, bigram_judge

V = 32
T = 7
DELTA = 1.5
LOG_Z = np.log((V - 1 + np.exp(DELTA)) / V)


def _ratio(tokens) -> float:
    tokens = np.asarray(tokens)
    return float(DELTA * np.sum(tokens == T) - len(tokens) * LOG_Z)


@pytest.fixture(scope="module")
def models():
    config, params = bigram_judge({}, CharTokenizer())
    ref = jax.tree.map(np.array, params)
    ref["lm_head"][:] = 0.0
    policy = jax.tree.map(np.array, ref)
    policy["lm_head"][:, T] = DELTA / np.sqrt(config.hidden_size)
    return config, jax.tree.map(jax.numpy.asarray, policy), jax.tree.map(jax.numpy.asarray, ref)


def _pairs():
    ids = lambda *t: np.asarray(t, np.int32)
    return [
        packing.Group(ids(1, 5), (ids(T, T, 3), ids(4, 4, 4))),  # margin 2 delta
        packing.Group(ids(1, 9, 9), (ids(3,), ids(T, 3, 3))),  # -delta + 2 log Z
        packing.Group(ids(1,), (ids(T, 3), ids(T, 4))),  # 0: a tie, not a win
    ]


def test_policy_equal_to_reference_gives_zero(models):
    config, policy, _ = models
    chosen, rejected = evaluation.implicit_rewards(policy, policy, config, _pairs(), beta=0.1)
    np.testing.assert_array_equal(chosen, 0.0)
    np.testing.assert_array_equal(rejected, 0.0)
    m = evaluation.preference_metrics(policy, policy, config, _pairs(), beta=0.1)
    assert m["rewards/margin"] == 0.0 and m["rewards/accuracy"] == 0.0  # ties are not wins
    samples = evaluation.sample(policy, config, CharTokenizer(), ["01", "2"],
                                sampling_config=SamplingConfig(max_new_tokens=5),
                                rng=jax.random.key(0))
    np.testing.assert_array_equal(
        evaluation.kl_per_sequence(policy, policy, config, samples), 0.0)


def test_known_logit_shift_gives_known_margins(models):
    config, policy, ref = models
    beta = 0.1
    pairs = _pairs()
    chosen, rejected = evaluation.implicit_rewards(policy, ref, config, pairs, beta=beta)
    want_c = [beta * _ratio(g.completions[0]) for g in pairs]
    want_r = [beta * _ratio(g.completions[1]) for g in pairs]
    np.testing.assert_allclose(chosen, want_c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rejected, want_r, rtol=1e-4, atol=1e-5)
    margins = [beta * 2 * DELTA, beta * (-DELTA + 2 * LOG_Z), 0.0]
    np.testing.assert_allclose(chosen - rejected, margins, rtol=1e-4, atol=1e-5)
    m = evaluation.preference_metrics(policy, ref, config, pairs, beta=beta)
    assert m["rewards/accuracy"] == pytest.approx(1 / 3)  # only the first pair is a strict win
    assert m["rewards/margin"] == pytest.approx(np.mean(margins), abs=1e-5)
    assert m["rewards/chosen"] == pytest.approx(np.mean(want_c), abs=1e-5)
    assert m["pairs"] == 3
    # The vocabulary chunk (TrainConfig.logprob_chunk) changes memory, not values.
    again = evaluation.implicit_rewards(policy, ref, config, pairs, beta=beta, chunk_size=8)
    np.testing.assert_allclose(again[0], chosen, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="two completions"):
        evaluation.implicit_rewards(policy, ref, config,
                                    [packing.Group(np.asarray([1]), (np.asarray([2]),))])


def test_kl_per_sequence_and_lengths_of_samples(models):
    config, policy, ref = models
    samples = evaluation.sample(policy, config, CharTokenizer(), ["01", "2", "3", "0"],
                                sampling_config=SamplingConfig(max_new_tokens=6),
                                rng=jax.random.key(1))
    kl = evaluation.kl_per_sequence(policy, ref, config, samples, chunk_size=16)
    want = [_ratio(g.completions[0]) for g in samples.groups]
    np.testing.assert_allclose(kl, want, rtol=1e-4, atol=1e-5)
    assert evaluation.kl_to_reference(policy, ref, config, samples) == pytest.approx(
        np.mean(want), abs=1e-5)
    lengths = evaluation.response_lengths(samples)
    assert list(lengths) == [len(g.completions[0]) for g in samples.groups]
    assert all(1 <= n <= 6 for n in lengths)


def test_expected_kl_matches_the_closed_form(models):
    """Over many samples the mean log-ratio approaches the per-token KL times the length:
    with no stop token among the sampled ids, every sample has max_new_tokens tokens."""
    config, policy, ref = models
    n_tok = 4
    p_t = np.exp(DELTA) / (V - 1 + np.exp(DELTA))
    kl_token = p_t * DELTA - LOG_Z  # KL(pi || uniform) per token
    samples = evaluation.sample(policy, config, CharTokenizer(), ["0"] * 512,
                                sampling_config=SamplingConfig(max_new_tokens=n_tok,
                                                               stop_tokens=(31,)),
                                rng=jax.random.key(2), batch_size=512)
    full = evaluation.response_lengths(samples) == n_tok
    kl = evaluation.kl_per_sequence(policy, ref, config, samples)[full]
    # sd of one token's log-ratio is delta * sqrt(p(1-p)); 4 tokens, ~500 samples: se ~ 0.04.
    assert kl.mean() == pytest.approx(n_tok * kl_token, abs=0.15)


def test_win_rate_from_scores():
    assert evaluation.win_rate_from_scores([1, 2, 3, 0], [0, 2, 4, 0]) == pytest.approx(
        (1 + 0.5 + 0 + 0.5) / 4)
    with pytest.raises(ValueError, match="aligned"):
        evaluation.win_rate_from_scores([1, 2], [1])
