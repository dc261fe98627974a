"""SAMI from a start that reads written principles: does SAMI improve the simulator's policy
once the policy already follows its principles weakly?

    python tools/sami_principled_start.py --seeds 0 1 2 --workdir runs/sami_principled \
        --out docs/results/sami_principled_start.json
    python tools/sami_principled_start.py --seeds 0 1 2 --workdir runs/sami_principled \
        --principle 1 --out docs/results/sami_principled_start_second_principle.json

Per seed: the sim SFT start; ``principles``, SFT from it on demonstrations under the two SAMI
constitutions (``sim.PrincipledDemonstrations``: right with probability 0.8 under the first,
0.2 under the second); a pool of one sample per prompt under each constitution from that start
(``SampleStage.renderings``); SAMI on those samples, no labels (``constitution_samples``), at
two settings; everything evaluated under the first constitution (``--principle 1``: the second,
reusing the trained stages of the same workdir), against the SFT start prompted plainly. The row to read is each SAMI stage against ``principles``, its own start.
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
# (learning rate, steps): the module's SAMI stage, and a smaller rate for longer.
SETTINGS = ((1e-4, 40), (3e-5, 120))


def config(seed: int, principle: int = 0):
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
        name="principled_pool", policy="principles", num_prompts=4096, samples_per_prompt=1,
        sampling=common.SIM_SAMPLING,
        renderings=tuple(sim_feedback.sami_rendering(i)
                         for i in range(len(sim_feedback.SAMI_CONSTITUTIONS))))
    samis = tuple(TrainStage(
        name=f"SAMI_lr{lr:g}_steps{steps}", start="principles",
        objective=language_inputs.sami(len(sim_feedback.SAMI_CONSTITUTIONS)),
        data=sim.Feedback(build=sim_feedback.constitution_samples, pool=pool.name),
        train=dataclasses.replace(common.SIM_TRAIN, steps=steps),
        optimizer=dataclasses.replace(common.SIM_OPTIMIZER, learning_rate=lr),
        evaluation=under_first, family="language feedback", feedback="written principles")
        for lr, steps in SETTINGS)
    base = common.sim_experiment("sami_principled_start", seed=seed)
    sft, *_, evaluation = base.stages
    # The evaluation prompt is not part of what trains: evaluating under the other principle
    # reuses the trained stages of a run under the first.
    return dataclasses.replace(base, stages=(sft, start, pool, *samis, evaluation), main=None,
                               allow_config_change=principle != 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--workdir", default="runs/sami_principled")
    p.add_argument("--out", default=None)
    p.add_argument("--principle", type=int, default=0,
                   help="evaluate under this constitution (0: the first, 'A correct answer')")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from fbjax.run import stages

    rows = []
    for seed in args.seeds:
        summary = stages.run(config(seed, args.principle), workdir=os.path.join(args.workdir, f"seed{seed}"),
                             progress=False)
        by_name = {r["method"]: r for r in summary["methods"]}
        start = by_name["principles"]["reward_after"]
        for name, r in by_name.items():
            rows.append({"seed": seed, "stage": name, "principle": args.principle, "sft_plain": r["reward_before"],
                         "sft_under_principle": r.get("reward_before_same_prompt"),
                         "principled_start": start, "reward": r["reward_after"],
                         "kl_to_sft": r["kl"]})
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=2)
    print("| seed | stage | SFT plain | SFT under principle | principled start | after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['stage']} | {r['sft_plain']:.3f} | "
              f"{r['sft_under_principle']:.3f} | {r['principled_start']:.3f} | {r['reward']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
