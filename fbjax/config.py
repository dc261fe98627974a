"""Experiment configuration: frozen dataclasses, and ``--set path=value`` overrides.

An experiment module returns one :class:`ExperimentConfig`. Overrides walk the dataclass tree by
field name; an unknown or mistyped path is an error that lists the closest valid paths, so a typo
never silently trains the wrong thing.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import inspect
import json
import typing
from typing import Any, Callable, Mapping, Sequence

from fbjax.models.config import ModelConfig
from fbjax.models.lora import LoraConfig
from fbjax.sharding import MeshConfig
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop settings. ``batch_rows`` rows of ``seq_len`` tokens make one global batch."""

    steps: int = 100
    batch_rows: int = 8
    seq_len: int = 128
    microbatches: int = 1
    log_every: int = 10
    seed: int = 0
    # Vocabulary chunk for the log-softmax; memory of the loss grows with it, not with V.
    logprob_chunk: int = 8192
    # Pack several groups per row; share one prompt copy between a group's completions.
    packing: bool = True
    share_prefix: bool = True
    slots_per_row: int = 8
    # Truncation policy (fbjax.data.packing.truncate_group): prompts keep their end,
    # completions their start.
    max_prompt_len: int = 1024
    max_completion_len: int = 1024

    def __post_init__(self):
        for name in ("steps", "batch_rows", "seq_len", "microbatches", "log_every", "slots_per_row"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Everything that defines a run. ``data`` and ``evaluation`` are typed per source/task."""

    name: str
    model: ModelConfig
    objective: Objective
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    data: Any = None
    # fbjax.checkpoint.CheckpointConfig; None = no checkpoints.
    checkpoint: Any = None
    evaluation: Any = None
    # Where the starting weights come from: None (random), an fbjax checkpoint or HF directory.
    init_from: str | None = None
    # Hyperparameters that depend on the data (e.g. KTO's or PMPO's class weights):
    # ``(objective, token groups) -> objective``, applied once the data are loaded.
    adapt: Callable[[Objective, Sequence[Any]], Objective] | None = None
    # LoRA adapters on the frozen start (fbjax.models.lora); None trains every weight.
    lora: LoraConfig | None = None


# ----------------------------------------------------------------------------- overrides


def _unset_section(owner: Any, name: str) -> type | None:
    """The dataclass of a field declared ``X | None`` (e.g. ``lora``), so that ``--set
    lora.rank=8`` can switch it on from None with X's defaults."""
    try:
        hint = typing.get_type_hints(type(owner)).get(name)
    except (NameError, TypeError):  # annotations that do not resolve at run time: no section
        return None
    return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)


def _field_paths(obj: Any, prefix: str = "") -> list[str]:
    paths = []
    if isinstance(obj, Objective):
        for name in inspect.signature(obj.loss).parameters.values():
            if name.kind is name.KEYWORD_ONLY:
                paths.append(f"{prefix}hparams.{name.name}")
        return paths
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            child = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                paths.extend(_field_paths(value, child + "."))
                if _unset_section(obj, f.name) is not None:
                    paths.append(child)  # ``--set lora=None`` switches it off again
            else:
                paths.append(child)
                section = _unset_section(obj, f.name) if value is None else None
                if section is not None:
                    paths.extend(_field_paths(section(), child + "."))
    return paths


def _parse_value(text: str, current: Any, annotation: Any, path: str) -> Any:
    if isinstance(current, enum.Enum):
        try:
            return type(current)(text)
        except ValueError:
            raise ValueError(
                f"--set {path}={text!r}: choose one of {[e.value for e in type(current)]}"
            ) from None
    if text in ("None", "null") and (current is None or "None" in str(annotation)):
        return None
    if isinstance(current, str) or (current is None and "str" in str(annotation)):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"--set {path}={text!r}: not a valid Python literal") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"--set {path}={text!r}: expected True or False")
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if current is not None and not isinstance(value, type(current)):
        raise ValueError(
            f"--set {path}={text!r}: expected {type(current).__name__}, got {type(value).__name__}"
        )
    return value


def _set(obj: Any, parts: list[str], text: str, path: str) -> Any:
    name, rest = parts[0], parts[1:]
    if isinstance(obj, Objective) and name == "hparams" and len(rest) == 1:
        signature = inspect.signature(obj.loss).parameters
        param = signature[rest[0]]
        current = obj.hparams.get(rest[0], param.default)
        value = _parse_value(text, current, param.annotation, path)
        return dataclasses.replace(obj, hparams={**obj.hparams, rest[0]: value})
    field = {f.name: f for f in dataclasses.fields(obj)}[name]
    current = getattr(obj, name)
    if rest:
        if current is None:
            current = _unset_section(obj, name)()
        value = _set(current, rest, text, path)
    else:
        value = _parse_value(text, current, field.type, path)
    return dataclasses.replace(obj, **{name: value})


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Applies ``path.to.field=value`` strings, validating every path and value."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects path=value, got {item!r}")
        path, text = item.split("=", 1)
        valid = _field_paths(config)
        if path not in valid:
            close = difflib.get_close_matches(path, valid, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown config key {path!r}{hint}")
        config = _set(config, path.split("."), text, path)
    return config


# ----------------------------------------------------------------------------- serialisation


def to_jsonable(obj: Any) -> Any:
    """A JSON view of a config (functions by their import path) for logs and checkpoints."""
    if isinstance(obj, Objective):
        return {
            "loss": f"{obj.loss.__module__}.{obj.loss.__qualname__}",
            "inputs": f"{obj.inputs.__module__}.{obj.inputs.__qualname__}",
            "hparams": to_jsonable(dict(obj.hparams)),
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def dumps(config: Any) -> str:
    return json.dumps(to_jsonable(config), indent=2, sort_keys=True)
