"""Runs the ``sim`` variant of every paper module for several seeds and prints the experiment
table (oracle reward SFT -> after, per seed, with mean and spread of the gain).

    python tools/sim_table.py --seeds 0 1 2 --workdir runs/sim_table --out sim_table.json

Each seed is one run of the modules' ``sim`` variants merged into one experiment
(:func:`experiments.common.merge`): all modules share one SFT start and one sample pool per seed,
and each method trains from that start. ``--modules dpo_rafailov2023 kto_ethayarajh2024``
restricts the run; ``--from-json`` reprints a table from an earlier ``--out`` without training.
Results per seed are also in ``<workdir>/seed<N>/results.json``. A run that is stopped continues
where it was when started again with the same arguments (every stage resumes from its
checkpoints), and a finished SFT stage is reused by re-running with other ``--modules``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Paper modules are named <method>_<firstauthor><year>.py.
MODULE_PATTERN = r"[a-z0-9_]+_[a-z]+(19|20)\d\d\.py"


def sim_modules() -> list[str]:
    return sorted(os.path.basename(p)[:-3]
                   for p in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
                   if re.fullmatch(MODULE_PATTERN, os.path.basename(p)))


def run_seed(modules: list[str], seed: int, workdir: str) -> list[dict]:
    from experiments import common
    from fbjax.run import stages

    configs = []
    for name in modules:
        cfg = importlib.import_module(f"experiments.{name}").get_config("sim")
        configs.append(dataclasses.replace(cfg, seed=seed))
    owner = {}
    for name, cfg in zip(modules, configs):
        for s in cfg.stages:
            if getattr(s, "start", None) == "sft":
                owner[s.name] = name
    (merged,) = common.merge(configs)
    summary = stages.run(merged, workdir=os.path.join(workdir, f"seed{seed}"), progress=False)
    return [{**row, "module": owner[row["method"]], "seed": seed} for row in summary["methods"]]


def table(rows: list[dict]) -> str:
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    seeds = sorted({r["seed"] for r in rows})
    head = ("| method | module | SFT -> after (seeds " + " / ".join(map(str, seeds))
            + ") | gain mean +- sd | win rate | KL to SFT |")
    lines = [head, "|---|---|---|---|---|---|"]
    for method, rs in by_method.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        gains = [r["reward_after"] - r["reward_before"] for r in rs]
        sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        per_seed = " / ".join(f"{r['reward_before']:.3f} -> {r['reward_after']:.3f}" for r in rs)
        lines.append(
            f"| {method} | `experiments/{rs[0]['module']}.py` | {per_seed} | "
            f"{statistics.mean(gains):+.3f} +- {sd:.3f} | "
            f"{statistics.mean(r['win_rate'] for r in rs):.2f} | "
            f"{statistics.mean(r['kl'] for r in rs):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--modules", nargs="*", help="module names (default: every sim module)")
    p.add_argument("--workdir", default="runs/sim_table")
    p.add_argument("--out", default=None, help="write all rows as JSON here")
    p.add_argument("--from-json", default=None, help="print the table of an earlier --out")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            print(table(json.load(f)))
        return 0
    sys.path.insert(0, ROOT)
    modules = args.modules or sim_modules()
    rows = []
    for seed in args.seeds:
        rows += run_seed(modules, seed, args.workdir)
        if args.out:  # after every seed, so a long run that is cut off keeps what it measured
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=2)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
