"""The per-paper experiment modules: every ``paper`` config validates, every ``sim`` config
trains, and the typed data sources read what they claim to.

The ``paper`` variants are only built and checked (no weights or datasets offline). The ``sim``
variants all run, shrunk by ``common.smoke`` and sharing one SFT start (``common.run_many``),
so the file pays for one SFT and one train-step compile per method.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import math
import os
import re

import numpy as np
import pytest

from experiments import common
from experiments import feedback_families as ff
from experiments.feedback_families import FamiliesConfig, Method
from fbjax import config as fconfig
from fbjax import sharding as fsh
from fbjax.config import ExperimentConfig
from fbjax.data import encode, sources
from fbjax.data import examples as ex
from fbjax.models.config import Family, ModelConfig
from fbjax.train.objective import Objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Paper modules are named <method>_<firstauthor><year>.py.
MODULE_NAMES = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
    if re.fullmatch(r"[a-z0-9_]+_[a-z]+(19|20)\d\d\.py", os.path.basename(p))
)
MODULES = {name: importlib.import_module(f"experiments.{name}") for name in MODULE_NAMES}
SIM_MODULES = [n for n in MODULE_NAMES if "sim" in MODULES[n].VARIANTS]
# Modules without a runnable sim variant, and why (see their docstrings).
NO_SIM: dict[str, str] = {}


def test_every_method_of_the_issue_has_a_module():
    stems = {n.rsplit("_", 1)[0] for n in MODULE_NAMES}
    wanted = {"dpo", "cdpo", "rdpo", "ipo", "simpo", "orpo", "cpo", "rm", "plackett_luce",
              "irpo", "kto", "bco", "pmpo", "unlikelihood", "npo", "d2o", "nft", "drift", "coh",
              "ilf", "leti", "cut", "c3po", "alt", "fcp", "conditional", "sami"}
    assert wanted <= stems, sorted(wanted - stems)
    assert set(MODULE_NAMES) - set(SIM_MODULES) == set(NO_SIM)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_conventions(name):
    module = MODULES[name]
    doc = module.__doc__ or ""
    assert module.run is common.run
    assert module.DEFAULT_VARIANT in module.VARIANTS
    assert "paper" in module.VARIANTS
    if name not in NO_SIM:
        assert module.VARIANTS == ("paper", "sim") and module.DEFAULT_VARIANT == "sim"
    assert re.search(r"arXiv:\d{4}\.\d{4,5}", doc) or "no arXiv id" in doc, "cite the paper"
    assert f"fbjax train --experiment experiments/{name}.py" in doc, "give the run command"
    assert "Compute" in doc and "expected" in doc.lower()
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("nope")


def _check_source(leaf):
    if isinstance(leaf, sources.Unavailable):
        assert leaf.name and leaf.reason
        with pytest.raises(NotImplementedError, match="no fbjax reader"):
            leaf.examples()
        return
    builder = leaf.builder()
    names = [c.name for c in type(builder).BUILDER_CONFIGS]
    assert builder.builder_config.name in names
    assert leaf.split in builder.manual_files(builder.builder_config)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_paper_variant_validates(name):
    cfg = MODULES[name].get_config("paper")
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == name
    # Model: a supported family, and the architecture of the checkpoint it converts.
    assert isinstance(cfg.model, ModelConfig) and cfg.model.family in set(Family)
    if cfg.init_from is not None:
        assert cfg.init_from.startswith("hf:")
        # A reward model is the checkpoint's backbone with a new scalar head.
        backbone = dataclasses.replace(cfg.model, reward_head=False)
        assert common.CHECKPOINTS[cfg.init_from[3:]] == backbone
    # Objective: constructing it validated the hyperparameters against the loss signature.
    assert isinstance(cfg.objective, Objective)
    for key, value in cfg.objective.hparams.items():
        assert isinstance(value, (int, float, bool)) and math.isfinite(float(value)), key
    assert cfg.mesh.rules in (fsh.RULES_FSDP, fsh.RULES_FSDP_TP)
    assert cfg.train.batch_rows % cfg.train.microbatches == 0
    assert isinstance(cfg.evaluation, common.PaperEval)
    # Data: typed sources whose builders and splits exist, or explicitly unavailable ones.
    assert isinstance(cfg.data, sources.Dataset)
    for leaf in sources.leaves(cfg.data.source):
        _check_source(leaf)
    # The config serialises and takes --set overrides like any other.
    assert fconfig.dumps(cfg)
    assert fconfig.apply_overrides(cfg, ["train.steps=3"]).train.steps == 3


@pytest.mark.parametrize("name", SIM_MODULES)
def test_sim_variant_builds(name):
    cfg = MODULES[name].get_config("sim")
    assert isinstance(cfg, FamiliesConfig)
    (method,) = cfg.methods
    assert isinstance(method, Method) and isinstance(method.objective, Objective)
    assert callable(method.build_data)
    assert cfg.mesh.rules in (fsh.RULES_FSDP, fsh.RULES_FSDP_TP)
    assert fconfig.apply_overrides(cfg, ["sft_train.steps=3"]).sft_train.steps == 3


def test_sim_variants_share_one_sft_start():
    cfgs = [MODULES[n].get_config("sim") for n in SIM_MODULES]
    (merged,) = common.merge(cfgs)
    assert [m.name for m in merged.methods] == [c.methods[0].name for c in cfgs]
    other = dataclasses.replace(cfgs[0], seed=1)
    assert len(common.merge([cfgs[0], other, cfgs[1]])) == 2
    with pytest.raises(ValueError, match="unique"):
        common.merge([cfgs[0], cfgs[0]])


def test_data_rng_follows_the_method_name_not_its_position():
    a, b = (MODULES[n].METHOD for n in ("dpo_rafailov2023", "coh_liu2023"))
    forward = dataclasses.replace(common.SIM_BASE, methods=(a, b))
    backward = dataclasses.replace(forward, methods=(b, a))
    draws = {m.name: r.random(4).tolist()
             for m, r in zip(forward.methods, ff.data_rngs(forward))}
    assert {m.name: r.random(4).tolist()
            for m, r in zip(backward.methods, ff.data_rngs(backward))} == draws
    (alone,) = ff.data_rngs(common.sim_variant(b))
    assert alone.random(4).tolist() == draws[b.name]
    assert draws[a.name] != draws[b.name]
    (reseeded,) = ff.data_rngs(dataclasses.replace(common.sim_variant(b), seed=1))
    assert reseeded.random(4).tolist() != draws[b.name]


def test_sft_cache_round_trip(tmp_path):
    import jax
    import jax.numpy as jnp

    cfg = common.sim_variant(MODULES["dpo_rafailov2023"].METHOD)
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones(2)}}
    like = jax.tree.map(jnp.zeros_like, params)
    assert ff._load_sft(str(tmp_path), cfg, like) is None
    ff._save_sft(str(tmp_path), cfg, params, [{"step": 1, "loss": 2.5}])
    loaded, history = ff._load_sft(str(tmp_path), cfg, like)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), loaded, params))
    assert history == [{"step": 1, "loss": 2.5}]
    changed = dataclasses.replace(cfg, sft_train=dataclasses.replace(cfg.sft_train, steps=1))
    assert ff._load_sft(str(tmp_path), changed, like) is None
    # Only the SFT stage keys the cache: other methods reuse it.
    other = common.sim_variant(MODULES["kto_ethayarajh2024"].METHOD)
    assert ff._load_sft(str(tmp_path), other, like) is not None


@pytest.fixture(scope="module")
def sim_tok():
    from fbjax import sim

    return sim.build_tokenizer([common.SIM_TASK], vocab_size=384, seed=0)


def _pool(prompts, texts):
    from fbjax import recipes

    rewards = [[common.SIM_TASK.reward(p, t) for t in ts] for p, ts in zip(prompts, texts)]
    return recipes.SamplePool(tuple(prompts), tuple(map(tuple, texts)), np.array(rewards))


# 12+7=19 and 3+4=7: one right sample in four for the first prompt, two for the second.
POOL = (("12+7=", "3+4="), (("19", "18", "9", "119"), ("7", "7", "8", "6")))


def _trained_runs(group):
    """(token ids, ends with a trained EOS) of each maximal run of trained tokens."""
    runs, current = [], []
    for token, weight in zip(group.completions[0], group.masks[0]):
        if weight > 0:
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def test_coh_sim_data_ends_every_output_with_eos(sim_tok):
    # Evaluation samples the first output's position; a chain whose outputs are followed by
    # untrained separators never teaches the policy to stop there. The released data: per
    # prompt, the best and the worst sample as p, n, pn and np sequences.
    method = MODULES["coh_liu2023"].METHOD
    pool = _pool(*POOL)
    groups = method.build_data(common.SIM_TASK, pool, sim_tok, np.random.default_rng(0))
    assert len(groups) == 2 * 4
    for k, texts in enumerate(POOL[1]):
        runs = [_trained_runs(g) for g in groups[4 * k:4 * k + 4]]
        assert [len(r) for r in runs] == [1, 1, 2, 2]
        assert all(run[-1] == sim_tok.eos_id for rs in runs for run in rs)
        outputs = [sim_tok.decode(run[:-1]) for rs in runs for run in rs]
        assert all(o in texts for o in outputs)


def test_bco_sim_data_balances_thumbs(sim_tok):
    method = MODULES["bco_jung2024"].METHOD
    pool = _pool(*POOL)  # 3 right, 5 wrong
    groups = method.build_data(common.SIM_TASK, pool, sim_tok, np.random.default_rng(0))
    labels = [g.slot_fields["labels"][0] for g in groups]
    assert sorted(labels) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert all(g.slot_fields["is_kl"] == (0.0,) for g in groups)


def test_pmpo_sim_objective_uses_per_class_means(sim_tok):
    import jax.numpy as jnp

    from fbjax.objectives import binary

    method = MODULES["pmpo_abdolmaleki2024"].METHOD
    pool = _pool(*POOL)
    groups = method.build_data(common.SIM_TASK, pool, sim_tok, np.random.default_rng(0))
    objective = method.adapt(method.objective, groups) if method.adapt else method.objective
    labels = np.array([g.slot_fields["labels"][0] for g in groups])
    assert labels.mean() == 3 / 8
    rng = np.random.default_rng(0)
    logps, ref = -rng.uniform(1, 5, len(labels)), -rng.uniform(1, 5, len(labels))
    loss, _ = binary.pmpo(jnp.asarray(logps), jnp.asarray(ref), jnp.asarray(labels),
                          **objective.hparams)
    alpha, beta = method.objective.hparams["alpha"], method.objective.hparams["beta"]
    acc, rej = labels == 1, labels == 0
    paper = (-alpha * logps[acc].mean() + (1 - alpha) * logps[rej].mean()
             + beta * (ref - logps).mean())
    # Equal up to a constant factor, which must not depend on the policy: check two policies.
    ratio = float(jnp.mean(loss)) / paper
    logps2 = logps - rng.uniform(0, 2, len(labels))
    loss2, _ = binary.pmpo(jnp.asarray(logps2), jnp.asarray(ref), jnp.asarray(labels),
                           **objective.hparams)
    paper2 = (-alpha * logps2[acc].mean() + (1 - alpha) * logps2[rej].mean()
              + beta * (ref - logps2).mean())
    assert ratio > 0
    np.testing.assert_allclose(float(jnp.mean(loss2)) / paper2, ratio, rtol=1e-5)


def test_unlikelihood_sim_data_penalises_only_wrong_digits(sim_tok):
    method = MODULES["unlikelihood_welleck2019"].METHOD
    pool = _pool(*POOL)
    groups = method.build_data(common.SIM_TASK, pool, sim_tok, None)
    penalised = sorted(
        (sim_tok.decode(g.prompt[1:].tolist()), sim_tok.decode(g.completions[0][:-1].tolist()),
         sim_tok.decode([int(t) for t, w in zip(g.completions[0], g.masks[0]) if w > 0]))
        for g in groups)
    # 18: the 8; 9 (tens digit missing): the first digit written; 119: the extra leading 1.
    assert penalised == [("12+7=", "119", "1"), ("12+7=", "18", "8"), ("12+7=", "9", "9"),
                         ("3+4=", "6", "6"), ("3+4=", "8", "8")]
    assert all(g.masks[0][-1] == 0 for g in groups)  # EOS is never pushed down


def test_readme_table_has_a_sim_result_for_every_module():
    with open(os.path.join(ROOT, "README.md")) as f:
        rows = [line for line in f if line.startswith("| ")]
    for name in MODULE_NAMES:
        row = [r for r in rows if f"`experiments/{name}.py`" in r]
        assert len(row) == 1, name
        # three seeds of "SFT -> after"
        assert len(re.findall(r"\.\d{3}->\.\d{3}", row[0])) == 3, row[0]


@pytest.mark.slow
def test_every_sim_variant_trains(tmp_path):
    cfgs = [common.smoke(MODULES[n].get_config("sim")) for n in SIM_MODULES]
    summaries = common.run_many(cfgs, workdir=str(tmp_path), progress=False)
    assert len(summaries) == 1, "every sim variant should share the SFT start"
    rows = {r["method"]: r for r in summaries[0]["methods"]}
    assert sorted(rows) == sorted(c.methods[0].name for c in cfgs)
    for name, row in rows.items():
        assert row["examples"] > 0, name
        assert 0.0 <= row["reward_after"] <= 1.0, name
        assert 0.0 <= row["win_rate"] <= 1.0, name
        assert math.isfinite(row["kl"]), name
    assert os.path.exists(tmp_path / "0" / "results.json")


# ----------------------------------------------------------------------------- data sources


def test_sources_validate_names():
    with pytest.raises(ValueError, match="builder config"):
        sources.HHRLHF(subset="helpful")
    with pytest.raises(ValueError, match="no split"):
        sources.TLDRComparisons(split="valid1")
    with pytest.raises(ValueError, match="'pairs' does not exist"):
        sources.UltraFeedback(view="pairs")
    with pytest.raises(TypeError, match="not a data source"):
        sources.Dataset(source=object())
    with pytest.raises(ValueError, match="tokenizer_path"):
        sources.Dataset(source=sources.SHP()).tokenizer()


class _Fixed:
    """An in-memory source."""

    def __init__(self, data):
        self.data = data

    def examples(self):
        return list(self.data)


PAIRS = [ex.PairedExample(ex.user_prompt(f"{i}+1="), str(i + 1), str(i)) for i in range(200)]


def test_views_reshape_examples():
    noisy = sources.LabelNoise(source=_Fixed(PAIRS), flip_rate=0.25, seed=3).examples()
    flipped = [e for e in noisy if e.meta.get("flipped")]
    assert 20 < len(flipped) < 80
    assert all(e.chosen == o.rejected for e, o in zip(noisy, PAIRS) if e.meta.get("flipped"))
    assert noisy == sources.LabelNoise(source=_Fixed(PAIRS), flip_rate=0.25, seed=3).examples()

    binary = sources.PairsAsBinary(source=_Fixed(PAIRS[:2])).examples()
    assert [(b.completion, b.label) for b in binary] == [("1", True), ("0", False),
                                                         ("2", True), ("1", False)]
    ranked = ex.RankedExample(ex.user_prompt("q"), ("a", "b", "c"), (2.0, 1.0, 0.0))
    pairs = sources.RankedAsPairs(source=_Fixed([ranked])).examples()
    assert [(p.chosen, p.rejected) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    mix = sources.Mixture(parts=(_Fixed(PAIRS[:1]), _Fixed([ranked]))).examples()
    assert mix == [PAIRS[0], ranked]


def test_hh_rlhf_source_reads_and_encodes(tmp_path):
    from fbjax import sim
    from tests.data import helpers

    manual = tmp_path / "manual"
    for split in ("train", "test"):
        helpers.write_jsonl(manual / "helpful-base" / f"{split}.jsonl.gz", [
            helpers.hh([("user", "2+3=")], "5", "6"),
            helpers.hh([("user", "9+9=")], "18", "81"),
        ])
    tokenizer = sim.build_tokenizer([common.SIM_TASK], vocab_size=384)
    tokenizer.save(str(tmp_path / "tokenizer.model"))
    data = sources.Dataset(
        source=sources.HHRLHF(subset="helpful-base", split="test", manual_dir=str(manual),
                              data_dir=str(tmp_path / "tfds")),
        encoder=encode.paired, tokenizer_path=str(tmp_path / "tokenizer.model"),
    )
    examples = data.source.examples()
    assert [(e.chosen, e.rejected) for e in examples] == [("5", "6"), ("18", "81")]
    groups = data.load(data.tokenizer())
    assert len(groups) == 2 and all(len(g.completions) == 2 for g in groups)
    # A lone user turn is used verbatim by default; the templates lay it out as asked.
    assert tokenizer.decode(groups[0].prompt[1:].tolist()) == "2+3="
    render = dataclasses.replace(data, template=sources.Transcript()).prompt_text()
    assert render(examples[0].prompt) == "\n\nHuman: 2+3=\n\nAssistant:"
    render = dataclasses.replace(data, template=sources.Chat(common.ZEPHYR)).prompt_text()
    assert render(examples[0].prompt) == "<|user|>\n2+3=</s>\n<|assistant|>\n"
