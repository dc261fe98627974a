"""An online stage (rounds of sample -> feedback -> train) through the command line: killed with
SIGKILL in the middle of its second round and started again, it neither samples nor asks the
provider again for what it already has, nor retrains the finished round, and ends with the
numbers of a run that was never interrupted.

The experiment (written by the test) is the simulator's smoke SFT followed by online DPO: each
round samples 4 answers to 16 fresh task prompts from the current policy, the oracle's scores
pick best-vs-worst pairs (``fbjax.feedback.Preferences``), and DPO trains 2 steps on them.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pytest

from tests import cli_runs

pytestmark = pytest.mark.slow

TIMEOUT = 600
EXPERIMENT = '''
import dataclasses

from experiments import common
from fbjax.data import encode
from fbjax.feedback.oracle import OracleScores
from fbjax.feedback.provider import Preferences
from fbjax.run import online
from fbjax.run.config import OnlineStage
from fbjax.train import presets

VARIANTS = ("online",)
DEFAULT_VARIANT = "online"


def get_config(variant="online"):
    base = common.smoke(common.sim_experiment("online_dpo"))
    sft = dataclasses.replace(base.stages[0], train=dataclasses.replace(
        base.stages[0].train, steps=60, log_every=20))
    stage = OnlineStage(
        name="online", start="sft", prompts=online.TaskPrompts(num_prompts=16),
        provider=Preferences(OracleScores(common.SIM_TASK)), encode=encode.paired,
        objective=presets.dpo(beta=0.1), rounds=2, samples_per_prompt=4,
        sampling=common.SIM_SAMPLING, optimizer=common.SIM_OPTIMIZER,
        train=dataclasses.replace(common.SIM_TRAIN, steps=2, batch=8, log_every=1))
    return dataclasses.replace(base, stages=(sft, stage), main="")
'''


def _start(experiment: Path, workdir: Path, cache: Path):
    return cli_runs.start(["train", "--experiment", str(experiment), "--workdir", str(workdir),
                           "--no-progress"], workdir.parent, cache)


def _finish(proc, log) -> str:
    rc, text = cli_runs.finish(proc, log, TIMEOUT)
    assert rc == 0, text[-4000:]
    return text


def _hashes(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _numbers(workdir: Path) -> dict:
    rounds = json.loads((workdir / "online" / "rounds.json").read_text())
    for r in rounds:
        r["final"].pop("tokens_per_second", None)
    feedback = [json.loads((workdir / "online" / f"round_{i}" / "feedback.json").read_text())
                for i in (1, 2)]
    return {"rounds": rounds, "feedback": feedback}


def test_online_rounds_resume_after_sigkill_without_asking_again(tmp_path):
    experiment = tmp_path / "online_exp.py"
    experiment.write_text(EXPERIMENT)
    cache = tmp_path / "jax_cache"
    reference = tmp_path / "reference"
    _finish(*_start(experiment, reference, cache))
    rounds = json.loads((reference / "online" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["records"] > 0 for r in rounds)  # the oracle told some answers apart

    workdir = tmp_path / "killed"
    round_2 = workdir / "online" / "round_2"
    proc, log = _start(experiment, workdir, cache)
    deadline = time.monotonic() + TIMEOUT
    while not (round_2 / "feedback.json").exists():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "online" / "rounds.json").exists()  # killed inside round 2
    kept = sorted((workdir / "online" / "round_1").glob("*.json")) + [
        round_2 / "responses.json", round_2 / "feedback.json"]
    before = _hashes(*kept)

    text = _finish(*_start(experiment, workdir, cache))  # the same command again
    assert _hashes(*kept) == before  # nothing sampled or asked again
    assert "resumed from checkpoint step 2 in" in text  # round 1 restored, not retrained
    assert _numbers(workdir) == _numbers(reference)
