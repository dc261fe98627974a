"""fbjax's packages import only downward: a module may import its own layer and those below it.

Layers, bottom to top (``docs/architecture.md`` says what each holds):

0. ``objectives`` (pure losses), ``sharding``, ``distributed``, ``checkpoint`` (Orbax, no fbjax),
   ``host_memory`` (the C allocator's settings)
1. ``models``, ``tokenizers``
2. ``data``
3. ``sim``
4. ``train``, ``sampling``
5. ``evaluation``, ``analysis``, ``feedback``, ``parity`` (model parity checks, using the sampler)
6. ``run`` (configs, overrides, stages)
7. ``cli``

Every import counts, including those inside functions: a deferred import still ties the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fbjax"

LAYERS = (
    ("objectives", "sharding", "distributed", "checkpoint", "host_memory"),
    ("models", "tokenizers"),
    ("data",),
    ("sim",),
    ("train", "sampling"),
    ("evaluation", "analysis", "feedback", "parity"),
    ("run",),
    ("cli", "cli_convert", "cli_eval", "eval_cli"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """``fbjax.train.step`` -> ``train``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("fbjax")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "fbjax":  # from fbjax import train, sim: each name is a unit
                out += [(node.lineno, f"fbjax.{a.name}") for a in node.names]
            elif name.startswith("fbjax."):
                out.append((node.lineno, name))
    return out


def _modules(root: Path = PACKAGE):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def upward_imports(root: Path = PACKAGE) -> list[str]:
    found = []
    for path, module in _modules(root):
        unit = _unit(module)
        if unit == "":  # fbjax/__init__.py
            continue
        if unit not in LAYER:
            found.append(f"{path}: package {unit!r} has no layer in tests/test_layers.py")
            continue
        for line, target in _imports(path, module):
            other = _unit(target)
            if other in LAYER and LAYER[other] > LAYER[unit]:
                found.append(f"{path.relative_to(root.parent)}:{line}: {unit} (layer "
                             f"{LAYER[unit]}) imports {target} (layer {LAYER[other]})")
    return found


def test_no_import_runs_upward():
    assert upward_imports() == []


def test_the_check_catches_an_upward_import(tmp_path):
    fake = tmp_path / "fbjax"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "bad.py").write_text("def f():\n    from fbjax.train import loop\n")
    (fake / "data" / "good.py").write_text("from fbjax.models import config\nfrom . import bad\n")
    found = upward_imports(fake)
    assert len(found) == 1 and found[0].endswith("bad.py:2: data (layer 2) imports fbjax.train (layer 4)")


@pytest.mark.parametrize("unit", sorted({_unit(m) for _, m in _modules()} - {""}))
def test_every_package_has_a_layer(unit):
    assert unit in LAYER, f"add fbjax.{unit} to LAYERS"
