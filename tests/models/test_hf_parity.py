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
from fbjax.models.config import preset
from fbjax.models.decoder import Decoder, logits

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt2")
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


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_parity(family):
    golden = GOLDENS / family
    config, params = hf.load_hf(golden)
    assert config.family.value == family
    ids, mask = np.load(golden / "input_ids.npy"), np.load(golden / "attention_mask.npy")
    expected = np.load(golden / "logits.npy")
    assert mask.min() == 0, "the golden batch must include right padding"
    ours = fbjax_logits(config, params, ids, mask)
    assert max_diff_on_tokens(ours, expected, mask) <= TOL
    # Guard against a vacuous pass: logits are O(1), not ~0.
    assert np.abs(expected).max() > 1.0


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
    for family in FAMILIES:
        model = tool.build_model(family, seed=1)
        path = tmp_path_factory.mktemp(f"hf_{family}")
        model.save_pretrained(path, safe_serialization=True)
        models[family] = (model, path)
    return tool, models


@pytest.mark.parametrize("family", FAMILIES)
def test_live_parity(live, family):
    tool, models = live
    model, path = models[family]
    ids, mask = tool.batch(seed=1)
    expected = tool.torch_logits(model, ids, mask)
    config, params = hf.load_hf(path)
    diff = max_diff_on_tokens(fbjax_logits(config, params, ids, mask), expected, mask)
    print(f"{family}: max abs logit diff vs transformers = {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("family", FAMILIES)
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
                "gpt2": dict(num_kv_heads=4), "llama": dict(qkv_bias=True, out_bias=True)}


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


@pytest.mark.parametrize("family", FAMILIES)
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


def test_unsupported_rope_scaling():
    base = json.loads((GOLDENS / "llama" / "config.json").read_text())
    llama3 = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}
    with pytest.raises(hf.CheckpointError, match="llama3"):
        hf.config_from_hf({**base, "rope_parameters": llama3})  # transformers 5.x spelling
    with pytest.raises(hf.CheckpointError, match="linear"):
        hf.config_from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})  # 4.x
    legacy = {k: v for k, v in base.items() if k != "rope_parameters"}
    assert hf.config_from_hf({**legacy, "rope_theta": 5e5}).rope_theta == 5e5


def test_partial_sliding_window_rejected():
    base = json.loads((GOLDENS / "qwen2" / "config.json").read_text())
    partial = {**base, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1,
               "layer_types": None}
    with pytest.raises(hf.CheckpointError, match="only some layers"):
        hf.config_from_hf(partial)
    assert hf.config_from_hf({**partial, "max_window_layers": 0}).sliding_window == 4


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
    with pytest.raises(hf.CheckpointError, match="embed_tokens.*shape"):
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
