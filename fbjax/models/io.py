"""fbjax's own model checkpoint: ``config.json`` (a ModelConfig) + ``params.safetensors``.

Parameter names are the '/'-joined paths of the (unboxed) parameter tree, e.g.
``layer_0/attn/q/kernel``, so the file is readable by any safetensors reader.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from typing import Any, Mapping

import numpy as np

from fbjax.models.config import ModelConfig

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
FORMAT = "fbjax"


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a ModelConfig (enums by value, nested configs as dicts)."""

    def plain(v):
        if isinstance(v, enum.Enum):
            return v.value
        if dataclasses.is_dataclass(v):
            return config_to_dict(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def config_from_dict(data: Mapping[str, Any], *, source: str = CONFIG_FILE) -> ModelConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are an error (they would be dropped)."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        hint = ""
        if "model_type" in data:
            hint = " (this is a Hugging Face config; convert it with `fbjax convert --from-hf`)"
        raise ValueError(f"{source}: unknown ModelConfig fields {unknown}{hint}")
    return ModelConfig(**data)


def save_params(ckpt_dir: str, config: ModelConfig, params: Any) -> None:
    """Write ``config.json`` and ``params.safetensors`` to ``ckpt_dir`` (created if needed)."""
    from safetensors.numpy import save_file

    from fbjax.models.hf import to_numpy_flat

    ckpt_dir = os.fspath(ckpt_dir)
    os.makedirs(ckpt_dir, exist_ok=True)
    with open(os.path.join(ckpt_dir, CONFIG_FILE), "w") as f:
        json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
    flat = {k: np.ascontiguousarray(v) for k, v in to_numpy_flat(params).items()}
    save_file(flat, os.path.join(ckpt_dir, PARAMS_FILE), metadata={"format": FORMAT})


def load_params(ckpt_dir: str) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_params` as ``(config, params)``.

    ``params`` is the nested tree (host numpy arrays) that goes under ``{'params': ...}``.
    """
    from safetensors.numpy import load_file

    from fbjax.models.hf import expected_shapes, unflatten

    ckpt_dir = os.fspath(ckpt_dir)
    config_path = os.path.join(ckpt_dir, CONFIG_FILE)
    params_path = os.path.join(ckpt_dir, PARAMS_FILE)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"fbjax checkpoint directory not found: {ckpt_dir}")
    for path in (config_path, params_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"fbjax checkpoint file not found: {path}")
    with open(config_path) as f:
        config = config_from_dict(json.load(f), source=config_path)
    flat = load_file(params_path)
    want = expected_shapes(config)
    got = {k: tuple(v.shape) for k, v in flat.items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:8]
        raise ValueError(f"{params_path} does not match {config_path}: differing entries {diff}")
    return config, unflatten(flat)
