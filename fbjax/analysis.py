"""Looking at trained checkpoints: ``fbjax inspect``, and analysis of a restored policy.

* :func:`describe_checkpoint` - a text report of a checkpoint directory (what ``fbjax inspect``
  prints): every step and whether it is complete and verified (every array read back against
  its fingerprint), the saved experiment config, parameter shapes, metrics, data-iterator state
  and reference identity.
* :func:`load_policy` - the parameters of one step as a :class:`Policy`, restored onto any mesh
  (or one device) without the optimizer state and without the experiment module: the model is
  rebuilt from the config saved in the checkpoint's extras.
* Analysis of policies, thin wrappers over :mod:`fbjax.evaluation` that accept typed examples:
  :func:`log_probs`, :func:`implicit_rewards`, :func:`preference_accuracy`, :func:`sample`,
  :func:`generate`, :func:`kl_to_reference`; and :func:`export_hf` to Hugging Face safetensors.

A checkpoint directory is a run's workdir (``fbjax train --workdir``) or its ``checkpoints/``
subdirectory; the tokenizer is taken from the workdir (its ``tokenizer.model`` or Hugging Face
``tokenizer.json``, whichever the run saved) when present.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from fbjax import checkpoint as ck
from fbjax.data import encode, packing
from fbjax.data import examples as ex
from fbjax.models.config import ModelConfig

__all__ = [
    "Policy", "Scored", "describe_checkpoint", "export_hf", "generate", "implicit_rewards",
    "kl_to_reference", "load_policy", "log_probs", "preference_accuracy", "sample", "to_groups",
]

TOKENIZER_FILE = "tokenizer.model"


# ----------------------------------------------------------------------------- locating


def _locate(path: str | os.PathLike) -> tuple[str, str]:
    """``(checkpoint root, run workdir)`` for a run workdir (its last training stage), a stage
    directory, or a ``checkpoints/`` directory."""
    from fbjax.models.checkpoints import run_checkpoint_root

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    root = run_checkpoint_root(path) or path
    # The tokenizer is saved once per run, beside the stage directories.
    for workdir in (os.path.dirname(root), os.path.dirname(os.path.dirname(root))):
        if _tokenizer_path(workdir) is not None:
            return root, workdir
    return root, os.path.dirname(root)


def _tokenizer_path(workdir: str) -> str | None:
    from fbjax.tokenizers import TOKENIZER_FILE as HF_TOKENIZER_FILE

    for name in (TOKENIZER_FILE, HF_TOKENIZER_FILE):
        path = os.path.join(workdir, name)
        if os.path.isfile(path):
            return path
    return None


def _chosen_step(status: Mapping[int, str | None], step: int | None, root: str) -> int:
    """The requested step, or the newest complete one; ValueError naming what exists."""
    if step is not None:
        if int(step) not in status:
            raise ValueError(f"no checkpoint at step {step} in {root} (steps: {sorted(status)})")
        return int(step)
    complete = [s for s, reason in status.items() if reason is None]
    if not complete:
        raise ValueError(f"no complete checkpoint in {root} (steps: {sorted(status)})")
    return max(complete)


# ----------------------------------------------------------------------------- describe


def _flat_config(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested JSON dicts -> ``(dotted.path, leaf)`` rows: the paths ``--set`` accepts."""
    if isinstance(value, Mapping) and value:
        rows = []
        for key in sorted(value):
            rows += _flat_config(value[key], f"{prefix}{key}.")
        return rows
    return [(prefix[:-1], value)]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _array_str(entry: Mapping[str, Any]) -> str:
    return f"{entry['dtype']}[{', '.join(str(d) for d in entry['shape'])}]"


def _leaf_report(leaves: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Parameter count and shapes, then one summary line per other part of the state."""
    params = {k[len("params/"):]: v for k, v in leaves.items() if k.startswith("params/")}
    count = sum(math.prod(v["shape"]) for v in params.values())
    dtypes = sorted({v["dtype"] for v in params.values()})
    lines = [f"parameters: {count:,} in {len(params)} arrays ({', '.join(dtypes) or '-'})"]
    width = max((len(k) for k in params), default=0)
    lines += [f"  {name:<{width}}  {_array_str(v)}" for name, v in sorted(params.items())]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for path, entry in leaves.items():
        top = path.split("/", 1)[0]
        if top != "params":
            groups.setdefault(top, []).append(entry)
    lines.append("other state:")
    for top, entries in sorted(groups.items()):
        if top in ("step", "rng") and len(entries) == 1:
            lines.append(f"  {top}: {_array_str(entries[0])}")
        else:
            values = sum(math.prod(e["shape"]) for e in entries)
            lines.append(f"  {top}: {len(entries)} arrays, {values:,} values")
    for missing in ("ref_params", "objective_state"):
        if missing not in groups:
            lines.append(f"  {missing}: none")
    return lines


def _status_text(reason: str | None, verified: bool) -> str:
    if reason is None:
        return "complete, verified" if verified else "complete (static check only)"
    if reason.startswith("no commit marker"):
        return f"INCOMPLETE: {reason}"
    return f"DAMAGED: {reason}"


def describe_checkpoint(ckpt_dir: str | os.PathLike, step: int | None = None, *,
                        verify: bool = True) -> str:
    """A human-readable report of a checkpoint directory (workdir or its ``checkpoints/``).

    Lists every finalised step with its status (complete, or INCOMPLETE / DAMAGED and why),
    then for the chosen ``step`` (default: the newest complete one) the saved experiment config,
    the parameter count and each parameter's shape and dtype (from the commit marker), the
    metrics at save time, the data-iterator state and the reference identity. With ``verify``
    (default) every array of every step is read back and compared with the fingerprint taken at
    save time, as a restore does; ``verify=False`` checks only the files (marker, sizes, small
    files' hashes) and reads no arrays, so it cannot see damage inside a large array file.
    Raises FileNotFoundError for a missing directory and ValueError for a step that does not
    exist.
    """
    root, workdir = _locate(ckpt_dir)
    status = ck.step_status(root, verify=verify)
    lines = [f"checkpoints: {root}"]
    if not status:
        lines.append("no finalised checkpoints")
        return "\n".join(lines)
    complete = [s for s, reason in status.items() if reason is None]
    # With no complete step there is nothing to choose, but the list still says why.
    chosen = _chosen_step(status, step, root) if step is not None or complete else None
    lines.append("steps:")
    width = max(len(str(s)) for s in status)
    for s, reason in status.items():
        mark = "  <- chosen" if s == chosen else ""
        lines.append(f"  {s:>{width}}  {_status_text(reason, verify)}{mark}")
    if chosen is None:
        lines.append("no complete checkpoint")
        return "\n".join(lines)
    if status[chosen] is not None:
        lines.append(f"step {chosen} is not usable; pass --step with a complete one")
        return "\n".join(lines)

    try:
        meta = ck.read_metadata(root, chosen)
        extras = ck.read_extras(root, chosen)
    except ck.CheckpointError as e:  # e.g. extras that fail their checksum: report, not crash
        lines.append(f"step {chosen} cannot be read: {e}")
        return "\n".join(lines)
    config = extras.get("config") or {}
    lines.append(f"step: {chosen} (saved {meta['saved_at']})")
    # A run's checkpoints belong to one training stage; its saved config names the stage.
    lines.append(f"stage: {config.get('name', '(no config saved)')}")
    if config:
        lines.append("config:")
        lines += [f"  {path} = {_json(value)}" for path, value in _flat_config(config)]
    lines += _leaf_report(meta["leaves"])
    metrics = extras.get("metrics") or {}
    lines.append("metrics at save time:" if metrics else "metrics at save time: none")
    lines += [f"  {k} = {v:.6g}" for k, v in sorted(metrics.items())]
    lines.append(f"data iterator state: {_json(extras.get('data_state'))}")
    reference = extras.get("reference")
    lines.append(f"reference: {_json(reference) if reference is not None else 'none recorded'}")
    tokenizer = _tokenizer_path(workdir)
    lines.append(f"tokenizer: {tokenizer or 'none saved in the workdir'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True, eq=False)
class Policy:
    """A restored policy: what the analysis functions take.

    ``params`` is the unboxed parameter tree (on ``mesh`` or one device); ``config`` the
    experiment config saved with the checkpoint (JSON, as ``fbjax.run.overrides.to_jsonable`` wrote
    it); ``tokenizer`` is None when the workdir holds no tokenizer; ``which`` says
    whether these are the trained ``params`` or the saved ``ref_params``.
    """

    model_config: ModelConfig
    params: Any = dataclasses.field(repr=False)
    step: int
    tokenizer: Any = None
    config: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False)
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    directory: str = ""
    which: str = "params"


def _rules(config: Mapping[str, Any] | None) -> Any:
    """The logical-axis rules the run used (JSON lists back to tuples), or the default."""
    from fbjax import sharding as fsh

    saved = ((config or {}).get("mesh") or {}).get("rules")
    if not saved:
        return fsh.RULES_FSDP_TP
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in saved)


def _param_targets(model_config: ModelConfig, mesh: Any, rules: Any) -> tuple[Any, Any]:
    """Abstract params of the model and their target shardings (``mesh`` or one device)."""
    import flax.linen as nn
    import jax

    from fbjax.models.decoder import Decoder
    from fbjax.train import step as steplib

    model = Decoder(model_config)
    abstract = jax.eval_shape(
        lambda r: nn.unbox(steplib.init_params_boxed(model, r)), jax.random.key(0)
    )
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return abstract, jax.tree.map(lambda _: device, abstract)
    return abstract, steplib.param_shardings(model, mesh, rules)


def load_policy(
    ckpt_dir: str | os.PathLike,
    step: int | None = None,
    *,
    mesh: Any = None,
    rules: Any = None,
    reference: bool = False,
    model_config: ModelConfig | None = None,
) -> Policy:
    """Restores the parameters of ``step`` (default: the newest usable one) as a :class:`Policy`.

    Only the parameters are read (an Orbax partial restore, verified against the commit
    marker), so neither the optimizer nor the experiment module is needed. The model config is
    rebuilt from the config saved in the checkpoint (pass ``model_config`` for checkpoints saved
    without one). ``mesh``: restore sharded onto it with the run's logical-axis ``rules`` (or the
    given ones) - any mesh, not only the training one; None puts everything on one device.
    ``reference=True`` restores the saved reference (``ref_params``) instead of the policy.
    """
    from fbjax import tokenizers as tok

    root, workdir = _locate(ckpt_dir)
    status = ck.step_status(root)
    if not status:
        raise FileNotFoundError(f"no finalised checkpoints in {root}")
    if step is not None:
        _chosen_step(status, step, root)
    # The config must come from a step whose extras verify; with step=None that is the newest
    # complete one (restore_params below may still fall back further if its arrays are bad).
    extras = ck.read_extras(root, step)
    config = extras.get("config")
    if model_config is None:
        if not config or "model" not in config:
            raise ValueError(
                f"{root}: the checkpoint has no saved experiment config to rebuild the model "
                "from; pass model_config="
            )
        from fbjax.models import io

        model_config = io.config_from_dict(config["model"], source=f"{root} extras")
    abstract, shardings = _param_targets(model_config, mesh, rules or _rules(config))
    subtree = "ref_params" if reference else "params"
    try:
        params, extras, restored_step = ck.restore_params(root, step, abstract, shardings,
                                                          subtree=subtree)
    except ValueError as e:
        if reference and "missing in checkpoint: ref_params" in str(e):
            raise ValueError(f"{root}: the checkpoint holds no reference parameters (the "
                             "objective does not keep them in the train state)") from e
        raise
    tokenizer_path = _tokenizer_path(workdir)
    return Policy(
        model_config=model_config,
        params=params,
        step=restored_step,
        tokenizer=tok.load_tokenizer(workdir) if tokenizer_path else None,
        config=extras.get("config"),
        metrics=dict(extras.get("metrics") or {}),
        directory=root,
        which=subtree,
    )


# ----------------------------------------------------------------------------- scoring


def _ranked_group(example: ex.RankedExample, tokenizer: Any) -> packing.Group:
    prompt = encode.prompt_ids(tokenizer, encode.default_prompt_text(example.prompt))
    return packing.Group(
        prompt, tuple(encode.completion_ids(tokenizer, c) for c in example.completions)
    )


def to_groups(data: Sequence[Any], tokenizer: Any = None) -> list[packing.Group]:
    """Token groups (kept as they are) or typed examples (encoded the way training encodes them:
    paired -> (chosen, rejected); binary and negative -> (completion,); ranked -> its
    completions best first). Examples need ``tokenizer``."""
    groups = []
    for i, item in enumerate(data):
        if isinstance(item, packing.Group):
            groups.append(item)
            continue
        if tokenizer is None:
            raise ValueError("typed examples need a tokenizer (the workdir holds "
                             "none); pass token groups instead")
        if isinstance(item, ex.PairedExample):
            groups.append(encode.paired([item], tokenizer)[0])
        elif isinstance(item, ex.BinaryExample):
            groups.append(encode.unpaired([item], tokenizer, kl_offset=None)[0])
        elif isinstance(item, ex.NegativeExample):
            groups.append(encode.negative([item], tokenizer)[0])
        elif isinstance(item, ex.RankedExample):
            groups.append(_ranked_group(item, tokenizer))
        else:
            raise TypeError(
                f"item {i} is a {type(item).__name__}; expected a packing.Group or a Paired-, "
                "Binary-, Negative- or RankedExample"
            )
    return groups


@dataclasses.dataclass(frozen=True)
class Scored:
    """One number per completion, in the order of the groups' completions (flattened).

    ``group[i]`` is the index of the group (example) completion ``i`` belongs to and ``slot[i]``
    its position in that group (for a pair: 0 = chosen, 1 = rejected).
    """

    values: np.ndarray
    lengths: np.ndarray
    group: np.ndarray
    slot: np.ndarray

    def per_group(self) -> list[np.ndarray]:
        """``values`` split by group."""
        bounds = np.flatnonzero(np.diff(self.group)) + 1
        return np.split(self.values, bounds) if self.values.size else []

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(chosen, rejected)`` values; every group must have exactly two completions."""
        sizes = np.bincount(self.group) if self.group.size else np.zeros(0, int)
        if np.any(sizes != 2):
            raise ValueError("pairs() needs exactly two completions per group")
        return self.values[self.slot == 0], self.values[self.slot == 1]


def _index(groups: Sequence[packing.Group]) -> tuple[np.ndarray, np.ndarray]:
    group = [i for i, g in enumerate(groups) for _ in g.completions]
    slot = [k for g in groups for k in range(len(g.completions))]
    return np.asarray(group, np.int64), np.asarray(slot, np.int64)


def log_probs(policy: Policy, data: Sequence[Any]) -> Scored:
    """Summed log-prob of every completion given its prompt (``values``) and its token count."""
    from fbjax import evaluation

    groups = to_groups(data, policy.tokenizer)
    logps, lengths = evaluation.sequence_logps(policy.params, policy.model_config, groups)
    return Scored(logps, lengths, *_index(groups))


def _check_same_model(policy: Policy, reference: Policy) -> None:
    if policy.model_config != reference.model_config:
        raise ValueError("policy and reference have different model configs; log-prob "
                         "differences between them are not implicit rewards")


def implicit_rewards(
    policy: Policy, reference: Policy, data: Sequence[Any], *, beta: float = 1.0
) -> Scored:
    """``beta * (log pi(y|x) - log pi_ref(y|x))`` for every completion: the reward a DPO-family
    policy implicitly assigns (pass the objective's ``beta``; the default 1 gives the plain
    log-ratio)."""
    groups = to_groups(data, policy.tokenizer or reference.tokenizer)
    _check_same_model(policy, reference)
    mine = log_probs(policy, groups)
    ref = log_probs(reference, groups)
    return dataclasses.replace(mine, values=beta * (mine.values - ref.values))


def preference_accuracy(policy: Policy, reference: Policy, pairs: Sequence[Any]) -> float:
    """Fraction of pairs whose chosen completion gets the strictly higher implicit reward."""
    from fbjax import evaluation

    groups = to_groups(pairs, policy.tokenizer or reference.tokenizer)
    if any(len(g.completions) != 2 for g in groups):
        raise ValueError("preference_accuracy needs pairs: two completions (chosen, rejected)")
    _check_same_model(policy, reference)
    return evaluation.preference_accuracy(
        policy.params, reference.params, policy.model_config, groups
    )


# ----------------------------------------------------------------------------- sampling


def _key(rng: Any) -> Any:
    import jax

    return jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng


def sample(
    policy: Policy,
    prompts: Sequence[str],
    *,
    rng: Any = 0,
    sampling_config: Any = None,
) -> Any:
    """One completion per prompt as :class:`fbjax.evaluation.Samples` (texts and the exact token
    ids). ``rng``: a PRNG key or an int seed; ``sampling_config`` defaults to temperature 1,
    no filtering, up to 64 new tokens, stopping at EOS."""
    from fbjax import evaluation, sampling

    if policy.tokenizer is None:
        raise ValueError(f"sampling from text needs a tokenizer; {policy.directory} has no "
                         "tokenizer next to it")
    config = sampling_config or sampling.SamplingConfig(max_new_tokens=64)
    return evaluation.sample(policy.params, policy.model_config, policy.tokenizer, list(prompts),
                             sampling_config=config, rng=_key(rng))


def generate(
    policy: Policy,
    prompts: Sequence[str],
    *,
    rng: Any = 0,
    sampling_config: Any = None,
) -> list[str]:
    """The texts of :func:`sample` (the stop token removed)."""
    return list(sample(policy, prompts, rng=rng, sampling_config=sampling_config).texts)


def kl_to_reference(
    policy: Policy,
    reference: Policy,
    prompts_or_samples: Any,
    *,
    rng: Any = 0,
    sampling_config: Any = None,
) -> float:
    """Monte-Carlo ``KL(policy || reference)`` per sequence on the policy's own samples (drawn
    here from prompts, or given as :class:`fbjax.evaluation.Samples`). Unbiased only for
    samples at temperature 1 without top-k/top-p, which is the default here."""
    from fbjax import evaluation

    _check_same_model(policy, reference)
    samples = prompts_or_samples
    if not isinstance(samples, evaluation.Samples):
        samples = sample(policy, samples, rng=rng, sampling_config=sampling_config)
    return evaluation.kl_to_reference(policy.params, reference.params, policy.model_config,
                                      samples)


# ----------------------------------------------------------------------------- export


def export_hf(
    policy: Policy, out_dir: str | os.PathLike, *, max_shard_size: int | str | None = None
) -> list[str]:
    """Writes the policy as a Hugging Face checkpoint (``config.json`` + safetensors, via
    :func:`fbjax.models.hf.save_hf`), with the tokenizer's special ids in the config and its
    ``tokenizer.model`` alongside when there is one. Returns the files written."""
    from fbjax.models import hf

    out_dir = os.fspath(out_dir)
    extra = {}
    if policy.tokenizer is not None:
        extra = {"bos_token_id": policy.tokenizer.bos_id, "eos_token_id": policy.tokenizer.eos_id,
                 "pad_token_id": policy.tokenizer.pad_id}
    files = hf.save_hf(out_dir, policy.model_config, policy.params,
                       max_shard_size=max_shard_size, extra_config=extra)
    if policy.tokenizer is not None:
        from fbjax.tokenizers import save_tokenizer

        files.append(os.path.basename(save_tokenizer(policy.tokenizer, out_dir)))
    return files
