"""The default experiment: every feedback family improving one small model, on one CPU.

A tiny Llama-style model is first fine-tuned (SFT) on a noisy demonstrator for a simulated task
(``fbjax.sim``: 2-digit arithmetic by default), which leaves it mediocre. From that one SFT
start, one representative objective of each feedback family is trained on feedback that the
task's oracle gives on the SFT policy's *own* samples:

===================  ======================  ==========================================
family               objective               feedback it reads
===================  ======================  ==========================================
paired preference    DPO                     Bradley-Terry preferences on 2 samples
unpaired binary      KTO                     thumbs up/down per sample
negative-only        D2O                     the bad samples (+ the policy's own samples)
language feedback    ILF                     critiques -> refinements, fine-tuned on
===================  ======================  ==========================================

NPO (negatives alone) and Chain of Hindsight are in their own experiment modules; on this task
and model size NPO does not beat the SFT start, and Chain of Hindsight only after three times the
other language-feedback methods' steps (see docs/experiments.md).

Each is evaluated the same way (``fbjax.evaluation``): mean oracle reward of samples on held-out
prompts, win rate against the SFT start, and KL to it. The run prints a table, and writes
``results.json``, ``reward_vs_kl.png`` (with training curves) and TensorBoard logs to the workdir.

Run (minutes on 2 CPU cores)::

    fbjax train --experiment experiments/feedback_families.py --workdir runs/families

Variants: ``default`` (the README run) and ``smoke`` (seconds; CI).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from typing import Any, Callable

import flax.serialization
import jax
import numpy as np

from fbjax import evaluation, recipes, sampling
from fbjax import sharding as fsh
from fbjax import sim
from fbjax.config import ExperimentConfig, TrainConfig
from fbjax.data import encode, packing, templates
from fbjax.models import config as model_config
from fbjax.train import loop, presets
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig

VARIANTS = ("default", "smoke")
DEFAULT_VARIANT = "default"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """One feedback stage: an objective, how its data is made from the SFT samples, and how the
    policy is prompted at evaluation time (Chain of Hindsight conditions on a positive phrase)."""

    name: str
    family: str
    feedback: str
    objective: Objective
    build_data: Callable[..., list]
    train: TrainConfig
    optimizer: OptimizerConfig
    eval_prompt: Callable[[str], str] | None = None
    # Hyperparameters that depend on the data (e.g. KTO's class weights), set once it is built.
    adapt: Callable[[Objective, list], Objective] | None = None
    # A stage that trains something other than the policy (a reward model) builds its start
    # from the SFT policy, ``(model config, params, rng) -> (model config, params)``, and scores
    # the result itself with ``evaluate(EvalContext) -> metrics`` (keys as evaluate_on_task's).
    start: Callable[[model_config.ModelConfig, Any, jax.Array],
                    tuple[model_config.ModelConfig, Any]] | None = None
    evaluate: Callable[["EvalContext"], dict[str, float]] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalContext:
    """What a method's own evaluation may use: the trained stage and the SFT start it began from."""

    task: Any
    params: Any
    model: model_config.ModelConfig
    tokenizer: Any
    prompts: tuple[str, ...]
    sft_params: Any
    sft_model: model_config.ModelConfig
    sampling: sampling.SamplingConfig
    rng: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class FamiliesConfig:
    name: str = "feedback_families"
    task: sim.Task = sim.ArithmeticTask(max_operand=19)
    seed: int = 0
    model: model_config.ModelConfig = model_config.llama(
        vocab_size=384, hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=256,
        max_seq_len=128,
    )
    mesh: fsh.MeshConfig = fsh.MeshConfig(shape=(1, -1, 1), rules=fsh.RULES_FSDP)
    tokenizer_vocab: int = 384
    num_demos: int = 6000
    demo_quality: float = 0.5
    sft_train: TrainConfig = TrainConfig(steps=600, batch_rows=16, seq_len=96, slots_per_row=16,
                                         log_every=25)
    sft_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=30)
    num_feedback_prompts: int = 4096
    samples_per_prompt: int = 2
    num_eval_prompts: int = 512
    sampling: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=8, temperature=1.0)
    methods: tuple[Method, ...] = ()


# ----------------------------------------------------------------------------- feedback data


def dpo_data(task, pool: recipes.SamplePool, tokenizer, rng):
    pairs = sim.feedback.preferences(
        task, list(pool.prompts), [t[0] for t in pool.texts], [t[1] for t in pool.texts], rng,
        temperature=0.05,
    )
    return encode.paired(pairs, tokenizer)


def kto_data(task, pool, tokenizer, rng):
    del rng
    return encode.unpaired(
        sim.feedback.thumbs(task, pool.flat_prompts, pool.flat_texts, threshold=1.0), tokenizer
    )


def d2o_data(task, pool, tokenizer, rng):
    """Each bad sample (the negative) with another sample of the same prompt from the SFT
    policy, unlabelled: D2O's self-generated stand-in for the positive distribution."""
    del rng
    groups = []
    for prompt, texts, rewards in zip(pool.prompts, pool.texts, pool.rewards):
        for k, (text, reward) in enumerate(zip(texts, rewards)):
            if reward < 1.0:
                other = texts[(k + 1) % len(texts)]
                groups.append(packing.Group(
                    encode.prompt_ids(tokenizer, prompt),
                    (encode.completion_ids(tokenizer, text), encode.completion_ids(tokenizer, other)),
                ))
    return groups


def ilf_data(task, pool, tokenizer, rng):
    """ILF's last step: fine-tune on the refinements of the outputs that got critiques.

    The simulator's refiner reads the critique and rewrites the output (``task.refine``); ILF's
    selection step keeps the refinement that best addresses the feedback, which for a
    programmatic refiner is the one refinement it returns.
    """
    del rng
    refinements = sim.feedback.refinements(task, pool.flat_prompts, pool.flat_texts)
    pairs = [(encode.default_prompt_text(e.prompt), e.refinement) for e in refinements
             if e.score is not None and e.score < 1.0 and e.refinement]
    return encode.sft(pairs, tokenizer)


def npo_data(task, pool, tokenizer, rng):
    del rng
    return encode.negative(
        sim.feedback.negatives(task, pool.flat_prompts, pool.flat_texts, threshold=1.0), tokenizer
    )


def coh_data(task, pool, tokenizer, rng):
    groups = []
    for prompt, texts in zip(pool.prompts, pool.texts):
        outputs = [(t, task.reward(prompt, t) >= 1.0) for t in texts]
        groups.append(encode.from_segments(
            templates.chain_of_hindsight(prompt, outputs, rng, eos_after_each=True), tokenizer))
    return groups


def kto_balance(objective: Objective, groups: list) -> Objective:
    """KTO's class weights from the data, following the paper's advice that
    ``lambda_D n_D / (lambda_U n_U)`` lie in [1, 4/3] (Ethayarajh et al. 2024, Sec. 4.2)."""
    labels = np.array([g.slot_fields["labels"][0] for g in groups])
    n_d, n_u = max(labels.sum(), 1.0), max((1 - labels).sum(), 1.0)
    return dataclasses.replace(
        objective, hparams={**objective.hparams, "desirable_weight": float(n_u / n_d),
                            "undesirable_weight": 1.0})


def coh_eval_prompt(prompt: str) -> str:
    return templates.chain_of_hindsight_prompt(prompt)


def _methods(steps: int, rows: int) -> tuple[Method, ...]:
    """One objective per family. Learning rates and steps were chosen on seed 0 of this task
    (see the closing table in the README): preference-style objectives need small steps on a
    model this small, or the policy drifts (KL grows) without gaining reward."""
    base = TrainConfig(steps=steps, batch_rows=rows, seq_len=96, slots_per_row=16, log_every=10)
    opt = OptimizerConfig(learning_rate=1e-4, warmup_steps=5, schedule="constant")
    return (
        Method(name="DPO", family="paired preference", feedback="pairwise preference",
               objective=presets.dpo(beta=0.5), build_data=dpo_data,
               train=dataclasses.replace(base, steps=max(1, 2 * steps // 3)), optimizer=opt),
        Method(name="KTO", family="unpaired binary", feedback="thumbs up/down",
               objective=presets.kto(beta=0.1), build_data=kto_data,
               train=dataclasses.replace(base, steps=4 * steps // 3),
               optimizer=dataclasses.replace(opt, learning_rate=1e-5), adapt=kto_balance),
        Method(name="D2O", family="negative-only", feedback="bad samples (+ own samples)",
               objective=presets.d2o(1, beta=0.1, alpha=0.1), build_data=d2o_data, train=base,
               optimizer=opt),
        Method(name="ILF", family="language feedback", feedback="critique -> refinement",
               objective=presets.sft(), build_data=ilf_data,
               train=dataclasses.replace(base, steps=max(1, 2 * steps // 3)), optimizer=opt),
    )


def get_config(variant: str = DEFAULT_VARIANT) -> FamiliesConfig:
    if variant == "default":
        return FamiliesConfig(methods=_methods(steps=60, rows=16))
    if variant == "smoke":
        return FamiliesConfig(
            num_demos=400,
            sft_train=TrainConfig(steps=20, batch_rows=8, seq_len=96, slots_per_row=16,
                                  log_every=5),
            num_feedback_prompts=48,
            num_eval_prompts=32,
            methods=_methods(steps=4, rows=8),
        )
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")


# ----------------------------------------------------------------------------- the run


def _stage_config(cfg: FamiliesConfig, name: str, objective, train, optimizer):
    return ExperimentConfig(
        name=name, model=cfg.model, objective=objective, optimizer=optimizer,
        train=dataclasses.replace(train, seed=cfg.seed), mesh=cfg.mesh,
    )


def data_rngs(cfg: FamiliesConfig) -> tuple[np.random.Generator, ...]:
    """Each method's data generator, seeded by the run's seed and a hash of the method's name (not
    its position in ``cfg.methods``), so a method gets the same data alone as in ``run_many``."""
    return tuple(np.random.default_rng([cfg.seed, 3, zlib.crc32(m.name.encode())])
                 for m in cfg.methods)


def _sft_cache_path(cache_dir: str, cfg: FamiliesConfig) -> str:
    # Everything the SFT stage's result depends on; repr of frozen dataclasses is stable.
    key = repr((cfg.task, cfg.seed, cfg.model, cfg.mesh, cfg.tokenizer_vocab, cfg.num_demos,
                cfg.demo_quality, cfg.sft_train, cfg.sft_optimizer))
    return os.path.join(cache_dir, "sft-" + hashlib.sha256(key.encode()).hexdigest()[:16])


def _load_sft(cache_dir: str | None, cfg: FamiliesConfig, like: Any):
    if cache_dir is None:
        return None
    path = _sft_cache_path(cache_dir, cfg)
    if not os.path.exists(path + ".json"):
        return None
    with open(path + ".msgpack", "rb") as f:
        params = flax.serialization.from_bytes(like, f.read())
    with open(path + ".json") as f:
        history = json.load(f)
    params = jax.tree.map(lambda ref, x: jax.device_put(x, ref.sharding), like, params)
    print(f"SFT params reused from {path}.msgpack")
    return params, history


def _save_sft(cache_dir: str | None, cfg: FamiliesConfig, params: Any, history: list) -> None:
    if cache_dir is None:
        return
    path = _sft_cache_path(cache_dir, cfg)
    recipes.ensure_dir(cache_dir)
    with open(path + ".msgpack", "wb") as f:
        f.write(flax.serialization.to_bytes(jax.device_get(params)))
    with open(path + ".json", "w") as f:  # written last: its presence marks a complete entry
        json.dump(history, f, default=float)


def run(cfg: FamiliesConfig, *, workdir: str, progress: bool = True,
        sft_cache: str | None = None) -> dict[str, Any]:
    """SFT, the shared sample pool, then each method from the SFT start.

    ``sft_cache`` (opt-in, for iterating on methods): a directory where the SFT params are
    stored under a hash of everything the SFT stage depends on, and reused when present.
    """
    recipes.ensure_dir(workdir)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    task = cfg.task
    tokenizer = sim.build_tokenizer([task], vocab_size=cfg.tokenizer_vocab, seed=cfg.seed)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    mesh = fsh.make_mesh(cfg.mesh)
    eval_prompts = task.sample_prompts(np.random.default_rng([cfg.seed, 1]), cfg.num_eval_prompts)
    stop = sampling.SamplingConfig(**{**dataclasses.asdict(cfg.sampling),
                                      "stop_tokens": (tokenizer.eos_id,)})

    # 1. SFT on the noisy demonstrator.
    sft_cfg = _stage_config(cfg, "SFT", presets.sft(), cfg.sft_train, cfg.sft_optimizer)
    demos = sim.sft_corpus(task, rng, cfg.num_demos, quality=cfg.demo_quality)
    init = recipes.random_params(sft_cfg, mesh, cfg.seed)
    cached = _load_sft(sft_cache, cfg, init)
    if cached is None:
        sft_run = recipes.train_on_groups(
            sft_cfg, encode.sft(demos, tokenizer), init, mesh=mesh,
            workdir=os.path.join(workdir, "sft"), progress=progress, desc="SFT")
        sft_params, sft_history = sft_run.state.params, sft_run.history
        _save_sft(sft_cache, cfg, sft_params, sft_history)
    else:
        sft_params, sft_history = cached
    sft_eval, sft_samples = evaluation.evaluate_on_task(
        task, sft_params, model_cfg, tokenizer, eval_prompts,
        rng=jax.random.fold_in(key, 1), sampling_config=stop)
    print(f"SFT: oracle reward {sft_eval['reward']:.3f} (demonstrator quality {cfg.demo_quality})")

    # 2. On-policy feedback from the SFT policy's own samples.
    prompts = task.sample_prompts(np.random.default_rng([cfg.seed, 2]), cfg.num_feedback_prompts)
    pool = recipes.sample_pool(task, sft_params, model_cfg, tokenizer, prompts,
                               samples_per_prompt=cfg.samples_per_prompt,
                               sampling_config=stop, rng=jax.random.fold_in(key, 2))

    # 3. One objective per family, each from the same SFT start.
    rows = []
    curves = {"SFT": sft_history}
    for method, data_rng in zip(cfg.methods, data_rngs(cfg)):
        data = method.build_data(task, pool, tokenizer, data_rng)
        objective = method.adapt(method.objective, data) if method.adapt else method.objective
        stage_model, start = model_cfg, sft_params
        if method.start is not None:
            stage_model, start = method.start(model_cfg, sft_params, jax.random.fold_in(key, 4))
        stage = _stage_config(dataclasses.replace(cfg, model=stage_model), method.name,
                              objective, method.train, method.optimizer)
        result, seconds = recipes.timed(
            recipes.train_on_groups, stage, data, start, mesh=mesh,
            workdir=os.path.join(workdir, method.name.lower()), progress=progress,
            desc=method.name, reference_params=sft_params if method.start is None else None)
        if method.evaluate is not None:
            metrics = method.evaluate(EvalContext(
                task=task, params=result.state.params, model=stage_model, tokenizer=tokenizer,
                prompts=tuple(eval_prompts), sft_params=sft_params, sft_model=model_cfg,
                sampling=stop, rng=jax.random.fold_in(key, 1)))
        else:
            # Every method is compared with the SFT start as it is used: prompted plainly.
            metrics, _ = evaluation.evaluate_on_task(
                task, result.state.params, model_cfg, tokenizer, eval_prompts,
                rng=jax.random.fold_in(key, 1), sampling_config=stop, ref_params=sft_params,
                baseline=sft_samples, prompt_transform=method.eval_prompt)
            if method.eval_prompt is not None:
                # The SFT start under the method's own prompt, which it has never seen: where
                # the method really starts from, and what its KL is measured against.
                same, _ = evaluation.evaluate_on_task(
                    task, sft_params, model_cfg, tokenizer, eval_prompts,
                    rng=jax.random.fold_in(key, 1), sampling_config=stop,
                    prompt_transform=method.eval_prompt)
                metrics = {**metrics, "reward_before_same_prompt": same["reward"]}
        curves[method.name] = result.history
        rows.append({
            "method": method.name, "family": method.family, "feedback": method.feedback,
            "examples": len(data), "reward_before": sft_eval["reward"],
            "reward_after": metrics["reward"], "accuracy_after": metrics["accuracy"],
            "win_rate": metrics["win_rate"], "kl": metrics["kl"], "seconds": seconds,
            **{k: v for k, v in metrics.items() if k not in ("reward", "accuracy", "win_rate", "kl")},
        })

    summary = {"config": cfg.name, "seed": cfg.seed, "task": repr(cfg.task), "sft": sft_eval,
               "methods": rows}
    print(format_table(rows))
    loop.write_summary(workdir, summary)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot(rows, curves, os.path.join(workdir, "reward_vs_kl.png"))
    return summary


def format_table(rows: list[dict]) -> str:
    head = (f"{'method':<6} {'family':<18} {'feedback':<27} {'reward before -> after':>22} "
            f"{'win rate':>8} {'KL':>7} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<6} {r['family']:<18} {r['feedback']:<27} "
            f"{r['reward_before']:>10.3f} -> {r['reward_after']:<8.3f} "
            f"{r['win_rate']:>8.3f} {r['kl']:>7.3f} {r['seconds']:>7.1f}")
    return "\n".join(lines)


def plot(rows: list[dict], curves: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        ax1.scatter(r["kl"], r["reward_after"], s=40)
        ax1.annotate(r["method"], (r["kl"], r["reward_after"]), textcoords="offset points",
                     xytext=(4, 4))
    if rows:
        ax1.axhline(rows[0]["reward_before"], color="gray", linestyle="--", label="SFT start")
    ax1.set_xlabel("KL(policy || SFT) per sequence")
    ax1.set_ylabel("oracle reward")
    ax1.set_title("reward vs KL")
    ax1.legend()
    for name, hist in curves.items():
        if hist:
            ax2.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=name)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss")
    ax2.set_yscale("symlog")
    ax2.set_title("training curves")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
