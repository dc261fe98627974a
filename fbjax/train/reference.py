"""Reference log-probs computed once, cached on disk, and carried by the batches.

Objectives such as DPO and KTO compare the policy with a frozen reference. Computing the
reference forward inside every step costs a third of the step's FLOPs (2N per token against 6N
for the policy's forward and backward) and keeps a second copy of the parameters on device.
Since the reference never changes, its per-completion log-prob sums are a property of the data:
this module computes them in one pass (a jitted forward over prefix-shared packed batches),
stores them on disk, and :func:`attach` puts them into each group's ``ref_logps`` slot field.
Every layout (padded, packed, prefix-shared) then carries them to the step, which reads
``batch["ref_logps"]`` instead of running the reference (``fbjax.train.step.sequence_stats``), so
the state is built with ``create_state(..., reference_params=None)``.

A cache file is valid only for the exact reference model, data and truncation it was computed
from. Its metadata stores one fingerprint of each (:func:`fingerprint_params`,
:func:`fingerprint_model`, :func:`fingerprint_groups`, :class:`Truncation`); :func:`load_or_compute`
reuses a file whose metadata matches and refuses one that does not, naming what changed. The
values carry a sha256, checked at every read: values that fail it are recomputed and the file
replaced; a file that is not a readable cache at all (truncated, garbage) is refused with a
one-line :class:`ReferenceCacheError` naming it. Non-finite sums are never cached.

Usage (single process)::

    truncation = reference.Truncation.from_train(config.train)
    ref = reference.load_or_compute(cache_dir, params, config.model, groups, truncation=truncation)
    groups = reference.attach(groups, ref)
    # ... and build the state with reference_params=None.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from fbjax import sharding as fsh
from fbjax.data import packing
from fbjax.models.config import ModelConfig
from fbjax.models.decoder import Decoder
from fbjax.objectives import logprobs
from fbjax.objectives.logprobs import CHUNK
from fbjax.train import step as steplib

# 2: the values carry a sha256 (format 1 files are refused by name, or ignored by the default key).
FORMAT_VERSION = 2
FIELD = "ref_logps"
# Host-only slot fields used to map packed slots back to (group, completion); never sent to the
# device.
_GROUP_FIELD = "_ref_group"
_COMPLETION_FIELD = "_ref_completion"

log = logging.getLogger("fbjax")


class ReferenceCacheError(ValueError):
    """A cache file cannot be used; the one-line message names the file."""


class ReferenceCacheMismatch(ReferenceCacheError):
    """A cache file exists under the requested key but was computed from another model/data."""


# ----------------------------------------------------------------------------- fingerprints


def _put(h: "hashlib._Hash", data: bytes | np.ndarray) -> None:
    # Length-prefixed, so that concatenations of different pieces can never collide.
    view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)) if isinstance(
        data, np.ndarray) else memoryview(data)
    h.update(len(view).to_bytes(8, "little"))
    h.update(view)


def fingerprint_params(params: Any) -> str:
    """sha256 over every leaf's tree path, dtype, shape and raw bytes (host copies).

    Equal for the same values whether the leaves are numpy or (fully addressable) jax arrays.
    """
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    _put(h, str(len(leaves)).encode())
    for path, leaf in leaves:
        arr = np.asarray(jax.device_get(leaf))
        _put(h, jax.tree_util.keystr(path).encode())
        _put(h, f"{arr.dtype.name}{arr.shape}".encode())
        _put(h, arr)
    return h.hexdigest()


def fingerprint_model(config: ModelConfig) -> str:
    """sha256 of the model config (architecture and dtypes change the log-probs)."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_groups(groups: Sequence[packing.Group]) -> str:
    """sha256 over every group's token ids and loss masks, in order.

    Slot fields (labels, weights, an attached ``ref_logps``) do not change the log-prob sums and
    are left out, so attaching the cache does not change the data's fingerprint.
    """
    h = hashlib.sha256()
    _put(h, str(len(groups)).encode())
    for g in groups:
        _put(h, np.asarray(g.prompt, np.int32))
        _put(h, str(len(g.completions)).encode())
        for k, comp in enumerate(g.completions):
            _put(h, np.asarray(comp, np.int32))
            _put(h, b"-" if g.masks is None else np.asarray(g.masks[k], np.float32))
    return h.hexdigest()


# ----------------------------------------------------------------------------- truncation


@dataclasses.dataclass(frozen=True, kw_only=True)
class Truncation:
    """The truncation the training stream applies (``fbjax.data.packing.truncate_group``).

    The reference sums must be over exactly the tokens the step scores, so they are computed on
    groups truncated the same way. Truncating twice with the same settings is the identity, so
    the stream may truncate the attached groups again.
    """

    seq_len: int
    max_prompt_len: int
    max_completion_len: int
    share_prefix: bool
    packed: bool = True

    @classmethod
    def from_train(cls, train: Any) -> "Truncation":
        """The settings ``fbjax.train.stream.batch_stream`` uses for ``config.train``."""
        return cls(
            seq_len=train.seq_len,
            max_prompt_len=train.max_prompt_len,
            max_completion_len=train.max_completion_len,
            share_prefix=train.share_prefix and train.packing,
            packed=train.packing,
        )

    def apply(self, groups: Sequence[packing.Group]) -> list[packing.Group]:
        return [
            packing.truncate_group(
                g,
                seq_len=self.seq_len,
                max_prompt_len=self.max_prompt_len,
                max_completion_len=self.max_completion_len,
                share_prefix=self.share_prefix,
                packed=self.packed,
            )
            for g in groups
        ]


# ----------------------------------------------------------------------------- computation


@functools.lru_cache(maxsize=16)
def _sums_fn(model_config: ModelConfig, num_slots: int, chunk_size: int, mesh: Mesh | None, rules):
    """The jitted forward, one per static setting (cached so repeated calls do not recompile)."""
    model = Decoder(model_config)

    def sums(params, batch):
        tok = steplib.token_logps(model, params, batch, chunk_size=chunk_size)
        return logprobs.sequence_sums(tok, batch["loss_mask"], batch["slot_ids"], num_slots)

    if mesh is None:
        return jax.jit(sums)

    def traced(params, batch):
        # As in make_train_step: the model's activation constraints resolve against these rules.
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return sums(params, batch)

    return jax.jit(traced)


def compute_reference_logps(
    params: Any,
    model_config: ModelConfig,
    groups: Sequence[packing.Group],
    *,
    truncation: Truncation | None = None,
    num_rows: int = 8,
    seq_len: int | None = None,
    num_slots: int = 32,
    chunk_size: int = CHUNK,
    mesh: Mesh | None = None,
    rules: fsh.Rules = fsh.RULES_FSDP_TP,
) -> list[np.ndarray]:
    """Per-completion reference log-prob sums, one float32 array per group (in group order).

    Groups are truncated by ``truncation`` (if given), sorted longest first and packed with
    prefix sharing (first-fit decreasing: the fewest computed tokens; per-completion sums do
    not depend on the layout) into ``[num_rows, seq_len]`` batches of one static shape, so the
    forward compiles once. ``seq_len`` defaults to ``truncation.seq_len`` or the longest group.
    With ``mesh`` the batch rows are split over its batch axes (``params`` should already be
    placed on it); without, everything runs on the default device.
    """
    if truncation is not None:
        groups = truncation.apply(groups)
    groups = list(groups)
    if not groups:
        return []
    lengths = np.array([g.length(share_prefix=True) for g in groups])
    if seq_len is None:
        seq_len = truncation.seq_len if truncation is not None else int(lengths.max())
    if lengths.max() > seq_len:
        raise ValueError(
            f"a group of {lengths.max()} tokens exceeds seq_len={seq_len}; pass a truncation "
            "or a larger seq_len"
        )
    max_completions = max(len(g.completions) for g in groups)
    num_slots = max(num_slots, max_completions)
    fn = _sums_fn(model_config, num_slots, chunk_size, mesh, rules)
    shard = None if mesh is None else {
        k: fsh.batch_sharding(mesh, 2)
        for k in (*steplib.TOKEN_KEYS, "slot_valid")
    }

    order = np.argsort(-lengths, kind="stable")
    pending = []  # (device sums, host index arrays): fetched after all batches are dispatched
    pos = 0
    while pos < len(order):
        window = order[pos : pos + num_rows * num_slots]
        tagged = [
            dataclasses.replace(
                groups[gi],
                slot_fields={
                    _GROUP_FIELD: (float(j),) * len(groups[gi].completions),
                    _COMPLETION_FIELD: tuple(float(k) for k in range(len(groups[gi].completions))),
                },
            )
            for j, gi in enumerate(window)
        ]
        batch, used = packing.pack(
            tagged, seq_len=seq_len, num_rows=num_rows, num_slots=num_slots, share_prefix=True,
            fields=(_GROUP_FIELD, _COMPLETION_FIELD),
        )
        assert used > 0  # every group fits an empty batch (checked above)
        index = (batch.pop(_GROUP_FIELD), batch.pop(_COMPLETION_FIELD), batch["slot_valid"].copy())
        if shard is not None:
            batch = {k: jax.device_put(v, shard[k]) for k, v in batch.items()}
        pending.append((fn(params, batch), window, index))
        pos += used

    out = [np.zeros(len(g.completions), np.float32) for g in groups]
    for sums, window, (gidx, cidx, valid) in pending:
        sums = np.asarray(jax.device_get(sums))
        for r, k in zip(*np.nonzero(valid > 0)):
            out[window[int(gidx[r, k])]][int(cidx[r, k])] = sums[r, k]
    return out


# ----------------------------------------------------------------------------- the cache


def _metadata(params, model_config, groups, truncation) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "model": fingerprint_model(model_config),
        "params": fingerprint_params(params),
        "data": fingerprint_groups(groups),
        "num_groups": len(groups),
        "truncation": None if truncation is None else dataclasses.asdict(truncation),
    }


def reference_fingerprint(meta: dict[str, Any]) -> str:
    """One fingerprint of the reference model: its config and its parameter bytes."""
    return hashlib.sha256(f"{meta.get('model')}:{meta.get('params')}".encode()).hexdigest()


def default_key(meta: dict[str, Any]) -> str:
    """A content-addressed file name: it changes whenever the model, data or settings do."""
    text = json.dumps(meta, sort_keys=True)
    return "ref_logps-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(os.fspath(cache_dir), f"{key}.npz")


def _mismatch(path: str, stored: dict, wanted: dict) -> ReferenceCacheMismatch:
    what = {"format": "cache format", "model": "reference model config",
            "params": "reference parameters", "data": "data",
            "truncation": "truncation settings"}
    changed = [v for k, v in what.items() if stored.get(k) != wanted.get(k)] or ["metadata"]
    return ReferenceCacheMismatch(
        f"reference log-prob cache {path} does not match this run: "
        f"{', '.join(changed)} changed. "
        f"Cached: reference {reference_fingerprint(stored)[:16]}, "
        f"data {str(stored.get('data'))[:16]}, truncation {stored.get('truncation')}; "
        f"requested: reference {reference_fingerprint(wanted)[:16]}, data {wanted['data'][:16]}, "
        f"truncation {wanted['truncation']}. "
        "Delete the file or use another cache key to recompute."
    )


def _values_sha256(values: np.ndarray, counts: np.ndarray) -> str:
    h = hashlib.sha256()
    _put(h, np.ascontiguousarray(values, "<f4"))
    _put(h, np.ascontiguousarray(counts, "<i8"))
    return h.hexdigest()


def _read(path: str) -> tuple[dict, np.ndarray, np.ndarray, bool]:
    """``(metadata, values, counts, values intact)``; ReferenceCacheError naming the file if it
    is not a readable cache file at all (truncated, not a zip, missing entries)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta, values, counts = json.loads(str(f["meta"])), f["values"], f["counts"]
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, KeyError, ValueError, OSError...
        raise ReferenceCacheError(
            f"reference log-prob cache {path} is unreadable ({type(e).__name__}: {e}); "
            "delete it to recompute"
        ) from None
    if not isinstance(meta, dict):
        raise ReferenceCacheError(f"reference log-prob cache {path} has no metadata dict")
    return meta, values, counts, meta.get("values_sha256") == _values_sha256(values, counts)


def _write(path: str, meta: dict, values: list[np.ndarray]) -> None:
    counts = np.array([len(v) for v in values], np.int64)
    flat = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    meta = dict(meta, values_sha256=_values_sha256(flat, counts))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Written to a temporary file and renamed, so a crash never leaves a truncated cache.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), values=flat,
                     counts=counts)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _check_finite(path: str, sums: Sequence[np.ndarray]) -> None:
    bad = [i for i, v in enumerate(sums) if not np.all(np.isfinite(v))]
    if bad:
        raise ReferenceCacheError(
            f"reference log-probs for {path} are not finite for groups {bad[:8]} "
            f"({len(bad)} groups); not caching them"
        )


def load_or_compute(
    cache_dir: str,
    params: Any,
    model_config: ModelConfig,
    groups: Sequence[packing.Group],
    *,
    key: str | None = None,
    truncation: Truncation | None = None,
    **compute_kwargs,
) -> list[np.ndarray]:
    """Reference sums for ``groups``, read from ``cache_dir/<key>.npz`` or computed and saved.

    ``key`` names the cache file; by default it is derived from all fingerprints, so a changed
    model or data simply gets a new file. With an explicit key, an existing file whose metadata
    does not match raises :class:`ReferenceCacheMismatch` naming both fingerprints and the file;
    damaged values are recomputed, an unreadable file raises :class:`ReferenceCacheError`.
    ``compute_kwargs`` go to :func:`compute_reference_logps` (they do not change the sums).
    """
    meta = _metadata(params, model_config, groups, truncation)
    path = cache_path(cache_dir, key or default_key(meta))
    if os.path.exists(path):
        stored, values, counts, intact = _read(path)
        if {k: stored.get(k) for k in meta} != meta:
            raise _mismatch(path, stored, meta)
        if intact:
            return list(np.split(values, np.cumsum(counts)[:-1])) if len(counts) else []
        # Our own file (its metadata matches) with damaged values: they are a pure function of
        # that metadata, so recompute and replace them.
        log.warning("reference log-prob cache %s: values do not match their sha256; "
                    "recomputing", path)
    sums = compute_reference_logps(
        params, model_config, groups, truncation=truncation, **compute_kwargs
    )
    _check_finite(path, sums)
    if jax.process_index() == 0:
        _write(path, meta, sums)
    return sums


def for_config(
    config: Any,
    groups: Sequence[packing.Group],
    reference_params: Any,
    *,
    cache_dir: str,
    key: str | None = None,
    **compute_kwargs,
) -> list[packing.Group]:
    """``groups`` with cached reference sums attached, truncated as ``config.train`` will be.

    The returned groups are already truncated (truncating again is the identity), so
    ``fbjax.train.stream.batch_stream`` feeds exactly the scored tokens.
    """
    truncation = Truncation.from_train(config.train)
    compute_kwargs.setdefault("chunk_size", config.train.logprob_chunk)
    ref = load_or_compute(
        cache_dir, reference_params, config.model, groups, key=key, truncation=truncation,
        **compute_kwargs,
    )
    return attach(truncation.apply(groups), ref)


def attach(groups: Sequence[packing.Group], ref_logps: Sequence[np.ndarray]) -> list[packing.Group]:
    """Groups with a ``ref_logps`` slot field (one value per completion).

    ``fbjax.train.stream.batch_stream`` turns every slot field into a ``[B, K]`` batch array in each
    layout, so the step reads the cached values instead of running the reference.
    """
    if len(groups) != len(ref_logps):
        raise ValueError(f"{len(ref_logps)} reference arrays for {len(groups)} groups")
    out = []
    for i, (g, ref) in enumerate(zip(groups, ref_logps)):
        if len(ref) != len(g.completions):
            raise ValueError(
                f"group {i} has {len(g.completions)} completions but {len(ref)} reference sums"
            )
        fields = {**g.slot_fields, FIELD: tuple(float(x) for x in ref)}
        out.append(dataclasses.replace(g, slot_fields=fields))
    return out
