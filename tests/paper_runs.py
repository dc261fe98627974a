"""Runs paper variants from the command line, several in one process, on tiny fixtures.

    python -m tests.paper_runs ROOT RESULTS.json experiments/dpo_rafailov2023.py ...

For each module: writes the datasets its ``paper`` variant reads (``tests.paper_fixtures``) under
``ROOT/<module>/DATA`` and a tiny checkpoint of its family under ``ROOT/ckpt/<family>`` (shared),
then runs ``fbjax.cli.main`` with exactly the arguments a user types::

    fbjax train --experiment experiments/X.py:paper --workdir W --set init_from=CKPT
      --set data.manual_dir=DATA --set stages.NAME.train.steps=2 ...

Each run's exit code, stderr and stdout, whether it raised (a traceback), and the last step of each
stage's history go to RESULTS.json. Running the modules in one process shares the imports and
start-up of JAX; each run is still a separate ``main`` call with its own arguments and workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
import time
import traceback
from pathlib import Path

from tests import paper_fixtures as pf

STEPS = 2
TRAIN = {"steps": STEPS, "seq_len": 96, "max_prompt_len": 48,
         "max_completion_len": 48, "microbatches": 1, "log_every": 1}


def _set(path: str, value) -> list[str]:
    return ["--set", f"{path}={value}"]


def _humaneval_fixture(root: Path) -> Path:
    """Two problems in HumanEval's release format (``HumanEval.jsonl.gz``)."""
    from tests.data.helpers import write_jsonl

    problems = [{"task_id": f"HumanEval/{i}", "prompt": f"def add{i}(a, b):\n",
                 "entry_point": f"add{i}", "canonical_solution": "    return a + b\n",
                 "test": "def check(f):\n    assert f(1, 2) == 3\n"} for i in range(2)]
    return write_jsonl(root / "HumanEval.jsonl.gz", problems)


# Prompt-source fields that set how many prompts a round draws (``fbjax.run.online``).
PROMPT_COUNTS = ("num_problems", "num_prompts")


def _manual_dirs(obj, path: str, found: list[tuple[str, list[type]]]) -> None:
    """Paths (below a stage) of the objects with a ``manual_dir`` field, with the released
    datasets each reads: ``data`` for a ``sources.Dataset``, and any prompt source of an online
    stage that reads a release."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    names = [f.name for f in dataclasses.fields(obj)]
    if "manual_dir" in names:
        found.append((path, pf.released_sources(obj) if hasattr(obj, "source") else
                      [type(obj)] if type(obj) in pf.WRITERS else []))
        return
    for name in names:
        _manual_dirs(getattr(obj, name), f"{path}.{name}", found)


# What a paper's online stage needs given where the paper's own source has a local stand-in:
# a judge checkpoint (the run's tiny checkpoint stands in), C3PO's verbal feedback, SAMI's
# constitutions. Filled only where the config leaves them empty.
FEEDBACK = "Be more concise when answering questions about science."
CONSTITUTIONS = ("Answers are helpful and honest.", "Answers are harmless and polite.")


def _required_inputs(obj, path: str, ckpt: Path | None) -> list[str]:
    """``--set`` arguments for the empty inputs of ``obj`` (a stage's provider or prompts)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return []
    names = {f.name for f in dataclasses.fields(obj)}
    if type(obj).__name__ == "JudgeCheckpoint":
        return (_set(f"{path}.checkpoint", ckpt)
                if ckpt is not None and not obj.checkpoint and not obj.stage else [])
    args = []
    if "feedback" in names and getattr(obj, "feedback") == "":
        args += _set(f"{path}.feedback", repr(FEEDBACK))
    if "constitutions" in names and not getattr(obj, "constitutions"):
        args += _set(f"{path}.constitutions", repr(CONSTITUTIONS))
    for name in names:
        args += _required_inputs(getattr(obj, name), f"{path}.{name}", ckpt)
    return args


def arguments(module: str, root: Path) -> tuple[list[str], dict]:
    """The command-line arguments that run ``module``'s paper variant on fixtures, and what the
    run should leave behind (``stages``: the training stages whose history must reach STEPS).

    Generic over the config: every training or online stage gets 2 steps of 96-token rows (as
    many as hold whole groups in the paper's layout, at least 2),
    an online stage 1 round of 2 samples of 8 tokens per prompt and 2 prompts (and the tiny
    checkpoint as its judge, :func:`_required_inputs`), and every source of a released dataset
    the fixture directory."""
    from fbjax.run import experiment
    from fbjax.run.config import OnlineStage, TrainStage

    _, _, config = experiment.load(f"{module}:paper")
    name = Path(module).stem
    workdir = root / name / "W"
    data_dir = root / name / "DATA"
    args = ["train", "--experiment", f"{module}:paper", "--workdir", str(workdir),
            "--no-progress", *_set("mesh.shape", "1,-1,1")]
    family = pf.family_of(config.init_from)
    ckpt = None
    if family is not None:
        ckpt = root / "ckpt" / family
        if not ckpt.exists():
            pf.write_checkpoint(ckpt, family)
        args += _set("init_from", ckpt)
    trained = []
    kinds: set[type] = set()
    for stage in config.stages:
        if not isinstance(stage, (TrainStage, OnlineStage)):
            continue
        trained.append(stage.name)
        prefix = f"stages.{stage.name}"
        for field, value in TRAIN.items():
            args += _set(f"{prefix}.train.{field}", value)
        # Rows that hold whole groups in the paper's layout (its batch is groups x completions).
        args += _set(f"{prefix}.train.batch", max(2, math.gcd(stage.train.batch, 12)))
        if isinstance(stage, OnlineStage):
            samples = min(stage.samples_per_prompt, 2)  # SAMI's one per constitution stays 1
            args += _set(f"{prefix}.rounds", 1) + _set(f"{prefix}.samples_per_prompt", samples)
            args += _set(f"{prefix}.sampling.max_new_tokens", 8)
            for field in PROMPT_COUNTS:
                if hasattr(stage.prompts, field):
                    args += _set(f"{prefix}.prompts.{field}", 2)
            args += _required_inputs(stage.provider, f"{prefix}.provider", ckpt)
            args += _required_inputs(stage.prompts, f"{prefix}.prompts", ckpt)
            if type(stage.prompts).__name__ == "HumanEvalPrompts":
                args += _set(f"{prefix}.prompts.path", _humaneval_fixture(root / name))
        found: list[tuple[str, list[type]]] = []
        _manual_dirs(stage, prefix, found)
        for path, released in found:
            if released:
                kinds.update(released)
                args += _set(f"{path}.manual_dir", data_dir)
    if kinds:
        pf.write_manual_dir(data_dir, sorted(kinds, key=lambda t: t.__name__))
    return args, {"workdir": str(workdir), "stages": trained}


def _last_step(workdir: Path, stage: str) -> int | None:
    files = sorted((workdir / stage).glob("**/history.jsonl"))
    if not files:
        return None
    lines = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return lines[-1]["step"] if lines else None


def run(module: str, root: Path) -> dict:
    from fbjax import cli

    out, err = io.StringIO(), io.StringIO()
    result: dict = {"module": module}
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args, expect = arguments(module, root)
            result["argv"] = args
            result["rc"] = cli.main(args)
        except SystemExit as e:  # argparse
            result["rc"] = e.code
        except BaseException:  # noqa: BLE001 (what a user would see as a traceback)
            traceback.print_exc()
            result["rc"] = "raised"
            expect = None
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["stdout"], result["stderr"] = out.getvalue(), err.getvalue()
    if expect is not None and result["rc"] == 0:
        result["steps"] = {s: _last_step(Path(expect["workdir"]), s) for s in expect["stages"]}
    return result


def main(argv: list[str]) -> int:
    root, results_file, modules = Path(argv[0]), Path(argv[1]), argv[2:]
    results = [run(m, root) for m in modules]
    results_file.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
