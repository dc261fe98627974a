"""Steady-state throughput of the real training step (SFT, DPO, KTO) over model sizes and lengths.

    python tools/bench_step.py --objectives sft,dpo,kto --sizes 2x128,4x256 --seq-lens 256,512 \\
        --rows 4 --steps 5 --out bench_step.json [--reference in-step|cached|both] \\
        [--peak-tflops X]

For each (objective, size, sequence length) it builds a Llama-style model (``LAYERSxHIDDEN``;
head dim 64, half as many KV heads, SwiGLU width 8/3 x hidden rounded to 64), random token groups
of random lengths (prompts and completions each 1/16 to 1/4 of a row), packs them in the chosen
layout (default packed + prefix-shared, as training does), and times ``--steps`` calls of the
jitted ``fbjax.train.step.make_train_step`` after ``--warmup`` calls (the first compiles).

Reported per configuration (JSON, and a table):

* ``step_s_median`` / ``step_s_mean``: wall time per step, each step synchronised;
* ``tokens_per_s``: non-padding tokens computed per second (prompt tokens count once per copy
  the layout computes, which is once per pair under prefix sharing);
* ``peak_bytes``: the device's ``peak_bytes_in_use`` where the backend reports it; on CPU it
  does not, and ``compiled_bytes`` gives XLA's own accounting of the compiled step instead
  (arguments + outputs + temporaries - donated aliases);
* ``model_tflops_per_step`` and ``mfu``: model FLOPs per step over the non-padding tokens T:
  ``6 N T`` for the policy forward and backward, ``2 N T`` for the reference forward when it
  runs in the step, plus attention (``12 layers d_attn S`` per token forward+backward and
  ``4 layers d_attn S`` forward-only, S = row length, as in PaLM's MFU), with N the
  matmul parameters (everything but the input embedding table). MFU = achieved FLOP/s over
  ``--peak-tflops``; no peak is known for a CPU, so it is ``null`` unless given.

``--reference cached`` precomputes reference log-probs (``fbjax.train.reference``) and attaches
them to the batches, so the DPO/KTO step runs no reference forward and holds no reference params;
``--reference both`` builds both steps and times them alternately, step by step (on a shared
machine, configurations timed minutes apart are not comparable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Sequence

import numpy as np

# Runnable as a script from a checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from fbjax import sharding as fsh  # noqa: E402
from fbjax.data import packing  # noqa: E402
from fbjax.models import config as mc  # noqa: E402
from fbjax.models.decoder import Decoder  # noqa: E402
from fbjax.train import presets, reference  # noqa: E402
from fbjax.train import step as steplib  # noqa: E402
from fbjax.train.optim import OptimizerConfig, make_optimizer  # noqa: E402

OBJECTIVES = {"sft": presets.sft, "dpo": lambda: presets.dpo(beta=0.1), "kto": presets.kto}


# Named shapes of real checkpoints (random weights: only the shapes matter for speed).
# Llama 3.2 1B: its config.json (16 layers, 2048 wide, 32 query / 8 key-value heads of 64,
# SwiGLU 8192, 128,256-token vocabulary, tied embeddings): 1.24e9 parameters.
PRESETS = {
    "llama-1b": dict(vocab_size=128_256, hidden_size=2048, num_layers=16, num_heads=32,
                     num_kv_heads=8, mlp_dim=8192, tie_embeddings=True, rope_theta=500_000.0),
}


def model_config(size: str, vocab: int, max_seq_len: int, **settings) -> mc.ModelConfig:
    """``LAYERSxHIDDEN`` -> a Llama config (head dim 64, GQA 2:1, SwiGLU 8/3 x hidden), or a
    name from :data:`PRESETS` (its own vocabulary; ``vocab`` is ignored). ``settings`` are
    numerical settings (dtype, param_dtype, remat, attention_impl)."""
    if size in PRESETS:
        return mc.llama(**PRESETS[size], max_seq_len=max_seq_len, **settings)
    layers, hidden = (int(x) for x in size.lower().split("x"))
    heads = max(hidden // 64, 2)
    mlp = max(64, int(round(hidden * 8 / 3 / 64)) * 64)
    return mc.llama(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                    num_kv_heads=max(heads // 2, 1), mlp_dim=mlp, max_seq_len=max_seq_len,
                    **settings)


def matmul_params(params, config: mc.ModelConfig) -> int:
    """Parameters that take part in a matmul per token (the lookup tables do not)."""
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    lookup = 0 if config.tie_embeddings else config.vocab_size * config.hidden_size
    if config.positions is mc.Positions.LEARNED:
        lookup += config.max_seq_len * config.hidden_size
    return total - lookup


def model_flops(n_params: int, config: mc.ModelConfig, tokens: float, row_len: int,
                with_reference: bool) -> float:
    """Model FLOPs of one step over ``tokens`` non-padding tokens (module docstring)."""
    attn = config.num_layers * config.num_heads * config.head_size * row_len
    flops = (6 * n_params + 12 * attn) * tokens
    if with_reference:
        flops += (2 * n_params + 4 * attn) * tokens
    return flops


def random_groups(objective: str, seq_len: int, vocab: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    lo, hi = max(seq_len // 16, 1), max(seq_len // 4, 2)

    def ids():
        return rng.integers(4, vocab, rng.integers(lo, hi + 1)).astype(np.int32)

    groups = []
    for i in range(n):
        if objective == "sft":
            groups.append(packing.Group(ids(), (ids(),)))
        elif objective == "dpo":
            groups.append(packing.Group(ids(), (ids(), ids()), {"weights": (1.0, 1.0)}))
        else:  # KTO: the example and a mismatched completion for the KL reference point
            label = float(i % 2)
            groups.append(packing.Group(ids(), (ids(), ids()),
                                        {"labels": (label, 0.0), "is_kl": (0.0, 1.0)}))
    return groups


def make_batches(groups, *, layout: str, rows: int, seq_len: int, slots: int, count: int):
    """``count`` batches of one static shape, taking groups in order (wrapping around)."""
    fields = tuple(sorted({k for g in groups for k in g.slot_fields}))
    batches, pos = [], 0
    for _ in range(count):
        window = [groups[(pos + i) % len(groups)] for i in range(rows * slots)]
        if layout == "padded":
            batch, used = packing.padded(window, seq_len=seq_len, num_rows=rows, fields=fields)
        else:
            batch, used = packing.pack(window, seq_len=seq_len, num_rows=rows, num_slots=slots,
                                       share_prefix=layout == "prefix", fields=fields)
        batches.append(batch)
        pos += used
    return batches


def peak_device_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


@dataclasses.dataclass
class Case:
    """One compiled step with its state and batches, timed step by step."""

    reference: str  # "none", "in-step" or "cached"
    state: object
    compiled: object
    batches: list
    tokens: list
    compile_s: float
    memory: object
    times: list = dataclasses.field(default_factory=list)
    step_tokens: list = dataclasses.field(default_factory=list)
    metrics: dict | None = None

    def run(self, i: int, record: bool) -> None:
        b = i % len(self.batches)
        t = time.perf_counter()
        self.state, self.metrics = self.compiled(self.state, self.batches[b])
        jax.block_until_ready(self.metrics)
        if record:
            self.times.append(time.perf_counter() - t)
            self.step_tokens.append(self.tokens[b])


def build_case(reference_mode, *, model, config, objective, params, groups, mesh, rules, seq_len,
               args) -> Case:
    if reference_mode == "cached":
        ref = reference.compute_reference_logps(params, config, groups, num_rows=args.rows,
                                                seq_len=seq_len, chunk_size=args.chunk)
        groups = reference.attach(groups, ref)
    slots = 1 if args.layout == "padded" else args.slots
    batches = make_batches(groups, layout=args.layout, rows=args.rows, seq_len=seq_len,
                           slots=slots, count=args.batches)
    tokens = [float(np.sum(b["segment_ids"] > 0)) for b in batches]
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-5), 1000)
    state, shardings = steplib.create_state(
        params, model=model, optimizer=optimizer, objective=objective, rng=jax.random.key(1),
        mesh=mesh, rules=rules,
        reference_params=params if reference_mode == "in-step" else None)
    bsh = steplib.batch_shardings(mesh, batches[0])
    batches = [{k: jax.device_put(v, bsh[k]) for k, v in b.items()} for b in batches]
    step_fn = steplib.make_train_step(
        model=model, objective=objective, optimizer=optimizer, mesh=mesh, rules=rules,
        state_sharding=shardings, batch_sharding=bsh, chunk_size=args.chunk,
        max_scored=args.max_scored)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    return Case(reference_mode, state, compiled, batches, tokens, compile_s,
                compiled.memory_analysis())


def bench_one(objective_name: str, size: str, seq_len: int, args) -> list[dict]:
    """Times the step for one (objective, size, length); with ``--reference both``, the
    in-step and cached-reference steps are timed alternately, step by step."""
    settings = dict(dtype=args.dtype, param_dtype=args.param_dtype, remat=args.remat,
                    attention_impl=mc.AttentionImpl(args.attention))
    config = model_config(size, args.vocab, seq_len, **settings)
    vocab = config.vocab_size
    model = Decoder(config)
    objective = OBJECTIVES[objective_name]()
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, -1, 1)))
    rules = fsh.RULES_FSDP_TP
    params = steplib.init_params(model, jax.random.key(0), mesh, rules)
    groups = random_groups(objective_name, seq_len, vocab, 4 * args.rows * args.slots,
                           args.seed)
    if not objective.needs_reference:
        modes = ["none"]
    else:
        modes = ["in-step", "cached"] if args.reference == "both" else [args.reference]
    cases = [build_case(m, model=model, config=config, objective=objective, params=params,
                        groups=groups, mesh=mesh, rules=rules, seq_len=seq_len, args=args)
             for m in modes]
    for i in range(args.warmup + args.steps):
        for case in cases:  # alternating, so load changes on a shared machine hit all alike
            case.run(i, record=i >= args.warmup)

    n = matmul_params(params, config)
    results = []
    for case in cases:
        mem = case.memory
        compiled_bytes = None if mem is None else int(
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
        mean_tokens = statistics.mean(case.step_tokens)
        flops = model_flops(n, config, mean_tokens, seq_len, case.reference == "in-step")
        median = statistics.median(case.times)
        achieved = flops / median
        loss, count = (float(x) for x in case.metrics["loss"])
        results.append({
            "objective": objective_name,
            "size": size,
            "matmul_params": n,
            "vocab": vocab,
            "dtype": args.dtype,
            "param_dtype": args.param_dtype,
            "remat": args.remat,
            "attention": args.attention,
            "max_scored": args.max_scored,
            "seq_len": seq_len,
            "rows": args.rows,
            "layout": args.layout,
            "reference": case.reference,
            "tokens_per_step": mean_tokens,
            "step_s": case.times,
            "step_s_median": median,
            "tokens_per_s": mean_tokens / median,
            "compile_s": case.compile_s,
            "peak_bytes": peak_device_bytes(),
            "compiled_bytes": compiled_bytes,
            "compiled_temp_bytes": None if mem is None else int(mem.temp_size_in_bytes),
            "model_tflops_per_step": flops / 1e12,
            "achieved_tflops": achieved / 1e12,
            "mfu": None if args.peak_tflops is None else achieved / (args.peak_tflops * 1e12),
            "loss": loss / max(count, 1e-9),
        })
    return results


def _print_row(r: dict) -> None:
    mem = r["peak_bytes"] if r["peak_bytes"] is not None else r["compiled_bytes"]
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
    print(f"{r['objective']:<6}{r['size']:>8}{r['seq_len']:>6}{r['reference']:>9}"
          f"{r['tokens_per_step']:>10.0f}{r['step_s_median']:>9.3f}"
          f"{r['tokens_per_s']:>9.0f}{(mem or 0) / 2**20:>9.1f}"
          f"{r['achieved_tflops']:>9.4f}{mfu:>7}", flush=True)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objectives", default="sft,dpo,kto")
    p.add_argument("--sizes", default="2x128,4x256", help="LAYERSxHIDDEN, comma-separated")
    p.add_argument("--seq-lens", default="256,512")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--slots", type=int, default=16, help="completion slots per packed row")
    p.add_argument("--layout", choices=("padded", "packed", "prefix"), default="prefix")
    p.add_argument("--reference", choices=("in-step", "cached", "both"), default="in-step",
                   help="reference log-probs of DPO/KTO: computed in the step, precomputed, or "
                        "both timed alternately")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--dtype", default="float32", help="matmul dtype (bfloat16 on accelerators)")
    p.add_argument("--param-dtype", default="float32")
    p.add_argument("--remat", choices=("none", "block", "dots"), default="none")
    p.add_argument("--attention", choices=[i.value for i in mc.AttentionImpl], default="auto")
    p.add_argument("--max-scored", type=int, default=None,
                   help="LM head on at most this many scored positions per row (default: all)")
    p.add_argument("--chunk", type=int, default=8192, help="log-softmax vocabulary chunk")
    p.add_argument("--batches", type=int, default=3, help="distinct batches cycled through")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU (none is known for CPUs)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    results = []
    header = (f"{'obj':<6}{'size':>8}{'seq':>6}{'ref':>9}{'tok/step':>10}{'step s':>9}"
              f"{'tok/s':>9}{'mem MiB':>9}{'TFLOP/s':>9}{'MFU':>7}")
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(header)
    print("-" * len(header))
    for obj in args.objectives.split(","):
        for size in args.sizes.split(","):
            for seq in (int(s) for s in args.seq_lens.split(",")):
                for r in bench_one(obj.strip(), size.strip(), seq, args):
                    results.append(r)
                    _print_row(r)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "backend": jax.default_backend(),
                       "args": vars(args), "results": results}, f, indent=2)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
