"""Timing steps of several libraries alternately, and the ratios' range over repetitions.

Shared by ``tools/bench_vs_trl.py`` and ``tools/bench_vs_tunix.py``. On a shared machine the load
drifts during a run; timing one step of each in turn (a repetition) exposes all of them to the
same drift, so the per-repetition ratio of two step times is steadier than the ratio of their
medians. The load average is recorded before and after, because load slows some libraries more
than others (torch's thread pool more than XLA's), so a figure measured under load says so.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def time_alternately(steps: Mapping[str, Callable[[], float]], *, warmup: int, reps: int):
    """Calls each step in turn, ``warmup + reps`` rounds; returns (losses, times, loads).

    Each step returns its loss after synchronising (a float), so its wall time is the step's.
    ``times[name]`` holds the ``reps`` timed rounds; ``losses[name]`` every round's loss;
    ``loads`` the 1-minute load average at the start of each timed round and at the end.
    """
    losses = {name: [] for name in steps}
    times = {name: [] for name in steps}
    loads = []
    for i in range(warmup + reps):
        if i == warmup:
            # Both libraries built large object graphs while compiling (torch.compile's most of
            # all). Collected and frozen once here, they cannot be scanned inside a timed step;
            # measured, the full collections fell in the warm-up rounds (0.3 to 0.4 s each), so
            # this is hygiene, not a change in the figures.
            gc.collect()
            gc.freeze()
        if i >= warmup:
            loads.append(load_average()[:1])
        for name, step in steps.items():
            t = time.perf_counter()
            losses[name].append(step())
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    loads.append(load_average()[:1])
    gc.unfreeze()
    return losses, times, [x[0] for x in loads if x]


def ratio_stats(fast: list[float], slow: list[float]) -> dict:
    """Per-repetition ratios ``slow / fast`` (how many times faster ``fast`` is): median, min, max."""
    r = [b / a for a, b in zip(fast, slow)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "reps": len(r)}


def format_ratio(stats: dict) -> str:
    return f"{stats['median']:.2f}x (range {stats['min']:.2f} to {stats['max']:.2f})"


def report(result: dict, *, peer: str, reps: int, out: str | None, ref_width: int = 10) -> None:
    """Prints a comparison's losses, per-step table and ratios from ``result`` (the JSON both
    benchmarks write: ``losses``, ``layouts``, ``reference``, ``computed_tokens``,
    ``step_s_median``, ``tokens_per_s``, ``ratios``, ``load_average``), then writes it to
    ``out``."""
    import json
    import os

    steps = list(result["step_s_median"])
    for name in steps:
        print(f"DPO loss per step, {name:<20}" + " ".join(f"{x:.5f}" for x in result["losses"][name]))
    print(f"{'':20}{'layout':>30}{'reference':>{ref_width}}{'computed':>10}{'median s':>10}"
          f"{'real tok/s':>11}")
    for name in steps:
        print(f"{name:<20}{result['layouts'][name]:>30}{result['reference'][name]:>{ref_width}}"
              f"{result['computed_tokens'][name]:>10}{result['step_s_median'][name]:>10.3f}"
              f"{result['tokens_per_s'][name]:>11.0f}")
    for kind, rs in result["ratios"].items():
        for label, st in rs.items():
            print(f"{kind:<26} {label:<36} {format_ratio(st)}")
    load = result["load_average"]
    during = load["per_rep_1min"]
    print(f"(ratios: {peer}'s step time over fbjax's, per repetition; median and range over "
          f"{reps} alternating repetitions; load average before {load['before']}, during "
          f"{min(during, default=0):.2f} to {max(during, default=0):.2f}, after {load['after']} "
          f"on {os.cpu_count()} CPUs)")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {out}")


def parse_args(p, argv):
    """``p.parse_args(argv)``, then the process's malloc set as ``--system-malloc`` says, before
    any library starts its threads."""
    from fbjax.host_memory import keep_freed_memory

    args = p.parse_args(argv)
    args.malloc_tuned = not args.system_malloc and keep_freed_memory()
    return args


def add_common_args(p, default_data: str) -> None:
    """The data, batch and model arguments both comparisons share (same defaults)."""
    p.add_argument("--data", default=default_data)
    p.add_argument("--pairs", type=int, default=8, help="preference pairs per batch")
    p.add_argument("--row-len", type=int, default=1024, help="fbjax packed row length")
    p.add_argument("--max-scored", type=int, default=None,
                   help="fbjax LM-head positions a row per pass (train.max_scored_tokens; "
                        "default: training's, an eighth of the row)")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is; by default freed memory stays in the "
                        "process for every library in it, as `fbjax train` does "
                        "(fbjax.host_memory)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=704)
