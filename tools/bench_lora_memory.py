"""Memory of the compiled DPO step, LoRA against full fine-tuning (compile only, no training).

    python tools/bench_lora_memory.py --size 12x768 --vocab 16384 --seq-len 512 --rows 8 \\
        --rank 16 --targets q,k,v,o,gate,up,down [--out bench_lora_memory.json]

Both steps are lowered with abstract arguments (``jax.ShapeDtypeStruct`` with the run's
shardings), so nothing of the model's size is allocated, and compiled for the local devices.
Reported per mode, from XLA's ``compiled.memory_analysis()``:

* ``argument_bytes`` (state + batch, + the frozen base for LoRA), ``output_bytes``,
  ``temp_bytes`` (activations, gradients, optimizer temporaries), ``alias_bytes`` (donated
  state reused for the output) and ``total_bytes`` = arguments + outputs + temporaries - aliases,
  as ``tools/bench_step.py``'s ``compiled_bytes``;
* ``trainable_params``, ``opt_state_bytes`` (Adam's moments and counters) and
  ``reference_bytes`` (a second copy of the weights for the in-step reference: full fine-tuning
  keeps one, LoRA uses the frozen base with the adapters off).

The model is ``tools/bench_step.py``'s Llama-style ``LAYERSxHIDDEN``; the batch is its packed,
prefix-shared DPO layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_step import make_batches, model_config, random_groups  # noqa: E402
from fbjax import sharding as fsh  # noqa: E402
from fbjax.models.decoder import Decoder  # noqa: E402
from fbjax.models.lora import LoraConfig  # noqa: E402
from fbjax.train import presets  # noqa: E402
from fbjax.train import step as steplib  # noqa: E402
from fbjax.train.optim import OptimizerConfig, make_optimizer  # noqa: E402


def _abstract(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        tree, shardings)


def _bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "shape") and not jax.dtypes.issubdtype(x.dtype,
                                                                        jax.dtypes.prng_key)))


def measure(mode: str, config, lora: LoraConfig | None, batch, mesh, rules) -> dict:
    model = Decoder(config)
    objective = presets.dpo(beta=0.1)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-5), 100)
    base_sh = steplib.param_shardings(model, mesh, rules)
    base = _abstract(jax.eval_shape(lambda r: __import__("flax").linen.unbox(
        steplib.init_params_boxed(model, r)), jax.random.key(0)), base_sh)
    if lora is None:
        start, ref = base, base
    else:
        start = jax.eval_shape(lambda r: steplib.init_adapters(model, lora, r, mesh, rules),
                               jax.random.key(0))
        ref = None
    shardings = steplib.state_shardings(model, optimizer, objective, mesh, rules,
                                        with_reference=ref is not None, lora=lora)
    state = jax.eval_shape(lambda p, r: steplib.create_state(
        p, model=model, optimizer=optimizer, objective=objective, rng=jax.random.key(0),
        mesh=mesh, rules=rules, reference_params=r, lora=lora)[0], start, ref)
    state = _abstract(state, shardings)
    bsh = steplib.batch_shardings(mesh, batch)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh[k])
                      for k, v in batch.items()}
    step = steplib.make_train_step(
        model=model, objective=objective, optimizer=optimizer, mesh=mesh, rules=rules,
        state_sharding=shardings, batch_sharding=bsh, lora=lora,
        base=base if lora is not None else None)
    mem = step.lower(state, abstract_batch).compile().memory_analysis()
    return {
        "mode": mode,
        "base_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(base))),
        "trainable_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))),
        "opt_state_bytes": _bytes(state.opt_state),
        "reference_bytes": _bytes(state.ref_params),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "total_bytes": int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                           + mem.temp_size_in_bytes - mem.alias_size_in_bytes),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="12x768")
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--targets", default="q,k,v,o,gate,up,down")
    p.add_argument("--remat", default="none")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import dataclasses

    config = dataclasses.replace(model_config(args.size, args.vocab, args.seq_len),
                                 remat=args.remat)
    lora = LoraConfig(rank=args.rank, alpha=args.alpha,
                      target_modules=tuple(args.targets.split(",")))
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, -1, 1)))
    rules = fsh.RULES_FSDP
    groups = random_groups("dpo", args.seq_len, args.vocab, 4 * args.rows * args.slots, 0)
    batch = make_batches(groups, layout="prefix", rows=args.rows, seq_len=args.seq_len,
                         slots=args.slots, count=1)[0]
    rows = [measure("full", config, None, batch, mesh, rules),
            measure("lora", config, lora, batch, mesh, rules)]
    header = ("mode", "base_params", "trainable_params", "opt_state_bytes", "reference_bytes",
              "argument_bytes", "temp_bytes", "total_bytes")
    print(f"model {args.size} vocab {args.vocab}, batch {args.rows}x{args.seq_len}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s); lora {lora}")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(f"{r[h]:,}" if isinstance(r[h], int) else str(r[h]) for h in header))
    full, lo = rows
    print(f"LoRA/full: opt state {lo['opt_state_bytes'] / full['opt_state_bytes']:.4f}, "
          f"compiled total {lo['total_bytes'] / full['total_bytes']:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
