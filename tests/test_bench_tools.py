"""The benchmark scripts' own arithmetic: ratio ranges and the cut to Tunix's grid."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

import bench_alternate  # noqa: E402
import bench_vs_tunix  # noqa: E402

from fbjax.data import packing  # noqa: E402


def test_ratio_stats_are_per_repetition():
    # Rep 1: 3.0 / 1.0 = 3; rep 2: 4.0 / 2.0 = 2; rep 3: 2.5 / 0.5 = 5. The ratio of the medians
    # (3.0 / 1.0 = 3) is not what is reported; the median of the ratios is.
    stats = bench_alternate.ratio_stats([1.0, 2.0, 0.5], [3.0, 4.0, 2.5])
    assert stats == {"median": 3.0, "min": 2.0, "max": 5.0, "reps": 3}
    assert bench_alternate.format_ratio(stats) == "3.00x (range 2.00 to 5.00)"


def test_time_alternately_keeps_only_timed_rounds():
    calls = []
    steps = {"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}
    losses, times, loads = bench_alternate.time_alternately(steps, warmup=2, reps=3)
    assert calls == ["a", "b"] * 5  # alternating, warm-up included
    assert losses == {"a": [1.0] * 5, "b": [2.0] * 5}
    assert [len(t) for t in times.values()] == [3, 3]
    assert len(loads) in (0, 4)  # each timed round's start, and the end


def test_cut_to_grid_keeps_prompt_tail_and_completion_head_with_eos():
    eos = bench_vs_tunix.EOS
    g = packing.Group(np.arange(10, 20, dtype=np.int32),
                      (np.array([5, 6, 7, 8, eos], np.int32), np.array([9, eos], np.int32)), {})
    out = bench_vs_tunix.cut_to_grid(g, max_prompt=4, max_response=3)
    np.testing.assert_array_equal(out.prompt, [16, 17, 18, 19])
    np.testing.assert_array_equal(out.completions[0], [5, 6, eos])  # cut: EOS stays last
    np.testing.assert_array_equal(out.completions[1], [9, eos])  # short enough: unchanged


@pytest.mark.parametrize("argv", [["--warmup", "1"]])
def test_tunix_bench_refuses_a_warmup_that_would_time_a_compilation(argv):
    with pytest.raises(SystemExit):
        bench_vs_tunix.parse(argv)
