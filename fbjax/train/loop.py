"""The training loop: a thin driver around the jitted step.

It owns only what a step cannot: moving host batches onto the mesh, logging (console and
TensorBoard, on process 0), checkpoint cadence, and what follows a non-finite step (an error
naming the step, or a rollback: fbjax.train.nonfinite). Algorithm logic lives in objectives and
the step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from fbjax import sharding as fsh
from fbjax.models import lora as lora_lib
from fbjax.models.decoder import Decoder
from fbjax.models.lora import LoraConfig
from fbjax.train import step as steplib
from fbjax.train.config import TrainJob
from fbjax.train.nonfinite import NonFiniteLossError
from fbjax.train.optim import make_optimizer
from fbjax.train.state import TrainState

log = logging.getLogger("fbjax")


def _scaled_optimizer(config: TrainJob, optimizer: Any, lr_scale: float) -> Any:
    """``optimizer`` with its learning rate (the whole schedule) times ``lr_scale``: the same
    state structure, so a rolled-back state continues with it."""
    if lr_scale == 1.0:
        return optimizer
    scaled = dataclasses.replace(config.optimizer,
                                 learning_rate=config.optimizer.learning_rate * lr_scale)
    return make_optimizer(scaled, config.train.steps)


def _nonfinite_error(config: TrainJob, step: int, metrics: dict, lr_scale: float
                     ) -> NonFiniteLossError:
    loss, grad_norm = float(metrics["loss"][0]), float(metrics["grad_norm"][0])
    if math.isfinite(loss) and math.isfinite(grad_norm):
        what = (f"the update (learning rate {config.optimizer.learning_rate * lr_scale:g}) "
                "made parameters or optimizer state non-finite")
    else:
        what = f"loss={loss}, grad_norm={grad_norm} is not finite"
    return NonFiniteLossError(
        f"step {step + 1} of {config.name}: {what}; the update was skipped and the state is "
        f"still that of step {step}"
    )


@dataclasses.dataclass
class RunResult:
    """What a run leaves. With LoRA, ``state.params`` holds only the adapters and ``base`` the
    frozen weights: use :meth:`policy_params` for the trained model's full (merged) weights."""

    state: TrainState
    history: list[dict[str, float]]
    wall_seconds: float
    model: Decoder
    mesh: Mesh
    base: Any = None
    lora: LoraConfig | None = None

    def policy_params(self) -> Any:
        """The trained policy as plain decoder parameters (adapters merged into the base)."""
        if self.lora is None:
            return self.state.params
        return jax.jit(lora_lib.merge, static_argnums=2)(self.base, self.state.params, self.lora)


def global_batch(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split over the mesh's batch axes.

    Each process passes only its own rows; with one process this is an ordinary device_put.
    """
    return {
        k: jax.make_array_from_process_local_data(fsh.batch_sharding(mesh, v.ndim), v)
        for k, v in host_batch.items()
    }


def process_rows(mesh: Mesh, global_rows: int) -> np.ndarray:
    """The global batch rows this process's devices hold, ascending: the rows, in order, that
    :func:`global_batch` expects from this process (for streams that pack the global batch)."""
    indices = fsh.batch_sharding(mesh, 1).addressable_devices_indices_map((global_rows,))
    rows = set()
    for index in indices.values():
        rows.update(range(global_rows)[index[0]])
    return np.array(sorted(rows), dtype=np.int64)


class _TensorBoard:
    def __init__(self, logdir: str | None):
        self.writer = None
        if logdir is not None and jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=True)


def train(
    config: TrainJob,
    stream: Iterator[dict[str, np.ndarray]],
    params: Any,
    *,
    mesh: Mesh,
    reference_params: Any = None,
    workdir: str | None = None,
    progress: bool = True,
    desc: str | None = None,
    checkpointer: Any = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunResult:
    """Runs ``config.train.steps`` steps of ``config.objective`` from ``params``.

    ``stream`` yields host batches (docs/batch_layout.md) and, if it has ``get_state`` /
    ``set_state``, is checkpointed with the state. ``checkpointer`` (``fbjax.checkpoint``'s
    :class:`~fbjax.checkpoint.RunCheckpointer`) restores the latest complete checkpoint and saves
    on its cadence and on SIGTERM. A non-finite step is handled by ``config.nonfinite``
    (:class:`~fbjax.train.nonfinite.NonFinitePolicy`): halt with :class:`NonFiniteLossError`
    (after saving the intact state, never a non-finite one) or roll back. When the checkpoint
    is already at ``train.steps``, nothing is trained and the history is the saved final
    metrics.
    """
    tc = config.train
    model = Decoder(config.model)  # ``config`` is the stage's TrainJob
    optimizer = make_optimizer(config.optimizer, tc.steps)
    objective = config.objective
    # Batches that carry precomputed reference log-probs (fbjax.train.reference) need no
    # reference forward, so no reference parameters are kept on device.
    cached_reference = "ref_logps" in getattr(getattr(stream, "spec", None), "fields", ())
    lora, base = config.lora, None
    if lora is not None:
        base, params = params, _lora_start(config, params, reference_params, mesh)
        reference_params = None  # the base with the adapters off is the reference
    if cached_reference:
        reference_params = None
    elif objective.needs_reference and reference_params is None and lora is None:
        reference_params = params  # the usual choice: the starting policy
    state, state_sharding = steplib.create_state(
        params,
        model=model,
        optimizer=optimizer,
        objective=objective,
        rng=jax.random.key(config.seed),
        mesh=mesh,
        rules=config.rules,
        reference_params=reference_params if objective.needs_reference and not cached_reference
        else None,
        lora=lora,
    )
    policy = config.nonfinite
    tb = _TensorBoard(None)
    bar = None
    try:
        if checkpointer is not None:
            if lora is not None:
                _bind_lora_base(checkpointer, config, base)
            state = checkpointer.restore(state, state_sharding, stream)
        run_info = dict(checkpointer.run_info) if checkpointer is not None else {}
        lr_scale = float(run_info.get("lr_scale", 1.0))
        rollbacks = int(run_info.get("rollbacks", 0))

        tb = _TensorBoard(os.path.join(workdir, "tensorboard") if workdir else None)
        if workdir and jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            table = fsh.sharding_table(state.params, state_sharding.params)
            with open(os.path.join(workdir, "sharding.txt"), "w") as f:
                f.write(table + "\n")
            log.info(
                "%s: %.0f%% of parameter bytes replicated on every device; per-parameter "
                "sharding table in %s", config.name,
                100 * fsh.replicated_fraction(state.params, state_sharding.params),
                os.path.join(workdir, "sharding.txt"),
            )
            log.debug("parameter sharding:\n%s", table)

        step_fn = None
        history: list[dict[str, float]] = []
        pending: dict[str, list] = {}
        start_step = base_step = int(state.step)
        if on_start is not None:
            on_start(start_step)  # e.g. drop logs of steps past the checkpoint resumed from
        if start_step >= tc.steps and checkpointer is not None:
            # Nothing left to train: the run's final metrics are the ones saved with it.
            saved = checkpointer.restored_extras.get("metrics")
            if saved:
                history.append(dict(saved))
        bar = _progress(tc.steps, desc or config.name, progress)
        if bar is not None:
            bar.update(start_step)
        t0 = time.perf_counter()
        window_t, window_tokens = time.perf_counter(), 0.0
        step = start_step
        while step < tc.steps:
            data_before = stream.get_state() if hasattr(stream, "get_state") else None
            host = next(stream)
            batch = global_batch(host, mesh)
            if step_fn is None:
                step_fn = steplib.make_train_step(
                    model=model,
                    objective=objective,
                    optimizer=_scaled_optimizer(config, optimizer, lr_scale),
                    mesh=mesh,
                    rules=config.rules,
                    state_sharding=state_sharding,
                    batch_sharding={k: v.sharding for k, v in batch.items()},
                    microbatches=tc.microbatches,
                    chunk_size=tc.logprob_chunk,
                    max_scored=tc.scored_bound,
                    lora=lora,
                    base=base,
                )
            state, metrics = step_fn(state, batch)
            metrics = jax.device_get(metrics)
            if metrics["nonfinite"][0] > 0:
                error = _nonfinite_error(config, step, metrics, lr_scale)
                if rollbacks >= policy.max_rollbacks:
                    if checkpointer is not None and step > base_step:
                        # The state is still that of ``step`` (the update was not applied);
                        # saved with its own data position, a rerun repeats the failing batch.
                        checkpointer.save_now(step, state, stream,
                                              history[-1] if history else {},
                                              data_state=data_before)
                    if policy.max_rollbacks:
                        raise NonFiniteLossError(
                            f"{error} (after {rollbacks} rollbacks, nonfinite.max_rollbacks="
                            f"{policy.max_rollbacks})")
                    raise error
                restored = None
                if checkpointer is not None:
                    restored = checkpointer.rollback(state, state_sharding, stream)
                if restored is not None:
                    state = restored
                elif data_before is not None:
                    stream.set_state(data_before)  # no checkpoint yet: retry from this state
                else:
                    raise NonFiniteLossError(f"{error}; cannot roll back: no checkpoint and the "
                                             "data stream cannot rewind") from None
                rollbacks += 1
                lr_scale *= policy.lr_factor
                step = base_step = int(state.step)
                log.warning("%s; rollback %d of %d: continuing from step %d with the learning "
                            "rate scaled by %g", error, rollbacks, policy.max_rollbacks, step,
                            lr_scale)
                if checkpointer is not None:
                    checkpointer.run_info = {"lr_scale": lr_scale, "rollbacks": rollbacks}
                step_fn = None  # rebuilt with the scaled learning rate
                history = [h for h in history if h["step"] <= step]
                pending, window_t, window_tokens = {}, time.perf_counter(), 0.0
                if bar is not None:
                    bar.n = step
                    bar.refresh()
                continue
            for k, (s, c) in metrics.items():
                acc = pending.setdefault(k, [0.0, 0.0])
                acc[0] += float(s)
                acc[1] += float(c)
            window_tokens += float(metrics["tokens"][0])
            step = done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                now = time.perf_counter()
                values = {k: s / c if c else float("nan") for k, (s, c) in pending.items()}
                values["tokens_per_second"] = window_tokens / max(now - window_t, 1e-9)
                values["step"] = done
                history.append(values)
                tb.scalars(done, {k: v for k, v in values.items() if k != "step"})
                if on_log is not None:
                    on_log(done, values)
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.4f}",
                                    tok_s=f"{values['tokens_per_second']:.0f}")
                pending, window_t, window_tokens = {}, now, 0.0
            if bar is not None:
                bar.update(1)
            if checkpointer is not None:
                checkpointer.maybe_save(done, state, stream, history[-1] if history else {})
                if checkpointer.preempted:
                    log.warning("SIGTERM received: checkpoint saved at step %d, exiting", done)
                    break
        else:
            if checkpointer is not None and int(state.step) > base_step:
                checkpointer.save_now(int(state.step), state, stream,
                                      history[-1] if history else {})
    finally:
        if bar is not None:
            bar.close()
        tb.close()
        if checkpointer is not None:
            checkpointer.close()
    return RunResult(state, history, time.perf_counter() - t0, model, mesh, base, lora)


def _lora_start(config: TrainJob, params: Any, reference_params: Any, mesh: Mesh) -> Any:
    """Fresh adapters for ``params`` (the frozen base), after checking the run can use them."""
    if config.model.reward_head:
        raise ValueError(
            f"{config.name}: lora with model.reward_head=True would leave the new scalar head "
            "frozen at its random initialisation; train reward models without lora")
    if reference_params is not None and reference_params is not params:
        raise ValueError(
            f"{config.name}: with lora the frozen base (the starting params) is the reference; "
            "a different reference_params is not supported")
    rng = jax.random.fold_in(jax.random.key(config.seed), 0x10AA)
    return steplib.init_adapters(Decoder(config.model), config.lora, rng, mesh, config.rules)


def _bind_lora_base(checkpointer: Any, config: TrainJob, base: Any) -> None:
    """Checkpoints of a LoRA run hold the adapters and, in their extras, the identity of the
    base they adapt (where it came from and a content fingerprint). Resuming on another base
    is refused: the adapters would be meaningless on it."""
    from fbjax import checkpoint

    identity = {"init_from": config.init_from, "fingerprint": checkpoint.tree_fingerprint(base)}
    checkpointer.reference = {**(checkpointer.reference or {}), "lora_base": identity}
    if not checkpoint.list_steps(checkpointer.manager):
        return
    saved = (checkpoint.read_extras(checkpointer.manager).get("reference") or {}).get("lora_base")
    if saved is not None and saved["fingerprint"] != identity["fingerprint"]:
        raise ValueError(
            f"{config.name}: the checkpoint in {checkpointer.manager.directory} holds adapters "
            f"for the base {saved}, but this run's base is {identity}")


def write_summary(workdir: str, values: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(values, f, indent=2, sort_keys=True)
