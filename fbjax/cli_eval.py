"""``fbjax eval``: evaluate a trained policy from a run's checkpoints; JSON plus a plot.

    fbjax eval --workdir W [--stage NAME] [--step N] --out eval.json
               [--data FILE.jsonl] [--reference PATH] [--reference-step N]
               [--reward-model PATH] [--judge PATH] [--num-prompts 256] [--seed 0]

What it reports (each part only when what it needs is there; ``skipped`` in the JSON says why
a part is missing):

* ``preference``: held-out preference accuracy and implicit-reward margins
  ``beta * (log pi - log pi_ref)`` of chosen vs rejected (``beta`` of the run's objective, or
  ``--beta``), named as training logs them (``rewards/accuracy``, ``rewards/margin``, ...);
* ``samples``: the policy's samples (temperature 1, no filtering, stopping at EOS): response
  length in tokens and ``KL(policy || reference)`` per sequence (mean and sd of the one-sample
  estimates ``log pi(y|x) - log pi_ref(y|x)``);
* ``reward``: mean score of the policy's samples and of a baseline's responses, and the policy's
  win rate against the baseline, under every scorer available: the simulator's oracle (when the
  run's data are the simulator's), a reward model (``--reward-model``), a local judge comparing
  the two responses (``--judge``, asked in both orders). The baseline is the reference model's
  samples when there is a reference, else the data's chosen responses.

The policy is the run's checkpoint at ``--step`` (default: the newest complete one). The
reference is ``--reference`` (a run workdir, stage directory or checkpoint root) at
``--reference-step``, or the same run at ``--reference-step``, or else the reference parameters
saved in the checkpoint when the objective keeps them.

Data: ``--data`` is a JSON-lines file of ``{"prompt": ..., "chosen": ..., "rejected": ...}``
(``chosen``/``rejected`` may be left out of lines that only give a prompt to sample from).
Without it, a run on the simulator is evaluated on ``--num-prompts`` prompts of its task drawn
with a seed of their own (``--seed``; drawn, not guaranteed disjoint from the training prompts),
with pairs (the task's solution, the demonstrator's systematically wrong answer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fbjax.train.config import LOGPROB_CHUNK

CHECKPOINTS = "checkpoints"
HELD_OUT_SEED_OFFSET = 1_000_003  # the eval prompts' stream, apart from any training seed


# ----------------------------------------------------------------------------- the run's files


def checkpoint_root(workdir: str | os.PathLike, stage: str | None = None) -> str:
    """The Orbax root of a run's checkpoints: ``<workdir>/<stage>/checkpoints`` with ``stage``,
    else the run's last training stage (``fbjax.models.checkpoints.run_checkpoint_root``)."""
    from fbjax.models.checkpoints import run_checkpoint_root

    workdir = os.path.abspath(os.fspath(workdir))
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir not found: {workdir}")
    if stage is not None:
        root = os.path.join(workdir, stage, CHECKPOINTS)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{workdir}: stage {stage!r} has no {CHECKPOINTS}/ "
                                    f"(stages with checkpoints: {', '.join(_stages(workdir)) or 'none'})")
        return root
    root = run_checkpoint_root(workdir)
    if root is None:
        raise FileNotFoundError(f"{workdir} has no {CHECKPOINTS}/ and no stage directories "
                                "with one")
    return root


def _run_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The run's resolved experiment config (``<workdir>/config.json``), or {}."""
    try:
        with open(os.path.join(os.fspath(workdir), "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _workdir_tokenizer(workdir: str | os.PathLike, root: str) -> Any:
    """The run's tokenizer when it is not next to the stage's checkpoints: the workdir's."""
    from fbjax.tokenizers import load_tokenizer

    try:
        return load_tokenizer(os.path.abspath(os.fspath(workdir)))
    except FileNotFoundError:
        raise ValueError(f"{root}: no tokenizer saved next to the checkpoints or in "
                         f"{workdir}") from None


def _stages(workdir: str) -> list[str]:
    return sorted(n for n in os.listdir(workdir)
                  if os.path.isdir(os.path.join(workdir, n, CHECKPOINTS)))


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class EvalData:
    """Prompts to sample from, held-out pairs ``(prompt, chosen, rejected)``, and the
    simulator task when the prompts are its (its oracle then scores responses)."""

    prompts: tuple[str, ...]
    pairs: tuple[tuple[str, str, str], ...]
    task: Any = None
    source: str = ""


def read_data(path: str) -> EvalData:
    """An :class:`EvalData` from a JSON-lines file; a bad line is an error naming the file and
    line (``fbjax.data.reading``'s policy)."""
    from fbjax.data import reading

    def convert(record, ctx):
        prompt = reading.get_str(record, "prompt", nonempty=True)
        chosen = reading.get_optional_str(record, "chosen")
        rejected = reading.get_optional_str(record, "rejected")
        if (chosen is None) != (rejected is None):
            raise reading.Malformed(reading.MISSING_FIELD,
                                    "'chosen' and 'rejected' come together or not at all")
        yield prompt, chosen, rejected

    rows = reading.read_records(path, convert).examples
    if not rows:
        raise ValueError(f"{path}: no records")
    pairs = tuple((p, c, r) for p, c, r in rows if c is not None)
    return EvalData(tuple(dict.fromkeys(p for p, _, _ in rows)), pairs, None, path)


def sim_task(config: Mapping[str, Any] | None) -> Any:
    """The simulator task named in a saved run config (its ``task``, or ``data.task``, as
    ``to_jsonable`` wrote it), or None when the run's data are not the simulator's."""
    from fbjax import sim

    config = config or {}
    task = config.get("task")
    if task is None and isinstance(config.get("data"), Mapping):
        task = config["data"].get("task")
    if not isinstance(task, Mapping) or task.get("name") not in sim.TASKS:
        return None
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in task.items() if k != "name"}
    return sim.make_task(task["name"], **fields)


def sim_data(task: Any, num_prompts: int, seed: int) -> EvalData:
    """Held-out simulator prompts; pairs are (solution, the demonstrator's wrong answer)."""
    rng = np.random.default_rng(seed + HELD_OUT_SEED_OFFSET)
    prompts = task.sample_prompts(rng, num_prompts)
    pairs = []
    for p in prompts:
        wrong = task.demonstration(p, rng, 0.0)
        if wrong != task.solution(p):
            pairs.append((p, task.solution(p), wrong))
    return EvalData(tuple(prompts), tuple(pairs), task, f"sim:{task.name} seed {seed}")


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    step: int | None = None
    reference: str | None = None
    reference_step: int | None = None
    reward_model: str | None = None
    judge: str | None = None
    beta: float | None = None
    num_prompts: int = 256
    seed: int = 0
    max_new_tokens: int = 64
    batch_size: int = 64


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1
            else 0.0, "n": float(values.size)}


def _load_reference(root: str, settings: EvalSettings, skipped: dict[str, str], *,
                    start: str | None = None, workdir: str | os.PathLike = ""):
    """The reference: ``--reference``, else the checkpoint's saved reference parameters, else
    the final parameters of the stage the trained one started from (a staged run that cached
    its reference log-probs saves no reference parameters)."""
    from fbjax import analysis

    if settings.reference is not None:
        path = settings.reference
        target = os.path.join(path, CHECKPOINTS) if os.path.isdir(
            os.path.join(path, CHECKPOINTS)) else path
        return analysis.load_policy(target, settings.reference_step), (
            f"{target} step {settings.reference_step or 'newest'}")
    if settings.reference_step is not None:
        return analysis.load_policy(root, settings.reference_step), (
            f"{root} step {settings.reference_step}")
    try:
        ref = analysis.load_policy(root, settings.step, reference=True)
        return ref, f"{root} ref_params"
    except ValueError as e:
        start_root = os.path.join(os.fspath(workdir), start or "", CHECKPOINTS)
        if start and os.path.isdir(start_root):
            return analysis.load_policy(start_root), f"{start_root} (the stage's start)"
        skipped["reference"] = (f"{e}; pass --reference or --reference-step for KL, "
                                "implicit rewards and a reference baseline")
        return None, None


def evaluate_run(
    workdir: str,
    *,
    stage: str | None = None,
    data: EvalData | None = None,
    settings: EvalSettings = EvalSettings(),
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every metric of the module docstring for one checkpoint, as ``(report, arrays)``:
    ``report`` is JSON-ready; ``arrays`` holds the per-example values the plot draws."""
    import jax
    from tqdm.auto import tqdm

    from fbjax import analysis, evaluation, feedback, sampling
    from fbjax.data import encode, packing

    root = checkpoint_root(workdir, stage)
    skipped: dict[str, str] = {}
    bar = tqdm(total=6, desc="fbjax eval", disable=not progress)

    def done(what: str):
        bar.set_postfix_str(what)
        bar.update(1)

    policy = analysis.load_policy(root, settings.step)
    if policy.tokenizer is None:
        policy = dataclasses.replace(policy, tokenizer=_workdir_tokenizer(workdir, root))
    config = policy.config or {}
    stage_config = config.get("stage") or config  # a staged run saves its stage's config
    chunk = int((stage_config.get("train") or {}).get("logprob_chunk", LOGPROB_CHUNK))
    beta = settings.beta
    if beta is None:
        hparams = (stage_config.get("objective") or {}).get("hparams") or {}
        beta = float(hparams.get("beta", 1.0))
    if data is None:
        task = sim_task(config) or sim_task(_run_config(workdir))
        if task is None:
            raise ValueError(f"{root}: the run's data are not the simulator's; pass --data "
                             "FILE.jsonl with prompts (and chosen/rejected pairs)")
        data = sim_data(task, settings.num_prompts, settings.seed)
    ref, ref_source = _load_reference(root, settings, skipped,
                                      start=stage_config.get("start"), workdir=workdir)
    if ref is not None and ref.model_config != policy.model_config:
        raise ValueError(f"reference {ref_source} has a different model config from the "
                         f"policy {root}; log-prob differences between them are not KLs")
    done("loaded")
    report: dict[str, Any] = {
        "checkpoint_root": root, "step": policy.step, "reference": ref_source,
        "data": data.source, "beta": beta, "logprob_chunk": chunk,
    }
    arrays: dict[str, np.ndarray] = {}
    tok = policy.tokenizer

    if data.pairs and ref is not None:
        groups = [packing.Group(encode.prompt_ids(tok, p), (encode.completion_ids(tok, c),
                                                            encode.completion_ids(tok, r)))
                  for p, c, r in data.pairs]
        chosen, rejected = evaluation.implicit_rewards(policy.params, ref.params,
                                                       policy.model_config, groups, beta=beta,
                                                       chunk_size=chunk)
        report["preference"] = {
            "rewards/accuracy": float(np.mean(chosen > rejected)),
            "rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
            "rewards/margin": float(np.mean(chosen - rejected)), "pairs": len(groups)}
        arrays["margin"] = chosen - rejected
    else:
        skipped["preference"] = "no pairs in the data" if not data.pairs else "no reference"
    done("preference")

    sampling_config = sampling.SamplingConfig(max_new_tokens=settings.max_new_tokens)
    key = jax.random.key(settings.seed)
    prompts = list(data.prompts)
    mine = evaluation.sample(policy.params, policy.model_config, tok, prompts,
                             sampling_config=sampling_config, rng=key,
                             batch_size=settings.batch_size)
    lengths = evaluation.response_lengths(mine)
    stopped = np.mean([int(g.completions[0][-1]) == tok.eos_id for g in mine.groups])
    report["samples"] = {"prompts": len(prompts), "response_length": _summary(lengths),
                         "stopped_at_eos": float(stopped)}
    arrays["length"] = lengths
    if ref is not None:
        kl = evaluation.kl_per_sequence(policy.params, ref.params, policy.model_config, mine,
                                        chunk_size=chunk)
        report["samples"]["kl"] = _summary(kl)
        arrays["kl"] = kl
    else:
        skipped["kl"] = "no reference"
    done("samples and KL")

    if ref is not None:
        baseline = list(evaluation.sample(ref.params, ref.model_config, tok, prompts,
                                          sampling_config=sampling_config,
                                          rng=jax.random.fold_in(key, 1),
                                          batch_size=settings.batch_size).texts)
        baseline_prompts, policy_texts, baseline_name = prompts, list(mine.texts), "reference"
    elif data.pairs:
        by_prompt = {p: c for p, c, _ in data.pairs}
        keep = [i for i, p in enumerate(prompts) if p in by_prompt]
        baseline_prompts = [prompts[i] for i in keep]
        policy_texts = [mine.texts[i] for i in keep]
        baseline = [by_prompt[p] for p in baseline_prompts]
        baseline_name = "chosen"
    else:
        baseline_prompts, policy_texts, baseline, baseline_name = [], [], [], None
    report["baseline"] = baseline_name
    done("baseline")

    scorers = {}
    if data.task is not None:
        scorers["oracle"] = feedback.OracleScores(data.task)
    if settings.reward_model is not None:
        rm = analysis.load_policy(settings.reward_model)
        scorers["reward_model"] = feedback.RewardModelScores(
            rm.params, rm.model_config, rm.tokenizer or tok, chunk_size=chunk)
    if not scorers:
        skipped["reward"] = "no scorer: not a simulator run and no --reward-model"
    rewards = {}
    for name, scorer in scorers.items():
        own = np.concatenate(scorer.score(feedback.Responses.of(prompts, list(mine.texts))))
        entry = {"policy": float(own.mean())}
        arrays[f"reward/{name}"] = own
        if baseline_name is not None:
            batch_a = feedback.Responses.of(baseline_prompts, policy_texts)
            batch_b = feedback.Responses.of(baseline_prompts, baseline)
            a = np.concatenate(scorer.score(batch_a))
            b = np.concatenate(scorer.score(batch_b))
            entry.update(baseline=float(b.mean()),
                         win_rate=evaluation.win_rate_from_scores(a, b))
            arrays[f"reward/{name}/baseline"] = b
        rewards[name] = entry
    if data.task is not None:
        rewards["oracle"]["accuracy"] = float(np.mean(arrays["reward/oracle"] >= 1.0))
    if rewards:
        report["reward"] = rewards
    done("rewards")

    if settings.judge is not None:
        if baseline_name is None:
            skipped["judge"] = "no baseline to compare with"
        else:
            judge = feedback.load_judge(settings.judge, feedback.PairwiseTemplate(),
                                        both_orders=True)
            report["judge"] = feedback.judge_win_rate(judge, baseline_prompts, policy_texts,
                                                      baseline)
    done("judge")
    bar.close()
    report["skipped"] = skipped
    return report, arrays


# ----------------------------------------------------------------------------- output


def write_plot(arrays: Mapping[str, np.ndarray], path: str, title: str) -> str:
    """Histograms of the per-example values (margins, KL, lengths, rewards), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, v) for k, v in arrays.items() if not k.endswith("/baseline")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    labels = {"margin": "implicit-reward margin (chosen - rejected)",
              "kl": "log pi - log pi_ref per sample", "length": "response length (tokens)"}
    for ax, (name, values) in zip(axes[0], panels):
        ax.hist(values, bins=30, alpha=0.7, label="policy")
        base = arrays.get(f"{name}/baseline")
        if base is not None:
            ax.hist(base, bins=30, alpha=0.5, label="baseline")
            ax.legend()
        ax.set_xlabel(labels.get(name, name.replace("reward/", "reward: ")))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _headline(report: Mapping[str, Any]) -> str:
    parts = [f"step {report['step']}"]
    pref = report.get("preference")
    if pref:
        parts.append(f"accuracy {pref['rewards/accuracy']:.3f} margin "
                     f"{pref['rewards/margin']:.3f}")
    kl = report.get("samples", {}).get("kl")
    if kl:
        parts.append(f"KL {kl['mean']:.3f}")
    for name, entry in (report.get("reward") or {}).items():
        text = f"reward ({name}) {entry['policy']:.3f}"
        if "win_rate" in entry:
            text += f" win rate vs {report['baseline']} {entry['win_rate']:.3f}"
        parts.append(text)
    if "judge" in report:
        parts.append(f"judge win rate {report['judge']['win_rate']:.3f}")
    length = report.get("samples", {}).get("response_length")
    if length:
        parts.append(f"length {length['mean']:.1f}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    settings = EvalSettings(step=args.step, reference=args.reference,
                            reference_step=args.reference_step, reward_model=args.reward_model,
                            judge=args.judge, beta=args.beta, num_prompts=args.num_prompts,
                            seed=args.seed, max_new_tokens=args.max_new_tokens)
    data = read_data(args.data) if args.data else None
    report, arrays = evaluate_run(args.workdir, stage=args.stage, data=data, settings=settings,
                                  progress=not args.no_progress)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    plot = args.plot or os.path.splitext(out)[0] + ".png"
    report["plot"] = write_plot(arrays, plot, f"{args.workdir} step {report['step']}")
    with open(out, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    print(f"fbjax eval: {_headline(report)}")
    print(f"fbjax eval: wrote {out} and {plot}")
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("eval", help="evaluate a run's checkpoint (JSON + plot)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--stage", default=None, help="the stage whose checkpoints to evaluate")
    p.add_argument("--step", type=int, default=None, help="default: newest complete step")
    p.add_argument("--out", required=True, help="JSON report path")
    p.add_argument("--plot", default=None, help="plot path (default: the --out path, .png)")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc's malloc as it is (fbjax.host_memory)")
    p.add_argument("--data", default=None, help="JSONL of prompt[, chosen, rejected]")
    p.add_argument("--reference", default=None, help="reference run / checkpoint directory")
    p.add_argument("--reference-step", type=int, default=None)
    p.add_argument("--reward-model", default=None, help="a reward model's run directory")
    p.add_argument("--judge", default=None, help="a local judge checkpoint directory")
    p.add_argument("--beta", type=float, default=None,
                   help="implicit-reward scale (default: the run objective's beta, else 1)")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p
