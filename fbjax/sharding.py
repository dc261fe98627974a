"""Meshes and the one table that maps logical axis names to mesh axes.

The model names every weight and activation dimension logically (``embed``, ``heads``, ...).
A rules table maps each logical name to a mesh axis (or a tuple of them, or None = replicated).
Two presets cover the usual cases; an experiment picks one by value, never by string.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, Any], ...]

# Fully sharded data parallel: the batch is split over (data, fsdp); every weight is split over
# fsdp along its embedding dimension and gathered just in time by XLA.
RULES_FSDP: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", None),
    ("kv_heads", None),
    ("head_dim", None),
    ("mlp", None),
    ("vocab", None),
    ("pos", None),
    ("norm", None),
    # MoE expert kernels [expert, ...]: split over fsdp along their embed axis like every other
    # weight; the expert axis itself stays whole.
    ("expert", None),
)

# FSDP plus Megatron-style tensor parallelism: attention heads, MLP hidden units and the
# vocabulary are split over the tensor axis, so per-layer activations stay sharded. MoE experts
# are split over the tensor axis too (expert parallelism: each device holds E / tensor whole
# experts, as MaxText's expert axis does); an expert kernel's own "mlp" axis then finds
# "tensor" taken and stays whole (flax gives a mesh axis to the first rule that claims it).
RULES_FSDP_TP: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("expert", "tensor"),  # before "mlp": the first rule to claim a mesh axis keeps it
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("pos", None),
    ("norm", None),
)

# The batch axes that data-parallel arrays are split over (rows of every batch array).
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Shape of the (data, fsdp, tensor) device mesh; at most one entry may be -1 (fill).

    ``rules`` is the logical-axis rules table (``RULES_FSDP`` or ``RULES_FSDP_TP`` or your own).
    """

    shape: tuple[int, int, int] = (1, -1, 1)
    rules: Rules = RULES_FSDP_TP

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3:
            raise ValueError(f"mesh.shape must have 3 entries (data, fsdp, tensor), got {shape}")
        if sum(s == -1 for s in shape) > 1 or any(s == 0 or s < -1 for s in shape):
            raise ValueError(f"mesh.shape={shape}: entries must be positive, at most one -1")
        object.__setattr__(self, "shape", shape)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        known = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if num_devices % known:
                raise ValueError(f"mesh.shape={self.shape} does not divide {num_devices} devices")
            return tuple(num_devices // known if s == -1 else s for s in self.shape)
        if known != num_devices:
            raise ValueError(
                f"mesh.shape={self.shape} needs {known} devices but {num_devices} are available"
            )
        return self.shape


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # odd device counts on CPU: plain row-major layout is fine there
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_sharding(mesh: Mesh, rules: Rules, logical_axes: Sequence[str | None]) -> NamedSharding:
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
    return NamedSharding(mesh, spec)


def tree_shardings(mesh: Mesh, rules: Rules, boxed_tree: Any) -> Any:
    """NamedShardings for a pytree whose leaves may be ``nn.Partitioned`` boxes.

    Unboxed leaves (step counters, optimizer scalars) are replicated.
    """
    specs = nn.get_partition_spec(boxed_tree)
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(spec, rules)
                                   if spec != PartitionSpec() else PartitionSpec()),
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows split over the batch axes, every other dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_devices(mesh: Mesh) -> int:
    """How many pieces the batch axes cut the rows into (rows must be a multiple of it)."""
    return batch_shards(mesh, batch_sharding(mesh, 1))


def batch_shards(mesh: Mesh, sharding: NamedSharding) -> int:
    """How many pieces ``sharding`` cuts an array's first dimension (its rows) into."""
    spec = sharding.spec[0] if len(sharding.spec) else None
    axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


def sharding_table(params: Any, shardings: Any) -> str:
    """One line per parameter: path, shape, dtype, partition spec and per-device size."""
    rows = []
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat_p, flat_s):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        shard_shape = sharding.shard_shape(leaf.shape)
        rows.append(
            f"{name:<48} {str(tuple(leaf.shape)):<18} {str(leaf.dtype):<9} "
            f"{str(tuple(sharding.spec)):<28} per-device {shard_shape}"
        )
    return "\n".join(rows)


def replicated_fraction(params: Any, shardings: Any) -> float:
    """Fraction of parameter bytes that every device holds in full (for sharding checks)."""
    total = replicated = 0
    flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for leaf, sharding in zip(jax.tree.leaves(params), flat_s):
        n = math.prod(leaf.shape)
        total += n
        if sharding.shard_shape(leaf.shape) == tuple(leaf.shape):
            replicated += n
    return replicated / max(total, 1)
