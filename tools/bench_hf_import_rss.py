"""Peak host RSS of importing a random Hugging Face checkpoint, in memory vs streaming.

    python tools/bench_hf_import_rss.py [--gb 1.0] [--shards 4] [--dir /tmp/rss_ckpt]

Writes a random Llama checkpoint of about ``--gb`` GB (float32) in ``--shards`` safetensors
shards, then imports it in fresh subprocesses with ``fbjax.models.hf.load_hf`` (all tensors in
host memory) and ``load_hf_sharded`` (one tensor at a time, placed on an 8-way FSDP mesh of CPU
devices), and prints each one's peak RSS (``VmHWM``) next to the checkpoint size
and the RSS of the bare interpreter with JAX imported. On CPU the "devices" are host memory, so
the streaming figure includes the placed parameters themselves; on an accelerator it would not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
from fbjax.models import hf
from fbjax import sharding as fsh
mode, path = sys.argv[1], sys.argv[2]
def hwm():  # peak RSS of this process in KiB (VmHWM starts afresh at exec, unlike ru_maxrss)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = hwm()
if mode == "memory":
    config, params = hf.load_hf(path)
    params = jax.device_put(params)
elif mode == "streaming":
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 8, 1)), jax.devices()[:8])
    config, params = hf.load_hf_sharded(path, mesh=mesh, rules=fsh.RULES_FSDP)
jax.block_until_ready(params) if mode != "none" else None
print(base, hwm())
"""


def write_checkpoint(out: str, gb: float, shards: int) -> int:
    import numpy as np

    from fbjax.models import hf
    from fbjax.models.config import llama

    hidden, vocab = 1024, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * 4096
    layers = max(1, int((gb * 1e9 / 4 - 2 * vocab * hidden) / per_layer))
    config = llama(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=16,
                   num_kv_heads=16, mlp_dim=4096)
    rng = np.random.default_rng(0)
    shapes = hf.expected_shapes(config)
    params = hf.unflatten({k: rng.standard_normal(s, dtype=np.float32) * 0.02
                           for k, s in shapes.items()})
    tensors = hf.params_to_hf(config, params)
    del params
    total = sum(a.nbytes for a in tensors.values())
    # Exactly ``shards`` files of about equal size (whole tensors, in name order), with the index
    # transformers writes.
    import json

    from safetensors.numpy import save_file

    names = sorted(tensors)
    groups: list[list[str]] = [[] for _ in range(shards)]
    done = 0
    for name in names:
        groups[min(shards - 1, int(done * shards / total))].append(name)
        done += tensors[name].nbytes
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, os.path.join(out, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in group})
    with open(os.path.join(out, hf.SAFETENSORS_INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(out, hf.CONFIG_FILE), "w") as f:
        json.dump(hf.config_to_hf(config), f)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dir", default="/tmp/fbjax_rss_ckpt")
    args = parser.parse_args()
    import shutil

    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    size = write_checkpoint(args.dir, args.gb, args.shards)
    shard_files = [f for f in os.listdir(args.dir) if f.endswith(".safetensors")]
    largest = max(os.path.getsize(os.path.join(args.dir, f)) for f in shard_files)
    print(f"checkpoint: {size / 2**20:.0f} MiB in {len(shard_files)} shards "
          f"(largest {largest / 2**20:.0f} MiB)")
    for mode in ("none", "memory", "streaming"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, args.dir], check=True,
                             capture_output=True, text=True).stdout.split()
        base, peak = int(out[-2]), int(out[-1])  # KiB
        print(f"{mode:>9}: peak RSS {peak / 1024:.0f} MiB (interpreter + jax {base / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
