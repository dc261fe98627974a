"""Runs an :class:`~fbjax.run.config.ExperimentConfig`: its stages in order, each resumable.

Workdir layout::

    <workdir>/config.json              the resolved experiment config
    <workdir>/tokenizer.*              the run's tokenizer
    <workdir>/<stage>/checkpoints/     a training stage's Orbax checkpoints (fbjax.checkpoint)
    <workdir>/<stage>/history.jsonl    its logged metrics, one line per log step
    <workdir>/<stage>/pool.json        a sample stage's pool (written whole or not at all)
    <workdir>/<stage>/<policy>.json    an evaluation stage's result for one policy
                                       (<policy>.<digest>.json under a StageEval of its own)
    <workdir>/summary.json, results.json, reward_vs_kl.png

Running the same command again continues where the last run stopped: a training stage resumes
from its newest verified checkpoint (and a finished one only restores its final parameters), a
finished pool or evaluation is read back. A run killed at any point therefore ends with the same
numbers as one that was never interrupted: training resumes exactly (state, data position and
random key are checkpointed), sampling and evaluation are deterministic in the seed and the
restored parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from fbjax import checkpoint, evaluation, sampling
from fbjax import sharding as fsh
from fbjax.run import files, online, report, sim, start as startlib
from fbjax.run.config import (EvalStage, ExperimentConfig, OnlineStage, SampleStage, StageEval,
                              TrainStage)
from fbjax.run.overrides import dumps, to_jsonable
from fbjax.train import loop
from fbjax.train import reference as refcache
from fbjax.train.config import TrainJob
from fbjax.train.stream import batch_stream

log = logging.getLogger("fbjax")


@dataclasses.dataclass
class Trained:
    """A finished training stage: what it trained and how it went."""

    model: Any
    params: Any
    history: list[dict[str, float]]
    examples: int
    seconds: float
    step: int = 0  # the step trained to (a preempted run stops before train.steps)


@dataclasses.dataclass
class Run:
    """What stages share within one run."""

    config: ExperimentConfig
    workdir: str
    progress: bool
    mesh: Any
    model: Any
    tokenizer: Any
    start: startlib.Start
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    _start_params: Any = None

    @property
    def key(self) -> jax.Array:
        return jax.random.key(self.config.seed)

    def start_params(self):
        if self._start_params is None:
            self._start_params = startlib.load_params(
                self.model, self.start, self.mesh, self.config.mesh.rules, self.config.seed)
        return self._start_params

    def stage_dir(self, name: str) -> str:
        path = os.path.join(self.workdir, name)
        if jax.process_index() == 0:
            os.makedirs(path, exist_ok=True)
        return path

    def data_context(self, stage: str) -> sim.DataContext:
        pools = {k: v for k, v in self.outputs.items() if isinstance(v, sim.SamplePool)}
        return sim.DataContext(tokenizer=self.tokenizer, task=self.config.task,
                               seed=self.config.seed, stage=stage, pools=pools)

    def stop_sampling(self, config: sampling.SamplingConfig) -> sampling.SamplingConfig:
        return dataclasses.replace(config, stop_tokens=(self.tokenizer.eos_id,))


# ----------------------------------------------------------------------------- setup


def _tokenizer(config: ExperimentConfig, start: startlib.Start):
    if config.tokenizer is not None:
        return config.tokenizer.build(config.task, config.seed)
    from fbjax.data.sources import Dataset

    for stage in config.train_stages:
        if isinstance(getattr(stage, "data", None), Dataset):
            return stage.data.tokenizer(checkpoint_dir=start.path)
    if start.path is not None:
        from fbjax.tokenizers import load_tokenizer

        return load_tokenizer(start.path)
    raise ValueError(f"experiment {config.name!r} names no tokenizer: set tokenizer, a data "
                     "source with a tokenizer, or init_from a checkpoint that has one")


def _check_data(config: ExperimentConfig) -> None:
    """Every stage's released data can be built and its files exist, before any is read: a
    dataset fbjax has no reader for, or a missing file, fails in seconds, naming the stage."""
    from fbjax.data.sources import Dataset, UnavailableError

    for stage in config.stages:
        data = getattr(stage, "data", None)
        if isinstance(data, Dataset):
            try:
                data.check_available()
            except UnavailableError as e:
                raise UnavailableError(f"stages.{stage.name}.data: {e}") from None
            data.check_files()


def prepare(config: ExperimentConfig, *, workdir: str, progress: bool = True) -> Run:
    """Resolves the start, mesh, model and tokenizer, and records the config in the workdir.

    The checkpoint is resolved and its architecture checked before any data is read: a missing
    download or a wrong architecture fails in seconds."""
    from fbjax.tokenizers import check_vocab, save_tokenizer

    workdir = os.path.abspath(workdir)  # Orbax rejects relative paths
    for stage in config.stages:
        if isinstance(stage, OnlineStage):
            # A paper's feedback source with no stand-in given fails here, in seconds.
            online.check_provider(stage.provider, f"stages.{stage.name}.provider")
            online.check_provider(stage.prompts, f"stages.{stage.name}.prompts")
    start = startlib.locate(config)
    model = startlib.resolve_model(config, start)
    _check_data(config)
    tokenizer = _tokenizer(config, start)
    if getattr(config.tokenizer, "resize_model", False):
        model = dataclasses.replace(model, vocab_size=tokenizer.vocab_size)
    check_vocab(tokenizer, model.vocab_size)
    mesh = fsh.make_mesh(config.mesh)
    if jax.process_index() == 0:
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise NotADirectoryError(f"--workdir {workdir} is a file, not a directory")
        os.makedirs(workdir, exist_ok=True)
        # A rerun rewrites it only once its stages have accepted the config (a changed config
        # is refused at the first restored stage, and must not overwrite the run's record).
        if not os.path.exists(os.path.join(workdir, "config.json")):
            _write_config(workdir, dataclasses.replace(config, model=model))
        save_tokenizer(tokenizer, workdir)
    return Run(config=config, workdir=workdir, progress=progress, mesh=mesh, model=model,
               tokenizer=tokenizer, start=start)


def _write_config(workdir: str, config: ExperimentConfig) -> None:
    files.write_whole(os.path.join(workdir, "config.json"), dumps(config))


def run(config: ExperimentConfig, *, workdir: str, progress: bool = True) -> dict[str, Any]:
    """Runs every stage of ``config`` (resuming what an earlier run of it left) and returns the
    summary it writes to ``<workdir>/summary.json``."""
    ctx = prepare(config, workdir=workdir, progress=progress)
    for stage in config.stages:
        if isinstance(stage, TrainStage):
            ctx.outputs[stage.name] = train_stage(ctx, stage)
            if ctx.outputs[stage.name].step < stage.train.steps:
                # Preempted (SIGTERM): the stage saved its step; later stages wait for the
                # same command to run again.
                break
        elif isinstance(stage, OnlineStage):
            ctx.outputs[stage.name] = online_stage(ctx, stage)
        elif isinstance(stage, SampleStage):
            ctx.outputs[stage.name] = sample_stage(ctx, stage)
        elif isinstance(stage, EvalStage):
            ctx.outputs[stage.name] = eval_stage(ctx, stage)
        else:
            raise TypeError(f"stage {getattr(stage, 'name', stage)!r} is not a stage type")
    summary = {
        "name": config.name,
        "seed": config.seed,
        "stages": {name: out.history[-1] if out.history else {}
                   for name, out in ctx.outputs.items() if isinstance(out, Trained)},
    }
    evals = [out for out in ctx.outputs.values() if isinstance(out, EvalResult)]
    if evals:
        summary["sft"] = evals[-1].baseline
        summary["methods"] = evals[-1].rows
    loop.write_summary(ctx.workdir, summary)
    if jax.process_index() == 0:
        _write_config(ctx.workdir, dataclasses.replace(config, model=ctx.model))
    ran = [s.name for s in config.train_stages if s.name in ctx.outputs]
    if not evals and ran:
        last = ran[-1]
        final, trained = summary["stages"].get(last, {}), ctx.outputs[last]
        print(f"{config.name}: {last} step {trained.step} "
              f"loss {final.get('loss', float('nan')):.4f}")
    return summary


# ----------------------------------------------------------------------------- training


def _load_data(ctx: Run, stage: TrainStage) -> list:
    data = stage.data
    if hasattr(data, "load_in"):
        return data.load_in(ctx.data_context(stage.name))
    return data.load(ctx.tokenizer)


def _history(path: str, upto: int) -> list[dict[str, float]]:
    """Logged metrics of steps up to ``upto`` (later lines are from a run that was killed after
    its last checkpoint, and are logged again)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if row.get("step", 0) <= upto:
                out.append(row)
    return out


def train_stage(ctx: Run, stage: TrainStage) -> Trained:
    if stage.start is not None:
        source = ctx.outputs[stage.start]
        model, params = source.model, source.params
    else:
        model, params = ctx.model, ctx.start_params()
    reference = params
    if stage.reference is not None:
        reference = ctx.outputs[stage.reference].params
    if stage.head is not None:
        model, params = stage.head(model, params, jax.random.fold_in(ctx.key, 4))
    groups = _load_data(ctx, stage)
    objective = stage.objective
    if stage.adapt is not None:
        objective = stage.adapt(objective, groups)
        log.info("%s: objective hyperparameters for this data: %s", stage.name,
                 dict(objective.hparams))
    return _fit(ctx, stage, dataclasses.replace(stage, objective=objective),
                ctx.stage_dir(stage.name), model, params, groups,
                reference if stage.head is None else None)


def _lora_for(config: ExperimentConfig, stage) -> Any:
    """``config.lora`` where the stage adapts trained weights (a stage's result, or a checkpoint
    ``init_from`` names); not for a random start (the simulator's SFT) nor a new reward head,
    which adapters on frozen weights could not train."""
    pretrained = stage.start is not None or config.init_from is not None
    if config.lora is None or not pretrained or getattr(stage, "head", None) is not None:
        return None
    return config.lora


def _fit(ctx: Run, stage, resolved, stage_dir: str, model, params, groups,
         reference) -> Trained:
    """Trains ``resolved.objective`` on ``groups`` from ``params``, checkpointed and logged in
    ``stage_dir``: the part every training stage (offline, or one online round) shares."""
    if not groups:
        raise ValueError(f"stages.{stage.name}: its data gave no training examples (every "
                         "record was filtered or left out by the encoder)")
    lora = _lora_for(ctx.config, stage)
    config = ctx.config
    objective = resolved.objective
    job = TrainJob(name=stage.name, model=model, objective=objective,
                   optimizer=stage.optimizer, train=stage.train, rules=config.mesh.rules,
                   seed=config.seed, nonfinite=config.nonfinite,
                   lora=lora, init_from=config.init_from)
    checkpointer = checkpoint.RunCheckpointer(
        os.path.join(stage_dir, "checkpoints"), config.checkpoint,
        allow_config_change=config.allow_config_change,
        # What the stage's result depends on, and nothing else (not the experiment's name or
        # later stages), so a finished stage directory serves any experiment that shares it.
        experiment_config={"name": stage.name, "model": to_jsonable(model),
                           "mesh": to_jsonable(config.mesh), "stage": to_jsonable(resolved),
                           "seed": config.seed, "init_from": config.init_from,
                           "start": _lineage(config, stage)},
    )
    needs_reference = objective.needs_reference and reference is not None
    if needs_reference and stage.reference_cache and caches_reference(objective):
        # The cache packs each group's completions behind one prompt copy, so a padded
        # layout's group may need up to two rows' worth of tokens there.
        truncated = refcache.Truncation.from_train(stage.train).apply(groups)
        longest = max(len(g.prompt) + sum(len(c) for c in g.completions) for g in truncated)
        groups = refcache.for_config(
            job, groups, reference, cache_dir=os.path.join(ctx.workdir, "reference_cache"),
            num_rows=stage.train.batch, seq_len=max(stage.train.seq_len, longest),
            num_slots=stage.train.slots_per_row, mesh=ctx.mesh, rules=config.mesh.rules)
    stream = batch_stream(stage.train, model, groups, seed=config.seed, mesh=ctx.mesh)
    history_path = os.path.join(stage_dir, "history.jsonl")
    logged: list[dict] = []

    def on_log(step: int, values: dict[str, float]) -> None:
        logged.append(values)
        if jax.process_index() == 0:
            with open(history_path, "a") as f:
                f.write(json.dumps(values) + "\n")

    t0 = time.perf_counter()
    desc = stage.name if stage_dir.endswith(stage.name) else \
        f"{stage.name}/{os.path.basename(stage_dir)}"
    result = loop.train(job, stream, params, mesh=ctx.mesh,
                        reference_params=reference if needs_reference else None,
                        workdir=stage_dir, progress=ctx.progress, desc=desc,
                        checkpointer=checkpointer, on_log=on_log,
                        on_start=lambda step: _rewrite_history(history_path, step))
    history = _history(history_path, int(result.state.step)) if jax.process_index() == 0 \
        else logged
    # With LoRA the stage's result is the base with its adapters merged: what later stages start
    # from, sample and evaluate.
    return Trained(model=model, params=result.policy_params(), history=history,
                   examples=len(groups), seconds=time.perf_counter() - t0,
                   step=int(result.state.step))


def online_stage(ctx: Run, stage: OnlineStage) -> Trained:
    """Rounds of sample -> feedback -> train; see :class:`~fbjax.run.config.OnlineStage`.

    Each round keeps ``responses.json`` and ``feedback.json`` (written whole or not at all)
    and its own checkpoints, so a restarted run reuses what a killed one already sampled and
    was told, and resumes the round's training where it stopped."""
    if stage.start is not None:
        source = ctx.outputs[stage.start]
        model, params = source.model, source.params
    else:
        model, params = ctx.model, ctx.start_params()
    reference = ctx.outputs[stage.reference].params if stage.reference else params
    stage_dir = ctx.stage_dir(stage.name)
    # Bound before round 1: a stand-in that was not given fails here, before any sampling.
    provider = online.bind_provider(stage.provider, f"stages.{stage.name}.provider",
                                    ctx.outputs, ctx.tokenizer)
    rounds, history, examples, seconds = [], [], 0, 0.0
    for r in range(1, stage.rounds + 1):
        round_dir = os.path.join(stage_dir, f"round_{r}")
        if jax.process_index() == 0:
            os.makedirs(round_dir, exist_ok=True)
        responses_path = os.path.join(round_dir, "responses.json")
        if os.path.exists(responses_path):
            prompts, responses, metadata = online.load_responses(responses_path)
        else:
            prompts, metadata = stage.prompts.prompts(ctx.config.task, ctx.config.seed, r,
                                                      stage.data)
            shown = online.shown_prompts(stage, prompts, r)
            flat = [p for p in shown for _ in range(stage.samples_per_prompt)]
            out = evaluation.sample(params, model, ctx.tokenizer, flat,
                                    sampling_config=ctx.stop_sampling(stage.sampling),
                                    rng=jax.random.fold_in(jax.random.fold_in(ctx.key, 6), r))
            k = stage.samples_per_prompt
            responses = [tuple(out.texts[i * k:(i + 1) * k]) for i in range(len(prompts))]
            if jax.process_index() == 0:
                online.save_responses(responses_path, prompts, responses, metadata)
        feedback_path = os.path.join(round_dir, "feedback.json")
        if os.path.exists(feedback_path):
            feedback = online.load_feedback(feedback_path)
        else:
            from fbjax.feedback.provider import Responses

            feedback = provider(Responses.of(prompts, responses, metadata))
            if jax.process_index() == 0:
                online.save_feedback(feedback_path, feedback)
        stats = {k: float(v) for k, v in feedback.stats.items()}
        print(f"{stage.name} round {r}: {len(feedback.records)} feedback records, "
              f"{len(feedback.failures)} without; "
              + ", ".join(f"{k} {v:.3g}" for k, v in sorted(stats.items())))
        groups = stage.encode(list(feedback.records), ctx.tokenizer)
        trained = _fit(ctx, stage, stage, round_dir, model, params, groups, reference)
        params = trained.params
        if stage.per_round_reference:
            reference = params
        rounds.append({"round": r, **stats, "records": len(feedback.records),
                       "failures": len(feedback.failures),
                       "final": trained.history[-1] if trained.history else {}})
        history += [{**h, "round": r} for h in trained.history]
        examples += trained.examples
        seconds += trained.seconds
    if jax.process_index() == 0:
        with open(os.path.join(stage_dir, "rounds.json"), "w") as f:
            json.dump(rounds, f, indent=2)
    return Trained(model=model, params=params, history=history, examples=examples,
                   seconds=seconds, step=trained.step)


def _lineage(config: ExperimentConfig, stage: TrainStage) -> list:
    """The configs of the stages this one's start and reference come from, recursively, so a
    stage restored by name is known to descend from the same stages."""
    out = []
    for ref in filter(None, (stage.start, stage.reference)):
        upstream = config.stage(ref)
        entry = to_jsonable(upstream)
        if isinstance(upstream, TrainStage):
            entry = {"stage": entry, "start": _lineage(config, upstream)}
        out.append(entry)
    return out


def caches_reference(objective) -> bool:
    """Whether ``objective`` reads the reference only through per-completion log-prob sums,
    which a cache computed once can supply (``fbjax.train.reference``)."""
    names = [p.name for p in inspect.signature(objective.loss).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    reads = [n for n in names if n.startswith(("ref_", "old_"))]
    # NFT reads the rollout policy's per-token log-probs, ALT whole reference distributions
    # (KL(ref || policy)): those need the reference in the step.
    if objective.reads_reference or objective.reads_distributions:
        return False
    return all("token" not in n for n in reads)


def _rewrite_history(path: str, upto: int) -> None:
    """Drops logged lines past the step a run resumes from (they are logged again)."""
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    files.write_whole(path, "".join(json.dumps(r) + "\n" for r in _history(path, upto)))


# ----------------------------------------------------------------------------- sampling


def _task(ctx: Run, stage) -> Any:
    if ctx.config.task is None:
        raise ValueError(f"stage {stage.name!r} samples prompts from the experiment's task, and "
                         "the experiment has none (set task)")
    return ctx.config.task


def sample_stage(ctx: Run, stage: SampleStage) -> sim.SamplePool:
    path = os.path.join(ctx.stage_dir(stage.name), "pool.json")
    if os.path.exists(path):
        return sim.SamplePool.load(path)
    task = _task(ctx, stage)
    policy = ctx.outputs[stage.policy]
    prompts = task.sample_prompts(np.random.default_rng([ctx.config.seed, 2]), stage.num_prompts)
    pool = sim.sample_pool(task, policy.params, policy.model, ctx.tokenizer, prompts,
                           samples_per_prompt=stage.samples_per_prompt,
                           sampling_config=ctx.stop_sampling(stage.sampling),
                           rng=jax.random.fold_in(ctx.key, 2), renderings=stage.renderings)
    if jax.process_index() == 0:
        pool.save(path)
    return pool


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalResult:
    baseline: dict[str, float]
    rows: list[dict[str, Any]]
    history: list = dataclasses.field(default_factory=list)


def _cached(path: str, compute):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = compute()
    if jax.process_index() == 0:
        files.write_json(path, value, indent=2)
    return value


def eval_cache_name(stage_name: str, ev: StageEval, stage: EvalStage = EvalStage()) -> str:
    """The file holding one trained stage's evaluation: keyed by how it is evaluated (the
    stage's own prompt, and the evaluation's prompts, baseline and sampling) as well as by the
    stage, so that evaluating a finished stage another way computes the new numbers instead of
    reading back the old ones. The default evaluation keeps the plain name."""
    record = to_jsonable(ev)
    how = to_jsonable(dataclasses.replace(stage, name=EvalStage().name))
    if how != to_jsonable(EvalStage()):
        # Only then, so that the caches of workdirs evaluated the default way keep their names.
        record = {"stage": record, "eval": how}
    if record == to_jsonable(StageEval()):
        return f"{stage_name}.json"
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    return f"{stage_name}.{digest}.json"


def eval_stage(ctx: Run, stage: EvalStage) -> EvalResult:
    """Each training stage after the baseline, sampled on held-out prompts and graded."""
    task = _task(ctx, stage)
    out_dir = ctx.stage_dir(stage.name)
    base = ctx.outputs[stage.baseline]
    prompts = task.sample_prompts(np.random.default_rng([ctx.config.seed, 1]), stage.num_prompts)
    stop = ctx.stop_sampling(stage.sampling)
    rng = jax.random.fold_in(ctx.key, 1)

    def on_task(params, model, **kwargs):
        return evaluation.evaluate_on_task(task, params, model, ctx.tokenizer, prompts, rng=rng,
                                           sampling_config=stop, **kwargs)

    base_metrics, base_samples = on_task(base.params, base.model)
    print(f"{stage.baseline}: oracle reward {base_metrics['reward']:.3f}")
    names = [s.name for s in ctx.config.stages]
    policies = [s for s in ctx.config.train_stages
                if names.index(s.name) > names.index(stage.baseline)]
    rows = []
    for s in policies:
        trained = ctx.outputs[s.name]
        ev = getattr(s, "evaluation", None) or StageEval()

        def compute(s=s, trained=trained, ev=ev):
            if ev.evaluate is not None:
                return ev.evaluate(sim.EvalContext(
                    task=task, params=trained.params, model=trained.model,
                    tokenizer=ctx.tokenizer, prompts=tuple(prompts), sft_params=base.params,
                    sft_model=base.model, sampling=stop, rng=rng))
            metrics, _ = on_task(trained.params, trained.model, ref_params=base.params,
                                 baseline=base_samples, prompt_transform=ev.prompt)
            if ev.prompt is not None:
                # The baseline under the method's own prompt, which it has never seen: where the
                # method really starts from.
                same, _ = on_task(base.params, base.model, prompt_transform=ev.prompt)
                metrics["reward_before_same_prompt"] = same["reward"]
            return metrics

        metrics = _cached(os.path.join(out_dir, eval_cache_name(s.name, ev, stage)), compute)
        rows.append({
            "method": s.name, "family": s.family, "feedback": s.feedback,
            "examples": trained.examples, "reward_before": base_metrics["reward"],
            "reward_after": metrics["reward"], "accuracy_after": metrics["accuracy"],
            "win_rate": metrics["win_rate"], "kl": metrics["kl"], "seconds": trained.seconds,
            **{k: v for k, v in metrics.items()
               if k not in ("reward", "accuracy", "win_rate", "kl")},
        })
    print(report.format_table(rows))
    if jax.process_index() == 0:
        results = {"config": ctx.config.name, "seed": ctx.config.seed,
                   "task": repr(task), "sft": base_metrics, "methods": rows}
        with open(os.path.join(ctx.workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        curves = {name: out.history for name, out in ctx.outputs.items()
                  if isinstance(out, Trained)}
        report.plot(rows, curves, os.path.join(ctx.workdir, "reward_vs_kl.png"))
    return EvalResult(base_metrics, rows)
