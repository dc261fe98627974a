"""Memory and time of a DPO step over long packed rows, and what the scored-position head saves.

    python tools/bench_attention_memory.py [--data /work/shared/data/hh-rlhf/harmless-base/test.jsonl.gz]
        [--lengths 2048,8192,32768] [--time-lengths 512,8192] [--steps 3] [--out bench_attn.json]

All batches hold real HH-RLHF pairs (token lengths from a BPE tokenizer trained on the split,
``tools/report_padding.py``), packed first-fit with one prompt copy per pair (prefix sharing),
so a longer row holds more pairs of the same length distribution. The model is a Llama-style
``2x256`` (``tools/bench_step.py``: head dim 64, GQA 2:1, vocab 8,000); the step is the real
jitted ``make_train_step`` with sigmoid DPO and the reference forward in the step.

1. **Temporaries** of one packed row at each ``--lengths``: XLA's ``memory_analysis()`` of the
   compiled step (``temp_size_in_bytes``: everything the step allocates besides its arguments
   and outputs). Compile-only, so it does not depend on the machine's load. Rows: dense
   attention with the LM head at every position (the step before this change), blockwise
   attention, and blockwise with the head at scored positions only (``max_scored``). Dense is
   skipped above ``--dense-max`` tokens (it needs tens of GiB).
2. **Time per token** at each ``--time-lengths`` (one row each), ``auto`` attention (``sparse``
   on CPU) against dense (``--time-impls``), all cases stepped in turn,
   median of ``--steps``.
3. **The scored-position head** on a packed batch (``--head-rows`` x ``--head-len``): FLOPs of
   the compiled step (``cost_analysis()``) and step time, with and without ``max_scored``.

Times depend on the machine's load; the script prints ``/proc/loadavg`` with each timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_step
import jax
import report_padding

from fbjax import sharding as fsh
from fbjax.data import packing
from fbjax.models.config import AttentionImpl
from fbjax.models.decoder import Decoder
from fbjax.objectives import logprobs
from fbjax.train import presets
from fbjax.train import step as steplib
from fbjax.train.optim import OptimizerConfig, make_optimizer

GiB, MiB = 2**30, 2**20


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def pack_rows(groups, *, rows: int, seq_len: int, start: int = 0) -> dict:
    slots = max(8, seq_len // 32)
    window = [groups[(start + i) % len(groups)] for i in range(rows * slots)]
    fields = tuple(sorted({k for g in window for k in g.slot_fields}))
    batch, used = packing.pack(window, seq_len=seq_len, num_rows=rows, num_slots=slots,
                               share_prefix=True, fields=fields)
    assert used > 0
    return batch


class Setup:
    """Model, optimizer, mesh and initial state, shared by every compiled variant of a size."""

    def __init__(self, size: str, vocab: int, seq_len: int):
        self.base = bench_step.model_config(size, vocab, seq_len)
        self.objective = presets.dpo(beta=0.1)
        self.optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-5), 1000)
        self.mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, -1, 1)))
        self.rules = fsh.RULES_FSDP_TP
        self.params = steplib.init_params(Decoder(self.base), jax.random.key(0), self.mesh,
                                          self.rules)

    def compile(self, batch: dict, impl: AttentionImpl, max_scored: int | None, chunk: int):
        model = Decoder(dataclasses.replace(self.base, attention_impl=impl))
        state, shardings = steplib.create_state(
            self.params, model=model, optimizer=self.optimizer, objective=self.objective,
            rng=jax.random.key(1), mesh=self.mesh, rules=self.rules,
            reference_params=self.params)
        bsh = steplib.batch_shardings(self.mesh, batch)
        placed = {k: jax.device_put(v, bsh[k]) for k, v in batch.items()}
        fn = steplib.make_train_step(
            model=model, objective=self.objective, optimizer=self.optimizer, mesh=self.mesh,
            rules=self.rules, state_sharding=shardings, batch_sharding=bsh, chunk_size=chunk,
            max_scored=max_scored)
        t0 = time.perf_counter()
        compiled = fn.lower(state, placed).compile()
        return compiled, state, placed, time.perf_counter() - t0


def flops_of(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost else float(cost.get("flops", float("nan")))


def time_alternating(cases: dict, steps: int, warmup: int = 1) -> dict:
    """Median step seconds per case, stepping the cases in turn."""
    times = {k: [] for k in cases}
    for i in range(warmup + steps):
        for name, case in cases.items():
            compiled, state, batch = case
            t = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
            cases[name] = (compiled, state, batch)
    return {k: statistics.median(v) for k, v in times.items()}, times


def memory_section(groups, args, out):
    print(f"\n== temporaries of one packed DPO row ({args.size}, vocab {args.vocab}) ==")
    print(f"{'tokens':>7} {'real':>6} {'scored':>6} {'variant':<22} {'temp MiB':>10} {'compile s':>9}")
    for length in args.lengths:
        setup = Setup(args.size, args.vocab, length)
        batch = pack_rows(groups, rows=1, seq_len=length)
        real = int((batch["segment_ids"] > 0).sum())
        scored = int((batch["loss_mask"] != 0).sum())
        bound = logprobs.max_scored_bound(batch["loss_mask"])
        variants = [("blockwise", AttentionImpl.BLOCKWISE, None),
                    ("blockwise+scored head", AttentionImpl.BLOCKWISE, bound),
                    ("sparse", AttentionImpl.SPARSE, None),
                    ("sparse+scored head", AttentionImpl.SPARSE, bound)]
        variants = [v for v in variants if v[1].value in args.impls]
        if length <= args.dense_max:
            variants.insert(0, ("dense (before)", AttentionImpl.DENSE, None))
        for name, impl, max_scored in variants:
            compiled, *_, compile_s = setup.compile(batch, impl, max_scored, args.chunk)
            temp = compiled.memory_analysis().temp_size_in_bytes
            print(f"{length:>7} {real:>6} {scored:>6} {name:<22} {temp / MiB:>10.1f} "
                  f"{compile_s:>9.1f}", flush=True)
            out["memory"].append({"tokens": length, "real_tokens": real, "scored": scored,
                                  "variant": name, "max_scored": max_scored,
                                  "temp_bytes": int(temp), "compile_s": compile_s})
    rows = {(r["tokens"], r["variant"]): r["temp_bytes"] for r in out["memory"]}
    for variant in ("blockwise", "blockwise+scored head", "sparse", "sparse+scored head",
                    "dense (before)"):
        a, b = rows.get((2048, variant)), rows.get((8192, variant))
        if a and b:
            print(f"8k / 2k temporaries, {variant}: {b / a:.2f}x")
            out["ratios"][f"temp_8k_over_2k/{variant}"] = b / a
    big = max(args.lengths)
    for variant in ("blockwise", "blockwise+scored head", "sparse", "sparse+scored head"):
        if (big, variant) in rows:
            print(f"{big} tokens, {variant}: {rows[(big, variant)] / GiB:.2f} GiB of temporaries")


def time_section(groups, args, out):
    print(f"\n== step time per real token, one packed row ({args.size}); all cases stepped in "
          "turn ==")
    cases, real = {}, {}
    for length in args.time_lengths:
        setup = Setup(args.size, args.vocab, length)
        batch = pack_rows(groups, rows=1, seq_len=length, start=7)
        real[length] = int((batch["segment_ids"] > 0).sum())
        for name in args.time_impls:
            compiled, state, placed, _ = setup.compile(batch, AttentionImpl(name), None,
                                                       args.chunk)
            cases[(length, name)] = (compiled, state, placed)
    before = loadavg()
    medians, times = time_alternating(cases, args.steps)
    after = loadavg()
    per_token = {}
    for (length, name), median in medians.items():
        per_token[(length, name)] = median / real[length]
        print(f"{length:>6} tokens ({real[length]} real) {name:<6} median step {median:7.3f} s "
              f"= {1e6 * median / real[length]:8.1f} us/token", flush=True)
        out["time"].append({"tokens": length, "real_tokens": real[length], "attention": name,
                            "step_s": times[(length, name)], "median_s": median})
    print(f"[loadavg {before} before, {after} after]")
    out["time_loadavg"] = [before, after]
    lo, hi = min(args.time_lengths), max(args.time_lengths)
    for name in args.time_impls:
        ratio = per_token[(hi, name)] / per_token[(lo, name)]
        print(f"time/token {hi} over {lo}, {name}: {ratio:.2f}x")
        out["ratios"][f"time_per_token_{hi}_over_{lo}/{name}"] = ratio


def head_section(groups, args, out):
    print(f"\n== LM head at scored positions only: {args.head_rows} x {args.head_len} packed "
          f"prefix-shared HH-RLHF rows ({args.size}) ==")
    setup = Setup(args.size, args.vocab, args.head_len)
    batch = pack_rows(groups, rows=args.head_rows, seq_len=args.head_len, start=3)
    positions = batch["segment_ids"].size
    scored = int((batch["loss_mask"] != 0).sum())
    bound = logprobs.max_scored_bound(batch["loss_mask"], multiple=args.bucket)
    print(f"scored positions {scored} of {positions} ({scored / positions:.0%}); "
          f"max_scored bound {bound} a row (bucket {args.bucket})")
    cases, flops = {}, {}
    for name, max_scored in (("every position", None), ("scored only", bound)):
        compiled, state, placed, _ = setup.compile(batch, AttentionImpl.AUTO, max_scored,
                                                   args.chunk)
        flops[name] = flops_of(compiled)
        cases[name] = (compiled, state, placed)
    before = loadavg()
    medians, times = time_alternating(cases, args.steps)
    after = loadavg()
    for name in cases:
        print(f"{name:<15} compiled FLOPs {flops[name] / 1e9:9.1f} G   median step "
              f"{medians[name]:.3f} s  [loadavg {before} -> {after}]")
    a, b = flops["every position"], flops["scored only"]
    print(f"FLOPs saved: {1 - b / a:.1%}; step time saved: "
          f"{1 - medians['scored only'] / medians['every position']:.1%}")
    out["head"] = {"rows": args.head_rows, "seq_len": args.head_len, "scored": scored,
                   "positions": positions, "max_scored": bound, "flops": flops,
                   "step_s": times, "median_s": medians, "loadavg_before": before,
                   "loadavg_after": after}


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/hh-rlhf/harmless-base/test.jsonl.gz")
    p.add_argument("--size", default="2x256")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--max-len", type=int, default=512, help="tokens per (prompt, completion)")
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--lengths", default="2048,8192,32768")
    p.add_argument("--dense-max", type=int, default=8192)
    p.add_argument("--time-lengths", default="512,8192")
    p.add_argument("--time-impls", default="auto,dense", help="attention_impl values to time")
    p.add_argument("--impls", default="blockwise,sparse",
                   help="attention_impl values whose temporaries are compiled (besides dense)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--head-rows", type=int, default=4)
    p.add_argument("--head-len", type=int, default=1024)
    p.add_argument("--bucket", type=int, default=64)
    p.add_argument("--sections", default="memory,time,head")
    p.add_argument("--tokenizer-cache", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.time_lengths = [int(x) for x in args.time_lengths.split(",")]
    args.time_impls = args.time_impls.split(",")
    args.impls = args.impls.split(",")
    groups, _ = report_padding.hh_groups(args.data, vocab_size=args.vocab, max_len=args.max_len,
                                         tokenizer_cache=args.tokenizer_cache)
    rng = np.random.default_rng(0)
    groups = [groups[i] for i in rng.permutation(len(groups))]
    print(f"{len(groups)} HH-RLHF pairs; backend {jax.default_backend()}; "
          f"{os.cpu_count()} CPUs; loadavg {loadavg()}")
    out = {"memory": [], "time": [], "ratios": {}, "head": None}
    sections = args.sections.split(",")
    if "memory" in sections:
        memory_section(groups, args, out)
    if "time" in sections:
        time_section(groups, args, out)
    if "head" in sections:
        head_section(groups, args, out)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
