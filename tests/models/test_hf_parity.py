"""Hugging Face import/export: logit parity with transformers, lossless round trips, errors.

Live tests build tiny random transformers models (offline, seeded) and skip when torch or
transformers is missing; golden tests replay committed checkpoints and logits with JAX only
(regenerate them with ``python tools/make_hf_goldens.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fbjax.cli_convert import add_convert_parser, run_convert
from fbjax.models import hf, io
from fbjax.models.config import Activation, QKNorm, RopeScaling, RopeType, preset
from fbjax.models.decoder import Decoder, logits
from fbjax.parity import layout_diffs, sampler_matches_recompute

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt2")
# Every golden: the five above plus new families and features (tools/make_hf_goldens.py).
GOLDEN_NAMES = FAMILIES + ("llama3_rope", "llama_linear_rope", "llama_dynamic_rope",
                           "llama_yarn_rope", "qwen2_partial_swa", "qwen3", "gemma2",
                           "gemma3_text", "gpt_neox", "phi3", "olmo2", "phi3_longrope",
                           "mixtral", "qwen3_moe")
GOLDENS = Path(__file__).resolve().parents[1] / "goldens" / "hf"
TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_hf_goldens.py"
TOL = 1e-4  # max abs logit difference allowed in float32


def _tool():
    """The golden builder module (tiny configs, seeded models, the fixed batch)."""
    spec = importlib.util.spec_from_file_location("make_hf_goldens", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fbjax_logits(config, params, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Our float32 logits for a right-padded batch (pads are segment 0)."""
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    hidden, _ = Decoder(config).apply({"params": params}, ids, positions, mask.astype(np.int32))
    return np.asarray(logits(params, config, hidden))


def max_diff_on_tokens(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Max abs difference over real (unpadded) positions; pad logits are meaningless."""
    return float(np.abs(a - b)[mask.astype(bool)].max())


def _token_ids(hf_dir: Path) -> dict:
    """Special token ids of an HF checkpoint (ModelConfig does not carry them)."""
    source = json.loads((hf_dir / "config.json").read_text())
    return {k: source[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


# ----------------------------------------------------------------------------- goldens (JAX)


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_parity(name):
    """Full, right-padded, left-padded and packed rows all match each sequence run alone in
    transformers (committed logits; no torch needed)."""
    golden = GOLDENS / name
    config, params = hf.load_hf(golden)
    ids, mask = np.load(golden / "input_ids.npy"), np.load(golden / "attention_mask.npy")
    expected = np.load(golden / "logits.npy")
    assert mask.min() == 0, "the golden batch must include right padding"
    diffs = layout_diffs(config, params, ids, mask, expected)
    assert set(diffs) == {"full", "right_pad", "left_pad", "packed"}
    assert max(diffs.values()) <= TOL, diffs
    # Guard against a vacuous pass: logits are O(1), not ~0.
    assert np.abs(expected).max() > 1.0


# One feature per golden switched off: the logits must then move well past the tolerance, so
# parity above shows the feature is implemented, not that it does not matter at this size.
_FEATURE_OFF = {
    "llama3_rope": dict(rope_scaling=RopeScaling()),
    "llama_linear_rope": dict(rope_scaling=RopeScaling()),
    "llama_dynamic_rope": dict(rope_scaling=RopeScaling()),
    "llama_yarn_rope": dict(rope_scaling=RopeScaling()),
    "qwen2_partial_swa": dict(sliding_layers=None),
    "qwen3": dict(qk_norm=QKNorm.NONE),
    "gemma2": dict(attn_logit_softcap=None),
    "gemma3_text": dict(local_rope_theta=None),
    "gpt_neox": dict(parallel_residual=False),
    "phi3": dict(rope_fraction=1.0),
    "olmo2": dict(qk_norm=QKNorm.HEAD),
    "phi3_longrope": dict(rope_scaling=RopeScaling()),
    "mixtral": dict(experts_per_token=1),
    "qwen3_moe": dict(norm_topk_prob=True),
}


@pytest.mark.parametrize("name", sorted(_FEATURE_OFF))
def test_golden_feature_matters(name):
    golden = GOLDENS / name
    config, params = hf.load_hf(golden)
    off = dataclasses.replace(config, **_FEATURE_OFF[name])
    if off.qk_norm != config.qk_norm:  # norm weights are shaped by the norm kind
        params = {k: v for k, v in hf.flatten(params).items() if "_norm/scale" not in k
                  or "attn/" not in k}
        params = hf.unflatten(params)
        off = dataclasses.replace(off, qk_norm=QKNorm.NONE)
    ids, mask = np.load(golden / "input_ids.npy"), np.load(golden / "attention_mask.npy")
    diffs = layout_diffs(off, params, ids, mask, np.load(golden / "logits.npy"))
    assert diffs["full"] > 1e-2, diffs


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_export_is_bitwise(name, tmp_path):
    golden = GOLDENS / name
    config, params = hf.load_hf(golden)
    hf.save_hf(tmp_path, config, params)
    original, exported = load_file(golden / "model.safetensors"), load_file(
        tmp_path / "model.safetensors")
    assert sorted(original) == sorted(exported)
    for key, array in original.items():
        assert exported[key].dtype == array.dtype and np.array_equal(exported[key], array), key
    assert hf.load_hf(tmp_path)[0] == config


@pytest.mark.parametrize("name", ["llama_yarn_rope", "gemma2", "gemma3_text", "gpt_neox",
                                  "mixtral", "qwen3_moe"])
def test_golden_sampler_equals_recompute(name):
    """KV-cache greedy decoding (per-layer windows, soft-caps, two RoPE bases, partial rotary)
    equals recomputing the whole sequence each step."""
    config, params = hf.load_hf(GOLDENS / name)
    same, logp_diff = sampler_matches_recompute(config, params, [[5, 9, 11], [7, 3, 8, 21, 4]], 6)
    assert same and logp_diff <= TOL, logp_diff


def test_golden_configs_map_every_switch():
    """The per-family features the tiny goldens were built to exercise really are on."""
    cfgs = {f: hf.config_from_hf(json.loads((GOLDENS / f / "config.json").read_text()))
            for f in FAMILIES}
    assert cfgs["llama"].qkv_bias and cfgs["llama"].out_bias and cfgs["llama"].mlp_bias
    assert cfgs["mistral"].sliding_window == 4 and not cfgs["mistral"].qkv_bias
    assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].out_bias
    assert cfgs["qwen2"].tie_embeddings and cfgs["qwen2"].rope_theta == 1e6
    assert cfgs["qwen2"].sliding_window is None
    assert cfgs["gemma"].head_size == 16 and cfgs["gemma"].hidden_size // 4 == 8
    assert cfgs["gpt2"].max_seq_len == 16 and cfgs["gpt2"].mlp_dim == 48
    for config in cfgs.values():
        assert hf.config_from_hf(hf.config_to_hf(config)) == config
    new = {n: hf.config_from_hf(json.loads((GOLDENS / n / "config.json").read_text()))
           for n in GOLDEN_NAMES if n not in FAMILIES}
    assert new["llama3_rope"].rope_scaling == RopeScaling(
        kind=RopeType.LLAMA3, factor=8.0, original_max_len=64, low_freq_factor=1.0,
        high_freq_factor=4.0)
    assert new["llama_yarn_rope"].rope_scaling.kind is RopeType.YARN
    assert new["qwen2_partial_swa"].sliding_layers == (False, True)
    assert new["qwen3"].qk_norm is QKNorm.HEAD and new["olmo2"].qk_norm is QKNorm.FULL
    g2 = new["gemma2"]
    assert (g2.attn_logit_softcap, g2.final_logit_softcap, g2.query_scale) == (2.0, 5.0, 24.0)
    assert g2.sliding_layers == (True, False) and g2.post_norms
    g3 = new["gemma3_text"]
    assert g3.sliding_layers == (True,) * 5 + (False,)
    assert (g3.rope_theta, g3.local_rope_theta) == (1e6, 1e4)
    assert g3.rope_scaling.kind is RopeType.LINEAR and g3.rope_scaling.factor == 2.0
    neox = new["gpt_neox"]
    assert neox.parallel_residual and neox.rotary_dim == 4 and not neox.tie_embeddings
    assert new["phi3"].sliding_window == 5 and new["phi3"].sliding_layers is None
    mix, q3moe = new["mixtral"], new["qwen3_moe"]
    assert (mix.num_experts, mix.experts_per_token, mix.norm_topk_prob) == (4, 2, True)
    assert mix.sliding_window == 5 and mix.mlp_dim == 48 and mix.rope_theta == 1e6
    assert (q3moe.num_experts, q3moe.experts_per_token, q3moe.norm_topk_prob) == (4, 2, False)
    assert q3moe.mlp_dim == 24 and q3moe.qk_norm is QKNorm.HEAD  # moe_intermediate_size
    for config in new.values():
        assert hf.config_from_hf(hf.config_to_hf(config)) == config


def test_load_bfloat16():
    config, params = hf.load_hf(GOLDENS / "gemma", dtype="bfloat16")
    assert config.param_dtype == "bfloat16"
    assert {v.dtype.name for v in hf.flatten(params).values()} == {"bfloat16"}


# ----------------------------------------------------------------------------- live (torch)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """``{family: (torch model, saved dir)}`` for seed-1 tiny models (not the goldens' seed 0)."""
    pytest.importorskip("torch", reason="torch is needed for live parity with transformers")
    pytest.importorskip("transformers", reason="transformers is needed for live parity")
    tool = _tool()
    models = {}
    for family in GOLDEN_NAMES:
        model = tool.build_model(family, seed=1)
        path = tmp_path_factory.mktemp(f"hf_{family}")
        model.save_pretrained(path, safe_serialization=True)
        models[family] = (model, path)
    return tool, models


@pytest.mark.parametrize("family", GOLDEN_NAMES)
def test_live_parity(live, family):
    tool, models = live
    model, path = models[family]
    ids, mask = tool.batch(seed=1)
    config, params = hf.load_hf(path)
    diffs = layout_diffs(config, params, ids, mask, tool.alone_logits(model, ids, mask))
    print(f"{family}: max abs logit diff vs transformers = {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    if family in ("llama_dynamic_rope", "phi3_longrope"):
        # transformers grows the dynamic RoPE base (or picks longrope's long factors) from the
        # longest sequence of the whole batch; fbjax from each sequence's own length (what
        # transformers gives it run alone).
        return
    # transformers' own padded batch agrees too (right padding changes nothing there either).
    padded = tool.torch_logits(model, ids, mask)
    assert max_diff_on_tokens(fbjax_logits(config, params, ids, mask), padded, mask) <= TOL


@pytest.mark.parametrize("family", GOLDEN_NAMES)
def test_round_trip_is_lossless(live, family, tmp_path):
    import transformers

    tool, models = live
    model, path = models[family]
    config, params = hf.load_hf(path)
    hf.save_hf(tmp_path, config, params, extra_config=_token_ids(path))

    original, exported = load_file(path / "model.safetensors"), load_file(
        tmp_path / "model.safetensors")
    assert sorted(original) == sorted(exported)
    for name, array in original.items():
        assert exported[name].dtype == array.dtype
        assert np.array_equal(exported[name], array), name

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    ids, mask = tool.batch(seed=1)
    np.testing.assert_array_equal(tool.torch_logits(reloaded, ids, mask),
                                  tool.torch_logits(model, ids, mask))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sharded_checkpoint(live, family, tmp_path):
    import transformers

    tool, models = live
    model, path = models[family]
    config, params = hf.load_hf(path)
    files = hf.save_hf(tmp_path, config, params, max_shard_size="20KB",
                       extra_config=_token_ids(path))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and hf.SAFETENSORS_INDEX_FILE in files
    assert not (tmp_path / "model.safetensors").exists()

    config2, params2 = hf.load_hf(tmp_path)
    assert config2 == config
    flat, flat2 = hf.flatten(params), hf.flatten(params2)
    assert flat.keys() == flat2.keys()
    assert all(np.array_equal(flat[k], flat2[k]) for k in flat)

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    ids, mask = tool.batch(seed=1)
    np.testing.assert_array_equal(tool.torch_logits(reloaded, ids, mask),
                                  tool.torch_logits(model, ids, mask))


_FBJAX_SIZES = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   mlp_dim=48, max_seq_len=16)
_FBJAX_EXTRA = {"mistral": dict(sliding_window=4), "gemma": dict(head_dim=16),
                "gpt2": dict(num_kv_heads=4), "llama": dict(qkv_bias=True, out_bias=True),
                "mixtral": dict(num_experts=4), "qwen3_moe": dict(num_experts=4,
                                                                  experts_per_token=2)}


def _random_variables(config, seed: int = 0):
    """Boxed (logically partitioned) variables shaped like ``Decoder.init``'s, drawn at random.

    Drawn with numpy rather than by running ``init``, which is slow op by op; every leaf, norms
    and biases included, gets noise so a mis-mapped one would show in the logits.
    """
    import jax

    rng = np.random.default_rng(seed)
    ones = np.ones((1, 1), np.int32)
    boxed = jax.eval_shape(Decoder(config).init, jax.random.key(0), ones, ones * 0, ones)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if "norm" in name and "scale" in name:
            return noise * 0.1 + (0.0 if config.norm_weight_offset else 1.0)
        return noise * (0.1 if "bias" in name else 0.2)

    return jax.tree_util.tree_map_with_path(draw, boxed)


@pytest.mark.parametrize("family", FAMILIES + ("mixtral", "qwen3_moe"))
def test_export_of_fbjax_model_matches_transformers(live, family, tmp_path):
    """A model born in fbjax (boxed variables, as from ``init``) exports to an equivalent one."""
    import flax.linen as nn
    import transformers

    tool, _ = live
    config = preset(family, **{**_FBJAX_SIZES, **_FBJAX_EXTRA.get(family, {})})
    variables = _random_variables(config)
    assert isinstance(variables["params"]["embedding"], nn.Partitioned)
    hf.save_hf(tmp_path, config, variables, extra_config={"bos_token_id": 1, "eos_token_id": 2})
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    ids, mask = tool.batch(seed=2)
    ours = fbjax_logits(config, nn.meta.unbox(variables)["params"], ids, mask)
    expected = tool.torch_logits(model, ids, mask)
    assert max_diff_on_tokens(ours, expected, mask) <= TOL
    assert np.abs(expected).max() > 1.0


# ----------------------------------------------------------------------------- CLI


def test_cli_round_trip(tmp_path):
    """--from-hf then --to-hf reproduces the original tensors bitwise (no torch needed)."""
    parser = argparse.ArgumentParser(prog="fbjax")
    add_convert_parser(parser.add_subparsers(dest="command"))
    golden = GOLDENS / "qwen2"
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"

    args = parser.parse_args(["convert", "--from-hf", str(golden), "--out", str(ckpt)])
    assert args.func is run_convert and run_convert(args) == 0
    assert sorted(os.listdir(ckpt)) == ["config.json", "hf_config.json", "params.safetensors"]
    config, params = io.load_params(ckpt)
    assert config == hf.load_hf(golden)[0]
    assert "layer_1/attn/q/bias" in load_file(ckpt / "params.safetensors")

    args = parser.parse_args(["convert", "--to-hf", str(ckpt), "--out", str(out)])
    assert run_convert(args) == 0
    original, exported = load_file(golden / "model.safetensors"), load_file(
        out / "model.safetensors")
    assert sorted(original) == sorted(exported)
    assert all(np.array_equal(original[k], exported[k]) for k in original)
    exported_config = json.loads((out / "config.json").read_text())
    assert hf.config_from_hf(exported_config) == config
    # Special token ids, which ModelConfig does not hold, survive via hf_config.json.
    source_config = json.loads((golden / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert exported_config[key] == source_config[key]

    with pytest.raises(SystemExit, match="not empty"):
        run_convert(parser.parse_args(["convert", "--to-hf", str(ckpt), "--out", str(out)]))
    with pytest.raises(FileNotFoundError, match="directory not found: .*nope"):
        run_convert(parser.parse_args(
            ["convert", "--to-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]))
    (ckpt / "params.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="params.safetensors"):
        io.load_params(ckpt)


def test_fbjax_checkpoint_rejects_hf_dir():
    with pytest.raises(ValueError, match="Hugging Face config"):
        io.config_from_dict(json.loads((GOLDENS / "llama" / "config.json").read_text()))


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def golden_copy(tmp_path):
    """A writable copy of the llama golden checkpoint."""
    dest = tmp_path / "llama"
    shutil.copytree(GOLDENS / "llama", dest)
    return dest


def _edit_config(path: Path, **changes) -> None:
    data = json.loads((path / "config.json").read_text())
    data.update(changes)
    (path / "config.json").write_text(json.dumps(data))


def test_missing_files_name_the_path(tmp_path, golden_copy):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        hf.load_hf(missing)
    (golden_copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf(golden_copy)
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (golden_copy / hf.SAFETENSORS_INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        hf.load_hf(golden_copy)
    (golden_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_hf(golden_copy)


def test_unknown_model_type(golden_copy):
    _edit_config(golden_copy, model_type="bert")
    with pytest.raises(hf.CheckpointError, match=r"config\.json.*'bert'.*llama.*gpt2"):
        hf.load_hf(golden_copy)


def _golden_config(name):
    return json.loads((GOLDENS / name / "config.json").read_text())


def test_unimplemented_fields_are_named():
    base = _golden_config("llama")
    legacy = {k: v for k, v in base.items() if k != "rope_parameters"}
    with pytest.raises(hf.CheckpointError, match="rope_type='mrope' is not implemented"):
        hf.config_from_hf({**legacy, "rope_scaling": {"type": "mrope", "factor": 2.0}})
    with pytest.raises(hf.CheckpointError, match="rope_scaling.low_freq_factor is required"):
        hf.config_from_hf({**legacy, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    # Phi-3's config renames su / yarn to longrope, which needs both factor lists.
    phi = {k: v for k, v in _golden_config("phi3").items() if k != "rope_parameters"}
    with pytest.raises(hf.CheckpointError, match="long_factor is required for rope_type='longrope'"):
        hf.config_from_hf({**phi, "rope_scaling": {"type": "su", "short_factor": [1.0]}})
    g3 = _golden_config("gemma3_text")
    with pytest.raises(hf.CheckpointError, match="use_bidirectional_attention=True"):
        hf.config_from_hf({**g3, "use_bidirectional_attention": True})
    with pytest.raises(hf.CheckpointError, match="attn_logit_softcapping=30.0 is not implemented"):
        hf.config_from_hf({**base, "attn_logit_softcapping": 30.0})
    with pytest.raises(hf.CheckpointError, match=r"layer_types \['chunked_attention'\]"):
        hf.config_from_hf({**_golden_config("qwen2_partial_swa"),
                           "layer_types": ["chunked_attention", "full_attention"]})


def test_moe_fields_refused_or_mapped_by_name():
    """Qwen3-MoE layouts with dense layers and router jitter are refused by name; the 4.x
    spelling num_experts maps as transformers' attribute_map does."""
    q3 = _golden_config("qwen3_moe")
    with pytest.raises(hf.CheckpointError, match=r"mlp_only_layers=\[1\] is not implemented"):
        hf.config_from_hf({**q3, "mlp_only_layers": [1]})
    with pytest.raises(hf.CheckpointError, match="decoder_sparse_step=2 is not implemented"):
        hf.config_from_hf({**q3, "decoder_sparse_step": 2})
    with pytest.raises(hf.CheckpointError, match="router_jitter_noise=0.1 is not implemented"):
        hf.config_from_hf({**_golden_config("mixtral"), "router_jitter_noise": 0.1})
    legacy = {k: v for k, v in q3.items() if k != "num_local_experts"}
    assert hf.config_from_hf({**legacy, "num_experts": 4}).num_experts == 4
    with pytest.raises(hf.CheckpointError, match="num_local_experts=4 and num_experts=8 disagree"):
        hf.config_from_hf({**q3, "num_experts": 8})
    # Mixtral always renormalises: a ModelConfig without it has no Mixtral checkpoint.
    with pytest.raises(ValueError, match="norm_topk_prob"):
        hf.config_to_hf(preset("mixtral", num_experts=4, norm_topk_prob=False))


def test_legacy_rope_spellings():
    """transformers 4.x configs (rope_theta + rope_scaling, rope_local_base_freq, rotary_pct,
    sliding_window_pattern) map as transformers 5 reads them."""
    base = {k: v for k, v in _golden_config("llama").items() if k != "rope_parameters"}
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = hf.config_from_hf({**base, "rope_theta": 5e5, "rope_scaling": llama3})
    assert config.rope_theta == 5e5 and config.rope_scaling.original_max_len == 8192
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
            "mscale": 1.0, "mscale_all_dim": 0.5}
    scaling = hf.config_from_hf({**base, "rope_scaling": yarn}).rope_scaling
    # attention factor = (0.1 ln 4 + 1) / (0.05 ln 4 + 1)
    assert scaling.attention_factor == pytest.approx(1.1386294 / 1.0693147, rel=1e-6)
    g3 = {k: v for k, v in _golden_config("gemma3_text").items()
          if k not in ("rope_parameters", "layer_types")}
    g3.update(num_hidden_layers=12, rope_theta=1e6, rope_local_base_freq=1e4,
              rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=6)
    config = hf.config_from_hf(g3)
    assert config.sliding_layers == ((True,) * 5 + (False,)) * 2
    assert (config.rope_theta, config.local_rope_theta, config.rope_scaling.factor) == (1e6, 1e4, 8.0)
    neox = {k: v for k, v in _golden_config("gpt_neox").items() if k != "rope_parameters"}
    assert hf.config_from_hf(neox).rope_fraction == 0.25  # GPTNeoXConfig's default rotary_pct
    config = hf.config_from_hf({**neox, "rotary_pct": 0.5, "rotary_emb_base": 100.0})
    assert (config.rope_fraction, config.rope_theta) == (0.5, 100.0)


def test_gemma_activation_follows_transformers():
    """Gemma (v1) reads hidden_act, Gemma 2/3 read hidden_activation (transformers 5)."""
    g1, g2 = _golden_config("gemma"), _golden_config("gemma2")
    assert hf.config_from_hf({**g1, "hidden_act": "gelu_pytorch_tanh",
                              "hidden_activation": "gelu"}).activation is Activation.GELU_TANH
    assert hf.config_from_hf({**g1, "hidden_act": "silu",
                              "hidden_activation": "gelu_pytorch_tanh"}).activation is Activation.SILU
    assert hf.config_from_hf({**g2, "hidden_act": "silu",
                              "hidden_activation": "gelu"}).activation is Activation.GELU


def test_vocab_mismatch(golden_copy):
    from types import SimpleNamespace

    from fbjax.tokenizers import check_vocab

    def tokenizer(n):  # the attributes check_vocab reads
        return SimpleNamespace(vocab_size=n, base_vocab_size=n, num_added_tokens=0)

    config, _ = hf.load_hf(golden_copy)
    check_vocab(tokenizer(config.vocab_size), config.vocab_size)
    check_vocab(tokenizer(config.vocab_size - 5), config.vocab_size)  # padded model vocab: fine
    with pytest.raises(ValueError, match="98 does not match model vocab size 97"):
        check_vocab(tokenizer(98), config.vocab_size)
    # config.json disagreeing with the embedding table is caught at load time.
    _edit_config(golden_copy, vocab_size=128)
    with pytest.raises(hf.CheckpointError, match=r"tensor (model\.embed_tokens|lm_head)\.weight has shape"):
        hf.load_hf(golden_copy)


def test_unexpected_tensor(golden_copy):
    _edit_config(golden_copy, num_hidden_layers=1)
    with pytest.raises(hf.CheckpointError, match="unexpected tensors.*layers.1"):
        hf.load_hf(golden_copy)


def test_sequence_too_long():
    config, _ = hf.load_hf(GOLDENS / "gpt2")
    hf.check_sequence_length(config, 16)
    with pytest.raises(ValueError, match="sequence length 17.*max_seq_len=16"):
        hf.check_sequence_length(config, 17)


def test_export_rejects_inexpressible_config():
    with pytest.raises(ValueError, match="sliding_window"):
        hf.config_to_hf(preset("llama", sliding_window=8))
    with pytest.raises(ValueError, match="out_bias"):
        hf.config_to_hf(dataclasses.replace(preset("qwen2"), out_bias=True))


def test_streaming_sharded_import(tmp_path):
    """Shard by shard, tensor by tensor onto an 8-way FSDP mesh: the same values as the
    in-memory import, each with its logical-axis sharding."""
    import jax

    from fbjax import sharding as fsh

    config, params = hf.load_hf(GOLDENS / "gemma3_text")
    hf.save_hf(tmp_path, config, params, max_shard_size="40KB")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 8, 1)), jax.devices()[:8])
    config2, placed = hf.load_hf_sharded(tmp_path, mesh=mesh, rules=fsh.RULES_FSDP)
    assert config2 == config
    flat, flat2 = hf.flatten(params), hf.flatten(placed)
    assert flat.keys() == flat2.keys()
    for key in flat:
        assert np.array_equal(np.asarray(flat2[key]), flat[key]), key
    q = flat2["layer_0/attn/q/kernel"]  # [embed, heads, head_dim] -> (fsdp, None, None)
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, None)
    assert q.addressable_shards[0].data.shape == (4, 4, 8)
