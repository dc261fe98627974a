"""Fixtures for running paper variants offline: a few records of each released dataset in the
release's own on-disk format and layout (what each reader in ``fbjax.data`` documents), and a
tiny random Hugging Face checkpoint of each model family the paper variants start from.

The record makers are the reader tests' (``tests.data.test_datasets``); each dataset gets
``RECORDS`` distinct records so a batch of 2 never repeats one example.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fbjax.data import hh_rlhf, oasst1, shp, slf5k, sources
from tests.data import test_datasets as fx
from tests.data.helpers import hh, write_jsonl

RECORDS = 4

# The family of each checkpoint a paper variant names (``init_from="hf:ORG/NAME"``): the
# ``model_type`` of that checkpoint's config.json. A module naming a checkpoint not listed here
# fails the paper-variant test with a message saying to add it.
CHECKPOINT_FAMILIES = {
    "EleutherAI/pythia-2.8b": "gpt_neox",
    "openai-community/gpt2-medium": "gpt2",
    "openai-community/gpt2-large": "gpt2",
    "openai-community/gpt2-xl": "gpt2",
    "meta-llama/Llama-2-7b-hf": "llama",
    "meta-llama/Llama-2-13b-hf": "llama",
    "huggyllama/llama-7b": "llama",
    "haoranxu/ALMA-13B-Pretrain": "llama",
    "PKU-Alignment/alpaca-7b-reproduced": "llama",
    "locuslab/tofu_ft_llama2-7b": "llama",
    "mistralai/Mistral-7B-v0.1": "mistral",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral",
    "alignment-handbook/zephyr-7b-sft-full": "mistral",
    "Qwen/Qwen2.5-7B": "qwen2",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2",
    "Qwen/Qwen2.5-3B-Instruct": "qwen2",
    "Qwen/Qwen2.5-Math-7B": "qwen2",
    "Qwen/Qwen2.5-Coder-0.5B": "qwen2",
    "google/gemma-7b": "gemma",
}


def family_of(init_from: str | None) -> str | None:
    """The model family of a paper variant's ``init_from`` (None: it starts from no checkpoint)."""
    if init_from is None:
        return None
    name = init_from.removeprefix("hf:")
    if name not in CHECKPOINT_FAMILIES:
        raise KeyError(f"init_from {init_from!r}: add its model_type to "
                       "tests/paper_fixtures.py CHECKPOINT_FAMILIES")
    return CHECKPOINT_FAMILIES[name]


# ----------------------------------------------------------------------------- datasets


def _hh_records() -> list[dict]:
    return [hh([("user", f"How do I water plant number {i}?")],
               f"Water it weekly, plant {i} likes moist soil.", "Never water it.")
            for i in range(RECORDS)]


def _uf_records() -> list[dict]:
    return [fx.uf_record([c for c in fx.UF_RECORD["completions"]],
                         instruction=f"Name prime number {i}.") for i in range(RECORDS)]


def _shp_records() -> list[dict]:
    return [fx.shp_record(post_id=f"post{i}", history=f"How do I keep pasta {i} from sticking?")
            for i in range(RECORDS)]


def _oasst_records() -> list[dict]:
    """Trees whose root prompt has three ranked replies (Plackett-Luce's lists of 3) and, below
    the best one, a follow-up with two (pairs)."""
    trees = []
    for i in range(RECORDS):
        tree = fx.oasst_tree(tree_id=f"tree-{i}")
        root = tree["prompt"]
        root["text"] = f"Tell me about sky number {i}."
        root["replies"].append(fx.msg("assistant", f"Sky {i} is wide.", rank=2,
                                      mid=f"wide-{i}"))
        trees.append(tree)
    return trees


def _pku_records() -> list[dict]:
    return [fx.pku_record(prompt=f"How do I pick lock {i}?") for i in range(RECORDS)]


def _tldr_records() -> list[dict]:
    out = []
    for i in range(RECORDS):
        record = fx.tldr_record()
        record["info"] = {**record["info"], "id": f"t3_{i}", "title": f"Car accident {i}."}
        out.append(record)
    return out


def _slf_records() -> list[dict]:
    return [fx.slf_record(id=f"t3_{i}", title=f"My friend {i} keeps cancelling plans")
            for i in range(RECORDS)]


def _write_hh(root: Path) -> None:
    for subset in hh_rlhf.SUBSETS:
        for split in ("train", "test"):
            write_jsonl(root / subset / f"{split}.jsonl.gz", _hh_records())


def _write_uf(root: Path) -> None:
    write_jsonl(root / "flan.jsonl", _uf_records())


def _write_shp(root: Path) -> None:
    for file in shp.SPLIT_FILES.values():
        write_jsonl(root / "askculinary" / file, _shp_records())


def _write_oasst(root: Path) -> None:
    write_jsonl(root / oasst1.TREES_FILE, _oasst_records())


def _write_pku(root: Path) -> None:
    for split in ("train", "test"):
        write_jsonl(root / "data" / "Alpaca-7B" / f"{split}.jsonl", _pku_records())


def _write_tldr(root: Path) -> None:
    records = _tldr_records()
    for split in ("valid1", "valid2"):
        records += [dict(r, split=split) for r in _tldr_records()]
    write_jsonl(root / "batch9.json", records)


def _write_slf(root: Path) -> None:
    for file in slf5k.SPLIT_FILES.values():
        write_jsonl(root / file, _slf_records())


# Each released source's writer: the files its reader's ``manual_files`` globs match.
WRITERS: dict[type, Callable[[Path], None]] = {
    sources.HHRLHF: _write_hh,
    sources.UltraFeedback: _write_uf,
    sources.SHP: _write_shp,
    sources.OASST1: _write_oasst,
    sources.PKUSafeRLHF: _write_pku,
    sources.TLDRComparisons: _write_tldr,
    sources.SLF5K: _write_slf,
}


def released_sources(data: Any) -> list[type]:
    """The released dataset types a stage's ``data`` (a ``sources.Dataset``) reads."""
    if not isinstance(data, sources.Dataset):
        return []
    return sorted({type(leaf) for leaf in sources.leaves(data.source)
                   if isinstance(leaf, sources._Released)}, key=lambda t: t.__name__)


def write_manual_dir(root: Path, kinds: list[type]) -> Path:
    """One root holding each dataset in ``kinds`` in its release's own layout (the layouts of the
    datasets fbjax reads do not overlap, except UltraFeedback's ``*.jsonl`` and SLF5K's files,
    which no paper variant mixes)."""
    if sources.UltraFeedback in kinds and sources.SLF5K in kinds:
        raise ValueError("UltraFeedback's *.jsonl glob would read SLF5K's files in one root")
    root.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        WRITERS[kind](root)
    return root


def corpus() -> list[str]:
    """Text for the tiny tokenizers: every fixture dataset's records, flattened."""
    texts: list[str] = []

    def walk(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for make in (_hh_records, _uf_records, _shp_records, _oasst_records, _pku_records,
                 _tldr_records, _slf_records):
        walk(make())
    return texts


# ----------------------------------------------------------------------------- checkpoints


def write_checkpoint(out: Path, family: str) -> Path:
    """A tiny random ``family`` checkpoint (2 layers, width 32) with a byte-level tokenizer."""
    from fbjax.models import config as mc
    from fbjax.models import tiny

    model = mc.preset(family, vocab_size=512, hidden_size=32, num_layers=2, num_heads=4,
                      num_kv_heads=2 if family not in ("gpt2", "gpt_neox") else 4, mlp_dim=64,
                      max_seq_len=256)
    tiny.write_checkpoint(str(out), model, corpus(), vocab_size=384)
    return out
