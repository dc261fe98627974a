"""The ``paper`` path: a local Hugging Face checkpoint (weights + ``tokenizer.json``) resolved from
``init_from``, whose architecture and tokenizer the run takes (or checks against ``config.model``
when one is given), and trained by ``fbjax.run.stages.run``.

Everything is built offline: a tiny random transformers Llama and a byte-level BPE tokenizer
trained on a few strings. The end-to-end test reads the first records of the real HH-RLHF
harmless-base test split from ``shared/`` and skips when it is absent.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fbjax import sharding as fsh
from fbjax.data.templates import Segment, render
from fbjax.models import checkpoints, hf, io, tiny
from fbjax.models.decoder import Decoder, logits
from fbjax.run import stages, start as startlib
from fbjax.run.config import ModelSettings
from fbjax.tokenizers import HFTokenizer, load_tokenizer, save_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HH_TEST = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
TEXTS = (
    "  two leading spaces, a\ttab and trailing newlines\n\n",
    "unicode: héllo wörld, 日本語, emoji 🙂👍🏽, combining e\u0301",
    "\r\n mixed\u00a0spaces \u2028 and a zero\u200bwidth",
    "Human: hello there\n\nAssistant:",
    "",
)


# A byte-level BPE tokenizer.json (GPT-2 / Llama-3 style) trained on texts, as a JSON string.
train_byte_bpe = tiny.byte_level_tokenizer


def write_tokenizer_dir(path: Path, *, special=(BOS, EOS), **files) -> Path:
    """``tokenizer.json`` plus the given JSON side files (``tokenizer_config={...}``)."""
    path.mkdir(parents=True, exist_ok=True)
    corpus = ["Human: hello there\n\nAssistant: hi, how can I help you today?"] * 10
    corpus += ["the cat sat on the mat and the dog ran"] * 10
    (path / "tokenizer.json").write_text(train_byte_bpe(corpus, 300, special))
    for name, data in files.items():
        (path / f"{name}.json").write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random transformers Llama saved with its tokenizer, and the torch model."""
    pytest.importorskip("torch", reason="torch builds the tiny Hugging Face model")
    transformers = pytest.importorskip("transformers")
    import torch

    # org/name layout, so that $FBJAX_HF_DIR=<root> resolves hf:tiny-org/tiny-llama.
    path = tmp_path_factory.mktemp("hf") / "tiny-org" / "tiny-llama"
    write_tokenizer_dir(path, tokenizer_config={"bos_token": BOS, "eos_token": EOS})
    tok = HFTokenizer.load(path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=48, max_position_embeddings=128,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
        # Large weights so logits are O(1): a mis-loaded tensor then shows far above 1e-4.
        initializer_range=0.3,
    )
    model = transformers.LlamaForCausalLM(config).float().eval()
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()


def fbjax_logits(config, params, ids: np.ndarray) -> np.ndarray:
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    hidden, _ = Decoder(config).apply({"params": params}, ids, positions,
                                      np.ones_like(ids, np.int32))
    return np.asarray(logits(params, config, hidden))


# ----------------------------------------------------------------------------- tokenizer.json


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = write_tokenizer_dir(tmp_path_factory.mktemp("tok"),
                               tokenizer_config={"bos_token": BOS, "eos_token": {"content": EOS}})
    return load_tokenizer(path)


def test_round_trip_and_segment_concatenation(tok):
    assert isinstance(tok, HFTokenizer) and tok.byte_level
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    # What templates.render relies on: separately encoded segments decode to the joined text.
    segments = [Segment(t, i % 2 == 1) for i, t in enumerate(TEXTS)]
    tokens, mask = render(segments, tok)
    assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
    assert tok.decode(tokens) == "".join(TEXTS)
    assert tok.decode(tokens[mask == 1]) == TEXTS[1] + TEXTS[3]
    # BPE merges learned from the corpus are used (not just bytes).
    assert len(tok.encode("Human: hello there")) < len("Human: hello there") / 2


def test_special_ids_and_control_tokens(tok):
    assert (tok.bos_id, tok.eos_id) == (tok.token_to_id(BOS), tok.token_to_id(EOS)) == (0, 1)
    # No pad or unk declared: both fall back to EOS.
    assert tok.pad_id == tok.unk_id == tok.eos_id
    assert tok.encode("hi", add_bos=True, add_eos=True) == [0, *tok.encode("hi"), 1]
    # Control ids decode to nothing; special tokens written in text are matched, as in HF.
    assert tok.decode([0, *tok.encode("a"), 1, 1]) == "a"
    assert tok.encode(f"a{EOS}") == [*tok.encode("a"), 1]
    with pytest.raises(ValueError, match=r"outside the tokenizer's vocabulary \[0, 300\)"):
        tok.decode([300])
    with pytest.raises(KeyError, match="not a single token"):
        tok.token_to_id("<nope>")


def test_special_tokens_from_config_ids_and_single_special(tmp_path):
    # GPT-2: tokenizer_config.json names nothing; config.json has the ids.
    gpt2 = write_tokenizer_dir(tmp_path / "gpt2", special=("<|endoftext|>",),
                               tokenizer_config={"model_max_length": 1024},
                               config={"bos_token_id": 0, "eos_token_id": 0})
    t = load_tokenizer(gpt2)
    assert (t.bos_id, t.eos_id, t.pad_id, t.unk_id) == (0, 0, 0, 0)
    (gpt2 / "config.json").unlink()  # the only special token is then EOS
    assert load_tokenizer(gpt2).special_tokens["eos"] == "<|endoftext|>"
    # Qwen2: an explicit null BOS is final (config.json is not consulted); BOS falls back to EOS.
    qwen = write_tokenizer_dir(tmp_path / "qwen", special=("<|endoftext|>", "<|im_end|>"),
                               tokenizer_config={"bos_token": None, "eos_token": "<|im_end|>",
                                                 "pad_token": "<|endoftext|>"},
                               config={"bos_token_id": 0})
    t = load_tokenizer(qwen)
    assert (t.bos_id, t.eos_id, t.pad_id) == (1, 1, 0)
    assert t.special_tokens == {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>",
                                "unk": None}
    # Two special tokens and nothing naming EOS: refuse to guess.
    (qwen / "tokenizer_config.json").unlink()
    (qwen / "config.json").unlink()
    with pytest.raises(ValueError, match=r"no EOS token: none of tokenizer_config\.json"):
        load_tokenizer(qwen)
    (qwen / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match=r"tokenizer\.json: eos token '<\|nope\|>' is not a token"):
        load_tokenizer(qwen)


def test_offsets_cover_each_character_once(tok):
    text = "héllo 🙂 world"
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    covered = [c for b, e in offsets for c in range(b, e)]
    assert covered == list(range(len(text)))
    # The emoji is four byte tokens: only the last one carries its span.
    emoji = text.index("🙂")
    assert [span for span in offsets if emoji in range(*span) or span == (emoji, emoji)] == [
        (emoji, emoji)] * 3 + [(emoji, emoji + 1)]


def test_pickle_save_load_and_added_tokens(tok, tmp_path):
    t = tok.with_added_tokens(["<|good|>", "<|bad|>", "<|good|>"])
    assert t.with_added_tokens(["<|bad|>", EOS]) == t  # idempotent, base tokens skipped
    assert (t.base_vocab_size, t.num_added_tokens, t.vocab_size) == (300, 2, 302)
    assert t.encode("a<|bad|>b") == [*tok.encode("a"), 301, *tok.encode("b")]
    assert t.decode(t.encode("x <|good|> y")) == "x <|good|> y"
    again = pickle.loads(pickle.dumps(t))
    assert again == t and hash(again) == hash(t) and again.encode("a<|good|>") == t.encode(
        "a<|good|>")
    save_tokenizer(t, tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert loaded == t and loaded.added_tokens == ("<|good|>", "<|bad|>")
    assert loaded.encode(TEXTS[1] + "<|good|>") == t.encode(TEXTS[1] + "<|good|>")
    # The saved directory is an ordinary Hugging Face tokenizer too.
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert theirs("x<|bad|> y", add_special_tokens=False)["input_ids"] == t.encode("x<|bad|> y")
    assert theirs.eos_token_id == t.eos_id


def test_load_tokenizer_names_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert "tokenizer.model (sentencepiece)" in str(err.value)
    assert "tokenizer.json (Hugging Face tokenizers)" in str(err.value)
    with pytest.raises(FileNotFoundError, match="neither a file nor a directory"):
        load_tokenizer(tmp_path / "missing")


# ----------------------------------------------------------------------------- init_from


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in ("FBJAX_HF_DIR", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME",
                "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def _fake_model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_resolve_through_fbjax_hf_dir(clean_env, tmp_path):
    want = _fake_model_dir(tmp_path / "models" / "org" / "name")
    clean_env.setenv("FBJAX_HF_DIR", str(tmp_path / "models"))
    assert checkpoints.resolve_checkpoint("hf:org/name") == str(want)
    assert checkpoints.resolve_checkpoint(str(want)) == str(want)  # a plain path is itself


def test_resolve_through_hub_cache(clean_env, tmp_path):
    repo = tmp_path / "hf_home" / "hub" / "models--org--name"
    old = _fake_model_dir(repo / "snapshots" / "aaa")
    new = _fake_model_dir(repo / "snapshots" / "bbb")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbb\n")
    clean_env.setenv("HF_HOME", str(tmp_path / "hf_home"))
    assert checkpoints.resolve_checkpoint("hf:org/name") == str(new)
    # $HF_HUB_CACHE wins over $HF_HOME; without refs/main the only snapshot is taken.
    (repo / "refs" / "main").unlink()
    os.rename(new, tmp_path / "moved")
    clean_env.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    clean_env.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    assert checkpoints.resolve_checkpoint("hf:org/name") == str(old)
    # The default cache is ~/.cache/huggingface/hub.
    clean_env.delenv("HF_HUB_CACHE")
    clean_env.delenv("HF_HOME")
    assert checkpoints.hub_cache_dir() == str(tmp_path / "home" / ".cache" / "huggingface" / "hub")


def test_not_found_names_every_place_and_the_fetch_command(clean_env, tmp_path):
    clean_env.setenv("FBJAX_HF_DIR", str(tmp_path / "models"))
    clean_env.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as err:
        checkpoints.resolve_checkpoint("hf:openai-community/gpt2-xl")
    msg = str(err.value)
    assert "checkpoint hf:openai-community/gpt2-xl not found locally" in msg
    assert f"{tmp_path}/models/openai-community/gpt2-xl ($FBJAX_HF_DIR)" in msg
    assert f"{tmp_path}/cache/models--openai-community--gpt2-xl/snapshots/" in msg
    assert "huggingface-cli download openai-community/gpt2-xl" in msg
    assert "fbjax train" in msg
    with pytest.raises(ValueError, match="expected hf:org/name"):
        checkpoints.resolve_checkpoint("hf:gpt2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.resolve_checkpoint(str(tmp_path / "nowhere"))


def _paper_config(ckpt: Path, **stage_changes):
    """The DPO paper variant on the tiny checkpoint (its architecture is the checkpoint's),
    shrunk to 2 steps of small float32 rows on a data-parallel mesh."""
    from experiments import dpo_rafailov2023

    paper = dpo_rafailov2023.get_config("paper")
    (stage,) = paper.stages
    train = dataclasses.replace(stage.train, steps=2, batch=8, seq_len=64,
                                max_prompt_len=32, max_completion_len=32, log_every=1)
    return dataclasses.replace(
        paper, init_from=str(ckpt), model_settings=ModelSettings(),
        mesh=fsh.MeshConfig(shape=(-1, 1, 1), rules=fsh.RULES_FSDP),
        stages=(dataclasses.replace(stage, train=train, **stage_changes),))


def _start(cfg):
    """(model, params) of ``cfg``'s start, placed on its mesh."""
    start = startlib.locate(cfg)
    model = startlib.resolve_model(cfg, start)
    mesh = fsh.make_mesh(cfg.mesh)
    return model, startlib.load_params(model, start, mesh, cfg.mesh.rules, cfg.seed), mesh


def test_the_architecture_is_the_checkpoints(tiny_ckpt):
    ckpt, _ = tiny_ckpt
    cfg = _paper_config(ckpt)
    assert cfg.model is None
    _, found, _ = checkpoints.checkpoint_model_config(str(ckpt))
    assert startlib.resolve_model(cfg, startlib.locate(cfg)) == found
    # Training settings apply on top of it.
    bf16 = dataclasses.replace(cfg, model_settings=ModelSettings(dtype="bfloat16"))
    assert startlib.resolve_model(bf16, startlib.locate(bf16)).dtype == "bfloat16"


def test_mismatched_model_names_each_field(tiny_ckpt):
    ckpt, _ = tiny_ckpt
    cfg = _paper_config(ckpt)
    _, found, _ = checkpoints.checkpoint_model_config(str(ckpt))
    wrong = dataclasses.replace(cfg, model=dataclasses.replace(
        found, hidden_size=64, rope_theta=5e5, dtype="bfloat16", remat="block"))
    with pytest.raises(ValueError) as err:
        startlib.resolve_model(wrong, startlib.locate(wrong))
    msg = str(err.value)
    assert "hidden_size: experiment 64, checkpoint 32" in msg
    assert "rope_theta: experiment 500000.0, checkpoint 10000.0" in msg
    assert "dtype" not in msg and "remat" not in msg  # training-only settings may differ
    assert str(ckpt) in msg
    # An explicit head_dim equal to hidden_size // num_heads is the same architecture.
    same = dataclasses.replace(cfg, model=dataclasses.replace(found, head_dim=8))
    assert found.head_dim is None
    assert startlib.resolve_model(same, startlib.locate(same)).head_dim == 8


def test_loaded_params_reproduce_transformers_logits(tiny_ckpt, tmp_path):
    ckpt, torch_model = tiny_ckpt
    cfg = _paper_config(ckpt)
    model, params, mesh = _start(cfg)
    # Placed with the run's shardings, not gathered on one device.
    assert params["embedding"].sharding.mesh.shape == mesh.shape
    ids = np.random.default_rng(0).integers(0, model.vocab_size, (2, 12)).astype(np.int32)
    expected = torch_logits(torch_model, ids)
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(fbjax_logits(model, params, ids), expected, atol=1e-4)
    # The same weights as an fbjax model checkpoint (fbjax convert's format) load alike.
    io.save_params(tmp_path / "converted", model, hf.load_hf(ckpt)[1])
    _, again, _ = _start(dataclasses.replace(cfg, init_from=str(tmp_path / "converted")))
    np.testing.assert_array_equal(np.asarray(again["embedding"]),
                                  np.asarray(params["embedding"]))


def test_reward_model_starts_from_the_language_model(tiny_ckpt):
    ckpt, _ = tiny_ckpt
    cfg = _paper_config(ckpt)
    rm = dataclasses.replace(cfg, model_settings=ModelSettings(reward_head=True))
    model, params, _ = _start(rm)
    assert model.reward_head
    lm = hf.load_hf(ckpt)[1]
    assert "lm_head" in lm and "lm_head" not in params  # untied: the RM predicts no tokens
    np.testing.assert_array_equal(np.asarray(params["layer_1"]["mlp_norm"]["scale"]),
                                  lm["layer_1"]["mlp_norm"]["scale"])
    head = np.asarray(params["reward_head"])
    assert head.shape == (32, 1) and 0.005 < head.std() < 0.05  # N(0, init_std=0.02)
    # The other way round is an error: a language model cannot start from a reward model.
    lm_model = dataclasses.replace(model, reward_head=False)
    assert checkpoints.model_mismatches(lm_model, model) == [
        "reward_head: experiment False, checkpoint True"]
    assert checkpoints.model_mismatches(model, lm_model) == []


# ----------------------------------------------------------------------------- end to end


def _hh_manual_dir(root: Path, n: int) -> Path:
    """The first ``n`` records of the real harmless-base test split, as a TFDS manual dir (the
    builder wants both splits; the full file has malformed records further down)."""
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    for split in ("train", "test"):
        path = root / "harmless-base" / f"{split}.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(lines)
    return root


@pytest.mark.slow
@pytest.mark.skipif(not HH_TEST.exists(), reason=f"shared HH-RLHF split not present at {HH_TEST}")
def test_dpo_paper_variant_trains_from_the_checkpoint(tiny_ckpt, tmp_path, clean_env):
    from fbjax import analysis
    from fbjax.checkpoint import CheckpointConfig, read_extras
    from fbjax.data import sources

    ckpt, torch_model = tiny_ckpt
    clean_env.setenv("FBJAX_HF_DIR", str(ckpt.parent.parent))
    seen = []

    def adapt(objective, groups):  # a data-dependent hyperparameter, as PMPO's class weights
        seen.append(len(groups))
        return dataclasses.replace(objective, hparams={**objective.hparams,
                                                       "beta": 0.01 * len(groups)})

    base = _paper_config(ckpt, adapt=adapt)
    (stage,) = base.stages
    data = dataclasses.replace(stage.data, source=sources.HHRLHF(
        subset="harmless-base", split="test", manual_dir=str(_hh_manual_dir(tmp_path / "hh", 8)),
        data_dir=str(tmp_path / "tfds")))
    assert data.tokenizer_path == ""  # so the checkpoint's tokenizer.json is used
    cfg = dataclasses.replace(base, init_from="hf:tiny-org/tiny-llama",
                              checkpoint=CheckpointConfig(async_save=False),
                              # The reference in the train state (not the cache), to check it.
                              stages=(dataclasses.replace(stage, data=data,
                                                          reference_cache=False),))
    workdir = tmp_path / "run"
    summary = stages.run(cfg, workdir=str(workdir), progress=False)

    history = [json.loads(line) for line in (workdir / "train" / "history.jsonl").open()]
    assert [h["step"] for h in history] == [1, 2]
    assert summary["stages"]["train"]["step"] == 2
    # adapt saw the loaded data once, and the checkpoint records the hyperparameter it set
    assert len(seen) == 1 and seen[0] > 0
    root = workdir / "train" / "checkpoints"
    saved = read_extras(str(root))["config"]["stage"]["objective"]["hparams"]
    assert saved["beta"] == pytest.approx(0.01 * seen[0])
    # Policy == reference at step 0: -log sigmoid(0) exactly.
    assert abs(history[0]["loss"] - math.log(2)) < 1e-5
    # The reference is the checkpoint: it reproduces transformers' logits.
    reference = analysis.load_policy(workdir, reference=True)
    ids = np.asarray(load_tokenizer(ckpt).encode("Human: hello there", add_bos=True))[None]
    ref = fbjax_logits(reference.model_config, reference.params, ids)
    np.testing.assert_allclose(ref, torch_logits(torch_model, ids), atol=1e-4)
    # The workdir holds the tokenizer that was used, and the run resumes as an init_from.
    assert load_tokenizer(workdir) == load_tokenizer(ckpt)
    policy = analysis.load_policy(workdir)
    _, restored, _ = _start(dataclasses.replace(cfg, init_from=str(workdir)))
    np.testing.assert_array_equal(np.asarray(restored["final_norm"]["scale"]),
                                  np.asarray(policy.params["final_norm"]["scale"]))


def test_padded_rows_give_each_completion_the_row_less_the_prompt():
    from fbjax.train.config import TrainConfig
    from fbjax.data.packing import Group
    from fbjax.train.reference import Truncation

    group = Group(np.arange(6), (np.arange(10), np.arange(10)), {"w": (1.0, 2.0)},
                  (np.ones(10), np.zeros(10)))
    padded = TrainConfig(seq_len=12, max_prompt_len=4, max_completion_len=10, packing=False,
                         share_prefix=False)
    out = Truncation.from_train(padded).apply([group])[0]
    assert out.prompt.tolist() == [2, 3, 4, 5]
    assert [len(c) for c in out.completions] == [8, 8] and [len(m) for m in out.masks] == [8, 8]
    assert out.slot_fields == {"w": (1.0, 2.0)} and out.masks[0].sum() == 8
    # Packed without prefix sharing: both sequences share one row.
    packed = dataclasses.replace(padded, packing=True)
    assert [len(c) for c in Truncation.from_train(packed).apply([group])[0].completions] == [2, 2]
