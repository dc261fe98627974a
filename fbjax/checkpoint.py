"""Checkpoints: the only module that talks to Orbax.

A checkpoint of step ``N`` is the directory ``<root>/N/`` that Orbax writes (``state/``: the
:class:`~fbjax.train.state.TrainState` arrays, ``extras/``: a JSON dict with the data-iterator
state, the resolved config, metrics and the reference-model identity) plus one file fbjax adds,
``fbjax_commit.json``, once Orbax has finalised the step. A step counts as *complete* only when
both hold: Orbax finalised it (atomic rename of its tmp dir locally, ``commit_success.txt`` on
object stores; ``CheckpointManager.all_steps`` lists only those) and the commit marker is present
and matches the files. The marker records

* every file of the step with its size, and a sha256 of every file up to
  ``CheckpointConfig.hash_max_bytes`` (all metadata, the extras, small arrays);
* a sha256 of the canonical JSON of the extras, checked after reading them back;
* a content fingerprint of every array leaf (two position-weighted uint32 sums of its bits,
  computed on device at save time and again after restore), so silently flipped bytes inside a
  large array file cannot be loaded as weights, whatever the storage format.

Restoring walks the complete steps from the newest down, logs a WARNING naming each step it
rejects and why, and returns the first one that passes; it never deletes anything.

We use the ``CheckpointManager`` + ``args=Composite(...)`` API: in orbax-checkpoint 0.12 it is the
stable, documented one with preservation policies and async saving built in, whereas the v1 API
still lives under ``orbax.checkpoint.experimental.v1``.

Multi-host: every process calls :func:`save`, :func:`restore_latest` etc. in lockstep (Orbax's
protocol: each process writes its shards, the primary process writes metadata and finalises).
The commit marker is written by process 0 after Orbax's finalisation, followed by a barrier.
Time-based save decisions and the SIGTERM flag are agreed across processes (process 0's clock
decides, any process's SIGTERM counts); see :meth:`Manager.should_save` and
:meth:`PreemptionFlag.agreed`.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import signal
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

# ``open`` is deliberately not exported by ``import *`` (it would shadow the builtin).
__all__ = [
    "MARKER", "CheckpointConfig", "CheckpointError", "Manager", "PreemptionFlag",
    "RunCheckpointer", "install_preemption_handler", "list_steps", "read_extras", "read_metadata",
    "restore_at", "restore_latest", "restore_params", "save", "step_status",
]

log = logging.getLogger("fbjax.checkpoint")

MARKER = "fbjax_commit.json"
_FORMAT = 1
_STATE, _EXTRAS = "state", "extras"
_preservation = ocp.checkpoint_managers.preservation_policy


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt, incomplete, or none of them loads)."""


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When to save and what to keep.

    ``every_steps`` / ``every_minutes``: save when either is due (None = never for that rule).
    ``keep``: the last K checkpoints are kept (None = all), plus the newest *committed* one until
    the next save, so a good checkpoint is never deleted while a newer one is still being written
    (with ``keep=1`` two can be on disk). ``keep_milestones_every``: steps that are multiples of
    it (an int) or listed (a tuple) are kept forever. ``hash_max_bytes``: files up to this size
    are sha256-hashed into the commit marker (0: none); larger ones are checked by size, and
    every array by its content fingerprint after restore.
    """

    every_steps: int | None = None
    every_minutes: float | None = None
    keep: int | None = 3
    keep_milestones_every: int | tuple[int, ...] | None = None
    async_save: bool = True
    hash_max_bytes: int = 1 << 20

    def __post_init__(self):
        if self.every_steps is not None and self.every_steps <= 0:
            raise ValueError(f"checkpoint.every_steps must be positive, got {self.every_steps}")
        if self.every_minutes is not None and not self.every_minutes > 0:
            raise ValueError(f"checkpoint.every_minutes must be positive, got {self.every_minutes}")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1 or None, got {self.keep}")
        milestones = self.keep_milestones_every
        if isinstance(milestones, (list, tuple)):
            object.__setattr__(self, "keep_milestones_every", tuple(int(s) for s in milestones))
        elif milestones is not None and milestones <= 0:
            raise ValueError(f"checkpoint.keep_milestones_every must be positive, got {milestones}")


# ----------------------------------------------------------------------------- pytree helpers


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _path_str(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _to_storage(state: Any) -> tuple[Any, dict[str, str]]:
    """Typed PRNG keys -> their uint32 key data (Orbax stores plain arrays); returns the impls."""
    impls = {}

    def convert(path, x):
        if _is_key(x):
            impls[_path_str(path)] = str(jax.random.key_impl(x))
            return jax.random.key_data(x)
        return x

    return jax.tree_util.tree_map_with_path(convert, state), impls


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


def _fingerprint_leaf(x: jax.Array) -> jax.Array:
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


@jax.jit
def _fingerprint_all(leaves: list[jax.Array]) -> list[jax.Array]:
    return [_fingerprint_leaf(x) for x in leaves]


def _host_value(x: jax.Array) -> np.ndarray:
    # Outputs of the fingerprint are replicated; reading one local copy also works multi-host.
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _leaf_table(storage: Any) -> dict[str, dict[str, Any]]:
    """``path -> {shape, dtype, fingerprint}`` for every array leaf of the storage tree."""
    flat = jax.tree_util.tree_flatten_with_path(storage)[0]
    arrays = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in flat]
    prints = _fingerprint_all(arrays)
    return {
        _path_str(path): {
            "shape": list(x.shape),
            "dtype": str(np.dtype(x.dtype)),
            "fingerprint": [int(v) for v in _host_value(fp)],
        }
        for (path, _), x, fp in zip(flat, arrays, prints)
    }


def tree_fingerprint(tree: Any) -> str:
    """One sha256 over the shapes, dtypes and content fingerprints of a tree's arrays: the
    identity of weights that are not saved (e.g. the frozen base under LoRA adapters)."""
    return _sha256(_canonical_json(_leaf_table(tree)))


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _sha256(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- commit markers


def _step_dir(root: epath.Path, step: int) -> epath.Path:
    # Orbax's default step naming (no prefix, no padding): ``<root>/<step>``.
    return root / str(step)


def _list_files(step_dir: epath.Path) -> list[epath.Path]:
    """Every file under ``step_dir`` except our own marker (epath has no recursive glob)."""
    files, todo = [], [step_dir]
    while todo:
        for path in todo.pop().iterdir():
            if path.is_dir():
                todo.append(path)
            elif not path.name.startswith(MARKER):
                files.append(path)
    return sorted(files)


def _file_table(step_dir: epath.Path, hash_max_bytes: int) -> dict[str, dict[str, Any]]:
    table = {}
    for path in _list_files(step_dir):
        rel = path.relative_to(step_dir).as_posix()
        size = path.stat().length
        entry: dict[str, Any] = {"size": size}
        if size <= hash_max_bytes:
            entry["sha256"] = _sha256(path.read_bytes())
        table[rel] = entry
    return table


def _write_marker(root: epath.Path, step: int, pending: dict[str, Any], hash_max_bytes: int):
    step_dir = _step_dir(root, step)
    marker = dict(pending, files=_file_table(step_dir, hash_max_bytes))
    tmp = step_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1, allow_nan=True))
    # A rename is atomic on local filesystems; object stores write whole objects anyway.
    tmp.rename(step_dir / MARKER)


def _read_marker(root: epath.Path, step: int) -> dict[str, Any]:
    """The commit marker of ``step``; raises CheckpointError with the reason if unusable."""
    path = _step_dir(root, step) / MARKER
    if not path.exists():
        raise CheckpointError(f"no commit marker {MARKER} (save interrupted or never committed)")
    try:
        marker = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"unreadable commit marker: {e}") from e
    if not isinstance(marker, dict) or marker.get("format") != _FORMAT:
        raise CheckpointError(f"commit marker has an unknown format: {str(marker)[:80]}")
    if marker.get("step") != step:
        raise CheckpointError(f"commit marker is for step {marker.get('step')}, not {step}")
    return marker


def _check_files(root: epath.Path, step: int) -> dict[str, Any]:
    """Static integrity check (no array reads); returns the marker or raises CheckpointError."""
    marker = _read_marker(root, step)
    step_dir = _step_dir(root, step)
    for rel, entry in sorted(marker.get("files", {}).items()):
        path = step_dir / rel
        if not path.exists():
            raise CheckpointError(f"file {rel} is missing")
        size = path.stat().length
        if size != entry["size"]:
            raise CheckpointError(f"file {rel} has {size} bytes, {entry['size']} were written")
        if "sha256" in entry and _sha256(path.read_bytes()) != entry["sha256"]:
            raise CheckpointError(f"file {rel} does not match its sha256 (contents changed)")
    return marker


# ----------------------------------------------------------------------------- orbax plumbing


@dataclasses.dataclass
class _KeepNewestCommitted:
    """Preservation policy: never delete the newest checkpoint that passes the static check.

    Orbax's LatestN counts every finalised step; this keeps the last known-good one alive while
    newer ones are still uncommitted (or turn out to be corrupt).
    """

    root: epath.Path

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        keep = [False] * len(checkpoints)
        for i in reversed(range(len(checkpoints))):
            try:
                _check_files(self.root, checkpoints[i].step)
            except (CheckpointError, OSError):
                continue
            keep[i] = True
            break
        return keep


def _preservation_policy(root: epath.Path, config: CheckpointConfig):
    if config.keep is None:
        return _preservation.PreserveAll()
    policies = [_preservation.LatestN(n=config.keep), _KeepNewestCommitted(root)]
    milestones = config.keep_milestones_every
    if isinstance(milestones, tuple):
        policies.append(_preservation.CustomSteps(steps=milestones))
    elif milestones is not None:
        policies.append(_preservation.EveryNSteps(interval_steps=milestones))
    return _preservation.AnyPreservationPolicy(policies=policies)


def _read_only_orbax(root: epath.Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(root, options=options)


def _barrier(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"fbjax.checkpoint:{name}")


# ----------------------------------------------------------------------------- the manager


class Manager:
    """A thin holder of an Orbax ``CheckpointManager`` plus the save cadence and commit markers.

    Create it with :func:`open`. It holds no training logic: the loop asks :meth:`should_save`
    and calls :func:`save`; :meth:`wait` / :meth:`close` finish async saves and commit them.
    """

    def __init__(self, directory: epath.PathLike, config: CheckpointConfig,
                 clock: Callable[[], float] = time.monotonic):
        self.directory = epath.Path(directory)
        self.config = config
        self._clock = clock
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_preservation_policy(self.directory, config),
            enable_async_checkpointing=config.async_save,
            cleanup_tmp_directories=True,  # half-written tmp dirs of a killed run are garbage
            create=True,
        )
        self.orbax = ocp.CheckpointManager(self.directory, options=options)
        # step -> marker contents known at save time, written once Orbax finalises the step.
        self._pending: dict[int, dict[str, Any]] = {}
        self._last_save_time = clock()
        self._last_step: int | None = None

    # -- cadence

    def should_save(self, step: int, now: float | None = None) -> bool:
        """Whether ``step`` is due: a multiple of ``every_steps`` (step > 0), or ``every_minutes``
        elapsed since the last save (``now`` from this manager's clock, default
        ``time.monotonic()``). Multi-host: process 0's clock decides, so all processes agree
        (this is then a collective: call it on every process).
        """
        if self._single_process():
            self._commit_finished()  # cheap: only does work when an async save just finished
        if step == self._last_step:
            return False
        cfg = self.config
        if cfg.every_steps is not None and step > 0 and step % cfg.every_steps == 0:
            return True
        if cfg.every_minutes is None:
            return False
        now = self._clock() if now is None else now
        due = now - self._last_save_time >= 60.0 * cfg.every_minutes
        if not self._single_process():
            due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
        return due

    # -- async completion

    def wait(self):
        """Blocks until the last async save is finalised, then writes its commit marker."""
        self.orbax.wait_until_finished()
        self._commit_pending()

    def close(self):
        """Finishes and commits outstanding saves and releases Orbax's resources."""
        try:
            self.wait()
        finally:
            self.orbax.close()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc):
        self.close()

    # -- internals

    @staticmethod
    def _single_process() -> bool:
        return jax.process_count() == 1

    def _commit_finished(self):
        if self._pending and not self.orbax.is_saving_in_progress():
            self.wait()

    def _commit_pending(self):
        if not self._pending:
            return
        self.orbax.reload()
        finalised = set(self.orbax.all_steps())
        for step, pending in sorted(self._pending.items()):
            if step not in finalised:
                log.warning("checkpoint step %d was not finalised by Orbax; not committing", step)
            elif jax.process_index() == 0:
                _write_marker(self.directory, step, pending, self.config.hash_max_bytes)
        self._pending.clear()
        _barrier("commit")


def open(  # noqa: A001 - the natural name; this module never needs the builtin
    directory: epath.PathLike,
    config: CheckpointConfig = CheckpointConfig(),
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Manager:
    """Opens (creating if needed) the checkpoint directory for saving and restoring."""
    return Manager(directory, config, clock=clock)


# ----------------------------------------------------------------------------- saving


def _check_extras(extras: Mapping[str, Any]) -> dict[str, Any]:
    extras = dict(extras)
    bad = [k for k in extras if not isinstance(k, str)]
    if bad:
        raise TypeError(f"checkpoint extras keys must be strings, got {bad}")
    try:
        _canonical_json(extras)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint extras must be JSON-serialisable: {e}") from e
    return extras


def save(
    mgr: Manager,
    step: int,
    state: Any,
    *,
    extras: Mapping[str, Any],
    force: bool = False,
) -> bool:
    """Saves ``state`` (a TrainState or any pytree of arrays) and JSON ``extras`` at ``step``.

    Without ``force`` it saves only if :meth:`Manager.should_save` says so. Returns whether a
    save was started. With ``async_save`` the arrays are copied to host before this returns (so
    the caller may donate ``state`` to the next step) and written in the background; the commit
    marker follows at the next save, :meth:`Manager.wait`/``close``, or (single process) the next
    ``should_save`` after the write finished. Saving a step that already has a complete
    checkpoint is a no-op; an incomplete or corrupt one at that step is replaced.
    """
    step = int(step)
    if not force and not mgr.should_save(step):
        return False
    extras = _check_extras(extras)
    mgr.wait()  # Orbax would wait for the previous save anyway; this also commits it
    if step in mgr.orbax.all_steps():
        try:
            _check_files(mgr.directory, step)
            log.info("checkpoint step %d already exists and is complete; not saving again", step)
            mgr._last_step = step
            return False
        except CheckpointError as e:
            log.warning("replacing incomplete checkpoint step %d in %s (%s)",
                        step, mgr.directory, e)
            mgr.orbax.delete(step)
    storage, key_impls = _to_storage(state)
    pending = {
        "format": _FORMAT,
        "step": step,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "extras_sha256": _sha256(_canonical_json(extras)),
        "key_impls": key_impls,
        "leaves": _leaf_table(storage),
    }
    args = ocp.args.Composite(
        **{_STATE: ocp.args.StandardSave(storage), _EXTRAS: ocp.args.JsonSave(extras)}
    )
    mgr.orbax.save(step, args=args, force=True)
    mgr._pending[step] = pending
    mgr._last_save_time = mgr._clock()
    mgr._last_step = step
    if not mgr.config.async_save:
        mgr._commit_pending()
    return True


# ----------------------------------------------------------------------------- restoring


def _restore_targets(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the TARGET shardings; typed keys become their uint32 key data."""
    if shardings is None:
        shardings = jax.tree.map(lambda a: getattr(a, "sharding", None), abstract_state)

    def target(abstract, sharding):
        if _is_key(abstract):
            data = jax.eval_shape(jax.random.key_data, abstract)
            # A NamedSharding's spec leaves trailing dims replicated, so the key's own sharding
            # is valid for its key data (one extra trailing dim).
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
        return jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=sharding)

    return jax.tree.map(target, abstract_state, shardings)


def _check_structure(marker: dict[str, Any], targets: Any, step: int, prefix: str = ""):
    """The requested state must match what was saved; a mismatch is a config error, not
    corruption, so it raises ValueError instead of falling back to older checkpoints.

    ``prefix`` limits the comparison to saved leaves under it (a partial restore)."""
    saved = {k: v for k, v in marker["leaves"].items() if k.startswith(prefix)}
    want = {
        _path_str(p): {"shape": list(t.shape), "dtype": str(np.dtype(t.dtype))}
        for p, t in jax.tree_util.tree_flatten_with_path(targets)[0]
    }
    problems = [f"missing in checkpoint: {k}" for k in sorted(set(want) - set(saved))]
    problems += [f"not in requested state: {k}" for k in sorted(set(saved) - set(want))]
    for k in sorted(set(want) & set(saved)):
        if saved[k]["shape"] != want[k]["shape"] or saved[k]["dtype"] != want[k]["dtype"]:
            problems.append(
                f"{k}: saved {saved[k]['dtype']}{saved[k]['shape']}, "
                f"requested {want[k]['dtype']}{want[k]['shape']}"
            )
    if problems:
        raise ValueError(
            f"checkpoint step {step} does not match the requested state: " + "; ".join(problems[:8])
        )


def _rewrap_keys(restored: Any, abstract_state: Any, targets: Any, impls: dict[str, str]) -> Any:
    def rewrap(path, data, abstract, target):
        if not _is_key(abstract):
            return data
        impl = impls.get(_path_str(path))
        if impl is None:
            raise ValueError(f"{_path_str(path)} is a PRNG key but was not saved as one")
        wrap = functools.partial(jax.random.wrap_key_data, impl=impl)
        key = jax.jit(wrap, out_shardings=target.sharding)(data)
        if key.dtype != abstract.dtype:
            raise ValueError(
                f"{_path_str(path)}: saved key type {key.dtype}, want {abstract.dtype}"
            )
        return key

    return jax.tree_util.tree_map_with_path(rewrap, restored, abstract_state, targets)


def _load_step(orbax_mgr: ocp.CheckpointManager, root: epath.Path, step: int,
               abstract_state: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
    """Restores and verifies one step; raises CheckpointError (corrupt) or ValueError (mismatch)."""
    marker = _check_files(root, step)
    targets = _restore_targets(abstract_state, shardings)
    _check_structure(marker, targets, step)
    args = ocp.args.Composite(
        **{_STATE: ocp.args.StandardRestore(targets), _EXTRAS: ocp.args.JsonRestore()}
    )
    try:
        restored = orbax_mgr.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
        raise CheckpointError(f"Orbax failed to restore it: {type(e).__name__}: {e}") from e
    extras = _verified_extras(marker, restored[_EXTRAS])
    storage = restored[_STATE]
    leaves = _leaf_table(storage)
    bad = [k for k, v in leaves.items() if v["fingerprint"] != marker["leaves"][k]["fingerprint"]]
    if bad:
        raise CheckpointError(
            f"array contents differ from what was saved (fingerprint mismatch) in {bad[:4]}"
        )
    state = _rewrap_keys(storage, abstract_state, targets, marker.get("key_impls", {}))
    return state, extras


def _verified_extras(marker: dict[str, Any], extras: Any) -> dict[str, Any]:
    if not isinstance(extras, dict) or _sha256(_canonical_json(extras)) != marker["extras_sha256"]:
        raise CheckpointError("extras do not match their checksum")
    return extras


def _finalised_steps(
    mgr_or_dir: Manager | epath.PathLike,
) -> tuple[Any, epath.Path, list[int], bool]:
    """(orbax manager, root, finalised steps newest first, whether we opened the manager)."""
    if isinstance(mgr_or_dir, Manager):
        mgr = mgr_or_dir
        mgr.wait()
        mgr.orbax.reload()
        return mgr.orbax, mgr.directory, sorted(mgr.orbax.all_steps(), reverse=True), False
    root = epath.Path(mgr_or_dir)
    if not root.exists():
        return None, root, [], False
    orbax_mgr = _read_only_orbax(root)
    return orbax_mgr, root, sorted(orbax_mgr.all_steps(), reverse=True), True


def restore_latest(
    mgr_or_dir: Manager | epath.PathLike,
    abstract_state: Any,
    shardings: Any = None,
) -> tuple[Any, dict[str, Any], int] | None:
    """The newest complete, verified checkpoint as ``(state, extras, step)``, or None if none.

    ``abstract_state`` is ``jax.eval_shape``-style (ShapeDtypeStructs, typed PRNG keys allowed);
    ``shardings`` the matching tree of TARGET shardings (default: the abstract leaves' own), so a
    checkpoint written on one mesh restores onto any other. Each rejected step is logged as a
    WARNING with the reason and skipped; nothing is deleted. Raises CheckpointError if steps
    exist but none is usable (starting from scratch silently would be worse), and ValueError if
    the requested state does not match the saved structure.
    """
    orbax_mgr, root, steps, opened = _finalised_steps(mgr_or_dir)
    try:
        rejected: dict[int, str] = {}
        for step in steps:
            try:
                state, extras = _load_step(orbax_mgr, root, step, abstract_state, shardings)
            except CheckpointError as e:
                rejected[step] = str(e)
                log.warning(
                    "checkpoint step %d in %s is incomplete or corrupt: %s; falling back to an "
                    "earlier checkpoint", step, root, e,
                )
                continue
            if rejected:
                log.warning("restored checkpoint step %d (rejected steps %s)", step, list(rejected))
            return state, extras, step
        if rejected:
            reasons = "; ".join(f"step {s}: {r[:300]}" for s, r in rejected.items())
            raise CheckpointError(f"no usable checkpoint in {root}: {reasons}")
        return None
    finally:
        if opened:
            orbax_mgr.close()


def restore_at(
    mgr_or_dir: Manager | epath.PathLike,
    step: int,
    abstract_state: Any,
    shardings: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Restores exactly ``step`` (for analysis); raises CheckpointError if it is not usable."""
    orbax_mgr, root, steps, opened = _finalised_steps(mgr_or_dir)
    try:
        if int(step) not in steps:
            raise CheckpointError(f"no finalised checkpoint at step {step} in {root} ({steps})")
        try:
            return _load_step(orbax_mgr, root, int(step), abstract_state, shardings)
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint step {step} in {root}: {e}") from e
    finally:
        if opened:
            orbax_mgr.close()


def step_status(mgr_or_dir: Manager | epath.PathLike) -> dict[int, str | None]:
    """Every finalised step -> None if it passes the static check, else the reason it fails.

    The static check reads no arrays: marker present, every file present with its size, small
    files' sha256. (Array contents are verified only by a restore.)
    """
    orbax_mgr, root, steps, opened = _finalised_steps(mgr_or_dir)
    if opened:
        orbax_mgr.close()
    status = {}
    for step in sorted(steps):
        try:
            _check_files(root, step)
            status[step] = None
        except (CheckpointError, OSError) as e:
            status[step] = str(e)
    return status


def list_steps(mgr_or_dir: Manager | epath.PathLike) -> list[int]:
    """Complete steps (finalised, committed, files intact), oldest first; no abstract state."""
    return [s for s, reason in step_status(mgr_or_dir).items() if reason is None]


def read_extras(mgr_or_dir: Manager | epath.PathLike, step: int | None = None) -> dict[str, Any]:
    """The verified extras of ``step`` (default: the newest complete step), without the arrays.

    With ``step=None``, steps whose extras fail verification are skipped with a WARNING.
    """
    orbax_mgr, root, steps, opened = _finalised_steps(mgr_or_dir)
    try:
        candidates = steps if step is None else [int(step)]
        if step is not None and int(step) not in steps:
            raise CheckpointError(f"no finalised checkpoint at step {step} in {root}")
        for s in candidates:
            try:
                marker = _check_files(root, s)
                args = ocp.args.Composite(**{_EXTRAS: ocp.args.JsonRestore()})
                try:
                    raw = orbax_mgr.restore(s, args=args)[_EXTRAS]
                except Exception as e:  # noqa: BLE001
                    raise CheckpointError(f"Orbax failed to read the extras: {e}") from e
                return _verified_extras(marker, raw)
            except CheckpointError as e:
                if step is not None:
                    raise CheckpointError(f"checkpoint step {s} in {root}: {e}") from e
                log.warning("checkpoint step %d in %s is incomplete or corrupt: %s", s, root, e)
        raise CheckpointError(f"no complete checkpoint in {root}")
    finally:
        if opened:
            orbax_mgr.close()


def read_metadata(mgr_or_dir: Manager | epath.PathLike, step: int) -> dict[str, Any]:
    """What ``step``'s commit marker records, after the static check (no arrays are read):
    ``saved_at`` (ISO time) and ``leaves``: ``path -> {"shape", "dtype"}`` for every array of the
    saved state (paths like ``params/layer_0/attn/q/kernel``; PRNG keys as their uint32 data).
    Raises CheckpointError if the step is not complete."""
    orbax_mgr, root, steps, opened = _finalised_steps(mgr_or_dir)
    if opened:
        orbax_mgr.close()
    if int(step) not in steps:
        raise CheckpointError(f"no finalised checkpoint at step {step} in {root}")
    try:
        marker = _check_files(root, int(step))
    except (CheckpointError, OSError) as e:
        raise CheckpointError(f"checkpoint step {step} in {root}: {e}") from e
    leaves = {
        k: {"shape": list(v["shape"]), "dtype": v["dtype"]} for k, v in marker["leaves"].items()
    }
    return {"saved_at": marker.get("saved_at"), "leaves": leaves}


def _load_subtree(orbax_mgr: ocp.CheckpointManager, root: epath.Path, step: int, name: str,
                  abstract: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
    """Restores and verifies only ``state.<name>`` of one step (Orbax partial restore)."""
    marker = _check_files(root, step)
    item = {name: _restore_targets(abstract, shardings)}
    _check_structure(marker, item, step, prefix=name + "/")
    state_args = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,  # the optimizer state etc. are neither read nor needed
    )
    args = ocp.args.Composite(**{_STATE: state_args, _EXTRAS: ocp.args.JsonRestore()})
    try:
        restored = orbax_mgr.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
        raise CheckpointError(f"Orbax failed to restore it: {type(e).__name__}: {e}") from e
    extras = _verified_extras(marker, restored[_EXTRAS])
    subtree = restored[_STATE][name]
    leaves = _leaf_table({name: subtree})
    bad = [k for k, v in leaves.items() if v["fingerprint"] != marker["leaves"][k]["fingerprint"]]
    if bad:
        raise CheckpointError(
            f"array contents differ from what was saved (fingerprint mismatch) in {bad[:4]}"
        )
    return subtree, extras


def restore_params(
    mgr_or_dir: Manager | epath.PathLike,
    step: int | None,
    abstract_params: Any,
    shardings: Any = None,
    *,
    subtree: str = "params",
) -> tuple[Any, dict[str, Any], int]:
    """Only the parameters of a checkpoint, as ``(params, extras, step)``: for analysis and
    export, without building the optimizer (its state is not read).

    ``abstract_params`` is the ShapeDtypeStruct tree of ``state.params`` (``subtree="ref_params"``
    restores the saved reference instead); ``shardings`` the matching TARGET shardings (default:
    the abstract leaves' own), so any mesh works. Contents are verified against the commit marker
    like a full restore. ``step=None`` takes the newest usable step, skipping rejected ones with a
    WARNING as :func:`restore_latest` does; a given step that is unusable raises CheckpointError.
    Raises ValueError if ``abstract_params`` does not match what was saved.
    """
    if isinstance(mgr_or_dir, Manager):
        mgr_or_dir.wait()
        mgr_or_dir = mgr_or_dir.directory
    # A fresh read-only manager: the training manager registered the standard (whole-tree)
    # handler for the state, while a partial restore needs the PyTree handler's arguments.
    orbax_mgr, root, steps, opened = _finalised_steps(mgr_or_dir)
    try:
        if step is not None:
            if int(step) not in steps:
                raise CheckpointError(f"no finalised checkpoint at step {step} in {root} ({steps})")
            try:
                found = _load_subtree(orbax_mgr, root, int(step), subtree, abstract_params,
                                      shardings)
            except CheckpointError as e:
                raise CheckpointError(f"checkpoint step {step} in {root}: {e}") from e
            return (*found, int(step))
        rejected: dict[int, str] = {}
        for s in steps:
            try:
                params, extras = _load_subtree(orbax_mgr, root, s, subtree, abstract_params,
                                               shardings)
            except CheckpointError as e:
                rejected[s] = str(e)
                log.warning("checkpoint step %d in %s is incomplete or corrupt: %s; falling back "
                            "to an earlier checkpoint", s, root, e)
                continue
            return params, extras, s
        reasons = "".join(f"; step {s}: {r[:300]}" for s, r in rejected.items())
        raise CheckpointError(f"no usable checkpoint in {root}{reasons}")
    finally:
        if opened:
            orbax_mgr.close()


# ----------------------------------------------------------------------------- preemption


class PreemptionFlag:
    """``requested`` turns True when one of ``signals`` arrives (SIGTERM by default).

    The handler only sets the flag; the loop checks it after each step, saves with
    ``force=True``, and exits. :meth:`close` restores the previous handlers. Signal handlers can
    only be installed from the main thread.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
        self.requested = False
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signum

    def agreed(self) -> bool:
        """True if any process received the signal (a collective when multi-host: call it on
        every process at the same step, so that all of them save and stop together)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.any(flags))

    def close(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> PreemptionFlag:
        return self

    def __exit__(self, *exc):
        self.close()


def install_preemption_handler(signals: Sequence[int] = (signal.SIGTERM,)) -> PreemptionFlag:
    """Installs a handler that sets a flag instead of killing the process; see PreemptionFlag."""
    return PreemptionFlag(signals)


# ----------------------------------------------------------------------------- loop glue


class RunCheckpointer:
    """What the training loop holds: a :class:`Manager`, a SIGTERM flag, and the fixed extras.

    ``restore`` resumes from the newest complete checkpoint (state and data-iterator position);
    ``maybe_save`` saves on the cadence or, after SIGTERM, immediately and synchronously, and then
    ``preempted`` tells the loop to stop. The stream is checkpointed through its optional
    ``get_state()`` / ``set_state()`` (JSON-able).
    """

    def __init__(
        self,
        directory: epath.PathLike,
        config: CheckpointConfig = CheckpointConfig(),
        *,
        experiment_config: Mapping[str, Any] | None = None,
        reference: Mapping[str, Any] | None = None,
        handle_sigterm: bool = True,
    ):
        self.manager = open(directory, config)
        self.experiment_config = dict(experiment_config) if experiment_config else None
        self.reference = dict(reference) if reference else None
        self._flag = install_preemption_handler() if handle_sigterm else None
        self._preempted = False

    @property
    def preempted(self) -> bool:
        """Whether the last ``maybe_save`` saw a (process-agreed) SIGTERM and saved for it."""
        return self._preempted

    def restore(self, state: Any, shardings: Any, stream: Any = None) -> Any:
        """``state`` replaced by the latest checkpoint's, if any (same shardings)."""
        abstract = jax.eval_shape(lambda s: s, state)
        found = restore_latest(self.manager, abstract, shardings)
        if found is None:
            return state
        restored, extras, step = found
        saved_ref = extras.get("reference")
        if self.reference is not None and saved_ref is not None and saved_ref != self.reference:
            log.warning("checkpoint step %d was trained against reference %s, now %s",
                        step, saved_ref, self.reference)
        data_state = extras.get("data_state")
        if data_state is not None and hasattr(stream, "set_state"):
            stream.set_state(data_state)
        log.info("resumed from checkpoint step %d in %s", step, self.manager.directory)
        return restored

    def _extras(self, stream: Any, metrics: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "data_state": stream.get_state() if hasattr(stream, "get_state") else None,
            "config": self.experiment_config,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "reference": self.reference,
        }

    def maybe_save(self, step: int, state: Any, stream: Any, metrics: Mapping[str, Any]):
        """Saves if due; on SIGTERM saves now, waits for it to be committed, sets ``preempted``."""
        self._preempted = self._flag is not None and self._flag.agreed()
        if self._preempted or self.manager.should_save(step):
            save(self.manager, step, state, extras=self._extras(stream, metrics), force=True)
        if self._preempted:
            self.manager.wait()

    def save_now(self, step: int, state: Any, stream: Any, metrics: Mapping[str, Any]):
        """Saves unconditionally and waits for the commit (e.g. before raising an error)."""
        save(self.manager, step, state, extras=self._extras(stream, metrics), force=True)
        self.manager.wait()

    def close(self):
        try:
            self.manager.close()
        finally:
            if self._flag is not None:
                self._flag.close()
