"""Shared building blocks for experiment modules: train a config on token groups, and the
simulator stages (tokenizer, SFT, on-policy feedback, evaluation) that ``sim`` variants use.

Experiments compose these; nothing here is specific to one paper.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from fbjax import evaluation, sampling
from fbjax import sharding as fsh
from fbjax.config import ExperimentConfig
from fbjax.data import packing
from fbjax.data.batching import BatchSpec, BatchStream
from fbjax.models import hf
from fbjax.models import io as model_io
from fbjax.models.config import ModelConfig
from fbjax.models.decoder import Decoder
from fbjax.models.hf import check_sequence_length
from fbjax.tokenizers import check_vocab, save_tokenizer
from fbjax.train import loop
from fbjax.train.reference import Truncation
from fbjax.train import step as steplib

log = logging.getLogger("fbjax")


def batch_stream(
    config: ExperimentConfig, groups: Sequence[packing.Group], mesh=None
) -> BatchStream:
    """This host's resumable stream of packed batches for ``config.train``.

    Every host packs the same global batch and keeps the rows its devices hold in ``mesh``
    (default: process ``i`` keeps the ``i``-th block), so any process count trains on exactly
    the batches a single process would.
    """
    tc = config.train
    processes = jax.process_count()
    if tc.batch_rows % processes:
        raise ValueError(
            f"train.batch_rows={tc.batch_rows} must divide over {processes} processes"
        )
    rows = None
    if mesh is not None and processes > 1:
        rows = loop.process_rows(mesh, tc.batch_rows)
        if len(rows) != tc.batch_rows // processes:
            raise ValueError(
                f"mesh {dict(mesh.shape)} gives process {jax.process_index()} {len(rows)} of "
                f"{tc.batch_rows} batch rows; the batch axes must split rows evenly over hosts"
            )
    fields = tuple(sorted({k for g in groups for k in g.slot_fields}))
    spec = BatchSpec(
        seq_len=tc.seq_len,
        num_rows=tc.batch_rows // processes,
        num_slots=tc.slots_per_row if tc.packing else 1,
        packing=tc.packing,
        share_prefix=tc.share_prefix,
        fields=fields,
    )
    groups = Truncation.from_train(tc).apply(groups)
    # Positions restart for every example, so the limit is the longest example, not the row.
    longest = max(len(g.prompt) + max(len(c) for c in g.completions) for g in groups)
    check_sequence_length(config.model, longest)
    return BatchStream(
        groups, spec, seed=tc.seed, shard_index=jax.process_index(), shard_count=processes,
        rows=rows,
    )


def train_on_groups(
    config: ExperimentConfig,
    groups: Sequence[packing.Group],
    params: Any,
    *,
    mesh,
    workdir: str | None,
    progress: bool,
    desc: str | None = None,
    reference_params: Any = None,
    checkpointer: Any = None,
) -> loop.RunResult:
    return loop.train(
        config,
        batch_stream(config, groups, mesh),
        params,
        mesh=mesh,
        reference_params=reference_params,
        workdir=workdir,
        progress=progress,
        desc=desc,
        checkpointer=checkpointer,
    )


def random_params(config: ExperimentConfig, mesh, seed: int) -> Any:
    model = Decoder(config.model)
    return steplib.init_params(model, jax.random.key(seed), mesh, config.mesh.rules)


# ----------------------------------------------------------------------------- init_from

HF_PREFIX = "hf:"
HF_DIR_ENV = "FBJAX_HF_DIR"
# Settings that change how a model is trained, not which weights it has.
TRAINING_ONLY_FIELDS = ("dtype", "param_dtype", "remat", "init_std")


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """The Hugging Face hub cache, resolved as ``huggingface_hub`` does: ``$HF_HUB_CACHE``
    (or the older ``$HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``, else
    ``${XDG_CACHE_HOME:-~/.cache}/huggingface/hub``."""
    env = os.environ if environ is None else environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return os.path.expanduser(env[key])
    if env.get("HF_HOME"):
        return os.path.join(os.path.expanduser(env["HF_HOME"]), "hub")
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "huggingface", "hub")


def _hub_snapshot(cache: str, name: str) -> tuple[str | None, str]:
    """``(snapshot dir or None, where it was looked for)`` of ``org/name`` in a hub cache: the
    revision ``refs/main`` points to, else the only snapshot there is."""
    repo = os.path.join(cache, "models--" + name.replace("/", "--"))
    snapshots = os.path.join(repo, "snapshots")
    ref = os.path.join(repo, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            rev = f.read().strip()
        path = os.path.join(snapshots, rev)
        return (path if os.path.isdir(path) else None), f"{path} (from {ref})"
    found = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
    if len(found) > 1:
        raise FileNotFoundError(
            f"{snapshots} holds several revisions {found} and no refs/main says which to use; "
            f"set init_from to one of them as a path"
        )
    return (os.path.join(snapshots, found[0]) if found else None), f"{snapshots}/<revision>"


def resolve_checkpoint(init_from: str, *, environ: Mapping[str, str] | None = None) -> str:
    """The local directory ``init_from`` names; nothing is ever downloaded.

    ``hf:org/name`` is looked up in ``$FBJAX_HF_DIR/org/name`` (when set), then in the Hugging
    Face hub cache (:func:`hub_cache_dir`, layout ``models--org--name/snapshots/<rev>/``). Anything
    else is a path: an HF directory, an fbjax model checkpoint (``fbjax convert``) or a run's
    workdir with checkpoints. Raises ``FileNotFoundError`` naming every place searched and the
    command that fetches the checkpoint.
    """
    env = os.environ if environ is None else environ
    if not init_from.startswith(HF_PREFIX):
        path = os.path.abspath(os.path.expanduser(init_from))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"init_from={init_from!r}: checkpoint directory {path} does "
                                    f"not exist (for a Hugging Face model write hf:org/name)")
        return path
    name = init_from[len(HF_PREFIX):].strip("/")
    if name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"init_from={init_from!r}: expected hf:org/name")
    searched = []
    if env.get(HF_DIR_ENV):
        path = os.path.join(os.path.expanduser(env[HF_DIR_ENV]), name)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
        searched.append(f"{path} (${HF_DIR_ENV})")
    else:
        searched.append(f"${HF_DIR_ENV}/{name} (${HF_DIR_ENV} is not set)")
    snapshot, where = _hub_snapshot(hub_cache_dir(env), name)
    if snapshot is not None and os.path.isfile(os.path.join(snapshot, "config.json")):
        return snapshot
    searched.append(f"{where} (Hugging Face hub cache)")
    places = "".join(f"\n  {p}" for p in searched)
    raise FileNotFoundError(
        f"checkpoint {init_from} not found locally; fbjax never downloads. Searched:{places}\n"
        f"Fetch it into the hub cache, then run fbjax train again:\n"
        f"  huggingface-cli download {name}\n"
        f"  fbjax train --experiment ... --workdir ...\n"
        f"(or download it with --local-dir $FBJAX_HF_DIR/{name})"
    )


def _run_checkpoint_root(path: str) -> str | None:
    """The Orbax root of a run workdir (``<workdir>/checkpoints``) or of that root itself."""
    sub = os.path.join(path, "checkpoints")
    if os.path.isdir(sub):
        return sub
    from fbjax.checkpoint import MARKER

    steps = [n for n in os.listdir(path) if n.isdigit()]
    if any(os.path.isfile(os.path.join(path, n, MARKER)) for n in steps):
        return path
    return None


def checkpoint_model_config(path: str) -> tuple[str, ModelConfig, str]:
    """``(kind, ModelConfig, source file)`` of a checkpoint directory, reading no weights.

    ``kind`` is ``"hf"`` (config.json with a ``model_type``), ``"fbjax"`` (``fbjax convert``
    output: config.json + params.safetensors) or ``"run"`` (a training workdir's checkpoints).
    """
    from fbjax import checkpoint

    config_path = os.path.join(path, hf.CONFIG_FILE)
    root = _run_checkpoint_root(path)
    if root is not None:
        saved = (checkpoint.read_extras(root).get("config") or {}).get("model")
        if not saved:
            raise ValueError(f"{root}: the checkpoint holds no experiment config to compare "
                             "config.model with")
        return "run", model_io.config_from_dict(saved, source=f"{root} extras"), root
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{path} is not a checkpoint: no {hf.CONFIG_FILE} (Hugging Face or fbjax model "
            "checkpoint) and no checkpoints/ (training workdir)"
        )
    with open(config_path) as f:
        raw = json.load(f)
    if os.path.isfile(os.path.join(path, model_io.PARAMS_FILE)):
        return "fbjax", model_io.config_from_dict(raw, source=config_path), config_path
    return "hf", hf.config_from_hf(raw, source=config_path), config_path


def _adds_reward_head(expected: ModelConfig, found: ModelConfig) -> bool:
    """A reward model started from a language model: the backbone loads, the head is new."""
    return expected.reward_head and not found.reward_head


def model_mismatches(expected: ModelConfig, found: ModelConfig) -> list[str]:
    """``"field: experiment X, checkpoint Y"`` for each architecture field that differs
    (:data:`TRAINING_ONLY_FIELDS` are not compared, nor a reward head the experiment adds to a
    language model)."""
    out = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in TRAINING_ONLY_FIELDS:
            continue
        if f.name == "reward_head" and _adds_reward_head(expected, found):
            continue
        a, b = getattr(expected, f.name), getattr(found, f.name)
        if f.name == "head_dim":  # None means hidden_size // num_heads: compare what it means
            a, b = expected.head_size, found.head_size
        same = math.isclose(a, b, rel_tol=1e-9) if isinstance(a, float) and isinstance(
            b, float) else a == b
        if not same:
            out.append(f"{f.name}: experiment {_show(a)}, checkpoint {_show(b)}")
    return out


def _show(value: Any) -> str:
    return repr(value.value if isinstance(value, enum.Enum) else value)


def _checked_model(config: ExperimentConfig, path: str) -> tuple[str, ModelConfig]:
    kind, found, source = checkpoint_model_config(path)
    wrong = model_mismatches(config.model, found)
    if wrong:
        raise ValueError(
            f"experiment {config.name!r}: config.model does not match the checkpoint "
            f"({source}): " + "; ".join(wrong)
        )
    return kind, found


def check_checkpoint_model(config: ExperimentConfig, path: str) -> str:
    """Raises ``ValueError`` naming each mismatched field if ``config.model`` is not the
    architecture of the checkpoint at ``path``; returns the checkpoint's kind."""
    return _checked_model(config, path)[0]


def _place(params: Mapping[str, Any], shardings: Any, dtype: str, source: str) -> Any:
    """Flat params -> global arrays with ``shardings``; host arrays are read shard by shard (so
    every process places only its own), arrays already on the mesh are kept."""
    want = hf.flatten(shardings)
    if set(want) != set(params):
        missing, extra = sorted(set(want) - set(params)), sorted(set(params) - set(want))
        raise ValueError(f"{source}: parameters do not match the model: missing {missing[:8]}, "
                         f"unexpected {extra[:8]}")
    placed = {}
    for key, sharding in want.items():
        value = params[key]
        if isinstance(value, jax.Array):
            placed[key] = value
            continue
        array = np.asarray(value).astype(dtype, copy=False)
        placed[key] = jax.make_array_from_callback(array.shape, sharding,
                                                   lambda idx, a=array: a[idx])
    return hf.unflatten(placed)


def load_init_params(config: ExperimentConfig, mesh, path: str) -> Any:
    """The parameters of the checkpoint directory ``path`` (see :func:`resolve_checkpoint`),
    checked against ``config.model`` and placed with the mesh's parameter shardings in
    ``config.model.param_dtype``.

    A reward model (``model.reward_head``) may start from a language model: the backbone is
    loaded, the LM head dropped, and the scalar head drawn from ``N(0, init_std)`` (seeded by
    ``train.seed``), as Stiennon et al. start theirs from the SFT policy.
    """
    kind, found = _checked_model(config, path)
    new_head = _adds_reward_head(config.model, found)
    stored = dataclasses.replace(config.model, reward_head=False) if new_head else config.model
    rules, dtype = config.mesh.rules, config.model.param_dtype
    if kind == "run":
        import flax.linen as nn

        from fbjax import checkpoint

        model = Decoder(stored)
        abstract = jax.eval_shape(
            lambda r: nn.unbox(steplib.init_params_boxed(model, r)), jax.random.key(0))
        params, _, step = checkpoint.restore_params(
            _run_checkpoint_root(path), None, abstract,
            steplib.param_shardings(model, mesh, rules))
        log.info("%s: starting from step %d of %s", config.name, step, path)
    elif kind == "hf":
        params = hf.load_hf(path, dtype=dtype)[1]
    else:
        params = model_io.load_params(path)[1]
    params = hf.flatten(params)
    if new_head:
        params.pop("lm_head", None)  # an untied reward model predicts no tokens
        rng = np.random.default_rng(config.train.seed)
        params["reward_head"] = config.model.init_std * rng.standard_normal(
            (config.model.hidden_size, 1))
    shardings = steplib.param_shardings(Decoder(config.model), mesh, rules)
    return _place(params, shardings, dtype, path)


# ----------------------------------------------------------------------------- simulator pool


@dataclasses.dataclass(frozen=True)
class SamplePool:
    """K samples per prompt from one policy, with their oracle rewards (``[n, K]``)."""

    prompts: tuple[str, ...]
    texts: tuple[tuple[str, ...], ...]
    rewards: np.ndarray

    @property
    def flat_prompts(self) -> list[str]:
        return [p for p, ts in zip(self.prompts, self.texts) for _ in ts]

    @property
    def flat_texts(self) -> list[str]:
        return [t for ts in self.texts for t in ts]


def sample_pool(
    task: Any,
    params: Any,
    model_config,
    tokenizer,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int,
    sampling_config: sampling.SamplingConfig,
    rng: jax.Array,
) -> SamplePool:
    """Samples ``samples_per_prompt`` completions of every prompt and grades them."""
    flat = [p for p in prompts for _ in range(samples_per_prompt)]
    out = evaluation.sample(params, model_config, tokenizer, flat,
                            sampling_config=sampling_config, rng=rng)
    k = samples_per_prompt
    texts = tuple(tuple(out.texts[i * k:(i + 1) * k]) for i in range(len(prompts)))
    rewards = np.array([[task.reward(p, t) for t in ts] for p, ts in zip(prompts, texts)])
    return SamplePool(tuple(prompts), texts, rewards)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageResult:
    name: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    wall_seconds: float
    params: Any = dataclasses.field(repr=False, default=None)


def timed(fn: Callable, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def run_single(config: ExperimentConfig, *, workdir: str, progress: bool = True):
    """One training run of ``config``: data from ``config.data.load(tokenizer)``.

    ``config.data`` is a typed source (e.g. an HH-RLHF builder config) with ``tokenizer()`` and
    ``load(tokenizer)`` methods; experiments with several stages define their own ``run``.
    Parameters start from ``config.init_from`` (:func:`resolve_checkpoint`,
    :func:`load_init_params`) or, when it is None, from a random initialisation; a
    :class:`~fbjax.data.sources.Dataset` without a ``tokenizer_path`` uses the checkpoint's
    tokenizer.
    """
    if config.data is None or not hasattr(config.data, "load"):
        raise ValueError(
            f"experiment {config.name!r}: config.data must be a data source with load(); "
            "multi-stage experiments define run(config, workdir=..., progress=...)"
        )
    from fbjax import checkpoint
    from fbjax.config import to_jsonable

    # Resolve and check the checkpoint before reading any data: a missing download or a wrong
    # architecture should fail in seconds, not after tokenizing a dataset.
    init_dir = None
    if config.init_from:
        init_dir = resolve_checkpoint(config.init_from)
        check_checkpoint_model(config, init_dir)
    mesh = fsh.make_mesh(config.mesh)
    tokenizer = run_tokenizer(config.data, init_dir)
    check_vocab(tokenizer, config.model.vocab_size)
    groups = config.data.load(tokenizer)
    if config.adapt is not None:
        # The saved config then holds the adapted values (and names the function that set them).
        config = dataclasses.replace(config, objective=config.adapt(config.objective, groups))
        log.info("%s: objective hyperparameters for this data: %s", config.name,
                 dict(config.objective.hparams))
    if init_dir is None:
        params = random_params(config, mesh, config.train.seed)
    else:
        params = load_init_params(config, mesh, init_dir)
        log.info("%s: starting from %s (%s)", config.name, config.init_from, init_dir)
    checkpointer = None
    if config.checkpoint is not None:
        checkpointer = checkpoint.RunCheckpointer(
            # Orbax rejects relative paths, and ``--workdir runs/x`` is the natural spelling.
            os.path.join(os.path.abspath(workdir), "checkpoints"), config.checkpoint,
            experiment_config=to_jsonable(config),
        )
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            save_tokenizer(tokenizer, workdir)
    result = train_on_groups(config, groups, params, mesh=mesh,
                             workdir=workdir, progress=progress, checkpointer=checkpointer)
    final = result.history[-1] if result.history else {}
    loop.write_summary(workdir, {"name": config.name, "final": final})
    print(f"{config.name}: step {int(result.state.step)} loss {final.get('loss', float('nan')):.4f}")
    return result


def run_tokenizer(data: Any, init_dir: str | None):
    """The tokenizer of a run: a :class:`~fbjax.data.sources.Dataset`'s own, or the checkpoint's
    when it names none; other sources (e.g. the simulator's) build their own."""
    from fbjax.data.sources import Dataset

    if isinstance(data, Dataset):
        return data.tokenizer(checkpoint_dir=init_dir)
    return data.tokenizer()


def ensure_dir(path: str | None) -> str | None:
    if path is not None:
        os.makedirs(path, exist_ok=True)
    return path
