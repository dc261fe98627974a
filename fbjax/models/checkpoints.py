"""Where a run's starting weights come from, read without loading them: ``init_from``
resolution (a local directory, or ``hf:org/name`` from ``$FBJAX_HF_DIR`` or the Hugging Face hub
cache; nothing is ever downloaded) and the architecture a checkpoint declares, compared field by
field with what an experiment expects.

Loading and placing the weights on a mesh needs the model's parameter shardings and lives in
``fbjax.run.start``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from typing import Any, Mapping

from fbjax.models import hf
from fbjax.models import io as model_io
from fbjax.models.config import TRAINING_ONLY_FIELDS, ModelConfig

HF_PREFIX = "hf:"
HF_DIR_ENV = "FBJAX_HF_DIR"



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


def run_checkpoint_root(path: str) -> str | None:
    """The Orbax root of a training run at ``path``: a stage directory
    (``<workdir>/<stage>/checkpoints``, or an online stage's last round's), a run workdir (its
    last training stage's, as ``config.json`` orders them), or the root itself."""
    sub = _stage_checkpoints(path)
    if sub is not None:
        return sub
    for stage in reversed(_workdir_stages(path)):
        sub = _stage_checkpoints(os.path.join(path, stage))
        if sub is not None:
            return sub
    from fbjax.checkpoint import MARKER

    steps = [n for n in os.listdir(path) if n.isdigit()]
    if any(os.path.isfile(os.path.join(path, n, MARKER)) for n in steps):
        return path
    return None


def _stage_checkpoints(path: str) -> str | None:
    """``<stage>/checkpoints``, or an online stage's last round's (``<stage>/round_<r>/``)."""
    sub = os.path.join(path, "checkpoints")
    if os.path.isdir(sub):
        return sub
    rounds = sorted((int(n[6:]), n) for n in (os.listdir(path) if os.path.isdir(path) else ())
                    if n.startswith("round_") and n[6:].isdigit())
    for _, name in reversed(rounds):
        sub = os.path.join(path, name, "checkpoints")
        if os.path.isdir(sub):
            return sub
    return None


def _workdir_stages(path: str) -> list[str]:
    """The training stages a run workdir's ``config.json`` lists, in order."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            stages = json.load(f).get("stages") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [s["name"] for s in stages if isinstance(s, dict) and "objective" in s]


def checkpoint_model_config(path: str) -> tuple[str, ModelConfig, str]:
    """``(kind, ModelConfig, source file)`` of a checkpoint directory, reading no weights.

    ``kind`` is ``"hf"`` (config.json with a ``model_type``), ``"fbjax"`` (``fbjax convert``
    output: config.json + params.safetensors) or ``"run"`` (a training workdir's checkpoints).
    """
    from fbjax import checkpoint

    config_path = os.path.join(path, hf.CONFIG_FILE)
    root = run_checkpoint_root(path)
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


def adds_reward_head(expected: ModelConfig, found: ModelConfig) -> bool:
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
        if f.name == "reward_head" and adds_reward_head(expected, found):
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
