"""What makes a step trustworthy: array fingerprints, finiteness, commit markers, file checks.

A step's commit marker (:data:`MARKER`, written by process 0 once Orbax has finalised the step)
records

* every file of the step with its size, and a sha256 of every file up to
  ``CheckpointConfig.hash_max_bytes`` (all metadata, the extras, small arrays);
* a sha256 of the canonical JSON of the extras, checked after reading them back;
* a content fingerprint of every array leaf: two position-weighted uint32 sums over all of its
  bits, computed on device at save time (over the global value, so it does not depend on the
  sharding or on which process wrote which shard) and again after every restore. This is the
  checksum of every array byte: damage inside a large array file that keeps its size cannot be
  loaded as weights, whatever the storage format.

The *static* check (:func:`check_files`) reads no arrays: marker, file sizes, small files'
hashes. Only a restore (or :func:`fbjax.checkpoint.verify_step`) can clear a step completely.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from fbjax.checkpoint.errors import CheckpointError
from fbjax.checkpoint.keys import path_str

MARKER = "fbjax_commit.json"
FORMAT = 1


# ----------------------------------------------------------------------------- array fingerprints


def _as_u32(x: jax.Array) -> jax.Array | None:
    """The bits of ``x`` as uint32 (one word per element, two for 64-bit types)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return None
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # adds a trailing dim of 2
    return None


def fingerprint_leaf(x: jax.Array) -> jax.Array:
    """Two uint32 sums over the element bits, weighted by the global element index.

    Integer sums wrap exactly mod 2**32 in any order, so the result does not depend on the
    sharding (a checkpoint written on 8 devices fingerprints the same on 1). The first sum uses
    odd weights, so changing any single element always changes it.
    """
    bits = _as_u32(x)
    if bits is None:
        return jnp.zeros((2,), jnp.uint32)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(bits.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim)
        index = index + iota * jnp.uint32(stride % (1 << 32))
        stride *= bits.shape[dim]
    odd = index * jnp.uint32(0x9E3779B1) | jnp.uint32(1)
    mixed = (bits ^ (index * jnp.uint32(0x85EBCA6B))) * jnp.uint32(0xC2B2AE35)
    return jnp.stack([jnp.sum(bits * odd, dtype=jnp.uint32), jnp.sum(mixed, dtype=jnp.uint32)])


def _nonfinite_count(x: jax.Array) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros((), jnp.int32)
    return jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)


@jax.jit
def _digest_all(leaves: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
    # One program for the whole tree: fingerprints and NaN/Inf counts in one pass over the bytes.
    return [(fingerprint_leaf(x), _nonfinite_count(x)) for x in leaves]


def _host_value(x: jax.Array) -> np.ndarray:
    # Outputs of the digest are replicated; reading one local copy also works multi-host.
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def leaf_table(storage: Any) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """``(path -> {shape, dtype, fingerprint}, path -> number of NaN/Inf values)`` for every
    array leaf of the storage tree (the second dict lists only leaves that have some)."""
    flat = jax.tree_util.tree_flatten_with_path(storage)[0]
    arrays = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in flat]
    digests = _digest_all(arrays)
    table, nonfinite = {}, {}
    for (path, _), x, (fp, bad) in zip(flat, arrays, digests):
        name = path_str(path)
        table[name] = {
            "shape": list(x.shape),
            "dtype": str(np.dtype(x.dtype)),
            "fingerprint": [int(v) for v in _host_value(fp)],
        }
        if int(_host_value(bad)):
            nonfinite[name] = int(_host_value(bad))
    return table, nonfinite


def tree_fingerprint(tree: Any) -> str:
    """One sha256 over the shapes, dtypes and content fingerprints of a tree's arrays: the
    identity of weights that are not saved (e.g. the frozen base under LoRA adapters)."""
    return sha256(canonical_json(leaf_table(tree)[0]))


def describe_nonfinite(nonfinite: Mapping[str, int]) -> str:
    """``params/a (3 values), ...`` for the first few leaves holding NaN/Inf."""
    items = sorted(nonfinite.items())
    text = ", ".join(f"{k} ({v} values)" for k, v in items[:4])
    return text + (f" and {len(items) - 4} more arrays" if len(items) > 4 else "")


def check_fingerprints(marker: Mapping[str, Any], restored: Any) -> None:
    """Raises CheckpointError if restored arrays differ from what was saved or hold NaN/Inf
    (a run never saves non-finite values, so they mean damage or a checkpoint written before
    that rule)."""
    table, nonfinite = leaf_table(restored)
    bad = [k for k, v in table.items() if v["fingerprint"] != marker["leaves"][k]["fingerprint"]]
    if bad:
        raise CheckpointError(
            f"array contents differ from what was saved (fingerprint mismatch) in {bad[:4]}"
        )
    if nonfinite:
        raise CheckpointError(f"the saved state holds NaN/Inf: {describe_nonfinite(nonfinite)}")


# ----------------------------------------------------------------------------- json and hashes


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def sha256(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def check_extras(extras: Mapping[str, Any]) -> dict[str, Any]:
    """``extras`` as a dict; TypeError unless it is JSON with string keys."""
    extras = dict(extras)
    bad = [k for k in extras if not isinstance(k, str)]
    if bad:
        raise TypeError(f"checkpoint extras keys must be strings, got {bad}")
    try:
        canonical_json(extras)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint extras must be JSON-serialisable: {e}") from e
    return extras


def verified_extras(marker: Mapping[str, Any], extras: Any) -> dict[str, Any]:
    if not isinstance(extras, dict) or sha256(canonical_json(extras)) != marker["extras_sha256"]:
        raise CheckpointError("extras do not match their checksum")
    return extras


# ----------------------------------------------------------------------------- commit markers


def step_dir(root: epath.Path, step: int) -> epath.Path:
    # Orbax's default step naming (no prefix, no padding): ``<root>/<step>``.
    return root / str(step)


def _list_files(directory: epath.Path) -> list[epath.Path]:
    """Every file under ``directory`` except our own marker (epath has no recursive glob)."""
    files, todo = [], [directory]
    while todo:
        for path in todo.pop().iterdir():
            if path.is_dir():
                todo.append(path)
            elif not path.name.startswith(MARKER):
                files.append(path)
    return sorted(files)


def _file_table(directory: epath.Path, hash_max_bytes: int) -> dict[str, dict[str, Any]]:
    table = {}
    for path in _list_files(directory):
        rel = path.relative_to(directory).as_posix()
        size = path.stat().length
        entry: dict[str, Any] = {"size": size}
        if size <= hash_max_bytes:
            entry["sha256"] = sha256(path.read_bytes())
        table[rel] = entry
    return table


def write_marker(root: epath.Path, step: int, pending: Mapping[str, Any], hash_max_bytes: int):
    directory = step_dir(root, step)
    marker = dict(pending, files=_file_table(directory, hash_max_bytes))
    tmp = directory / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1, allow_nan=True))
    # A rename is atomic on local filesystems; object stores write whole objects anyway.
    tmp.rename(directory / MARKER)


def read_marker(root: epath.Path, step: int) -> dict[str, Any]:
    """The commit marker of ``step``; raises CheckpointError with the reason if unusable."""
    path = step_dir(root, step) / MARKER
    if not path.exists():
        raise CheckpointError(f"no commit marker {MARKER} (save interrupted or never committed)")
    try:
        marker = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"unreadable commit marker: {e}") from e
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise CheckpointError(f"commit marker has an unknown format: {str(marker)[:80]}")
    if marker.get("step") != step:
        raise CheckpointError(f"commit marker is for step {marker.get('step')}, not {step}")
    return marker


def check_files(root: epath.Path, step: int) -> dict[str, Any]:
    """Static integrity check (no array reads); returns the marker or raises CheckpointError."""
    marker = read_marker(root, step)
    directory = step_dir(root, step)
    for rel, entry in sorted(marker.get("files", {}).items()):
        path = directory / rel
        if not path.exists():
            raise CheckpointError(f"file {rel} is missing")
        size = path.stat().length
        if size != entry["size"]:
            raise CheckpointError(f"file {rel} has {size} bytes, {entry['size']} were written")
        if "sha256" in entry and sha256(path.read_bytes()) != entry["sha256"]:
            raise CheckpointError(f"file {rel} does not match its sha256 (contents changed)")
    return marker
