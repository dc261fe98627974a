"""The command line and config overrides, and a smoke run of the default experiment."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest

from fbjax import cli
from fbjax.models import config as mc
from fbjax.run import experiment
from fbjax.run.config import single
from fbjax.run.overrides import OverrideError, apply_overrides
from fbjax.train import presets
from fbjax.train.config import TrainConfig


def _config():
    return single(name="t", model=mc.llama(), objective=presets.dpo(beta=0.1), data=None,
                  train=TrainConfig(steps=3))


def test_override_sets_nested_fields_with_types():
    cfg = apply_overrides(_config(), ["train.steps=7", "model.num_layers=3",
                                      "objective.hparams.beta=0.25", "model.family=mistral",
                                      "train.packing=False"])
    (stage,) = cfg.stages
    assert stage.train.steps == 7 and cfg.model.num_layers == 3
    assert stage.objective.hparams["beta"] == 0.25
    assert cfg.model.family is mc.Family.MISTRAL and stage.train.packing is False


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(OverrideError) as err:
        apply_overrides(_config(), ["train.step=7"])
    assert "train.step" in str(err.value) and "train.steps" in str(err.value)
    with pytest.raises(OverrideError, match="objective.hparams.beta"):
        apply_overrides(_config(), ["objective.hparams.betta=0.2"])


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="train.steps"):
        apply_overrides(_config(), ["train.steps=many"])
    with pytest.raises(ValueError, match="model.family"):
        apply_overrides(_config(), ["model.family=gpt5"])
    with pytest.raises(ValueError, match="expected True or False"):
        apply_overrides(_config(), ["train.packing=1"])


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="not a supported family"):
        mc.ModelConfig(family="bert")


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    rc = cli.main(["train", "--experiment", "experiments/feedback_families.py:smoke",
                   "--workdir", str(tmp_path), "--set", "stages.sft.train.stepz=3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stages.sft.train.stepz" in err and "stages.sft.train.steps" in err
    rc = cli.main(["train", "--experiment", "experiments/feedback_families.py:huge",
                   "--workdir", str(tmp_path)])
    assert rc == 2 and "no variant 'huge'" in capsys.readouterr().err


def test_experiment_loads_by_module_name():
    module, variant, cfg = experiment.load("feedback_families:smoke")
    assert variant == "smoke"
    assert [s.name for s in cfg.stages] == ["sft", "pool", "DPO", "KTO", "D2O", "ILF", "eval"]


@pytest.mark.slow
def test_default_experiment_smoke(tmp_path):
    rc = cli.main(["train", "--experiment", "experiments/feedback_families.py:smoke",
                   "--workdir", str(tmp_path), "--no-progress"])
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["family"] for r in results["methods"]] == [
        "paired preference", "unpaired binary", "negative-only", "language feedback"]
    for row in results["methods"]:
        assert math.isfinite(row["kl"]) and 0.0 <= row["reward_after"] <= 1.0
    assert (tmp_path / "reward_vs_kl.png").stat().st_size > 1000
    assert glob.glob(os.path.join(tmp_path, "sft", "tensorboard", "events.out.tfevents.*"))


def test_example_longer_than_model_maximum_is_named():
    import numpy as np

    from fbjax.data import packing
    from fbjax.train.stream import batch_stream

    train = TrainConfig(steps=1, seq_len=64, max_completion_len=64)
    group = packing.Group(np.ones(4, np.int32), (np.ones(20, np.int32),))
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=16"):
        batch_stream(train, mc.gpt2(max_seq_len=16), [group], seed=0)


def test_fields_that_must_agree_are_validated_after_every_set():
    # One at a time, num_heads=8 alone would be refused (8 heads over 2 kv-heads is fine, but
    # 6 over 4 is not): all --sets are applied first, then each config is rebuilt once.
    cfg = _config()
    cfg = apply_overrides(cfg, ["model.num_kv_heads=8", "model.num_heads=8",
                                "model.hidden_size=256"])
    assert (cfg.model.num_heads, cfg.model.num_kv_heads) == (8, 8)
    with pytest.raises(OverrideError, match="num_heads"):
        apply_overrides(_config(), ["model.num_heads=6", "model.num_kv_heads=4"])


def test_stage_paths_and_the_main_stage_shorthand():
    _, _, cfg = experiment.load("dpo_rafailov2023:sim")
    out = apply_overrides(cfg, ["objective.hparams.beta=0.2", "stages.sft.train.steps=5",
                                "seed=3", "stages.pool.num_prompts=10"])
    assert out.stage("DPO").objective.hparams["beta"] == 0.2
    assert out.stage("sft").train.steps == 5 and out.seed == 3
    assert out.stage("pool").num_prompts == 10
    assert cfg.stage("DPO").objective.hparams["beta"] == 0.1  # the original is untouched
    # Several method stages: no shorthand, and the error names the stages to choose from.
    _, _, families = experiment.load("feedback_families")
    with pytest.raises(OverrideError, match=r"did you mean .*stages\.DPO\.objective"):
        apply_overrides(families, ["objective.hparams.beta=0.2"])
    out = apply_overrides(families, ["stages.KTO.objective.hparams.beta=0.3"])
    assert out.stage("KTO").objective.hparams["beta"] == 0.3


@pytest.mark.parametrize("bad, message", [
    ("train.steps=True", "got a bool"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("optimizer.learning_rate=-1", "learning_rate must be a finite number > 0"),
    ("optimizer.learning_rate=1e400", "not a finite number"),
    ("optimizer.lr=3", "unknown config key 'optimizer.lr'"),
    ("seed=1.5", "expected int"),
    ("train.steps", "expects path=value"),
    ("train.steps=1", "given more than once"),
])
def test_bad_overrides_are_one_line_errors(bad, message, capsys, tmp_path):
    args = ["train", "--experiment", "experiments/dpo_rafailov2023.py", "--workdir",
            str(tmp_path), "--set", bad, "--print-config"]
    if bad == "train.steps=1":
        args += ["--set", "train.steps=2"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_print_config_shows_overrides_and_trains_nothing(capsys, tmp_path):
    rc = cli.main(["train", "--experiment", "experiments/dpo_rafailov2023.py", "--workdir",
                   str(tmp_path / "w"), "--set", "objective.hparams.beta=0.2", "--print-config"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    (dpo,) = [s for s in printed["stages"] if s["name"] == "DPO"]
    assert dpo["objective"]["hparams"]["beta"] == 0.2
    assert not (tmp_path / "w").exists()


# One line and exit code 2 for every bad input the command line can meet (issue: reliability).
# Each case: extra arguments (after --experiment/--workdir), and a phrase the line must hold.
BAD_INPUTS = [
    (["--set", "train.steps=True"], "got a bool"),
    (["--set", "train.steps=0"], "train.steps must be >= 1"),
    (["--set", "train.steps=-3"], "train.steps must be >= 1"),
    (["--set", "train.steps=2.5"], "expected int"),
    (["--set", "train.steps=many"], "not a valid Python literal"),
    (["--set", "train.batch=0"], "train.batch must be >= 1"),
    (["--set", "train.batch=6", "--set", "train.microbatches=4"], "must divide into"),
    (["--set", "train.seq_len=None"], "expected int"),
    (["--set", "optimizer.learning_rate=-1"], "learning_rate must be a finite number > 0"),
    (["--set", "optimizer.learning_rate=0"], "learning_rate must be a finite number > 0"),
    (["--set", "optimizer.learning_rate=1e400"], "not a finite number"),
    (["--set", "optimizer.learning_rate=nan"], "not a valid Python literal"),
    (["--set", "optimizer.b2=1.5"], "optimizer.b2 must be in [0, 1)"),
    (["--set", "optimizer.eps=0"], "optimizer.eps must be a finite number > 0"),
    (["--set", "optimizer.weight_decay=-0.1"], "optimizer.weight_decay must be >= 0"),
    (["--set", "optimizer.schedule=cosin"], "choose one of"),
    (["--set", "optimizer.warmup_steps=-1"], "warmup_steps must be >= 0"),
    (["--set", "optimizer.lr=3e-4"], "did you mean optimizer.learning_rate"),
    (["--set", "objective.hparams.betta=0.2"], "did you mean objective.hparams.beta"),
    (["--set", "objective.hparams.beta=high"], "not a valid Python literal"),
    (["--set", "model.num_heads=3"], "must be a multiple of model.num_kv_heads"),
    (["--set", "model.hidden_size=98"], "hidden_size"),
    (["--set", "model.family=gpt5"], "model.family"),
    (["--set", "seed=1.5"], "expected int"),
    (["--set", "train.packing=1"], "expected True or False"),
    (["--set", "stages.nope.train.steps=3"], "unknown config key"),
    (["--set", "train"], "expects path=value"),
    (["--set", "train=3"], "unknown config key 'train'"),
    (["--set", "train.steps=1", "--set", "train.steps=2"], "given more than once"),
    (["--set", "stages.pool.samples_per_prompt=many"], "not a valid Python literal"),
]


@pytest.mark.parametrize("extra, phrase", BAD_INPUTS, ids=lambda v: " ".join(v) if
                         isinstance(v, list) else None)
def test_every_bad_override_is_one_line_with_exit_code_2(extra, phrase, capsys, tmp_path):
    rc = cli.main(["train", "--experiment", "experiments/dpo_rafailov2023.py", "--workdir",
                   str(tmp_path / "w"), *extra, "--print-config"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert phrase in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_bad_files_and_modules_are_one_line_with_exit_code_2(capsys, tmp_path):
    cases = []
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(variant:\n")
    cases.append(([f"--experiment={broken}", f"--workdir={tmp_path / 'w'}"], "broken.py:1"))
    cases.append((["--experiment=experiments/nope.py", f"--workdir={tmp_path / 'w'}"],
                  "does not exist"))
    cases.append((["--experiment=no_such_module", f"--workdir={tmp_path / 'w'}"],
                  "no experiment module"))
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    cases.append(([f"--experiment={empty}", f"--workdir={tmp_path / 'w'}"], "get_config"))
    cases.append((["--experiment=experiments/dpo_rafailov2023.py:huge",
                   f"--workdir={tmp_path / 'w'}"], "no variant 'huge'"))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases.append((["--experiment=experiments/sft_sim.py:tiny", f"--workdir={a_file}"],
                  "is a file, not a directory"))
    cases.append((["--experiment=experiments/sft_sim.py:tiny", "--workdir=/proc/fbjax/w"],
                  "/proc/fbjax"))
    cases.append((["--experiment=experiments/dpo_rafailov2023.py:paper",
                   f"--workdir={tmp_path / 'w'}", f"--set=init_from={tmp_path / 'nowhere'}"],
                  "does not exist"))
    for args, phrase in cases:
        rc = cli.main(["train", *args, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert phrase in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
