"""Every objective trains through the real sharded step and moves the quantity it targets.

A tiny model, tiny synthetic token data, a 2-device mesh, a dozen steps: the test asserts the
direction of each objective's own metric (margin up for pairs, desirable above undesirable for
thumbs, negatives' log-probs down), so a sign error anywhere between loss and update fails.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from fbjax import sharding as fsh
from fbjax.checkpoint import CheckpointConfig, RunCheckpointer
from fbjax.run.start import random_params
from fbjax.train.config import TrainConfig
from fbjax.train.stream import train_on_groups
from fbjax.objectives import preference
from fbjax.train import catalog, inputs, presets
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig
from tests.train.helpers import job, random_groups, tiny_llama

MODEL = tiny_llama(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32)
STEPS = 12


@pytest.fixture(scope="module")
def mesh():
    return fsh.make_mesh(fsh.MeshConfig(shape=(1, 2, 1), rules=fsh.RULES_FSDP), jax.devices()[:2])


def _train(objective, groups, mesh, steps=STEPS, lr=3e-3, slots=8):
    config = job(MODEL, objective,
                 TrainConfig(steps=steps, batch=4, seq_len=64, slots_per_row=slots, log_every=1),
                 optimizer=OptimizerConfig(learning_rate=lr, schedule="constant"),
                 rules=fsh.RULES_FSDP, name=objective.name)
    params = random_params(MODEL, mesh, fsh.RULES_FSDP, 0)
    result = train_on_groups(config, groups, params, mesh=mesh)
    return result.history


def _first_last(history, key):
    return history[0][key], np.mean([h[key] for h in history[-3:]])


def _with(groups, **fields):
    return [dataclasses.replace(g, slot_fields={**g.slot_fields, **{
        k: v(i, g) for k, v in fields.items()}}) for i, g in enumerate(groups)]


PAIRED = {
    "dpo": presets.dpo(), "cdpo": presets.cdpo(), "rdpo": presets.rdpo(), "ipo": presets.ipo(),
    "hinge": presets.hinge(), "slic": presets.slic(), "simpo": presets.simpo(),
    "orpo": presets.orpo(), "cpo": presets.cpo(),
}


@pytest.mark.parametrize("name", sorted(PAIRED))
def test_paired_objective_raises_its_margin(name, mesh):
    groups = random_groups(24, completions=2, vocab=MODEL.vocab_size, seed=1)
    history = _train(PAIRED[name], groups, mesh)
    before, after = _first_last(history, "rewards/margin")
    assert after > before + 1e-3, (name, before, after)


@pytest.mark.parametrize("name", ["kto", "bco", "pmpo"])
def test_unpaired_objective_separates_the_classes(name, mesh):
    groups = random_groups(32, completions=1, vocab=MODEL.vocab_size, seed=2)
    groups = _with(groups, labels=lambda i, g: (float(i % 2),), is_kl=lambda i, g: (0.0,))
    if name == "kto":  # KTO's mismatched completions for its KL reference point
        groups = [dataclasses.replace(g, completions=(g.completions[0], groups[(i + 1) % 32]
                                                      .completions[0]),
                                      slot_fields={"labels": (g.slot_fields["labels"][0], 0.0),
                                                   "is_kl": (0.0, 1.0)})
                  for i, g in enumerate(groups)]
    history = _train(catalog.get(name).bind(), groups, mesh)
    gap = [h["logps/chosen"] - h["logps/rejected"] for h in history]
    assert np.mean(gap[-3:]) > gap[0] + 0.05, (name, gap[0], gap[-3:])


@pytest.mark.parametrize("name", ["npo", "unlikelihood"])
def test_negative_objective_lowers_the_negatives(name, mesh):
    groups = random_groups(24, completions=1, vocab=MODEL.vocab_size, seed=3)
    history = _train(catalog.get(name).bind(), groups, mesh)
    key = "logps/rejected" if name == "npo" else "loss"
    before, after = _first_last(history, key)
    assert after < before - 0.05, (name, before, after)


def test_retain_and_likelihood_mixtures_lower_negatives_and_raise_the_rest(mesh):
    groups = random_groups(24, completions=1, vocab=MODEL.vocab_size, seed=3)
    for objective, field, up, down in (
            (presets.npo_retain(beta=1.0), "retain", "logps/retain", "logps/rejected"),
            (presets.unlikelihood_mle(), "likelihood", "logps/chosen", "logps/rejected")):
        mixed = _with(groups, **{field: lambda i, g: (float(i % 2),)})
        history = _train(objective, mixed, mesh)
        for key, sign in ((up, 1.0), (down, -1.0)):
            before, after = _first_last(history, key)
            assert sign * (after - before) > 0.05, (field, key, before, after)


def test_unlikelihood_mle_on_likelihood_rows_only_is_the_sft_loss(mesh):
    # Per-slot token means weighted by token counts (inputs.token_slots_with_likelihood) against
    # the SFT objective's token-weighted sequence means: two paths to the batch's token-mean NLL.
    groups = _with(random_groups(24, completions=1, vocab=MODEL.vocab_size, seed=5),
                   likelihood=lambda i, g: (1.0,))
    mle = _train(presets.unlikelihood_mle(), groups, mesh, steps=2)
    sft = _train(presets.sft(), groups, mesh, steps=2)
    np.testing.assert_allclose([h["loss"] for h in mle], [h["loss"] for h in sft], rtol=1e-5)


def test_d2o_raises_samples_over_negative(mesh):
    groups = random_groups(24, completions=3, vocab=MODEL.vocab_size, seed=4)
    with pytest.raises(ValueError, match="multiple of 3"):
        _train(presets.d2o(2, beta=1.0, alpha=1.0), groups, mesh, steps=1)
    history = _train(presets.d2o(2, beta=1.0, alpha=1.0), groups, mesh, slots=6)
    before, after = _first_last(history, "rewards/margin")
    assert after > before + 1e-3


@pytest.mark.parametrize("loss", [preference.plackett_luce, preference.irpo])
def test_listwise_objective_raises_the_top_item(loss, mesh):
    groups = random_groups(16, completions=4, vocab=MODEL.vocab_size, seed=5)
    groups = _with(groups, relevance=lambda i, g: (3.0, 2.0, 1.0, 0.0))
    objective = Objective(loss=loss, inputs=inputs.listwise(4), hparams={"beta": 1.0})
    history = _train(objective, groups, mesh)
    before, after = _first_last(history, "loss")
    assert after < before - 1e-3, (loss.__name__, before, after)


def test_bco_resume_keeps_reward_shift(tmp_path, mesh):
    """BCO stopped after 3 steps and resumed from its checkpoint equals 6 uninterrupted steps,
    reward-shift state included."""
    groups = _with(random_groups(32, completions=1, vocab=MODEL.vocab_size, seed=6),
                   labels=lambda i, g: (float(i % 2),))
    config = job(MODEL, presets.bco(beta=0.5),
                 TrainConfig(steps=6, batch=4, seq_len=64, slots_per_row=8, log_every=1),
                 optimizer=OptimizerConfig(learning_rate=3e-3, schedule="constant"),
                 rules=fsh.RULES_FSDP, name="bco")
    params = random_params(MODEL, mesh, fsh.RULES_FSDP, 0)
    full = train_on_groups(config, groups, params, mesh=mesh)
    ckpt = CheckpointConfig(every_steps=3, keep=2, async_save=False)
    short = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=3))
    train_on_groups(short, groups, params, mesh=mesh,
                    checkpointer=RunCheckpointer(tmp_path, ckpt, handle_sigterm=False))
    resumed = train_on_groups(config, groups, params, mesh=mesh,
                              checkpointer=RunCheckpointer(tmp_path, ckpt, handle_sigterm=False))
    assert int(resumed.state.step) == 6
    shift_full = jax.device_get(full.state.objective_state)
    shift_resumed = jax.device_get(resumed.state.objective_state)
    assert float(shift_full.count) > 1.0  # the shift really accumulated batches
    jax.tree.map(np.testing.assert_array_equal, shift_resumed, shift_full)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state.params),
                 jax.device_get(full.state.params))


def _train_reward_model(mesh, objective, groups):
    model = dataclasses.replace(MODEL, reward_head=True)
    config = job(model, objective,
                 TrainConfig(steps=STEPS, batch=4, seq_len=64, slots_per_row=8, log_every=1),
                 optimizer=OptimizerConfig(learning_rate=3e-3, schedule="constant"),
                 rules=fsh.RULES_FSDP, name="rm")
    return train_on_groups(config, groups, random_params(model, mesh, fsh.RULES_FSDP, 0),
                           mesh=mesh)


def test_reward_model_learns_the_preferences(mesh):
    """Bradley-Terry on the scalar head: held-in pair accuracy and margin rise."""
    groups = random_groups(24, completions=2, vocab=MODEL.vocab_size, seed=9)
    result = _train_reward_model(mesh, presets.reward_model(), groups)
    before, after = _first_last(result.history, "rewards/margin")
    assert after > before + 0.1, (before, after)
    assert np.mean([h["rewards/accuracy"] for h in result.history[-3:]]) > 0.8


def test_kwise_reward_model_orders_the_ranking(mesh):
    groups = _with(random_groups(16, completions=4, vocab=MODEL.vocab_size, seed=10),
                   ranks=lambda i, g: (2.0, 0.0, 3.0, 1.0))
    result = _train_reward_model(mesh, presets.kwise_reward_model(4), groups)
    before, after = _first_last(result.history, "loss")
    assert after < before - 0.05, (before, after)


def test_nft_raises_correct_over_wrong_samples(mesh):
    """NFT's ratios are to the step's reference (the rollout policy): correct samples' log-probs
    rise relative to wrong ones."""
    groups = _with(random_groups(16, completions=4, vocab=MODEL.vocab_size, seed=11),
                   labels=lambda i, g: (1.0, 0.0, 1.0, 0.0),
                   group_accuracy=lambda i, g: (0.5,) * 4)
    history = _train(presets.nft(token_normalizer=1.0), groups, mesh)
    gap = [h["logps/chosen"] - h["logps/rejected"] for h in history]
    assert np.mean(gap[-3:]) > gap[0] + 0.1, (gap[0], gap[-3:])
    assert history[0]["ratio"] == pytest.approx(1.0, abs=1e-5)  # policy == rollout at step 0


def test_udm_weights_favour_undesirable_prompts_that_look_desirable():
    from fbjax.train import udm

    groups = random_groups(40, completions=1, vocab=MODEL.vocab_size, seed=12)
    # Desirable prompts sit at +1; undesirable ones half at -1, half among the desirable ones.
    labels = [1.0] * 20 + [0.0] * 20
    where = [1.0] * 20 + [-1.0] * 10 + [1.0] * 10
    groups = [dataclasses.replace(g, slot_fields={"labels": (y,)})
              for g, y in zip(groups, labels)]
    noise = np.random.default_rng(0).normal(scale=0.3, size=(40, 2))
    table = {id(g.prompt): np.array([x, 0.0]) + n for g, x, n in zip(groups, where, noise)}
    weighted = udm.attach_udm_weights(groups, lambda ps: np.stack([table[id(p)] for p in ps]))
    w = np.array([g.slot_fields["udm_weights"][0] for g in weighted])
    assert np.all(w[:20] == 1.0)
    assert w[30:].mean() > 1.5 and w[20:30].mean() < 0.7  # clipped to [0.5, 10]
    assert w[20:].min() >= 0.5


def test_bco_udm_trains_with_model_embeddings(mesh):
    from fbjax.train import udm

    groups = _with(random_groups(32, completions=1, vocab=MODEL.vocab_size, seed=13),
                   labels=lambda i, g: (float(i % 2),))
    params = jax.device_get(random_params(MODEL, mesh, fsh.MeshConfig().rules, 0))
    groups = udm.attach_udm_weights(groups, udm.mean_hidden_states(MODEL, params))
    history = _train(presets.bco_udm(), groups, mesh)
    gap = [h["logps/chosen"] - h["logps/rejected"] for h in history]
    assert np.mean(gap[-3:]) > gap[0] + 0.05, (gap[0], gap[-3:])
    w = np.array([h["udm_weight"] for h in history])
    assert np.all(np.isfinite(w)) and not np.allclose(w, 1.0)
