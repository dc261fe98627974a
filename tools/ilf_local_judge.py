"""ILF on the simulator with a local judge trained by fbjax (issue 18): per-round figures.

The judge is the simulator's small model, trained from scratch by SFT on the oracle's critiques
of noisy-demonstrator answers and on its refinements given those critiques
(``fbjax.run.sim_feedback.IlfJudgeData``). The policy is the usual SFT start. Then ILF online
rounds (Scheurer et al. 2023, arXiv:2303.16755): sample one answer per prompt from the current
policy, the *judge* writes feedback and then a refinement (``fbjax.run.online.Refine``; the
oracle is never asked), and the policy is fine-tuned on input -> refinement. The oracle only
grades, afterwards: per round, the mean oracle reward of the policy's samples (the policy at the
start of the round), of the judge's refinements, and how often the judge's feedback is the
oracle's own critique; then the final policy on 512 held-out prompts.

Run::

    python tools/ilf_local_judge.py --workdir runs/ilf_local_judge \\
        --out docs/results/ilf_local_judge.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import common  # noqa: E402
from fbjax import sampling  # noqa: E402
from fbjax.data import language  # noqa: E402
from fbjax.run import online, sim_feedback, stages  # noqa: E402
from fbjax.run.config import EvalStage, ExperimentConfig, OnlineStage, TrainStage  # noqa: E402
from fbjax.train import language_inputs, presets  # noqa: E402


def config(*, rounds: int = 3, prompts: int = 512, round_steps: int = 40,
           judge_steps: int = 600, seed: int = 0) -> ExperimentConfig:
    judge_sampling = sampling.SamplingConfig(max_new_tokens=32, temperature=0.0)
    judge = TrainStage(
        name="judge", objective=presets.sft(), data=sim_feedback.IlfJudgeData(num_examples=6000),
        train=dataclasses.replace(common.SFT.train, steps=judge_steps, seq_len=128),
        optimizer=common.SFT.optimizer, family="supervised", feedback="oracle critiques")
    ilf = OnlineStage(
        name="ILF", start="sft", prompts=online.TaskPrompts(num_prompts=prompts),
        provider=online.Refine(
            critic=online.JudgeCheckpoint(template=sim_feedback.ILF_CRITIQUE, stage="judge",
                                          sampling=judge_sampling,
                                          stands_in_for="human written feedback"),
            refiner=online.JudgeCheckpoint(template=sim_feedback.ILF_REFINEMENT, stage="judge",
                                           sampling=dataclasses.replace(judge_sampling,
                                                                        max_new_tokens=8),
                                           stands_in_for="InstructGPT refinements")),
        encode=language.ilf_refinement_groups, objective=language_inputs.ilf(), rounds=rounds,
        samples_per_prompt=1, sampling=common.SIM_SAMPLING,
        train=dataclasses.replace(common.SIM_LM_TRAIN, steps=round_steps, log_every=10),
        optimizer=common.SIM_LM_OPTIMIZER,
        paper_provider="human feedback and InstructGPT refinements; here a judge trained by fbjax",
        family="language feedback", feedback="judge critique -> judge refinement")
    return ExperimentConfig(
        name="ilf_local_judge", model=common.SIM_MODEL, tokenizer=common.sim.Tokenizer(),
        task=common.SIM_TASK, seed=seed, mesh=common.SIM_MESH,
        stages=(judge, common.SFT, ilf,
                EvalStage(name="eval", baseline="sft", num_prompts=512,
                          sampling=common.SIM_SAMPLING)),
        main="ILF")


def round_figures(workdir: str, task, rounds: int) -> list[dict]:
    out = []
    for r in range(1, rounds + 1):
        d = os.path.join(workdir, "ILF", f"round_{r}")
        prompts, responses, _ = online.load_responses(os.path.join(d, "responses.json"))
        fb = online.load_feedback(os.path.join(d, "feedback.json"))
        policy = [task.reward(p, y) for p, g in zip(prompts, responses) for y in g]
        texts = [language.prompt_text(rec.prompt) for rec in fb.records]
        refined = [task.reward(t, rec.refinement) for t, rec in zip(texts, fb.records)]
        sampled = [task.reward(t, rec.completion) for t, rec in zip(texts, fb.records)]
        exact = [rec.feedback == task.critique(t, rec.completion)
                 for t, rec in zip(texts, fb.records)]
        out.append({
            "round": r, "prompts": len(prompts),
            "policy_oracle_reward": float(np.mean(policy)),
            "policy_accuracy": float(np.mean(np.asarray(policy) >= 1.0)),
            "refinements": len(fb.records), "without_refinement": len(fb.failures),
            "refinement_oracle_reward": float(np.mean(refined)) if refined else None,
            "refined_sample_oracle_reward": float(np.mean(sampled)) if sampled else None,
            "refinement_accuracy": float(np.mean(np.asarray(refined) >= 1.0)) if refined
            else None,
            "judge_feedback_equals_oracle_critique": float(np.mean(exact)) if exact else None,
        })
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--round-steps", type=int, default=40)
    parser.add_argument("--judge-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = config(rounds=args.rounds, prompts=args.prompts, round_steps=args.round_steps,
                 judge_steps=args.judge_steps, seed=args.seed)
    t0 = time.perf_counter()
    summary = stages.run(cfg, workdir=args.workdir, progress=False)
    seconds = time.perf_counter() - t0
    figures = round_figures(args.workdir, cfg.task, args.rounds)
    with open(os.path.join(args.workdir, "results.json")) as f:
        results = json.load(f)
    report = {"command": "python tools/ilf_local_judge.py " + " ".join(argv or sys.argv[1:]),
              "seed": args.seed, "seconds": round(seconds, 1), "rounds": figures,
              "eval": results}
    print("round  policy reward (start of round)  refinement reward  refinements  "
          "judge feedback = oracle's")
    for row in figures:
        print(f"{row['round']:>5}  {row['policy_oracle_reward']:>30.3f}  "
              f"{row['refinement_oracle_reward'] or 0:>17.3f}  {row['refinements']:>11}  "
              f"{row['judge_feedback_equals_oracle_critique'] or 0:>25.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    del summary
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
