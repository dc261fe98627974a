"""Timing steps of several libraries alternately, and the ratios' range over repetitions.

Shared by ``tools/bench_vs_trl.py`` and ``tools/bench_vs_tunix.py``. On a shared machine the load
drifts during a run; timing one step of each in turn (a repetition) exposes all of them to the
same drift, so the per-repetition ratio of two step times is steadier than the ratio of their
medians. The load average is recorded before and after, because load slows some libraries more
than others (torch's thread pool more than XLA's), so a figure measured under load says so.
"""

from __future__ import annotations

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
        if i >= warmup:
            loads.append(load_average()[:1])
        for name, step in steps.items():
            t = time.perf_counter()
            losses[name].append(step())
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    loads.append(load_average()[:1])
    return losses, times, [x[0] for x in loads if x]


def ratio_stats(fast: list[float], slow: list[float]) -> dict:
    """Per-repetition ratios ``slow / fast`` (how many times faster ``fast`` is): median, min, max."""
    r = [b / a for a, b in zip(fast, slow)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "reps": len(r)}


def format_ratio(stats: dict) -> str:
    return f"{stats['median']:.2f}x (range {stats['min']:.2f} to {stats['max']:.2f})"
