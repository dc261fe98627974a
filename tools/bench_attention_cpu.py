"""Attention alone on the CPU: forward + backward of each implementation on the TRL bench's batch.

    python tools/bench_attention_cpu.py --pairs 32 [--reps 5] [--out attn_cpu.json]

The batch is ``tools/bench_vs_trl.py``'s: ``--pairs`` real HH-RLHF pairs, laid out as TRL lays
them (one sequence a row, padded to the longest: 64 x 358 for 32 pairs) and as fbjax packs them
(rows of ``--row-len`` with the prompt shared by both completions: 6 x 1024). q, k and v are
random at the bench model's head layout (``--heads``, ``--kv-heads``, ``--hidden``: 4 query
heads, 2 key/value heads of 64), float32. Each
implementation of :func:`fbjax.models.attention.attend` runs ``jax.value_and_grad`` of
``sum(out * g)`` over the real positions for a fixed random ``g``; the script prints the largest
gradient difference from ``dense`` (a check that the same thing is timed), the live block pairs
the gathered path computes, and the median and minimum of ``--reps`` calls after a warm-up.
Times depend on the machine's load; the script prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bench_alternate  # noqa: E402
import bench_vs_trl  # noqa: E402
import report_padding  # noqa: E402
from fbjax.data import packing  # noqa: E402
from fbjax.models import attention  # noqa: E402

IMPLS = {"dense": dict(implementation="dense"),
         "blockwise (512)": dict(implementation="blockwise"),
         "sparse (64)": dict(implementation="sparse", sparse_block_size=64),
         "sparse (128)": dict(implementation="sparse", sparse_block_size=128)}


def layouts(groups, row_len: int) -> dict:
    longest = max(len(g.prompt) + len(c) for g in groups for c in g.completions)
    return {"padded": packing.padded(groups, seq_len=longest, num_rows=2 * len(groups),
                                     fields=("weights",))[0],
            "packed": bench_vs_trl.FbjaxStep._pack(groups, row_len)}


def time_layout(batch: dict, args) -> dict:
    heads, kv_heads, head_dim = args.heads, args.kv_heads, args.hidden // args.heads
    rows = {k: jnp.asarray(batch[k]) for k in ("segment_ids", "branch_ids", "positions")}
    b, t = rows["segment_ids"].shape
    ks = jax.random.split(jax.random.key(args.seed), 4)
    q = jax.random.normal(ks[0], (b, t, heads, head_dim))
    k, v = (jax.random.normal(r, (b, t, kv_heads, head_dim)) for r in ks[1:3])
    real = (rows["segment_ids"] > 0)[..., None, None]
    g = jnp.where(real, jax.random.normal(ks[3], q.shape), 0.0)
    block = 64
    pad = -t % block
    live = attention._live_pairs(*(jnp.pad(rows[x], ((0, 0), (0, pad)))
                                   for x in ("segment_ids", "branch_ids", "positions")),
                                 block, None)
    n = (t + pad) // block
    out = {"shape": [b, t], "live_pairs_64": int(live.sum()),
           "causal_pairs_64": b * n * (n + 1) // 2, "impls": {}}
    print(f"{b} x {t}: {out['live_pairs_64']} live pairs of 64-token blocks "
          f"of {out['causal_pairs_64']} causal")
    ref = None
    for name, kw in IMPLS.items():
        def loss(q, k, v, kw=kw):
            o = attention.attend(q, k, v, **rows, scale=head_dim ** -0.5, **kw)
            return jnp.sum(o * g)

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        _, grads = jax.block_until_ready(fn(q, k, v))
        ref = grads if ref is None else ref
        err = max(float(jnp.abs(a - r).max()) for a, r in zip(grads, ref))
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(q, k, v))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"  {name:<16} forward + backward median {1e3 * med:7.1f} ms, min "
              f"{1e3 * min(times):7.1f} ms; grads vs dense max |diff| {err:.1e}", flush=True)
        out["impls"][name] = {"times_s": times, "median_s": med, "grad_max_abs_diff": err}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_alternate.add_common_args(p, report_padding.DEFAULT_DATA)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tokenizer-cache", default=None)
    p.add_argument("--out", default=None)
    args = bench_alternate.parse_args(p, argv)
    groups, _ = bench_vs_trl.load_batch(args)
    result = {"load_before": bench_alternate.load_average(), "layouts": {}}
    for name, batch in layouts(groups, args.row_len).items():
        print(f"== {name} ==")
        result["layouts"][name] = time_layout(batch, args)
    result["load_after"] = bench_alternate.load_average()
    print(f"load average before {result['load_before']}, after {result['load_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
