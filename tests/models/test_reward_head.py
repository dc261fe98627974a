"""Scalar reward head: Hugging Face sequence-classifier parity, layout equivalence, training.

A reward model is the decoder with ``reward_head=True``: transformers'
``*ForSequenceClassification`` with one label, read at each sequence's last token.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax import sharding as fsh
from fbjax.run.start import random_params
from fbjax.train.config import TrainConfig
from fbjax.train.stream import train_on_groups
from fbjax.data import packing
from fbjax.models import hf
from fbjax.models.config import preset
from fbjax.models.decoder import Decoder, init_reward_head, token_rewards
from fbjax.train import presets
from fbjax.train import step as steplib
from fbjax.train.optim import OptimizerConfig
from tests.models.test_hf_parity import _FBJAX_SIZES, _random_variables, _tool
from tests.train.helpers import job, random_groups, tiny_llama

FAMILIES = ("llama", "qwen2", "gpt2")  # untied head + biases, tied embeddings, GPT-2 layout


def _our_scores(config, params, ids, mask):
    """Reward of each right-padded row: the head at its last real token."""
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    hidden, _ = Decoder(config).apply({"params": params}, ids, positions, mask.astype(np.int32))
    per_token = np.asarray(token_rewards(params, config, hidden))
    last = mask.sum(axis=1) - 1
    return per_token[np.arange(len(ids)), last]


def _hf_scores(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)))
    return out.logits[:, 0].float().numpy()


@pytest.fixture(scope="module")
def tool():
    pytest.importorskip("torch", reason="torch is needed for parity with transformers")
    pytest.importorskip("transformers", reason="transformers is needed for parity")
    return _tool()


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_reward_model_imports_with_equal_scores(tool, family, tmp_path):
    import torch
    import transformers

    config = tool.tiny_config(family)
    config.num_labels = 1
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(
        config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(0.2 * torch.randn(p.shape))
    model = model.float().eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours_config, params = hf.load_hf(tmp_path)
    assert ours_config.reward_head
    ids, mask = tool.batch(seed=3)
    expected = _hf_scores(model, ids, mask)
    np.testing.assert_allclose(_our_scores(ours_config, params, ids, mask), expected, atol=1e-4)
    assert np.abs(expected).max() > 0.1  # not trivially zero


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fbjax_reward_model_exports_to_transformers(tool, family, tmp_path):
    import flax.linen as nn
    import transformers

    extra = {"gpt2": dict(num_kv_heads=4)}.get(family, {})
    config = preset(family, **{**_FBJAX_SIZES, **extra}, reward_head=True)
    variables = _random_variables(config, seed=4)
    hf.save_hf(tmp_path, config, variables,
               extra_config={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    ids, mask = tool.batch(seed=5)
    ids = np.where(mask > 0, np.maximum(ids % config.vocab_size, 3), 0)
    params = nn.meta.unbox(variables)["params"]
    np.testing.assert_allclose(_our_scores(config, params, ids, mask),
                               _hf_scores(model, ids, mask), atol=1e-4)
    reloaded, _ = hf.load_hf(tmp_path)
    assert reloaded == dataclasses.replace(config, param_dtype="float32")


def test_classifier_with_several_labels_is_refused(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForSequenceClassification"],
        "num_labels": 3, "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
        "intermediate_size": 16, "vocab_size": 10}))
    with pytest.raises(hf.CheckpointError, match="3 labels"):
        hf.load_hf(tmp_path)


# ----------------------------------------------------------------------------- in the step

RM = tiny_llama(reward_head=True)


def _params(config, seed=0):
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])
    return jax.device_get(steplib.init_params(Decoder(config), jax.random.key(seed), mesh,
                                              fsh.RULES_FSDP))


def _slot_rewards(config, params, batch):
    stats = steplib.sequence_stats(Decoder(config), params, None,
                                   {k: jnp.asarray(v) for k, v in batch.items()},
                                   need_reference=False, chunk_size=16)
    return np.asarray(stats.rewards), np.asarray(stats.valid)


@pytest.mark.parametrize("share_prefix", [False, True])
def test_packed_rewards_equal_each_sequence_alone(share_prefix):
    """Each slot's reward is the head at that completion's last token, read from a packed (and
    prefix-shared) row exactly as from the sequence run alone."""
    params = _params(RM)
    groups = random_groups(5, completions=2, vocab=RM.vocab_size, seed=8)
    batch, used = packing.pack(groups, seq_len=48, num_rows=3, num_slots=8,
                               share_prefix=share_prefix)
    assert used == 5
    rewards, valid = _slot_rewards(RM, params, batch)
    seqs = [np.concatenate([g.prompt, c]) for g in groups for c in g.completions]
    ids = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    mask = np.zeros_like(ids)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)], mask[i, :len(seq)] = seq, 1
    expected = _our_scores(RM, params, ids, mask)
    got = rewards[valid > 0]
    np.testing.assert_allclose(np.sort(got), np.sort(expected), rtol=1e-5, atol=1e-5)
    # the chosen/rejected order within each pair survives packing
    pairs = {(round(float(a), 4), round(float(b), 4)) for a, b in zip(got[0::2], got[1::2])}
    assert pairs == {(round(float(a), 4), round(float(b), 4))
                     for a, b in zip(expected[0::2], expected[1::2])}


def test_reward_model_refuses_log_prob_objectives():
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])
    train = TrainConfig(steps=1, batch=2, seq_len=32, slots_per_row=4, log_every=1)
    config = job(RM, presets.dpo(), train, optimizer=OptimizerConfig(learning_rate=1e-3),
                 name="rm")
    rules = fsh.MeshConfig().rules
    groups = random_groups(4, completions=2, vocab=RM.vocab_size, seed=1)
    with pytest.raises(ValueError, match="no LM head"):
        train_on_groups(config, groups, random_params(RM, mesh, rules, 0), mesh=mesh)
    policy = dataclasses.replace(config, model=tiny_llama(), objective=presets.reward_model())
    with pytest.raises(ValueError, match="no reward head"):
        train_on_groups(policy, groups, random_params(policy.model, mesh, rules, 0), mesh=mesh)


def test_init_reward_head_turns_a_policy_into_a_reward_model():
    def shapes(config):
        ones = jnp.ones((1, 4), jnp.int32)
        boxed = jax.eval_shape(Decoder(config).init, jax.random.key(0), ones, ones, ones)
        return jax.tree.map(lambda x: x.shape, nn.meta.unbox(boxed)["params"])

    head = init_reward_head(RM, jax.random.key(0))
    rm_params = {**{k: v for k, v in shapes(tiny_llama()).items() if k != "lm_head"},
                 "reward_head": head.shape}
    assert rm_params == shapes(RM)
    assert 0.1 < float(jnp.std(head)) < 0.3  # the config's init_std (0.2)
