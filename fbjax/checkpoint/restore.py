"""Reading checkpoints back: the newest usable step, one step, only the parameters, the
extras, and each step's status.

Restoring walks the finalised steps from the newest down, logs a WARNING naming each step it
rejects and why, and returns the first one that passes every check (static check, Orbax read,
extras checksum, array fingerprints, finiteness); it never deletes anything.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from fbjax.checkpoint import integrity
from fbjax.checkpoint.errors import CheckpointError
from fbjax.checkpoint.keys import is_key, path_str, rewrap_keys
from fbjax.checkpoint.manager import EXTRAS, STATE, Manager, read_only_orbax

log = logging.getLogger("fbjax.checkpoint")


def _restore_targets(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the TARGET shardings; typed keys become their uint32 key data."""
    if shardings is None:
        shardings = jax.tree.map(lambda a: getattr(a, "sharding", None), abstract_state)

    def target(abstract, sharding):
        if is_key(abstract):
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
        path_str(p): {"shape": list(t.shape), "dtype": str(np.dtype(t.dtype))}
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


def _orbax_restore(orbax_mgr: ocp.CheckpointManager, step: int, args: Any) -> Any:
    try:
        return orbax_mgr.restore(step, args=args)
    except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
        raise CheckpointError(f"Orbax failed to restore it: {type(e).__name__}: {e}") from e


def _load_step(orbax_mgr: ocp.CheckpointManager, root: epath.Path, step: int,
               abstract_state: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
    """Restores and verifies one step; raises CheckpointError (corrupt) or ValueError (mismatch)."""
    marker = integrity.check_files(root, step)
    targets = _restore_targets(abstract_state, shardings)
    _check_structure(marker, targets, step)
    args = ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(targets), EXTRAS: ocp.args.JsonRestore()}
    )
    restored = _orbax_restore(orbax_mgr, step, args)
    extras = integrity.verified_extras(marker, restored[EXTRAS])
    storage = restored[STATE]
    integrity.check_fingerprints(marker, storage)
    state = rewrap_keys(storage, abstract_state, targets, marker.get("key_impls", {}))
    return state, extras


def finalised_steps(
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
    orbax_mgr = read_only_orbax(root)
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
    orbax_mgr, root, steps, opened = finalised_steps(mgr_or_dir)
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
    orbax_mgr, root, steps, opened = finalised_steps(mgr_or_dir)
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


def _verify_arrays(root: epath.Path, step: int, marker: dict[str, Any]) -> None:
    """Reads every array of ``step`` onto the host (no target mesh or model needed: the tree
    comes from Orbax's own metadata) and checks it against the marker's fingerprints."""
    path = integrity.step_dir(root, step) / STATE
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(path)
        tree = getattr(getattr(metadata, "item_metadata", None), "tree", metadata)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        arrays = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
        raise CheckpointError(f"Orbax failed to read its arrays: {type(e).__name__}: {e}") from e
    finally:
        checkpointer.close()
    saved = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(arrays)[0]}
    if saved != set(marker["leaves"]):
        missing = sorted(set(marker["leaves"]) - saved)[:4]
        raise CheckpointError(f"arrays listed in the commit marker are missing: {missing}")
    integrity.check_fingerprints(marker, arrays)


def step_status(mgr_or_dir: Manager | epath.PathLike, *, verify: bool = False
                ) -> dict[int, str | None]:
    """Every finalised step -> None if it passes the check, else the reason it fails.

    The static check (default) reads no arrays: marker present, every file present with its
    size, small files' sha256. ``verify=True`` also reads every array and the extras of each
    step and compares them with their fingerprints and checksum, as a restore does: the only way
    to find damage inside a large array file that kept its size.
    """
    orbax_mgr, root, steps, opened = finalised_steps(mgr_or_dir)
    status = {}
    try:
        for step in sorted(steps):
            try:
                marker = integrity.check_files(root, step)
                if verify:
                    args = ocp.args.Composite(**{EXTRAS: ocp.args.JsonRestore()})
                    integrity.verified_extras(marker, _orbax_restore(orbax_mgr, step, args)[EXTRAS])
                    _verify_arrays(root, step, marker)
                status[step] = None
            except (CheckpointError, OSError) as e:
                status[step] = str(e)
    finally:
        if opened:
            orbax_mgr.close()
    return status


def verify_step(mgr_or_dir: Manager | epath.PathLike, step: int) -> None:
    """Raises CheckpointError naming the directory, the step and the reason unless every file,
    the extras and every array of ``step`` are exactly what was saved."""
    status = step_status(mgr_or_dir, verify=True)
    root = mgr_or_dir.directory if isinstance(mgr_or_dir, Manager) else mgr_or_dir
    if int(step) not in status:
        raise CheckpointError(f"no finalised checkpoint at step {step} in {root}")
    if status[int(step)] is not None:
        raise CheckpointError(f"checkpoint step {step} in {root}: {status[int(step)]}")


def list_steps(mgr_or_dir: Manager | epath.PathLike) -> list[int]:
    """Complete steps (finalised, committed, files intact), oldest first; no abstract state."""
    return [s for s, reason in step_status(mgr_or_dir).items() if reason is None]


def read_extras(mgr_or_dir: Manager | epath.PathLike, step: int | None = None) -> dict[str, Any]:
    """The verified extras of ``step`` (default: the newest complete step), without the arrays.

    With ``step=None``, steps whose extras fail verification are skipped with a WARNING.
    """
    orbax_mgr, root, steps, opened = finalised_steps(mgr_or_dir)
    try:
        candidates = steps if step is None else [int(step)]
        if step is not None and int(step) not in steps:
            raise CheckpointError(f"no finalised checkpoint at step {step} in {root}")
        for s in candidates:
            try:
                marker = integrity.check_files(root, s)
                args = ocp.args.Composite(**{EXTRAS: ocp.args.JsonRestore()})
                raw = _orbax_restore(orbax_mgr, s, args)[EXTRAS]
                return integrity.verified_extras(marker, raw)
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
    orbax_mgr, root, steps, opened = finalised_steps(mgr_or_dir)
    if opened:
        orbax_mgr.close()
    if int(step) not in steps:
        raise CheckpointError(f"no finalised checkpoint at step {step} in {root}")
    try:
        marker = integrity.check_files(root, int(step))
    except (CheckpointError, OSError) as e:
        raise CheckpointError(f"checkpoint step {step} in {root}: {e}") from e
    leaves = {
        k: {"shape": list(v["shape"]), "dtype": v["dtype"]} for k, v in marker["leaves"].items()
    }
    return {"saved_at": marker.get("saved_at"), "leaves": leaves}


def _load_subtree(orbax_mgr: ocp.CheckpointManager, root: epath.Path, step: int, name: str,
                  abstract: Any, shardings: Any) -> tuple[Any, dict[str, Any]]:
    """Restores and verifies only ``state.<name>`` of one step (Orbax partial restore)."""
    marker = integrity.check_files(root, step)
    item = {name: _restore_targets(abstract, shardings)}
    _check_structure(marker, item, step, prefix=name + "/")
    state_args = ocp.args.PyTreeRestore(
        item=item,
        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True,  # the optimizer state etc. are neither read nor needed
    )
    args = ocp.args.Composite(**{STATE: state_args, EXTRAS: ocp.args.JsonRestore()})
    restored = _orbax_restore(orbax_mgr, step, args)
    extras = integrity.verified_extras(marker, restored[EXTRAS])
    subtree = restored[STATE][name]
    integrity.check_fingerprints(marker, {name: subtree})
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
    orbax_mgr, root, steps, opened = finalised_steps(mgr_or_dir)
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
