"""Loading experiment modules: ``PATH_OR_MODULE[:VARIANT]`` -> (module, config).

An experiment module is a plain config module: ``get_config(variant: str)`` returns an
:class:`~fbjax.run.config.ExperimentConfig` for each name in ``VARIANTS`` (``DEFAULT_VARIANT``
when the spec names none). Every config runs through :func:`fbjax.run.stages.run`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

from fbjax.run.config import ExperimentConfig
from fbjax.run.overrides import apply_overrides


def load_module(spec: str) -> ModuleType:
    """Imports ``experiments/foo.py``, ``experiments.foo`` or ``foo`` (from ``experiments/``)."""
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"experiment file {spec!r} does not exist")
        repo_root = os.path.dirname(os.path.dirname(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.basename(os.path.dirname(path)) == "experiments":
            if repo_root not in sys.path:
                sys.path.insert(0, repo_root)
            return importlib.import_module(f"experiments.{stem}")
        module_spec = importlib.util.spec_from_file_location(stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[stem] = module  # dataclasses look their module up while the file executes
        module_spec.loader.exec_module(module)
        return module
    for name in (spec, f"experiments.{spec}"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name not in (name, name.rsplit(".", 1)[0]):
                raise
    raise ModuleNotFoundError(f"no experiment module {spec!r} (tried {spec}, experiments.{spec})")


def load(spec: str, overrides: list[str] = ()) -> tuple[ModuleType, str, ExperimentConfig]:
    """``PATH_OR_MODULE[:VARIANT]`` -> (module, variant, config with overrides applied)."""
    module_spec, _, variant = spec.partition(":")
    module = load_module(module_spec)
    if not hasattr(module, "get_config"):
        raise ValueError(f"experiment {module_spec!r} defines no get_config(variant)")
    variants = getattr(module, "VARIANTS", None)
    variant = variant or getattr(module, "DEFAULT_VARIANT", "sim")
    if variants is not None and variant not in variants:
        raise ValueError(
            f"experiment {module_spec!r} has no variant {variant!r}; choose one of {list(variants)}"
        )
    config = module.get_config(variant)
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"experiment {module_spec!r}: get_config({variant!r}) returned a "
                        f"{type(config).__name__}, not an ExperimentConfig")
    return module, variant, apply_overrides(config, list(overrides))
