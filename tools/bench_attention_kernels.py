"""Attention on the machine's accelerator: each implementation checked against dense, then timed.

    python tools/bench_attention_kernels.py [--lengths 2048,8192,32768] [--out attn.json]

Meant for a GPU or TPU, where ``auto`` picks a Pallas kernel (``fbjax.models.attention``); on a
CPU ``auto`` is the blockwise path and the script still runs (slowly).

1. **Correctness** on packed rows (several documents a row), float32 with
   ``jax_default_matmul_precision=highest`` (GPUs otherwise round float32 matmul inputs to
   TF32): ``auto`` and ``blockwise`` against ``dense``, the output and the gradients with
   respect to q, k and v of ``sum(out * g)`` for a fixed random ``g``. Cases: plain packed
   rows (the kernel path), prefix-shared rows with completion branches (``auto`` falls back to
   blockwise through ``lax.cond``), a sliding window, and soft-capping. Then once in bfloat16,
   against the float32 dense result, to show the error bf16 itself brings.
2. **Speed and memory** of one forward + backward in bfloat16 on one row of each length,
   4 documents a row, Llama-3.2-1B's head layout (32 query heads, 8 key/value heads of 64):
   median wall time of ``--reps`` synchronised calls, and XLA's temporary bytes of the
   compiled function (``memory_analysis().temp_size_in_bytes``). ``TFLOP/s`` counts only the
   visible (query, key) pairs, 4 * D FLOPs each forward and 10 * D forward + backward
   (FlashAttention-2's accounting: 2 matmuls forward, 5 backward, recomputation included), so
   it is the useful rate, not what the kernel issues.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from fbjax.models import attention as attn  # noqa: E402
from fbjax.models.config import AttentionImpl  # noqa: E402


def packed_row(rng, batch: int, length: int, docs: int, branches: bool):
    """segment_ids, branch_ids, positions ``[batch, length]``: ``docs`` documents of random
    lengths filling each row; with ``branches`` each document is a prompt plus two
    completions (branch 1 and 2), positions restarting at the prompt's end for each."""
    seg = np.zeros((batch, length), np.int32)
    br = np.zeros((batch, length), np.int32)
    pos = np.zeros((batch, length), np.int32)
    for b in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length), docs - 1, replace=False))
        bounds = [0, *cuts.tolist(), length]
        for d in range(docs):
            lo, hi = bounds[d], bounds[d + 1]
            seg[b, lo:hi] = d + 1
            pos[b, lo:hi] = np.arange(hi - lo)
            if branches and hi - lo >= 3:
                p = lo + (hi - lo) // 3
                c = p + (hi - p) // 2
                br[b, p:c], br[b, c:hi] = 1, 2
                pos[b, c:hi] = np.arange(p - lo, p - lo + hi - c)
    return jnp.asarray(seg), jnp.asarray(br), jnp.asarray(pos)


def visible_pairs(seg, br, pos, window) -> int:
    """Number of (query, key) pairs the mask rule allows, summed over the batch."""
    t = seg.shape[1]
    index = jnp.broadcast_to(jnp.arange(t), seg.shape)
    total = 0
    for b in range(seg.shape[0]):  # one row at a time keeps this [T, T] only
        m = attn.attention_mask(index[b:b + 1], index[b:b + 1], seg[b:b + 1], seg[b:b + 1],
                                br[b:b + 1], br[b:b + 1], pos[b:b + 1], pos[b:b + 1], window)
        total += int(jnp.sum(m))
    return total


def make_fn(impl, meta, *, scale, window, softcap, block):
    seg, br, pos = meta

    def f(q, k, v, g):
        out = attn.attend(q, k, v, segment_ids=seg, branch_ids=br, positions=pos, scale=scale,
                          sliding_window=window, softcap=softcap, implementation=impl,
                          block_size=block)
        return jnp.sum(out.astype(jnp.float32) * g), out

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


def qkvg(key, batch, t, heads, kv_heads, d, dtype):
    kq, kk, kv, kg = jax.random.split(key, 4)
    q = jax.random.normal(kq, (batch, t, heads, d), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (batch, t, kv_heads, d), jnp.float32).astype(dtype)
    v = jax.random.normal(kv, (batch, t, kv_heads, d), jnp.float32).astype(dtype)
    g = jax.random.normal(kg, (batch, t, heads, d), jnp.float32)
    return q, k, v, g


def max_diffs(a, b):
    (_, out_a), grads_a = a
    (_, out_b), grads_b = b
    diff = {"out": float(jnp.max(jnp.abs(out_a.astype(jnp.float32) - out_b.astype(jnp.float32))))}
    for name, ga, gb in zip("qkv", grads_a, grads_b):
        diff[f"d{name}"] = float(jnp.max(jnp.abs(ga.astype(jnp.float32) - gb.astype(jnp.float32))))
    return diff


def correctness(args) -> list[dict]:
    rng = np.random.default_rng(0)
    cases = [("packed", False, None, None), ("prefix-shared", True, None, None),
             ("window 64", False, 64, None), ("softcap 30", False, None, 30.0)]
    rows = []
    with jax.default_matmul_precision("highest"):
        for name, branches, window, softcap in cases:
            meta = packed_row(rng, 2, args.check_len, 3, branches)
            q, k, v, g = qkvg(jax.random.key(1), 2, args.check_len, 8, 4, 64, jnp.float32)
            kw = dict(scale=64 ** -0.5, window=window, softcap=softcap, block=args.block)
            dense = make_fn(AttentionImpl.DENSE, meta, **kw)(q, k, v, g)
            for impl in (AttentionImpl.AUTO, AttentionImpl.BLOCKWISE):
                got = make_fn(impl, meta, **kw)(q, k, v, g)
                row = {"case": name, "impl": impl.value, "dtype": "float32",
                       "kernel": attn._kernel_for_backend(jax.default_backend(), window, softcap)
                       if impl is AttentionImpl.AUTO else None, **max_diffs(got, dense)}
                rows.append(row)
                print(f"{name:<14}{impl.value:>10}  float32  " +
                      "  ".join(f"{k} {row[k]:.2e}" for k in ("out", "dq", "dk", "dv")), flush=True)
        meta = packed_row(rng, 2, args.check_len, 3, False)
        q, k, v, g = qkvg(jax.random.key(2), 2, args.check_len, 8, 4, 64, jnp.float32)
        kw = dict(scale=64 ** -0.5, window=None, softcap=None, block=args.block)
        dense = make_fn(AttentionImpl.DENSE, meta, **kw)(q, k, v, g)
        for impl in (AttentionImpl.DENSE, AttentionImpl.AUTO, AttentionImpl.BLOCKWISE):
            bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
            got = make_fn(impl, meta, **kw)(*bf, g)
            row = {"case": "packed", "impl": impl.value, "dtype": "bfloat16 vs float32 dense",
                   **max_diffs(got, dense)}
            rows.append(row)
            print(f"{'packed':<14}{impl.value:>10}  bf16     " +
                  "  ".join(f"{k} {row[k]:.2e}" for k in ("out", "dq", "dk", "dv")), flush=True)
    return rows


def speed(args) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for t in (int(x) for x in args.lengths.split(",")):
        meta = packed_row(rng, 1, t, 4, False)
        pairs = visible_pairs(*meta, None)
        q, k, v, g = qkvg(jax.random.key(3), 1, t, 32, 8, 64, jnp.bfloat16)
        for impl in (AttentionImpl(i) for i in args.impls.split(",")):
            if impl is AttentionImpl.DENSE and t > args.dense_max:
                continue
            fn = make_fn(impl, meta, scale=0.125, window=None, softcap=None, block=args.block)
            try:
                compiled = fn.lower(q, k, v, g).compile()
                mem = compiled.memory_analysis()
                temp = None if mem is None else int(mem.temp_size_in_bytes)
                jax.block_until_ready(compiled(q, k, v, g))
                times = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    jax.block_until_ready(compiled(q, k, v, g))
                    times.append(time.perf_counter() - t0)
            except Exception as e:  # a kernel that does not compile here is a finding, not a crash
                msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                print(f"{t:>7}{impl.value:>11}  failed: {msg}", flush=True)
                rows.append({"length": t, "impl": impl.value, "error": msg})
                continue
            med = statistics.median(times)
            tflops = pairs * 32 * 64 * 10 / med / 1e12
            rows.append({"length": t, "impl": impl.value, "visible_pairs": pairs,
                         "fwd_bwd_s": times, "fwd_bwd_s_median": med, "temp_bytes": temp,
                         "useful_tflops": tflops})
            print(f"{t:>7}{impl.value:>11}{med * 1e3:>11.2f}{(temp or 0) / 2**20:>12.1f}"
                  f"{tflops:>10.1f}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check-len", type=int, default=1024)
    p.add_argument("--lengths", default="2048,8192,32768")
    p.add_argument("--impls", default="dense,blockwise,auto")
    p.add_argument("--dense-max", type=int, default=8192)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--sections", default="check,speed")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    print(f"backend {jax.default_backend()}: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "args": vars(args)}
    if "check" in args.sections:
        print("\n== max |impl - dense| over output and gradients ==")
        result["check"] = correctness(args)
    if "speed" in args.sections:
        print("\n== one forward + backward, bf16, 1 row, 32/8 heads of 64 ==")
        print(f"{'length':>7}{'impl':>11}{'ms':>11}{'temp MiB':>12}{'TFLOP/s':>10}")
        result["speed"] = speed(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
