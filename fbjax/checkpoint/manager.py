"""The Orbax manager: save cadence, retention, async commit markers, and :func:`save`."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from fbjax.checkpoint import integrity
from fbjax.checkpoint.config import CheckpointConfig
from fbjax.checkpoint.errors import CheckpointError
from fbjax.checkpoint.keys import to_storage

log = logging.getLogger("fbjax.checkpoint")

STATE, EXTRAS = "state", "extras"
_preservation = ocp.checkpoint_managers.preservation_policy


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
                integrity.check_files(self.root, checkpoints[i].step)
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


def read_only_orbax(root: epath.Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    return ocp.CheckpointManager(root, options=options)


def _barrier(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"fbjax.checkpoint:{name}")


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
        # Steps this manager wrote: the only existing steps a save may leave alone (see save).
        self._saved: set[int] = set()

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

    def forget_after(self, step: int):
        """The run went back to ``step`` (a rollback): steps this manager saved after it are no
        longer this run's, so saving them again replaces them instead of being a no-op."""
        self._saved = {s for s in self._saved if s <= step}
        self._last_step = None

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
                integrity.write_marker(self.directory, step, pending, self.config.hash_max_bytes)
        self._pending.clear()
        _barrier("commit")


def open(  # noqa: A001 - the natural name; this package never needs the builtin
    directory: epath.PathLike,
    config: CheckpointConfig = CheckpointConfig(),
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Manager:
    """Opens (creating if needed) the checkpoint directory for saving and restoring."""
    return Manager(directory, config, clock=clock)


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
    ``should_save`` after the write finished.

    Raises CheckpointError, writing nothing, if any floating-point array holds NaN or Inf: a
    non-finite state is never saved. Saving a step this manager already saved is a no-op. Every
    other existing step at or after ``step`` is deleted first, whatever its static check says:
    the caller reached ``step`` from an earlier state, so those steps were not restored (damaged,
    incomplete, or abandoned by a rollback) and would otherwise shadow the new ones (retention
    counts the newest steps).
    """
    step = int(step)
    if not force and not mgr.should_save(step):
        return False
    extras = integrity.check_extras(extras)
    mgr.wait()  # Orbax would wait for the previous save anyway; this also commits it
    if step in mgr._saved:
        log.info("checkpoint step %d was already saved by this run; not saving again", step)
        mgr._last_step = step
        return False
    storage, key_impls = to_storage(state)
    leaves, nonfinite = integrity.leaf_table(storage)
    if nonfinite:
        raise CheckpointError(
            f"refusing to save checkpoint step {step} in {mgr.directory}: the state holds NaN/Inf "
            f"in {integrity.describe_nonfinite(nonfinite)}"
        )
    for stale in sorted((s for s in mgr.orbax.all_steps() if s >= step), reverse=True):
        log.warning(
            "replacing checkpoint step %d in %s: this run reached step %d from an earlier state, "
            "so step %d was not restored (damaged, incomplete, or rolled back)",
            stale, mgr.directory, step, stale,
        )
        mgr.orbax.delete(stale)
        mgr._saved.discard(stale)
    pending = {
        "format": integrity.FORMAT,
        "step": step,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "extras_sha256": integrity.sha256(integrity.canonical_json(extras)),
        "key_impls": key_impls,
        "leaves": leaves,
    }
    args = ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(storage), EXTRAS: ocp.args.JsonSave(extras)}
    )
    mgr.orbax.save(step, args=args, force=True)
    mgr._pending[step] = pending
    mgr._saved.add(step)
    mgr._last_save_time = mgr._clock()
    mgr._last_step = step
    if not mgr.config.async_save:
        mgr._commit_pending()
    return True
