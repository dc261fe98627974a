"""``fbjax inspect`` and the analysis API on a checkpoint written by a real experiment run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from fbjax import analysis, cli, evaluation
from fbjax import checkpoint as ck
from fbjax import sharding as fsh
from fbjax.data import encode
from fbjax.data import examples as ex
from fbjax.models import hf
from fbjax.sampling import SamplingConfig

pytestmark = pytest.mark.slow

EXPERIMENT = str(Path(__file__).resolve().parents[1] / "experiments" / "sft_sim.py") + ":tiny"
FINAL = 12  # sft_sim:tiny trains 12 steps, checkpointing every 2 and keeping 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One shared ``sft_sim:tiny`` run (in this process: 8 CPU devices, FSDP over all 8)."""
    path = tmp_path_factory.mktemp("analysis") / "run"
    assert cli.main(["train", "--experiment", EXPERIMENT, "--workdir", str(path),
                     "--no-progress"]) == 0
    return path


@pytest.fixture(scope="module")
def policy(workdir) -> analysis.Policy:
    return analysis.load_policy(workdir)  # newest step, one device


@pytest.fixture(scope="module")
def pairs() -> list[ex.PairedExample]:
    questions = [("3+4=", "7", "8"), ("12-5=", "7", "6"), ("9+9=", "18", "17"), ("1-1=", "0", "2")]
    return [ex.PairedExample(prompt=ex.user_prompt(q), chosen=c, rejected=r)
            for q, c, r in questions]


def _bytes(tree) -> list[tuple[str, str, tuple, bytes]]:
    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        x = np.asarray(x)
        rows.append((jax.tree_util.keystr(path), str(x.dtype), x.shape, x.tobytes()))
    return rows


def test_inspect(workdir, policy, capsys):
    count = sum(int(np.size(x)) for x in jax.tree.leaves(policy.params))
    assert cli.main(["inspect", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"step: {FINAL} " in out and f"{FINAL}  complete, verified  <- chosen" in out
    assert f"parameters: {count:,} in " in out
    assert "stage: sft" in out and 'name = "sft"' in out
    assert "model.hidden_size = 32" in out and "lm_head" in out
    assert "data iterator state: {" in out and "loss = " in out

    # The checkpoints/ directory itself, and an older step.
    assert cli.main(["inspect", str(workdir / "sft" / "checkpoints"), "--step",
                     str(FINAL - 2)]) == 0
    assert f"step: {FINAL - 2} " in capsys.readouterr().out
    assert cli.main(["inspect", str(workdir), "--step", "3"]) == 2
    assert "no checkpoint at step 3" in capsys.readouterr().err


def test_policy_identity(workdir, policy):
    assert policy.step == FINAL and policy.config["name"] == "sft"
    assert policy.model_config.hidden_size == 32 and policy.tokenizer is not None
    assert policy.metrics["loss"] > 0
    with pytest.raises(ValueError, match="no reference parameters"):
        analysis.load_policy(workdir, reference=True)  # SFT keeps no reference


def test_restore_on_one_device_and_a_two_device_mesh_agree(workdir, policy):
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 2, 1)), jax.devices()[:2])
    sharded = analysis.load_policy(workdir / "sft" / "checkpoints", FINAL, mesh=mesh)
    embedding = sharded.params["embedding"]
    assert len(embedding.sharding.device_set) == 2 and not embedding.sharding.is_fully_replicated
    assert len(policy.params["embedding"].sharding.device_set) == 1
    assert _bytes(sharded.params) == _bytes(policy.params)


def test_log_probs_equal_evaluation(policy, pairs):
    scored = analysis.log_probs(policy, pairs)
    groups = encode.paired(pairs, policy.tokenizer)
    logps, lengths = evaluation.sequence_logps(policy.params, policy.model_config, groups)
    np.testing.assert_array_equal(scored.values, logps)
    np.testing.assert_array_equal(scored.lengths, lengths)
    chosen, rejected = scored.pairs()
    np.testing.assert_array_equal(chosen, logps[0::2])
    np.testing.assert_array_equal(rejected, logps[1::2])
    # Token groups are taken as they are.
    np.testing.assert_array_equal(analysis.log_probs(policy, groups).values, logps)


def test_implicit_rewards(workdir, policy, pairs):
    zero = analysis.implicit_rewards(policy, policy, pairs, beta=0.1)
    assert zero.values.shape == (2 * len(pairs),) and np.all(zero.values == 0.0)
    assert analysis.preference_accuracy(policy, policy, pairs) == 0.0  # no strict wins

    earlier = analysis.load_policy(workdir, FINAL - 2)
    rewards = analysis.implicit_rewards(policy, earlier, pairs, beta=0.1)
    expected = 0.1 * (analysis.log_probs(policy, pairs).values
                      - analysis.log_probs(earlier, pairs).values)
    np.testing.assert_array_equal(rewards.values, expected)
    chosen, rejected = rewards.pairs()
    accuracy = analysis.preference_accuracy(policy, earlier, pairs)
    assert accuracy == np.mean(chosen > rejected)


def test_generate_and_kl(workdir, policy):
    prompts = ["3+4=", "12-5="]
    config = SamplingConfig(max_new_tokens=8)
    texts = analysis.generate(policy, prompts, rng=0, sampling_config=config)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    samples = analysis.sample(policy, prompts, rng=0, sampling_config=config)
    assert list(samples.texts) == texts  # deterministic in the seed
    assert analysis.kl_to_reference(policy, policy, samples) == 0.0
    earlier = analysis.load_policy(workdir, FINAL - 2)
    assert np.isfinite(analysis.kl_to_reference(policy, earlier, samples))


def test_export_hf_round_trip(policy, tmp_path):
    files = analysis.export_hf(policy, tmp_path / "hf")
    assert "config.json" in files and (tmp_path / "hf" / "tokenizer.model").is_file()
    config, params = hf.load_hf(str(tmp_path / "hf"))
    assert config == policy.model_config
    assert _bytes(params) == _bytes(policy.params)


def test_corrupt_step_is_reported_and_skipped(workdir, policy, tmp_path, caplog):
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    state = copy / "sft" / "checkpoints" / str(FINAL) / "state"
    victim = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-8])

    report = analysis.describe_checkpoint(copy)
    assert f"{FINAL}  DAMAGED: file " in report and f"step: {FINAL - 2} " in report
    with caplog.at_level(logging.WARNING, logger="fbjax.checkpoint"):
        fallback = analysis.load_policy(copy)
    assert fallback.step == FINAL - 2
    assert any(f"step {FINAL}" in r.getMessage() for r in caplog.records)
    with pytest.raises(ck.CheckpointError, match="bytes"):
        analysis.load_policy(copy, FINAL)
