"""tools/paper_claims.py without training: its rules, rows, table, data and stage configs."""

import contextlib
import io
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

import paper_claims as pc  # noqa: E402

from experiments import common  # noqa: E402
from fbjax.run import sim, sim_feedback  # noqa: E402
from fbjax.run.config import TrainStage  # noqa: E402
from fbjax.run.overrides import dumps  # noqa: E402

REQUIRED = {"claim", "paper", "metric", "treatment_name", "control_name", "treatment", "control",
            "holds", "note", "seeds"}


def test_rules_on_hand_made_numbers():
    assert pc.beats([0.5, 0.6, 0.7], [0.5, 0.5, 0.5])
    assert not pc.beats([0.5, 0.5], [0.5, 0.5])  # a tie is not a win
    assert not pc.beats([0.4, 0.7], [0.6, 0.6])
    # Matching: within the tolerance below, or above.
    assert pc.matches_or_beats([0.49, 0.49], [0.5, 0.5])
    assert not pc.matches_or_beats([0.45, 0.45], [0.5, 0.5])
    # C3PO: out-of-scope change smaller in magnitude than the control's, in-scope change > 0.
    assert pc.contained([0.01, -0.01], [0.05, 0.07], t_also=[0.05, 0.03], c_also=[0.1, 0.1])
    assert not pc.contained([-0.06, -0.06], [0.05, 0.05], t_also=[0.05, 0.05], c_also=[0, 0])
    assert not pc.contained([0.0, 0.0], [0.05, 0.05], t_also=[-0.01, 0.0], c_also=[0, 0])


def _fake_seed(seed: int) -> dict:
    """An evaluation row per stage, with every key a claim reads."""
    rows = {}
    for i, stage in enumerate(s.name for s in pc.STAGES):
        rows[stage] = {"method": stage, "reward_before": 0.46, "reward_after": 0.5 + 0.01 * i,
                       "reward_control_prompt": 0.3 + seed * 0.01,
                       "reward_in_scope_before": 0.4, "reward_in_scope_after": 0.5,
                       "reward_out_of_scope_before": 0.5,
                       "reward_out_of_scope_after": 0.5 + (0.0 if "c3po" in stage else 0.05)}
    return rows


def test_rows_have_the_keys_and_seeds_and_apply_the_rules(tmp_path):
    rows = pc.rows_for(pc.CLAIMS, {s: _fake_seed(s) for s in (0, 1, 2)})
    assert len(rows) >= 8
    for row in rows:
        assert REQUIRED <= set(row), row["claim"]
        assert row["seeds"] == [0, 1, 2]
        assert len(row["treatment"]) == len(row["control"]) == 3
    by_key = {r["key"]: r for r in rows}
    # Stages later in the list have a higher fake reward, so e.g. rDPO (after DPO) beats DPO.
    assert by_key["rdpo_flip20"]["holds"] and by_key["cdpo_flip40"]["holds"]
    assert not by_key["leti"]["holds"]  # the reward-token-only stage comes after LeTI's
    assert by_key["conditional"]["holds"] and by_key["conditional"]["control"] == [0.3, 0.31, 0.32]
    c3po = by_key["c3po"]
    assert c3po["holds"] and c3po["treatment"] == [0.0] * 3
    assert c3po["control"] == pytest.approx([0.05] * 3)
    assert c3po["also"]["treatment"] == pytest.approx([0.1] * 3)
    path = tmp_path / "claims.json"
    pc.write_rows(str(path), rows)
    assert json.loads(path.read_text()) == rows


def test_from_json_prints_the_markdown_table(tmp_path):
    row = {"claim": "A beats B", "paper": "Someone 2024", "metric": "reward",
           "treatment_name": "A", "control_name": "B", "treatment": [0.6, 0.7, 0.8],
           "control": [0.5, 0.5, 0.5], "holds": True, "note": "ahead on 3/3 seeds",
           "seeds": [0, 1, 2]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps([row, {**row, "claim": "B beats A", "holds": False}]))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert pc.main(["--from-json", str(path)]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("| claim |") and "holds" in lines[0]
    assert lines[2] == ("| A beats B (Someone 2024) | reward | A: 0.700 +- 0.100 | "
                        "B: 0.500 +- 0.000 | yes | ahead on 3/3 seeds |")
    assert "| **no** |" in lines[3]
    # A "|" inside a cell (a control token) is escaped so the row keeps its columns.
    row = {**row, "treatment_name": "<|good|>", "metric": "reward change"}
    (line,) = [x for x in pc.markdown([row]).splitlines() if "good" in x]
    assert "<\\|good\\|>: +0.700" in line and line.count(" | ") == 5


@pytest.mark.parametrize("smoke", [False, True])
def test_every_claims_stages_build_in_one_experiment(smoke):
    config = pc.experiment(seed=1, smoke=smoke)
    names = [s.name for s in config.stages]
    assert names[:2] == ["sft", "pool"] and names[-1] == "eval"
    assert len(set(names)) == len(names)
    trained = {s.name: s for s in config.stages if isinstance(s, TrainStage) and s.start}
    for claim in pc.CLAIMS:
        for measure in (claim.treatment, claim.control):
            assert measure.stage in trained, (claim.key, measure.stage)
            assert trained[measure.stage].start == "sft"
    # Recorded by value, never by a memory address, so reruns resume from checkpoints.
    assert "0x" not in dumps(config)


def test_diagnostics_add_longer_copies_of_the_claims_stages():
    config = pc.experiment(seed=0, diagnostics=[])
    stages = {s.name: s for s in config.stages}
    assert len(stages) == len(config.stages) == len(pc.STAGES) + len(pc.DIAGNOSTICS) + 3
    assert stages["diag_leti_x4_steps"].train.steps == 4 * stages["claim_leti"].train.steps
    longer = stages["diag_rdpo_flip40_x8_steps"]
    assert longer.train.steps == 8 * stages["claim_rdpo_flip40"].train.steps
    assert longer.data == stages["claim_rdpo_flip40"].data  # the same labels
    # Named diagnostics only, in the order given; a typo names the choices.
    picked = pc.experiment(seed=0, diagnostics=["diag_leti_answers_only"])
    assert len(picked.stages) == len(pc.STAGES) + 4
    assert picked.stages[-2].name == "diag_leti_answers_only"  # before the eval stage
    assert pc.experiment(seed=0).stages == pc.experiment(seed=0, diagnostics=None).stages
    with pytest.raises(ValueError, match="diag_leti_x4_steps"):
        pc.experiment(seed=0, diagnostics=["diag_leti_x5_steps"])


def test_leti_claim_compares_like_for_like():
    # Both arms mix pretraining text (demonstrations) 1:1 as the module's stage does; they
    # differ in the critique text alone.
    stages = {s.name: s for s in pc.experiment(seed=0, diagnostics=[]).stages}
    treat, control = stages["claim_leti"].data.build, stages["claim_leti_reward_token_only"].data.build
    assert treat.keywords["field"] == control.keywords["field"] == "pretraining"
    assert treat.keywords["build"] is sim_feedback.leti_sequences
    assert control.keywords["build"] is pc.leti_reward_token_only
    assert stages["diag_leti_answers_only"].data.build.keywords == {"train_on_context": False}


def test_stages_keep_the_modules_settings_but_what_the_claim_changes():
    from experiments import cut_xu2023, rdpo_chowdhury2024

    stages = {s.name: s for s in pc.STAGES}
    rdpo = stages["claim_rdpo_flip40"]
    assert rdpo.objective.hparams["label_smoothing"] == 0.4
    assert rdpo.train == rdpo_chowdhury2024.STAGE.train
    assert "label_smoothing" not in stages["claim_dpo_flip40"].objective.hparams
    no_ul = stages["claim_cut_no_unlikelihood"].objective.hparams
    assert no_ul == {**cut_xu2023.STAGE.objective.hparams, "unlikelihood_weight": 0.0}
    assert stages["claim_coh"].train.steps == 1080
    assert stages["claim_dpo_in_scope"].train == stages["claim_c3po"].train


def _pool():
    task = common.SIM_TASK
    prompts = ("12+9=", "15-7=", "3+4=", "18-9=") * 10
    texts = tuple(("11", task.solution(p), task.solution(p) + "1", "7") for p in prompts)
    rewards = np.array([[task.reward(p, t) for t in ts] for p, ts in zip(prompts, texts)])
    return task, sim.SamplePool(prompts, texts, rewards)


def test_shared_pairs_give_a_method_and_its_control_the_same_labels():
    task, pool = _pool()
    clean = pc.SharedPairs(0.0).examples(task, pool)
    noisy20 = pc.SharedPairs(0.2).examples(task, pool)
    noisy40 = pc.SharedPairs(0.4).examples(task, pool)
    assert pc.SharedPairs(0.2).examples(task, pool) == noisy20  # seeded by the pool
    flipped = [[e.meta["flipped"] for e in d] for d in (clean, noisy20, noisy40)]
    assert not any(flipped[0])
    assert all(b for a, b in zip(flipped[1], flipped[2]) if a)  # 20% flips are among 40%'s
    assert sum(flipped[1]) < sum(flipped[2])


def test_imbalanced_thumbs_keep_a_tenth_of_the_desirable_and_balance_the_weights():
    from fbjax.data import encode
    from fbjax.run import sim_feedback
    from fbjax.train import presets

    task, pool = _pool()
    data = pc.ThumbsFromPairs(0.1).examples(task, pool, np.random.default_rng(0))
    pairs = pc.SharedPairs().examples(task, pool)
    up = sum(e.label for e in data)
    assert up == round(0.1 * len(pairs)) and len(data) - up == len(pairs)
    groups = encode.unpaired(data, _Tok())
    hp = sim_feedback.kto_balance(presets.kto(beta=0.1), groups).hparams
    ratio = hp["desirable_weight"] * up / (hp["undesirable_weight"] * (len(data) - up))
    assert 1.0 <= ratio <= 4 / 3


class _Tok:
    """Enough of a tokenizer for ``encode``: one id per character."""

    eos_id = 1
    bos_id = 0

    def encode(self, text):
        return [ord(ch) % 200 + 2 for ch in text]


def test_control_data_differ_from_the_treatment_only_as_claimed():
    from fbjax.data import encode

    task, pool = _pool()
    pairs = pc.in_scope_examples(task, pool)
    texts = [encode.default_prompt_text(e.prompt) for e in pairs]
    assert texts and all("+" in t for t in texts)
    assert [e.chosen for e in pairs] == [task.solution(t) for t in texts]
    leti = pc.reward_token_only_examples(task, pool)
    assert len(leti) == len(pool.flat_texts) and all(e.feedback == "" for e in leti)
    initial = pc.initial_output_pairs(task, pool)
    assert [t for _, t in initial] == pool.flat_texts
