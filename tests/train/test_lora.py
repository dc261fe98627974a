"""LoRA (fbjax.models.lora through qwix): the frozen base is the reference, only adapters are
optimized and saved, and both exports (merged HF, PEFT adapters) reproduce the trained model."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax import sharding as fsh
from fbjax.run.config import single
from fbjax.run.overrides import apply_overrides
from fbjax.run.start import random_params
from fbjax.train.config import TrainConfig, TrainJob
from fbjax.train.stream import train_on_groups
from fbjax.models import hf, peft
from fbjax.models import lora as loralib
from fbjax.models.decoder import Decoder, Dense, logits
from fbjax.train import presets
from fbjax.train.optim import OptimizerConfig
from tests.train.helpers import random_groups, tiny_llama

MODEL = tiny_llama(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=64)
ALL = ("q", "k", "v", "o", "gate", "up", "down")
MESH_CONFIG = fsh.MeshConfig(shape=(1, 2, 1), rules=fsh.RULES_FSDP)
LORA = loralib.LoraConfig(rank=4, alpha=8.0, target_modules=ALL)


@pytest.fixture(scope="module")
def mesh():
    return fsh.make_mesh(MESH_CONFIG, jax.devices()[:2])


def _config(steps, lora=LORA, lr=1e-2):
    return TrainJob(
        name="dpo-lora", model=MODEL, objective=presets.dpo(),
        optimizer=OptimizerConfig(learning_rate=lr, schedule="constant"),
        train=TrainConfig(steps=steps, batch=4, seq_len=64, slots_per_row=8, log_every=1),
        rules=MESH_CONFIG.rules, lora=lora,
    )


def _run(config, mesh, **kwargs):
    groups = random_groups(24, completions=2, vocab=MODEL.vocab_size, seed=1)
    params = random_params(config.model, mesh, config.rules, 0)
    return params, train_on_groups(config, groups, params, mesh=mesh, **kwargs)


@pytest.fixture(scope="module")
def trained(mesh):
    """8 DPO steps with adapters on every projection."""
    return _run(_config(8), mesh)


def _leaf_names(tree):
    return {jax.tree_util.keystr(p, simple=True, separator="/")
            for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_step0_dpo_loss_is_ln2_with_base_as_reference(mesh):
    _, result = _run(_config(1), mesh)
    state = result.state
    assert state.ref_params is None
    # At step 0 (B = 0) the policy is the reference (the base, adapters off), so the loss is
    # -log sigmoid(0) = ln 2, exactly in float32. The implicit rewards are 0 up to float32
    # rounding of the summed log-probs (~1e-8): XLA fuses the policy's forward under the
    # gradient differently from the stop-gradient reference forward. Full fine-tuning, with its
    # separate reference copy, gives the very same figures, bit for bit.
    first = result.history[0]
    assert first["loss"] == float(np.float32(math.log(2)))
    assert abs(first["rewards/chosen"]) < 1e-7 and abs(first["rewards/rejected"]) < 1e-7
    _, full = _run(_config(1, lora=None), mesh)
    assert full.state.ref_params is not None
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin"):
        assert first[key] == full.history[0][key], key
    # On device: adapters only; the base exists once, outside the state.
    assert all(loralib.is_adapter_name(n.rsplit("/", 1)[-1]) for n in _leaf_names(state.params))


def test_optimizer_state_covers_only_the_adapters(trained):
    _, result = trained
    adapters = result.state.params
    n_adapter = sum(x.size for x in jax.tree.leaves(adapters))
    # rank 4 on the 7 projections of the one layer: A [in, 4] + B [4, out] each.
    d, h, kv, hd, f = 32, 4, 2, 8, 64
    per_layer = sum(4 * (i + o) for i, o in [(d, h * hd), (d, kv * hd), (d, kv * hd),
                                             (h * hd, d), (d, f), (d, f), (f, d)])
    assert n_adapter == per_layer
    opt_floats = sum(x.size for x in jax.tree.leaves(result.state.opt_state)
                     if jnp.issubdtype(x.dtype, jnp.floating))
    assert opt_floats == 2 * n_adapter  # Adam's mu and nu, nothing for the base


def test_training_moves_adapters_not_base(trained, mesh):
    base, result = trained
    history = result.history
    assert history[-1]["rewards/margin"] > history[0]["rewards/margin"] + 1e-3
    np.testing.assert_array_equal(np.asarray(result.base["embedding"]),
                                  np.asarray(base["embedding"]))
    assert result.base is base  # not copied, not donated
    b = result.state.params["layer_0"]["attn"]["q"]["kernel_lora_b"]
    assert float(jnp.abs(b).max()) > 0


def test_adapted_forward_equals_merged_weights(trained):
    """qwix's intercepted x W0 + s (x A) B equals the plain decoder on W0 + s A B."""
    base, result = trained
    cfg = result.lora
    tokens = jnp.array([[3, 9, 27, 5, 11, 2, 7, 1]], jnp.int32)
    pos = jnp.arange(8, dtype=jnp.int32)[None]
    seg = jnp.ones((1, 8), jnp.int32)
    adapted = loralib.adapted(Decoder(MODEL), cfg)
    h_adapted, _ = adapted.apply({"params": loralib.combine(base, result.state.params)},
                                 tokens, pos, seg)
    merged = result.policy_params()
    h_merged, _ = Decoder(MODEL).apply({"params": merged}, tokens, pos, seg)
    h_base, _ = Decoder(MODEL).apply({"params": base}, tokens, pos, seg)
    np.testing.assert_allclose(np.asarray(h_adapted), np.asarray(h_merged), atol=2e-5)
    assert float(jnp.abs(h_merged - h_base).max()) > 1e-3  # the adapters changed something


class _Attn(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Dense(MODEL, (32,), (4, 8), ("embed", "heads", "head_dim"), False, name="q")(x)


class _Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return _Attn(name="attn")(x)


class _Root(nn.Module):
    """Just the decoder's Dense at ``layer_0/attn/q``, the path the LoRA rule matches."""

    @nn.compact
    def __call__(self, x):
        return _Layer(name="layer_0")(x)


def test_hand_computed_adapter_on_one_projection():
    """One ``q`` projection by hand: ``x W + (alpha/r) (x A) B`` with ``W [d, h, hd]``, ``A [d,
    r]``, ``B [r, h*hd]`` (Hu et al. 2021, Eq. 3)."""
    cfg = loralib.LoraConfig(rank=2, alpha=6.0, target_modules=("q",))
    model = loralib.adapted(_Root(), cfg)
    x = jax.random.normal(jax.random.key(2), (1, 3, 32))
    params = nn.unbox(model.init(jax.random.key(0), x)["params"])
    q = params["layer_0"]["attn"]["q"]
    assert q["kernel_lora_a"].shape == (32, 2) and q["kernel_lora_b"].shape == (2, 32)
    np.testing.assert_array_equal(np.asarray(q["kernel_lora_b"]), 0.0)  # B starts at zero
    # A ~ U(-1/sqrt(in), 1/sqrt(in)) (loralib's kaiming_uniform(a=sqrt(5))).
    assert float(jnp.abs(q["kernel_lora_a"]).max()) <= 1 / math.sqrt(32)
    b = jax.random.normal(jax.random.key(1), (2, 32))
    params["layer_0"]["attn"]["q"] = {**q, "kernel_lora_b": b}
    expected = (jnp.einsum("btd,dhk->bthk", x, q["kernel"])
                + 3.0 * ((x @ q["kernel_lora_a"]) @ b).reshape(1, 3, 4, 8))
    got = model.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_set_lora_on_any_experiment():
    base = single(name="t", model=MODEL, objective=presets.dpo(), data=None)
    config = apply_overrides(base, ["lora.rank=16", "lora.target_modules=['q','k','v','o']"])
    assert config.lora == loralib.LoraConfig(rank=16, target_modules=("q", "k", "v", "o"))
    assert apply_overrides(config, ["lora=None"]).lora is None
    with pytest.raises(ValueError, match="lora.target_modules"):
        apply_overrides(base, ["lora.target_modules=['q_proj']"])


def test_target_missing_from_model_is_refused(mesh):
    gpt2 = dataclasses.replace(_config(1), model=dataclasses.replace(
        MODEL, family=MODEL.family.GPT2, gated_mlp=False),
        lora=loralib.LoraConfig(target_modules=("gate",)))
    with pytest.raises(ValueError, match=r"lora.target_modules \['gate'\] match no projection"):
        _run(gpt2, mesh)


def test_merged_export_loads_in_transformers(trained, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base, result = trained
    peft.save_merged_hf(str(tmp_path), MODEL, base, result.state.params, result.lora)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    tokens = np.array([[3, 9, 27, 5, 11, 2, 7, 1]], np.int64)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)).logits.numpy()
    ours = _our_logits(result.policy_params(), tokens)
    assert np.abs(theirs - ours).max() <= 1e-4


def _our_logits(params, tokens):
    t = jnp.asarray(tokens, jnp.int32)
    hidden, _ = Decoder(MODEL).apply({"params": params}, t, jnp.arange(t.shape[1])[None],
                                     jnp.ones_like(t))
    return np.asarray(logits(params, MODEL, hidden))


def test_peft_adapters_load_in_peft(trained, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft_lib = pytest.importorskip("peft")
    base, result = trained
    hf.save_hf(str(tmp_path / "base"), MODEL, base)
    peft.save_peft_adapters(str(tmp_path / "adapters"), MODEL, result.state.params, result.lora)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    model = peft_lib.PeftModel.from_pretrained(model, str(tmp_path / "adapters")).eval()
    tokens = np.array([[3, 9, 27, 5, 11, 2, 7, 1]], np.int64)
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
    ours = _our_logits(result.policy_params(), tokens)
    assert np.abs(theirs - ours).max() <= 1e-4
    # The adapters matter at this tolerance: the base alone is far from the trained model.
    assert np.abs(_our_logits(base, tokens) - ours).max() > 1e-2


def test_checkpoint_holds_adapters_and_base_identity(mesh, tmp_path):
    from fbjax import checkpoint

    config = _config(2)
    groups = random_groups(24, completions=2, vocab=MODEL.vocab_size, seed=1)
    params = random_params(config.model, mesh, config.rules, 0)
    ckpt = checkpoint.CheckpointConfig(every_steps=2, async_save=False)

    def run(start):
        return train_on_groups(
            config, groups, start, mesh=mesh,
            checkpointer=checkpoint.RunCheckpointer(tmp_path, ckpt, handle_sigterm=False))

    run(params)
    saved = checkpoint.read_metadata(tmp_path, 2)["leaves"]
    param_leaves = [k for k in saved if k.startswith("params/")]
    assert param_leaves and all(loralib.is_adapter_name(k) for k in param_leaves)
    assert not any(k.startswith("ref_params/") for k in saved)
    assert "params/layer_0/attn/q/kernel" not in saved  # the base is not saved
    identity = checkpoint.read_extras(tmp_path)["reference"]["lora_base"]
    assert identity == {"init_from": None, "fingerprint": checkpoint.tree_fingerprint(params)}
    # The same adapters on another base would be a different model: resuming is refused.
    other = random_params(config.model, mesh, config.rules, 1)
    with pytest.raises(ValueError, match="holds adapters for the base"):
        run(other)
