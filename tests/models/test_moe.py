"""Mixture-of-experts layer: grouped dispatch against a per-token loop, the load-balancing loss
against transformers, expert-parallel sharding, and the train step's metric (parity of the
whole model with transformers is in test_hf_parity.py, goldens ``mixtral`` / ``qwen3_moe``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax import sharding as fsh
from fbjax.data import packing
from fbjax.models import config as mc
from fbjax.models import hf, moe
from fbjax.models.decoder import Decoder, logits
from fbjax.objectives import supervised
from fbjax.train import inputs
from fbjax.train import step as steplib
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig, make_optimizer
from tests.train.helpers import random_groups

GOLDENS = Path(__file__).resolve().parents[1] / "goldens" / "hf"
TINY = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            mlp_dim=24, num_experts=4, experts_per_token=2, init_std=0.2)


def test_grouped_experts_match_per_token_loop():
    """Sorted ragged_dot dispatch == each (token, expert) pair computed alone; gradients too."""
    rng = np.random.default_rng(0)
    t, d, f, e, k = 9, 6, 5, 4, 2
    x = jnp.asarray(rng.standard_normal((t, d)), jnp.float32)
    gate, up = (jnp.asarray(rng.standard_normal((e, d, f)), jnp.float32) for _ in range(2))
    down = jnp.asarray(rng.standard_normal((e, f, d)), jnp.float32)
    weights, experts, probs = moe.route(jnp.asarray(rng.standard_normal((t, e))), k, True)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)
    assert (np.diff(np.asarray(experts)[:, ::-1], axis=1) != 0).all()  # k distinct experts
    got = moe.expert_outputs(x, experts, gate, up, down, jax.nn.silu)
    xs, g, u, dn = (np.asarray(a, np.float64) for a in (x, gate, up, down))
    for i in range(t):
        for j, ex in enumerate(np.asarray(experts)[i]):
            a = xs[i] @ g[ex]
            want = ((a / (1 + np.exp(-a))) * (xs[i] @ u[ex])) @ dn[ex]
            np.testing.assert_allclose(np.asarray(got[i, j]), want, rtol=1e-5, atol=1e-5)

    def grouped(x, gate):
        return jnp.sum(moe.expert_outputs(x, experts, gate, up, down, jax.nn.silu) ** 2)

    def gathered(x, gate):  # the dense reference: every pair's weights gathered
        h = jax.nn.silu(jnp.einsum("td,tkdf->tkf", x, gate[experts]))
        h = h * jnp.einsum("td,tkdf->tkf", x, up[experts])
        return jnp.sum(jnp.einsum("tkf,tkfd->tkd", h, down[experts]) ** 2)

    for a, b in zip(jax.grad(grouped, (0, 1))(x, gate), jax.grad(gathered, (0, 1))(x, gate)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_balancing_loss_by_hand():
    """Two tokens, two experts, top-1: f = (1/2, 1/2) routed; P = mean probabilities. A
    masked third token changes nothing."""
    probs = jnp.asarray([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    experts = jnp.asarray([[0], [1], [0]])
    stats = moe.router_stats(probs, experts, jnp.asarray([True, True, False]))
    want = 2 * (0.5 * 0.55 + 0.5 * 0.45)
    assert float(moe.load_balancing_loss([stats], 2)) == pytest.approx(want, rel=1e-6)
    # Pooled over layers: a second, all-to-expert-0 layer.
    other = moe.router_stats(jnp.asarray([[1.0, 0.0], [1.0, 0.0]]), jnp.asarray([[0], [0]]),
                             jnp.asarray([True, True]))
    pooled = 2 * ((3 / 4) * (3.1 / 4) + (1 / 4) * (0.9 / 4))  # assigned (3, 1), probs (3.1, .9)
    assert float(moe.load_balancing_loss([stats, other], 2)) == pytest.approx(pooled, rel=1e-6)


def _router_loss(config, params, ids, mask):
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    (_, _), sown = Decoder(config).apply({"params": params}, ids, positions,
                                         mask.astype(np.int32), mutable=["intermediates"])
    stats = moe.sown_router_stats(sown["intermediates"])
    assert len(stats) == config.num_layers
    return float(moe.load_balancing_loss(stats, config.num_experts))


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe"])
def test_balancing_loss_matches_transformers(name):
    """``moe/load_balancing_loss`` == transformers' ``aux_loss`` (``output_router_logits=True``;
    transformers 5 returns it unscaled and adds ``router_aux_loss_coef`` times it to the loss)
    on a right-padded batch, padding excluded."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import torch

    golden = GOLDENS / name
    config, params = hf.load_hf(golden)
    ids, mask = np.load(golden / "input_ids.npy"), np.load(golden / "attention_mask.npy")
    assert mask.min() == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(
        golden, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)),
                    output_router_logits=True)
    expected = float(out.aux_loss)
    ours = _router_loss(config, params, ids, mask)
    assert ours == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # The padding really is excluded (counting it gives another value).
    assert abs(_router_loss(config, params, ids, np.ones_like(mask)) - expected) > 1e-4


@pytest.mark.parametrize("shape,rules", [((1, 1, 2), fsh.RULES_FSDP_TP),
                                         ((1, 2, 1), fsh.RULES_FSDP)])
def test_sharded_equals_unsharded(shape, rules):
    """Experts split over the tensor axis (expert parallelism) or their embed axis over fsdp,
    on a 2-device CPU mesh: the same logits as on one device."""
    config = mc.mixtral(**TINY)
    model = Decoder(config)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (4, 12)).astype(np.int32)
    mask = (np.arange(12)[None] < np.asarray([12, 9, 7, 4])[:, None]).astype(np.int32)
    positions = np.broadcast_to(np.arange(12, dtype=np.int32), ids.shape)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, positions, mask)["params"])

    def run(params, ids, positions, segments):
        hidden, _ = model.apply({"params": params}, ids, positions, segments)
        return logits(params, config, hidden)

    reference = np.asarray(jax.jit(run)(params, ids, positions, mask))
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=shape, rules=rules), jax.devices()[:2])
    ones = np.ones((1, 1), np.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), ones, ones * 0, ones)["params"]
    shardings = fsh.tree_shardings(mesh, rules, boxed)
    placed = jax.device_put(params, shardings)
    gate = placed["layer_0"]["moe"]["gate"]
    if shape == (1, 1, 2):
        assert gate.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp", None)
        assert gate.addressable_shards[0].data.shape == (2, 32, 24)  # 2 of 4 whole experts
    else:
        assert gate.addressable_shards[0].data.shape == (4, 16, 24)

    def traced(params, ids, positions, segments):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return run(params, ids, positions, segments)

    batch = fsh.batch_sharding(mesh, 2)
    got = jax.jit(traced)(placed, *(jax.device_put(a, batch) for a in (ids, positions, mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], reference[real], rtol=1e-5, atol=1e-5)


def _step_metrics(config, batch):
    """One SFT train step on a 1-device mesh: its metrics and the params it started from."""
    model = Decoder(config)
    rules = fsh.RULES_FSDP_TP
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 1), rules=rules), jax.devices()[:1])
    params = steplib.init_params(model, jax.random.key(0), mesh, rules)
    before = jax.device_get(params)
    objective = Objective(loss=supervised.nll, inputs=inputs.sequences)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=1), 10)
    state, shardings = steplib.create_state(params, model=model, optimizer=opt,
                                            objective=objective, rng=jax.random.key(1),
                                            mesh=mesh, rules=rules)
    fn = steplib.make_train_step(model=model, objective=objective, optimizer=opt, mesh=mesh,
                                 rules=rules, state_sharding=shardings,
                                 batch_sharding=steplib.batch_shardings(mesh, batch))
    _, metrics = fn(state, batch)
    return steplib.metric_values(metrics), before


def test_train_step_reports_and_adds_balancing_loss():
    """The step reports ``moe/load_balancing_loss`` (padding excluded) and, with
    ``add_router_aux_loss``, adds ``router_aux_loss_coef`` times it to the loss. (One compiled
    step: the SFT objective reports its own loss as ``-logps/policy``.)"""
    groups = random_groups(12, completions=1, vocab=64, seed=0)
    batch, _ = packing.pack(groups, seq_len=24, num_rows=4, num_slots=4, share_prefix=False)
    assert (batch["segment_ids"] == 0).any()  # padding present, and excluded
    config = mc.mixtral(**TINY, router_aux_loss_coef=0.5, add_router_aux_loss=True)
    metrics, before = _step_metrics(config, batch)
    _, router = steplib.forward(Decoder(config), before, jax.tree.map(jnp.asarray, batch))
    want = float(moe.load_balancing_loss(router, config.num_experts))
    assert metrics["moe/load_balancing_loss"] == pytest.approx(want, rel=1e-5)
    assert 2.0 <= want < 2.5  # k = 2 times ~1 (near-balanced at init)
    assert metrics["loss"] == pytest.approx(-metrics["logps/policy"] + 0.5 * want, rel=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="model.num_experts=4 / model.experts_per_token=5"):
        mc.mixtral(num_experts=4, experts_per_token=5)
    with pytest.raises(ValueError, match="model.gated_mlp=True"):
        mc.mixtral(gated_mlp=False)


def test_streaming_import_stacks_experts_across_shards(tmp_path):
    """Per-expert tensors spread over several safetensors shards are stacked as they arrive
    and placed with the expert sharding; the same values as the in-memory import."""
    config, params = hf.load_hf(GOLDENS / "mixtral")
    hf.save_hf(tmp_path, config, params, max_shard_size="30KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 3
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 2)), jax.devices()[:2])
    # The golden's vocabulary (97) does not split in two: keep it whole.
    rules = tuple((k, None) if k == "vocab" else (k, v) for k, v in fsh.RULES_FSDP_TP)
    config2, placed = hf.load_hf_sharded(tmp_path, mesh=mesh, rules=rules)
    assert config2 == config
    flat, flat2 = hf.flatten(params), hf.flatten(placed)
    assert flat.keys() == flat2.keys()
    for key in flat:
        assert np.array_equal(np.asarray(flat2[key]), flat[key]), key
    down = flat2["layer_1/moe/down"]  # [expert, mlp, embed] -> experts over tensor
    assert down.sharding.spec == jax.sharding.PartitionSpec("tensor", None, "fsdp")
    assert down.addressable_shards[0].data.shape == (2, 48, 32)
