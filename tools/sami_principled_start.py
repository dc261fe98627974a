"""SAMI from a start that reads written principles: does SAMI improve the simulator's policy
once the policy already follows its principles weakly?

    python tools/sami_principled_start.py --seeds 0 1 2 --workdir runs/sami_principled \
        --out docs/results/sami_principled_start.json
    python tools/sami_principled_start.py --seeds 0 1 2 --workdir runs/sami_principled \
        --eval-temperature 0 --out docs/results/sami_principled_start_greedy.json
    python tools/sami_principled_start.py --seeds 0 1 2 --workdir runs/sami_principled \
        --eval-temperature 0 --principle 1 \
        --out docs/results/sami_principled_start_second_principle.json

Per seed: the sim SFT start; ``principles``, SFT from it on demonstrations under the two SAMI
constitutions (``sim.PrincipledDemonstrations``: right with probability 0.8 under the first,
0.2 under the second); a pool of one response per prompt under each constitution from that
start (``SampleStage.renderings``), decoded greedily as SAMI's released generation config does
(``--sampled-pool``: at temperature 1); SAMI on those responses, no labels
(``constitution_samples``; a prompt whose two responses are the same text is dropped, as the
released ``generate.py`` drops it), at three settings; everything evaluated under the first
constitution (``--principle 1``: the second) at ``--eval-temperature`` (1: the simulator's
metric, 0: greedy, as the released evaluation decodes), against the SFT start prompted plainly.
The evaluation settings are not part of what trains: runs that differ only in them reuse the
trained stages of one workdir. The row to read is each SAMI stage against ``principles``, its
own start; ``sami_loss`` and ``row_accuracy`` are SAMI's loss and the share of matrix rows
whose largest entry is the diagonal, at the first and the last logged step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUALITIES = (0.8, 0.2)
START_STEPS = 400
# (learning rate, steps): the module's SAMI stage, and smaller rates for longer.
SETTINGS = ((1e-4, 40), (3e-5, 120), (1e-5, 120))


def config(seed: int, principle: int = 0, *, eval_temperature: float = 1.0,
           sampled_pool: bool = False):
    from experiments import common
    from fbjax.data import language
    from fbjax.run import sim, sim_feedback
    from fbjax.run.config import SampleStage, StageEval, TrainStage
    from fbjax.train import language_inputs, presets

    under_first = StageEval(prompt=sim_feedback.sami_rendering(principle))
    start = TrainStage(
        name="principles", start="sft", objective=presets.sft(),
        data=sim.PrincipledDemonstrations(principles=sim_feedback.SAMI_CONSTITUTIONS,
                                          qualities=QUALITIES, render=language.sami_prompt),
        train=dataclasses.replace(common.SIM_TRAIN, steps=START_STEPS),
        optimizer=dataclasses.replace(common.SIM_OPTIMIZER, learning_rate=1e-3),
        evaluation=under_first, family="supervised", feedback="demonstrations under principles")
    pool = SampleStage(
        name="principled_pool" if sampled_pool else "principled_pool_greedy",
        policy="principles", num_prompts=4096, samples_per_prompt=1,
        sampling=dataclasses.replace(common.SIM_SAMPLING,
                                     temperature=1.0 if sampled_pool else 0.0),
        renderings=tuple(sim_feedback.sami_rendering(i)
                         for i in range(len(sim_feedback.SAMI_CONSTITUTIONS))))
    samis = tuple(TrainStage(
        name=f"SAMI_lr{lr:g}_steps{steps}" + ("_sampled_pool" if sampled_pool else ""),
        start="principles",
        objective=language_inputs.sami(len(sim_feedback.SAMI_CONSTITUTIONS)),
        data=sim.Feedback(build=sim_feedback.constitution_samples, pool=pool.name),
        train=dataclasses.replace(common.SIM_TRAIN, steps=steps),
        optimizer=dataclasses.replace(common.SIM_OPTIMIZER, learning_rate=lr),
        evaluation=under_first, family="language feedback", feedback="written principles")
        for lr, steps in SETTINGS)
    base = common.sim_experiment("sami_principled_start", seed=seed)
    sft, *_, evaluation = base.stages
    # The evaluation is not part of what trains: evaluating under the other principle, or
    # greedily, reuses the trained stages of an earlier run, and computes its own numbers (a
    # stage's cached evaluation is keyed by its prompt and sampling: stages.eval_cache_name).
    evaluation = dataclasses.replace(
        evaluation,
        sampling=dataclasses.replace(evaluation.sampling, temperature=eval_temperature))
    return dataclasses.replace(base, stages=(sft, start, pool, *samis, evaluation), main=None,
                               allow_config_change=True)


def _first_and_last(workdir: str, stage: str, key: str) -> tuple[float, float] | None:
    path = os.path.join(workdir, stage, "history.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        values = [r[key] for r in map(json.loads, f) if key in r]
    return (values[0], values[-1]) if values else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--workdir", default="runs/sami_principled")
    p.add_argument("--out", default=None)
    p.add_argument("--principle", type=int, default=0,
                   help="evaluate under this constitution (0: the first, 'A correct answer')")
    p.add_argument("--eval-temperature", type=float, default=1.0,
                   help="1: the simulator's metric; 0: greedy, as SAMI's released evaluation")
    p.add_argument("--sampled-pool", action="store_true",
                   help="sample SAMI's responses at temperature 1 instead of greedily")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from fbjax.run import stages

    rows = []
    for seed in args.seeds:
        workdir = os.path.join(args.workdir, f"seed{seed}")
        cfg = config(seed, args.principle, eval_temperature=args.eval_temperature,
                     sampled_pool=args.sampled_pool)
        summary = stages.run(cfg, workdir=workdir, progress=False)
        by_name = {r["method"]: r for r in summary["methods"]}
        start = by_name["principles"]["reward_after"]
        for name, r in by_name.items():
            rows.append({"seed": seed, "stage": name, "principle": args.principle,
                         "eval_temperature": args.eval_temperature,
                         "pool": "sampled" if args.sampled_pool else "greedy",
                         "sft_plain": r["reward_before"],
                         "sft_under_principle": r.get("reward_before_same_prompt"),
                         "principled_start": start, "reward": r["reward_after"],
                         "kl_to_sft": r["kl"],
                         "sami_loss": _first_and_last(workdir, name, "loss")
                         if name != "principles" else None,
                         "row_accuracy": _first_and_last(workdir, name, "sami/row_accuracy")})
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=2)
    print("| seed | stage | SFT plain | SFT under principle | principled start | after | "
          "SAMI loss first -> last | row accuracy first -> last |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss, acc = r["sami_loss"], r["row_accuracy"]
        print(f"| {r['seed']} | {r['stage']} | {r['sft_plain']:.3f} | "
              f"{r['sft_under_principle']:.3f} | {r['principled_start']:.3f} | {r['reward']:.3f} | "
              + (f"{loss[0]:.3f} -> {loss[1]:.3f} | " if loss else "| ")
              + (f"{acc[0]:.2f} -> {acc[1]:.2f} |" if acc else "|"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
