"""fbjax's DPO step (reference cached) at several LM-head pass sizes, alternating (CPU).

    python tools/bench_scored_pass.py --pairs 32 --layout padded --passes 0 384 64 --reps 4

The same model, batch and objective as ``tools/bench_vs_trl.py`` (its ``FbjaxStep``), without
TRL in the process. ``--passes``: positions a row per LM-head pass (``train.max_scored_tokens``);
0 is training's default (an eighth of the row), a value at least the row length is one plain
pass over every position. Prints each row's scored positions, the first step's loss per pass
size (they compute the same values) and the median and fastest step time over ``--reps``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_alternate  # noqa: E402
import bench_vs_trl  # noqa: E402
import report_padding  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_alternate.add_common_args(p, report_padding.DEFAULT_DATA)
    p.add_argument("--layout", choices=("padded", "prefix"), default="padded")
    p.add_argument("--passes", type=int, nargs="+", default=[0, 64])
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-cache", default=None)
    args = bench_alternate.parse_args(p, argv)
    groups, vocab = bench_vs_trl.load_batch(args)
    model_dir = tempfile.mkdtemp()
    bench_vs_trl.make_hf_model(args, vocab, model_dir)
    steps = {}
    for n in args.passes:
        args.max_scored = n or None
        steps[n] = bench_vs_trl.FbjaxStep(model_dir, groups, args, layout=args.layout,
                                          cached=True)
    mask = next(iter(steps.values())).batch["loss_mask"] > 0
    print(f"{steps[args.passes[0]].layout}: scored positions a row, mean "
          f"{mask.sum(1).mean():.1f}, most {mask.sum(1).max()}")
    print("first step's loss: " + ", ".join(f"pass {s.max_scored}: {s():.7f}"
                                          for s in steps.values()))
    for s in steps.values():  # a second compiled call each, outside the timing
        s()
    times = {n: [] for n in steps}
    for _ in range(args.reps):
        for n, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[n].append(time.perf_counter() - t0)
    for n, s in steps.items():
        print(f"pass {s.max_scored or 'every position'}: median {np.median(times[n]):.3f} s, "
              f"fastest {min(times[n]):.3f} s")
    print(f"load average after: {bench_alternate.load_average()}; jax {jax.__version__}")
    return times


if __name__ == "__main__":
    main()
