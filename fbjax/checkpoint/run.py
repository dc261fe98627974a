"""What the training loop holds: :class:`RunCheckpointer` (manager, SIGTERM flag, fixed extras,
the config check on resume, and the rollback restore)."""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import jax
from etils import epath

from fbjax.checkpoint import integrity
from fbjax.checkpoint.config import CheckpointConfig
from fbjax.checkpoint.errors import CheckpointError
from fbjax.checkpoint.manager import open as open_manager
from fbjax.checkpoint.manager import save
from fbjax.checkpoint.preemption import install_preemption_handler
from fbjax.checkpoint.restore import restore_latest

log = logging.getLogger("fbjax.checkpoint")

_ABSENT = "(absent)"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON dicts -> ``{dotted.path: leaf}`` (lists are leaves), the paths ``--set``
    takes."""
    if isinstance(value, Mapping) and value:
        out = {}
        for key in value:
            out.update(_flatten(value[key], f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _short(value: Any) -> str:
    text = _ABSENT if value is _ABSENT else json.dumps(value, sort_keys=True, allow_nan=True)
    return text if len(text) <= 80 else text[:77] + "..."


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``path: old -> new`` for every leaf that differs between two JSON configs (compared
    after a JSON round trip, so tuples and lists are equal)."""
    old = _flatten(json.loads(integrity.canonical_json(saved)))
    new = _flatten(json.loads(integrity.canonical_json(current)))
    return [
        f"{path}: {_short(old.get(path, _ABSENT))} -> {_short(new.get(path, _ABSENT))}"
        for path in sorted(set(old) | set(new))
        if old.get(path, _ABSENT) != new.get(path, _ABSENT)
    ]


class RunCheckpointer:
    """What the training loop holds: a :class:`~fbjax.checkpoint.Manager`, a SIGTERM flag, and
    the fixed extras.

    ``restore`` resumes from the newest complete checkpoint (state and data-iterator position)
    and refuses one saved under another experiment config, listing the changed fields, unless
    ``allow_config_change``; ``maybe_save`` saves on the cadence or, after SIGTERM, immediately
    and synchronously, and then ``preempted`` tells the loop to stop; ``rollback`` goes back to
    the newest good checkpoint after a non-finite step. The stream is checkpointed through its
    optional ``get_state()`` / ``set_state()`` (JSON-able). ``run_info`` (JSON) is saved with
    every checkpoint and read back by ``restore`` (the loop keeps its learning-rate scale there).
    """

    def __init__(
        self,
        directory: epath.PathLike,
        config: CheckpointConfig = CheckpointConfig(),
        *,
        experiment_config: Mapping[str, Any] | None = None,
        reference: Mapping[str, Any] | None = None,
        handle_sigterm: bool = True,
        allow_config_change: bool = False,
    ):
        self.manager = open_manager(directory, config)
        self.experiment_config = dict(experiment_config) if experiment_config else None
        self.reference = dict(reference) if reference else None
        self.allow_config_change = allow_config_change
        self.run_info: dict[str, Any] = {}
        self.restored_step: int | None = None
        self.restored_extras: dict[str, Any] = {}
        self._flag = install_preemption_handler() if handle_sigterm else None
        self._preempted = False

    @property
    def preempted(self) -> bool:
        """Whether the last ``maybe_save`` saw a (process-agreed) SIGTERM and saved for it."""
        return self._preempted

    def _check_config(self, step: int, saved: Any):
        if self.experiment_config is None or saved is None:
            return
        changes = config_changes(saved, self.experiment_config)
        if not changes:
            return
        where = f"checkpoint step {step} in {self.manager.directory}"
        if not self.allow_config_change:
            raise CheckpointError(
                f"{where} was saved with another config; changed: {'; '.join(changes)}. "
                "Use the saved config, another workdir, or allow_config_change=True to continue"
            )
        log.warning("%s was saved with another config; continuing with: %s", where,
                    "; ".join(changes))

    def _load(self, state: Any, shardings: Any) -> tuple[Any, dict, int] | None:
        abstract = jax.eval_shape(lambda s: s, state)
        return restore_latest(self.manager, abstract, shardings)

    def _adopt(self, extras: Mapping[str, Any], step: int, stream: Any):
        """Takes over the restored step's run info and data position."""
        self.restored_step, self.restored_extras = step, dict(extras)
        self.run_info = dict(extras.get("run") or {})
        data_state = extras.get("data_state")
        if data_state is not None and hasattr(stream, "set_state"):
            stream.set_state(data_state)

    def restore(self, state: Any, shardings: Any, stream: Any = None) -> Any:
        """``state`` replaced by the latest checkpoint's, if any (same shardings). Raises
        CheckpointError if its saved experiment config differs (unless allowed)."""
        found = self._load(state, shardings)
        if found is None:
            return state
        restored, extras, step = found
        # Before anything else, so that the error lists every changed field (the data stream,
        # for one, would refuse a changed seed on its own, naming only that).
        self._check_config(step, extras.get("config"))
        saved_ref = extras.get("reference")
        if self.reference is not None and saved_ref is not None and saved_ref != self.reference:
            log.warning("checkpoint step %d was trained against reference %s, now %s",
                        step, saved_ref, self.reference)
        self._adopt(extras, step, stream)
        log.info("resumed from checkpoint step %d in %s", step, self.manager.directory)
        return restored

    def rollback(self, state: Any, shardings: Any, stream: Any = None) -> Any | None:
        """The newest good checkpoint's state (and data position), or None if there is none;
        later steps this run saved are then replaced by its next saves."""
        found = self._load(state, shardings)
        if found is None:
            return None
        restored, extras, step = found
        self._adopt(extras, step, stream)
        self.manager.forget_after(step)
        log.warning("rolled back to checkpoint step %d in %s", step, self.manager.directory)
        return restored

    def _extras(self, stream: Any, metrics: Mapping[str, Any], data_state: Any) -> dict[str, Any]:
        if data_state is None and hasattr(stream, "get_state"):
            data_state = stream.get_state()
        return {
            "data_state": data_state,
            "config": self.experiment_config,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "reference": self.reference,
            "run": dict(self.run_info),
        }

    def maybe_save(self, step: int, state: Any, stream: Any, metrics: Mapping[str, Any]):
        """Saves if due; on SIGTERM saves now, waits for it to be committed, sets ``preempted``."""
        self._preempted = self._flag is not None and self._flag.agreed()
        if self._preempted or self.manager.should_save(step):
            save(self.manager, step, state, extras=self._extras(stream, metrics, None), force=True)
        if self._preempted:
            self.manager.wait()

    def save_now(self, step: int, state: Any, stream: Any, metrics: Mapping[str, Any], *,
                 data_state: Any = None):
        """Saves unconditionally and waits for the commit (e.g. before raising an error).
        ``data_state`` overrides the stream's current position (the position that belongs to
        ``state`` when the stream has already moved on)."""
        save(self.manager, step, state, extras=self._extras(stream, metrics, data_state),
             force=True)
        self.manager.wait()

    def close(self):
        try:
            self.manager.close()
        finally:
            if self._flag is not None:
                self._flag.close()
