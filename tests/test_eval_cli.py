"""``fbjax eval`` on a run written by ``fbjax train`` (``sft_sim:tiny``: one stage, ``sft``), and
the one function that knows the workdir layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from fbjax import analysis, cli, cli_eval, evaluation
from fbjax.data import encode, packing
from fbjax.sampling import SamplingConfig

EXPERIMENT = str(Path(__file__).resolve().parents[1] / "experiments" / "sft_sim.py") + ":tiny"


def test_checkpoint_root_layouts(tmp_path):
    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    assert cli_eval.checkpoint_root(single) == str(single / "checkpoints")
    staged = tmp_path / "staged"
    for stage in ("sft", "dpo"):
        (staged / stage / "checkpoints").mkdir(parents=True)
    (staged / "logs").mkdir()
    assert cli_eval.checkpoint_root(staged, "dpo") == str(staged / "dpo" / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no stage directories"):
        cli_eval.checkpoint_root(staged)  # no config.json to say which stage came last
    # The run's config orders its stages: without --stage, its last training stage.
    stages = [{"name": "sft", "objective": {}}, {"name": "pool"}, {"name": "dpo", "objective": {}}]
    (staged / "config.json").write_text(json.dumps({"stages": stages}))
    assert cli_eval.checkpoint_root(staged) == str(staged / "dpo" / "checkpoints")
    with pytest.raises(FileNotFoundError, match="stage 'rm' has no checkpoints/ .*dpo, sft"):
        cli_eval.checkpoint_root(staged, "rm")
    with pytest.raises(FileNotFoundError, match="workdir not found"):
        cli_eval.checkpoint_root(tmp_path / "missing")


def test_data_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                    '{"prompt": "2+2="}\n'
                    '{"prompt": "3+3=", "chosen": "6"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:3: .*come together"):
        cli_eval.read_data(str(path))
    path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2="}\n')
    data = cli_eval.read_data(str(path))
    assert data.prompts == ("1+1=", "2+2=") and data.pairs == (("1+1=", "2", "3"),)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "run"
    assert cli.main(["train", "--experiment", EXPERIMENT, "--workdir", str(path),
                     "--set", "train.steps=4", "--no-progress"]) == 0
    return path


@pytest.mark.slow
def test_eval_command_matches_the_library(workdir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", "--workdir", str(workdir), "--step", "4", "--reference-step", "2",
            "--out", str(out), "--num-prompts", "16", "--max-new-tokens", "6", "--seed", "3",
            "--no-progress"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["step"] == 4 and report["baseline"] == "reference"
    assert "accuracy" in printed and "KL" in printed and "reward (oracle)" in printed
    assert Path(report["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same numbers straight from the library.
    root = str(workdir / "sft" / "checkpoints")
    policy, ref = analysis.load_policy(root, 4), analysis.load_policy(root, 2)
    run_config = json.loads((workdir / "config.json").read_text())
    data = cli_eval.sim_data(cli_eval.sim_task(run_config), 16, 3)
    tok = policy.tokenizer
    groups = [packing.Group(encode.prompt_ids(tok, p), (encode.completion_ids(tok, c),
                                                        encode.completion_ids(tok, r)))
              for p, c, r in data.pairs]
    chosen, rejected = evaluation.implicit_rewards(policy.params, ref.params,
                                                   policy.model_config, groups)
    pref = report["preference"]
    assert pref["pairs"] == len(groups) > 0
    assert pref["rewards/margin"] == pytest.approx(np.mean(chosen - rejected), abs=1e-6)
    assert pref["rewards/accuracy"] == pytest.approx(np.mean(chosen > rejected))
    samples = evaluation.sample(policy.params, policy.model_config, tok, list(data.prompts),
                                sampling_config=SamplingConfig(max_new_tokens=6),
                                rng=jax.random.key(3))
    kl = evaluation.kl_per_sequence(policy.params, ref.params, policy.model_config, samples)
    assert report["samples"]["kl"]["mean"] == pytest.approx(kl.mean(), abs=1e-6)
    lengths = evaluation.response_lengths(samples)
    assert report["samples"]["response_length"]["mean"] == pytest.approx(lengths.mean())
    oracle = [data.task.reward(p, t) for p, t in zip(data.prompts, samples.texts)]
    assert report["reward"]["oracle"]["policy"] == pytest.approx(np.mean(oracle))
    assert 0.0 <= report["reward"]["oracle"]["win_rate"] <= 1.0


@pytest.mark.slow
def test_policy_as_its_own_reference_gives_zero_kl_and_margin(workdir, tmp_path):
    out = tmp_path / "self.json"
    assert cli.main(["eval", "--workdir", str(workdir), "--reference-step", "4", "--out",
                     str(out), "--num-prompts", "8", "--max-new-tokens", "4",
                     "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["samples"]["kl"]["mean"] == 0.0 and report["samples"]["kl"]["sd"] == 0.0
    assert report["preference"]["rewards/margin"] == 0.0
    assert report["preference"]["rewards/accuracy"] == 0.0  # every pair ties


@pytest.mark.slow
def test_eval_errors_are_one_line(workdir, tmp_path, capsys):
    code = cli.main(["eval", "--workdir", str(workdir), "--stage", "dpo", "--out",
                     str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "stage 'dpo' has no checkpoints/" in err[0]
    # A staged layout (<workdir>/<stage>/checkpoints, the tokenizer in the workdir), and no
    # reference (SFT keeps none): KL and margins are skipped, and the report says why.
    staged = tmp_path / "staged"
    shutil.copytree(workdir / "sft" / "checkpoints", staged / "sft" / "checkpoints")
    shutil.copy(workdir / "config.json", staged / "config.json")
    shutil.copy(workdir / "tokenizer.model", staged / "tokenizer.model")
    out = tmp_path / "noref.json"
    assert cli.main(["eval", "--workdir", str(staged), "--stage", "sft", "--out", str(out),
                     "--num-prompts", "4", "--max-new-tokens", "4", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert "kl" not in report["samples"] and "preference" not in report
    assert "no reference parameters" in report["skipped"]["reference"]
    assert report["baseline"] == "chosen"


@pytest.mark.slow
def test_load_judge_from_a_run_and_from_its_hf_export(workdir, tmp_path):
    """A judge loads from a run's workdir and from a Hugging Face export of the same weights;
    both write the same greedy answers, and every response is a record or a counted failure."""
    from fbjax import feedback

    template = feedback.JudgmentTemplate(text="{prompt}{response}",
                                         labels={"1": 1.0, "2": 0.0})
    options = {"sampling_config": SamplingConfig(max_new_tokens=4, temperature=0.0)}
    from_run = feedback.load_judge(workdir, template, **options)
    analysis.export_hf(analysis.load_policy(workdir), tmp_path / "hf")
    from_hf = feedback.load_judge(tmp_path / "hf", template, **options)
    batch = feedback.Responses.of(["1+1=", "9-3="], [["2", "3"], ["6", "12"]])
    a, b = from_run(batch), from_hf(batch)
    assert a == b
    assert len(a.records) + len(a.failures) == 4
