"""The per-paper experiment modules: every variant is an ExperimentConfig, every ``paper``
config validates, every ``sim`` config trains, and the typed data sources read what they claim to.

The ``paper`` variants are only built and checked here (tests/test_paper_path.py runs one from a
local checkpoint). The ``smoke`` variants all run, sharing one SFT start (``common.merge``), so
the file pays for one SFT and one train-step compile per method.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import inspect
import json
import math
import os
import re

import numpy as np
import pytest

from experiments import common
from fbjax import cli
from fbjax import sharding as fsh
from fbjax.data import encode, sources, templates
from fbjax.data import examples as ex
from fbjax.models.config import Family, ModelConfig
from fbjax.run import overrides, sim, sim_feedback, stages
from fbjax.run.config import EvalStage, ExperimentConfig, OnlineStage, SampleStage, TrainStage
from fbjax.train import catalog
from fbjax.train.objective import Objective

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Paper modules are named <method>_<firstauthor><year>.py.
MODULE_NAMES = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
    if re.fullmatch(r"[a-z0-9_]+_[a-z]+(19|20)\d\d\.py", os.path.basename(p))
)
MODULES = {name: importlib.import_module(f"experiments.{name}") for name in MODULE_NAMES}


@pytest.mark.parametrize("entry", [e for e in catalog.OBJECTIVES if e.experiments],
                         ids=lambda e: e.name)
def test_every_catalogued_experiment_exists_and_trains_its_objective(entry):
    for name in entry.experiments:
        assert name in MODULES, f"catalog entry {entry.name} names experiments/{name}.py"
        assert _sim_stage(name).objective.loss is entry.loss
        assert MODULES[name].get_config("paper").main_stage.objective.loss is entry.loss


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_conventions(name):
    module = MODULES[name]
    doc = module.__doc__ or ""
    # Extra paper variants (CUT's online setting) come after the three every module has.
    assert module.VARIANTS[:3] == ("paper", "sim", "smoke") and module.DEFAULT_VARIANT == "sim"
    assert all(v.startswith("paper_") for v in module.VARIANTS[3:])
    assert not hasattr(module, "run"), "modules are plain configs; fbjax.run.stages runs them"
    assert re.search(r"arXiv:\d{4}\.\d{4,5}", doc) or "no arXiv id" in doc, "cite the paper"
    assert f"fbjax train --experiment experiments/{name}.py" in doc, "give the run command"
    assert "Compute" in doc and "expected" in doc.lower()
    for variant in module.VARIANTS:
        assert isinstance(module.get_config(variant), ExperimentConfig)
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


PAPER_VARIANTS = [f"{name}:{v}" for name in MODULE_NAMES for v in MODULES[name].VARIANTS
                  if v.startswith("paper")]


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_paper_variant_validates(name):
    name, variant = name.split(":")
    cfg = MODULES[name].get_config(variant)
    assert cfg.name == name
    # The architecture comes from the checkpoint (or, pretraining from scratch, is given).
    assert (cfg.init_from or "").startswith("hf:") or isinstance(cfg.model, ModelConfig)
    if cfg.model is not None:
        assert cfg.model.family in set(Family)
    # Several stages (an offline stage before online rounds) end in the main one.
    stage = cfg.main_stage
    assert stage is cfg.stages[-1]
    # Objective: constructing it validated the hyperparameters against the loss signature.
    assert isinstance(stage.objective, Objective)
    for key, value in stage.objective.hparams.items():
        assert isinstance(value, (int, float, bool)) and math.isfinite(float(value)), key
    assert cfg.mesh.rules in (fsh.RULES_FSDP, fsh.RULES_FSDP_TP)
    assert stage.train.batch % stage.train.microbatches == 0
    assert isinstance(cfg.evaluation, common.PaperEval)
    if isinstance(stage, OnlineStage):
        # Data sampled from the policy each round and judged by a feedback provider.
        assert callable(stage.provider) and callable(stage.encode) and stage.rounds >= 1
        assert hasattr(stage.prompts, "prompts")
        # It names what the paper asked for feedback (the provider is the local stand-in).
        assert stage.paper_provider
        if stage.data is not None:
            assert isinstance(stage.data, sources.Dataset)
            for leaf in sources.leaves(stage.data.source):
                _check_source(leaf)
        changed = overrides.apply_overrides(
            cfg, ["rounds=2", "samples_per_prompt=3", f"stages.{stage.name}.train.steps=2"])
        assert (changed.main_stage.rounds, changed.main_stage.samples_per_prompt,
                changed.main_stage.train.steps) == (2, 3, 2)
    else:
        # Data: typed sources whose builders and splits exist, or explicitly unavailable ones.
        assert isinstance(stage.data, sources.Dataset)
        for leaf in sources.leaves(stage.data.source):
            _check_source(leaf)
    # The config serialises and takes --set overrides like any other.
    assert overrides.dumps(cfg)
    assert overrides.apply_overrides(cfg, ["train.steps=3"]).main_stage.train.steps == 3


def _sim_stage(name: str) -> TrainStage:
    (stage,) = [s for s in MODULES[name].get_config("sim").stages if getattr(s, "start", None) == "sft"]
    return stage


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_sim_variant_builds(name):
    cfg = MODULES[name].get_config("sim")
    kinds = [type(s) for s in cfg.stages]
    assert kinds == [TrainStage, SampleStage, TrainStage, EvalStage]
    stage = cfg.stages[2]
    assert isinstance(stage.objective, Objective) and isinstance(stage.data, sim.Feedback)
    assert cfg.main_stage is stage and cfg.mesh.rules in (fsh.RULES_FSDP, fsh.RULES_FSDP_TP)
    assert overrides.apply_overrides(cfg, ["stages.sft.train.steps=3"]).stages[0].train.steps == 3


def _changed_hparam(stage: TrainStage) -> tuple[str, object] | None:
    """The stage loss's first keyword hyperparameter and a value it does not have now (None
    for a loss without one, e.g. the NLL of ILF, ALT and FCP)."""
    params = inspect.signature(stage.objective.loss).parameters.values()
    param = next((p for p in params if p.kind is p.KEYWORD_ONLY), None)
    if param is None:
        return None
    current = stage.objective.hparams.get(param.name, param.default)
    if isinstance(current, bool):
        return param.name, not current
    if isinstance(current, int):
        return param.name, current + 1
    return param.name, round(float(current) * 2 + 0.25, 6)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_print_config_shows_a_set_hyperparameter_of_the_sim_variant(name, capsys, tmp_path):
    changed = _changed_hparam(_sim_stage(name))
    sets = ["--set", "optimizer.learning_rate=0.0123"]
    if changed is not None:
        sets += ["--set", f"objective.hparams.{changed[0]}={changed[1]}"]
    workdir = tmp_path / "w"
    rc = cli.main(["train", "--experiment", f"experiments/{name}.py", "--workdir", str(workdir),
                   *sets, "--print-config"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    (stage,) = [s for s in printed["stages"] if s.get("start") == "sft"]
    assert stage["optimizer"]["learning_rate"] == 0.0123
    if changed is not None:
        assert stage["objective"]["hparams"][changed[0]] == changed[1]
    assert not workdir.exists()  # nothing trained


def test_sim_variants_share_one_sft_start():
    cfgs = [MODULES[n].get_config("sim") for n in MODULE_NAMES]
    (merged,) = common.merge(cfgs)
    assert [s.name for s in merged.stages if getattr(s, "start", None) == "sft"] == [
        _sim_stage(n).name for n in MODULE_NAMES]
    assert merged.stages[0].name == "sft" and merged.stages[-1].name == "eval"
    other = dataclasses.replace(cfgs[0], seed=1)
    assert len(common.merge([cfgs[0], other, cfgs[1]])) == 2
    with pytest.raises(ValueError, match="unique"):
        common.merge([cfgs[0], cfgs[0]])


def test_data_rng_follows_the_stage_name_not_its_position():
    def draws(stage, seed=0):
        ctx = sim.DataContext(tokenizer=None, task=None, seed=seed, stage=stage)
        return ctx.rng.random(4).tolist()

    assert draws("DPO") == draws("DPO")
    assert draws("DPO") != draws("CoH")
    assert draws("DPO", seed=1) != draws("DPO")


@pytest.fixture(scope="module")
def sim_tok():
    from fbjax import sim as simlib

    return simlib.build_tokenizer([common.SIM_TASK], vocab_size=384, seed=0)


def _pool(prompts, texts):
    rewards = [[common.SIM_TASK.reward(p, t) for t in ts] for p, ts in zip(prompts, texts)]
    return sim.SamplePool(tuple(prompts), tuple(map(tuple, texts)), np.array(rewards))


# 12+7=19 and 3+4=7: one right sample in four for the first prompt, two for the second.
POOL = (("12+7=", "3+4="), (("19", "18", "9", "119"), ("7", "7", "8", "6")))


def _build(name, tok, rng):
    return _sim_stage(name).data.build(common.SIM_TASK, _pool(*POOL), tok, rng)


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
    groups = _build("coh_liu2023", sim_tok, np.random.default_rng(0))
    assert len(groups) == 2 * 4
    for k, texts in enumerate(POOL[1]):
        runs = [_trained_runs(g) for g in groups[4 * k:4 * k + 4]]
        assert [len(r) for r in runs] == [1, 1, 2, 2]
        assert all(run[-1] == sim_tok.eos_id for rs in runs for run in rs)
        outputs = [sim_tok.decode(run[:-1]) for rs in runs for run in rs]
        assert all(o in texts for o in outputs)


def test_d2o_sim_negative_is_an_own_wrong_sample_before_the_others(sim_tok):
    # PKU-SafeRLHF's negatives are the start model's own responses labelled harmful: here one
    # of the prompt's wrong samples, then its other three samples, unlabelled.
    pool = _pool(("12+7=", "3+4=", "2+2="),
                 (("19", "18", "9", "119"), ("7", "7", "8", "6"), ("4", "4", "4", "4")))
    for seed in range(4):
        groups = sim_feedback.own_negative_with_samples(common.SIM_TASK, pool, sim_tok,
                                                        np.random.default_rng(seed))
        assert len(groups) == 2  # 2+2= has no wrong sample
        for g, prompt, texts in zip(groups, pool.prompts, pool.texts):
            decoded = [sim_tok.decode(c[:-1]) for c in g.completions]
            assert common.SIM_TASK.reward(prompt, decoded[0]) < 1.0
            assert sorted(decoded) == sorted(texts)
    assert _sim_stage("d2o_duan2024").data.build is sim_feedback.own_negative_with_samples


def test_bco_sim_data_balances_thumbs(sim_tok):
    groups = _build("bco_jung2024", sim_tok, np.random.default_rng(0))  # 3 right, 5 wrong
    labels = [g.slot_fields["labels"][0] for g in groups]
    assert sorted(labels) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert all(g.slot_fields["is_kl"] == (0.0,) for g in groups)


def test_pmpo_sim_objective_uses_per_class_means(sim_tok):
    import jax.numpy as jnp

    from fbjax.objectives import binary

    stage = _sim_stage("pmpo_abdolmaleki2024")
    groups = _build("pmpo_abdolmaleki2024", sim_tok, np.random.default_rng(0))
    objective = stage.adapt(stage.objective, groups) if stage.adapt else stage.objective
    labels = np.array([g.slot_fields["labels"][0] for g in groups])
    assert labels.mean() == 3 / 8
    rng = np.random.default_rng(0)
    logps, ref = -rng.uniform(1, 5, len(labels)), -rng.uniform(1, 5, len(labels))
    loss, _ = binary.pmpo(jnp.asarray(logps), jnp.asarray(ref), jnp.asarray(labels),
                          **objective.hparams)
    alpha, beta = stage.objective.hparams["alpha"], stage.objective.hparams["beta"]
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
    built = _build("unlikelihood_welleck2019", sim_tok, np.random.default_rng(0))
    groups = [g for g in built if g.slot_fields["likelihood"][0] == 0.0]
    corpus = [g for g in built if g.slot_fields["likelihood"][0] == 1.0]
    # The likelihood half: as many whole demonstrations, every token trained.
    assert len(corpus) == len(groups) and len(built) == 2 * len(groups)
    assert all(g.masks is None or all(np.all(m > 0) for m in g.masks) for g in corpus)
    penalised = sorted(
        (sim_tok.decode(g.prompt[1:].tolist()), sim_tok.decode(g.completions[0][:-1].tolist()),
         sim_tok.decode([int(t) for t, w in zip(g.completions[0], g.masks[0]) if w > 0]))
        for g in groups)
    # 18: the 8; 9 (tens digit missing): the first digit written; 119: the extra leading 1.
    assert penalised == [("12+7=", "119", "1"), ("12+7=", "18", "8"), ("12+7=", "9", "9"),
                         ("3+4=", "6", "6"), ("3+4=", "8", "8")]
    assert all(g.masks[0][-1] == 0 for g in groups)  # EOS is never pushed down


def test_leti_sim_data_mixes_demonstrations_one_to_one(sim_tok):
    built = _build("leti_wang2023", sim_tok, np.random.default_rng(0))
    leti = [g for g in built if g.slot_fields["pretraining"][0] == 0.0]
    corpus = [g for g in built if g.slot_fields["pretraining"][0] == 1.0]
    assert len(leti) == len(corpus) == 8 and len(built) == 16
    # The LeTI half: the reward token is the whole prompt; the three right samples (19, 7, 7)
    # get <|good|> and no critique, every later token trained; the demonstrations are plain
    # (prompt, answer) pairs, the answer trained.
    good = [g for g in leti if sim_tok.decode(g.prompt.tolist()).endswith(templates.GOOD_TOKEN)]
    assert len(good) == 3
    assert all(np.all(g.masks[0] > 0) for g in leti)
    assert sorted(sim_tok.decode(g.completions[0][:-1].tolist()) for g in good) == [
        "12+7=19", "3+4=7", "3+4=7"]
    assert all(g.masks is None for g in corpus)
    # Fresh task prompts from the demonstrator ("a+b=" / "a-b="), not the pool's.
    assert all(re.fullmatch(r"\d+[+-]\d+=", sim_tok.decode(g.prompt[1:].tolist()))
               for g in corpus)


def test_cut_sim_data_downsamples_positives_as_released(sim_tok):
    def flags(positive_ratio):
        groups = sim_feedback.judged_pairs(common.SIM_TASK, _pool(*POOL), sim_tok, None,
                                           positive_ratio=positive_ratio)
        return sorted(g.slot_fields["negative"][0] for g in groups)

    # 5 wrong samples, 3 right: int(0.25 * 5) = 1 right one is kept; None keeps all three.
    assert flags(0.25) == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert flags(None) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    built = _build("cut_xu2023", sim_tok, np.random.default_rng(0))
    assert sorted(g.slot_fields["negative"][0] for g in built) == flags(0.25)


def test_readme_table_has_a_sim_result_for_every_module():
    with open(os.path.join(ROOT, "README.md")) as f:
        rows = [line for line in f if line.startswith("| ")]
    for name in MODULE_NAMES:
        row = [r for r in rows if f"`experiments/{name}.py`" in r]
        assert len(row) == 1, name
        # three seeds of "SFT -> after" (a reward of 1 prints as 1.000)
        assert len(re.findall(r"1?\.\d{3}->1?\.\d{3}", row[0])) == 3, row[0]


@pytest.mark.slow
def test_every_smoke_variant_trains(tmp_path):
    """Every module's ``smoke`` variant (its ``sim`` variant shrunk), sharing one SFT start."""
    cfgs = [MODULES[n].get_config("smoke") for n in MODULE_NAMES]
    (merged,) = common.merge(cfgs)
    summary = stages.run(merged, workdir=str(tmp_path), progress=False)
    rows = {r["method"]: r for r in summary["methods"]}
    assert sorted(rows) == sorted(_sim_stage(n).name for n in MODULE_NAMES)
    for name, row in rows.items():
        assert row["examples"] > 0, name
        assert 0.0 <= row["reward_after"] <= 1.0, name
        assert 0.0 <= row["win_rate"] <= 1.0, name
        assert math.isfinite(row["kl"]), name
    assert os.path.exists(tmp_path / "results.json")


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


def test_recorded_configs_hold_no_memory_addresses():
    """The config a checkpoint records is compared on resume, in another process: a
    ``functools.partial`` data builder (rDPO's, cDPO's) must be written by name and arguments,
    not by its repr, which holds an address."""
    import functools

    from fbjax.run.sim_feedback import preference_pairs

    view = overrides.to_jsonable(functools.partial(preference_pairs, flip_rate=0.2))
    assert view == {"partial": "fbjax.run.sim_feedback.preference_pairs", "args": [],
                    "keywords": {"flip_rate": 0.2}}
    for name in MODULE_NAMES:
        for variant in ("sim", "paper"):
            text = overrides.dumps(MODULES[name].get_config(variant))
            assert not re.search(r" at 0x[0-9a-f]+", text), (name, variant)


def test_sami_samples_under_each_constitution_and_principled_demonstrations(sim_tok):
    from fbjax.data import language

    # One sample under each constitution per prompt: y_1 under c_1, y_2 under c_2, unlabelled.
    pool = _pool(("12+7=", "3+4="), (("19", "18"), ("6", "7")))
    groups = sim_feedback.constitution_samples(common.SIM_TASK, pool, sim_tok, None)
    n = len(sim_feedback.SAMI_CONSTITUTIONS)
    expected = language.sami_groups(
        [("12+7=", sim_feedback.SAMI_CONSTITUTIONS, ("19", "18")),
         ("3+4=", sim_feedback.SAMI_CONSTITUTIONS, ("6", "7"))], sim_tok)
    assert len(groups) == 2 and all(len(g.completions) == n * n for g in groups)
    for g, e in zip(groups, expected):
        assert all(np.array_equal(a, b) for a, b in zip(g.completions, e.completions))
    with pytest.raises(ValueError, match="one sample per constitution"):
        sim_feedback.constitution_samples(common.SIM_TASK, _pool(*POOL), sim_tok, None)
    assert sim_feedback.sami_rendering(1)("3+4=") == language.sami_prompt(
        "3+4=", sim_feedback.SAMI_CONSTITUTIONS[1])

    # Demonstrations alternate principles; each principle's demonstrator has its own quality.
    data = sim.PrincipledDemonstrations(principles=("P", "Q"), qualities=(1.0, 0.0),
                                        render=language.sami_prompt, num_examples=40)
    ctx = sim.DataContext(tokenizer=sim_tok, task=common.SIM_TASK, seed=0, stage="principles")
    for k, g in enumerate(data.load_in(ctx)):
        principle, query = sim_tok.decode(g.prompt[1:].tolist()).split("\n")
        answer = sim_tok.decode(g.completions[0][:-1].tolist())
        assert principle == "PQ"[k % 2]
        assert (common.SIM_TASK.reward(query, answer) == 1.0) == (k % 2 == 0)
