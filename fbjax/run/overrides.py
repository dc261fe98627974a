"""``--set path=value`` overrides of an :class:`~fbjax.run.config.ExperimentConfig`, and its JSON
view.

A path walks dataclass fields by name. ``stages.NAME.`` addresses a stage by its name; a path
that starts with a stage field (``objective``, ``train``, ``data``, ...) addresses the
experiment's main stage (:attr:`ExperimentConfig.main_stage`). ``objective.hparams.X`` sets a
keyword-only hyperparameter of the stage's loss. All overrides are applied first and each
config object is rebuilt once, so fields that must agree (heads and kv-heads) are validated
together, after every ``--set``. An unknown or mistyped path is an error listing the closest
valid paths, and a value of the wrong type is an error naming the path.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import functools
import inspect
import json
import math
import sys
import types
import typing
from typing import Any, Mapping

from fbjax.run.config import ExperimentConfig
from fbjax.train.objective import Objective

STAGES = "stages"


class OverrideError(ValueError):
    """A ``--set`` that names no field, or gives a value the field cannot take."""


# ----------------------------------------------------------------------------- paths


def _hparam_names(objective: Objective) -> list[str]:
    return [p.name for p in inspect.signature(objective.loss).parameters.values()
            if p.kind is p.KEYWORD_ONLY]


def _field_types(obj: Any) -> dict[str, Any]:
    """Resolved annotations of a dataclass instance's fields (strings under PEP 563)."""
    cls = type(obj)
    try:
        return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    except Exception:  # an annotation that names something unimportable: fall back to strings
        return {f.name: f.type for f in dataclasses.fields(obj)}


def _optional_dataclass(annotation: Any) -> type | None:
    """``X | None`` where X is a dataclass: X (so ``--set lora.rank=8`` can create it)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in args if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _paths(obj: Any, prefix: str = "") -> list[str]:
    if isinstance(obj, Objective):
        return [f"{prefix}hparams.{n}" for n in _hparam_names(obj)]
    out = []
    if not dataclasses.is_dataclass(obj):
        return out
    hints = _field_types(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        child = f"{prefix}{f.name}"
        if f.name == STAGES and isinstance(obj, ExperimentConfig):
            for s in value:
                out.extend(_paths(s, f"{child}.{s.name}."))
            continue
        optional = _optional_dataclass(hints.get(f.name))
        if optional is not None:
            out.append(child)  # ``--set lora=None`` switches an optional section off
            if value is None:
                value = optional()
        if dataclasses.is_dataclass(value) or isinstance(value, Objective):
            out.extend(_paths(value, child + "."))
        elif optional is None:
            out.append(child)
    return out


def valid_paths(config: Any) -> list[str]:
    """Every path ``--set`` accepts on ``config`` (an experiment's main stage's also without
    its prefix)."""
    paths = _paths(config)
    main = config.main_stage if isinstance(config, ExperimentConfig) else None
    if main is not None:
        paths += _paths(main)
    return paths


def _route(config: Any, path: str) -> list[str]:
    """``path`` as parts from the config's root (an experiment's unprefixed stage paths go to
    its main stage)."""
    parts = path.split(".")
    top = {f.name for f in dataclasses.fields(config)}
    if parts[0] in top or not isinstance(config, ExperimentConfig):
        return parts
    main = config.main_stage
    if main is None:
        raise OverrideError(
            f"--set {path}: this experiment has several stages and no main one; name the stage, "
            f"e.g. {STAGES}.{config.stages[-1].name}.{path} (stages: "
            f"{[s.name for s in config.stages]})")
    return [STAGES, main.name, *parts]


# ----------------------------------------------------------------------------- values


def _parse(text: str, current: Any, annotation: Any, path: str) -> Any:
    ann = str(annotation)
    if isinstance(current, enum.Enum):
        try:
            return type(current)(text)
        except ValueError:
            raise OverrideError(f"--set {path}={text!r}: choose one of "
                                f"{[e.value for e in type(current)]}") from None
    if text in ("None", "null") and (current is None or "None" in ann):
        return None
    if isinstance(current, str) or (current is None and "str" in ann and "int" not in ann):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise OverrideError(f"--set {path}={text!r}: not a valid Python literal") from None
    expected = type(current) if current is not None else None
    if isinstance(current, bool) or (current is None and ann.startswith("bool")):
        if not isinstance(value, bool):
            raise OverrideError(f"--set {path}={text!r}: expected True or False")
        return value
    if isinstance(value, bool):
        # True is an int to Python; steps=True must not mean one step.
        raise OverrideError(f"--set {path}={text!r}: expected "
                            f"{expected.__name__ if expected else 'a number'}, got a bool")
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise OverrideError(f"--set {path}={text!r}: not a finite number")
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if expected is not None and not isinstance(value, expected):
        raise OverrideError(f"--set {path}={text!r}: expected {expected.__name__}, got "
                            f"{type(value).__name__}")
    return value


# ----------------------------------------------------------------------------- applying


def _apply(obj: Any, items: list[tuple[list[str], str, str]]) -> Any:
    """Applies ``(remaining parts, text, full path)`` items to ``obj``, rebuilding it once."""
    if isinstance(obj, Objective):
        names = _hparam_names(obj)
        hparams = dict(obj.hparams)
        signature = inspect.signature(obj.loss).parameters
        for parts, text, path in items:
            if parts[0] != "hparams" or len(parts) != 2 or parts[1] not in names:
                raise OverrideError(f"unknown config key {path!r}")
            param = signature[parts[1]]
            current = hparams.get(parts[1], param.default)
            hparams[parts[1]] = _parse(text, current, param.annotation, path)
        return dataclasses.replace(obj, hparams=hparams)
    if isinstance(obj, tuple) and all(hasattr(s, "name") for s in obj):  # stages, by name
        by_name: dict[str, list] = {}
        for parts, text, path in items:
            by_name.setdefault(parts[0], []).append((parts[1:], text, path))
        return tuple(_apply(s, by_name[s.name]) if s.name in by_name else s for s in obj)
    if not dataclasses.is_dataclass(obj):
        raise OverrideError(f"unknown config key {items[0][2]!r}")
    fields = {f.name for f in dataclasses.fields(obj)}
    hints = _field_types(obj)
    grouped: dict[str, list] = {}
    for parts, text, path in items:
        if parts[0] not in fields:
            raise OverrideError(f"unknown config key {path!r}")
        grouped.setdefault(parts[0], []).append((parts[1:], text, path))
    changes = {}
    for name, sub in grouped.items():
        current = getattr(obj, name)
        leaves = [s for s in sub if not s[0]]
        deeper = [s for s in sub if s[0]]
        if leaves:
            if deeper:
                raise OverrideError(f"--set {leaves[0][2]} and {deeper[0][2]} both set it")
            (_, text, path), *more = leaves
            if more:
                raise OverrideError(f"--set {path} is given more than once")
            if _optional_dataclass(hints.get(name)) is not None:
                if text not in ("None", "null"):
                    raise OverrideError(f"--set {path}={text!r}: only None switches it off; set "
                                        f"its fields to switch it on, e.g. {path}.<field>=...")
                changes[name] = None
                continue
            if dataclasses.is_dataclass(current) or isinstance(current, Objective):
                raise OverrideError(f"--set {path}: set its fields, e.g. "
                                    f"{_paths(current, path + '.')[0]}")
            changes[name] = _parse(text, current, hints.get(name), path)
        else:
            if current is None and _optional_dataclass(hints.get(name)) is not None:
                current = _optional_dataclass(hints[name])()
            changes[name] = _apply(current, deeper)
    return dataclasses.replace(obj, **changes)


def _suggest(path: str, valid: set[str]) -> list[str]:
    """Valid paths a mistyped one probably meant: keys with the same parent whose leaf the typed
    one abbreviates (``optimizer.lr`` -> ``optimizer.learning_rate``), then close spellings."""
    parent, _, leaf = path.rpartition(".")
    siblings = [v for v in sorted(valid) if v.rpartition(".")[0] == parent]
    initials = [v for v in siblings
                if "".join(w[0] for w in v.rpartition(".")[2].split("_") if w) == leaf]
    close = difflib.get_close_matches(path, sorted(valid), n=3, cutoff=0.6)
    return list(dict.fromkeys(initials + close))[:3]


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Applies every ``path=value`` string at once to an experiment (or any frozen dataclass
    config); validation runs on the final values."""
    if not overrides:
        return config
    valid = set(valid_paths(config))
    items = []
    for item in overrides:
        if "=" not in item:
            raise OverrideError(f"--set expects path=value, got {item!r}")
        path, text = item.split("=", 1)
        path = path.strip()
        if path not in valid:
            close = _suggest(path, valid)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise OverrideError(f"unknown config key {path!r}{hint}")
        items.append((_route(config, path), text, path))
    try:
        return _apply(config, items)
    except OverrideError:
        raise
    except (ValueError, TypeError) as e:
        # A config's own validation (e.g. heads that do not divide the width), after all --sets.
        raise OverrideError(f"--set {' '.join(overrides)}: {e}") from None


# ----------------------------------------------------------------------------- JSON view


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
    if isinstance(obj, functools.partial):
        # Its repr holds the function's memory address, which differs in every process: a
        # resumed run would see a changed config.
        return {"partial": to_jsonable(obj.func), "args": to_jsonable(list(obj.args)),
                "keywords": to_jsonable(dict(obj.keywords))}
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def dumps(config: Any) -> str:
    return json.dumps(to_jsonable(config), indent=2, sort_keys=True)
