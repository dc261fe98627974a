"""Checkpoints: the only package that talks to Orbax.

A checkpoint of step ``N`` is the directory ``<root>/N/`` that Orbax writes (``state/``: the
:class:`~fbjax.train.state.TrainState` arrays, ``extras/``: a JSON dict with the data-iterator
state, the resolved config, metrics, the reference-model identity and the loop's ``run`` info)
plus one file fbjax adds, ``fbjax_commit.json``, once Orbax has finalised the step. A step counts
as *complete* only when both hold: Orbax finalised it (atomic rename of its tmp dir locally,
``commit_success.txt`` on object stores; ``CheckpointManager.all_steps`` lists only those) and
the commit marker is present and matches the files. It is *verified* when, in addition, every
array read back matches the fingerprint taken of it on device at save time (a checksum of every
array byte) and is finite: a restore, ``verify_step`` and ``fbjax inspect`` check that.

Modules, bottom up: :mod:`~fbjax.checkpoint.errors` (the one ``CheckpointError``),
:mod:`~fbjax.checkpoint.config` (``CheckpointConfig``), :mod:`~fbjax.checkpoint.keys` (PRNG keys
and tree paths), :mod:`~fbjax.checkpoint.integrity` (fingerprints, finiteness, commit markers,
file checks), :mod:`~fbjax.checkpoint.manager` (the Orbax manager, retention and ``save``),
:mod:`~fbjax.checkpoint.restore` (restoring and checking steps),
:mod:`~fbjax.checkpoint.preemption` (SIGTERM) and :mod:`~fbjax.checkpoint.run`
(``RunCheckpointer``, what the training loop holds). The package imports nothing else from
fbjax, so any layer may use it.

Saving never writes a state holding NaN/Inf, and a save at step ``N`` replaces every existing
step at or after ``N`` that the same manager did not write (the run reached ``N`` from an
earlier state, so those were rejected by the restore or rolled back). Restoring walks the
complete steps from the newest down, logs a WARNING naming each step it rejects and why, and
returns the first one that passes; it never deletes anything.

We use the ``CheckpointManager`` + ``args=Composite(...)`` API: in orbax-checkpoint 0.12 it is the
stable, documented one with preservation policies and async saving built in, whereas the v1 API
still lives under ``orbax.checkpoint.experimental.v1``.

Multi-host: every process calls :func:`save`, :func:`restore_latest` etc. in lockstep (Orbax's
protocol: each process writes its shards, the primary process writes metadata and finalises).
Fingerprints and finiteness are computed over the global arrays, so every process agrees on
them. The commit marker is written by process 0 after Orbax's finalisation, followed by a
barrier. Time-based save decisions and the SIGTERM flag are agreed across processes (process 0's
clock decides, any process's SIGTERM counts); see :meth:`Manager.should_save` and
:meth:`PreemptionFlag.agreed`.
"""

from fbjax.checkpoint.config import CheckpointConfig
from fbjax.checkpoint.errors import CheckpointError
from fbjax.checkpoint.integrity import MARKER, tree_fingerprint
from fbjax.checkpoint.manager import Manager, open, save  # noqa: F401 - ``checkpoint.open``
from fbjax.checkpoint.preemption import PreemptionFlag, install_preemption_handler
from fbjax.checkpoint.restore import (
    list_steps,
    read_extras,
    read_metadata,
    restore_at,
    restore_latest,
    restore_params,
    step_status,
    verify_step,
)
from fbjax.checkpoint.run import RunCheckpointer, config_changes

# ``open`` is deliberately not exported by ``import *`` (it would shadow the builtin).
__all__ = [
    "MARKER", "CheckpointConfig", "CheckpointError", "Manager", "PreemptionFlag",
    "RunCheckpointer", "config_changes", "install_preemption_handler", "list_steps",
    "read_extras", "read_metadata", "restore_at", "restore_latest", "restore_params", "save",
    "step_status", "tree_fingerprint", "verify_step",
]
