"""Every paper variant runs from the command line, offline, on a tiny random checkpoint of its
family and fixture files in its datasets' original formats (``tests.paper_fixtures``), for 2
steps; or, where it needs something fbjax does not have (a dataset with no reader, samples that
only an online stage could draw), fails in one line naming what is missing, with no traceback and
before any weights are loaded. It never trains on a stand-in.

What a module is expected to do is read from its config, not listed here: a paper variant whose
data contains a :class:`~fbjax.data.sources.Unavailable` source or an encoder with an
``unavailable`` reason (``experiments.common.OnlineEncoder``) must fail clearly; every other must
train. The runs share one process per chunk (``tests.paper_runs``), each a separate
``fbjax.cli.main`` call with the arguments a user types::

    fbjax train --experiment experiments/X.py:paper --workdir W --set init_from=CKPT \\
      --set stages.train.data.manual_dir=DATA --set stages.train.train.steps=2 ... \\
      --set mesh.shape=1,-1,1

Run with ``-s`` to see the table of modules that run and those that fail clearly.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest

from fbjax.data import sources
from fbjax.run import online as online_stage
from tests import cli_runs
from tests.paper_runs import STEPS
from tests.test_experiments import MODULE_NAMES, MODULES

CHUNKS = 2  # one subprocess per xdist worker


def _unbound_providers(obj, path: str) -> list[str]:
    """Paths of the feedback sources in ``obj`` that nothing local stands in for."""
    if isinstance(obj, online_stage.Unavailable):
        return [path]
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return []
    return [p for f in dataclasses.fields(obj)
            for p in _unbound_providers(getattr(obj, f.name), f"{path}.{f.name}")]


def _missing(name: str) -> list[str]:
    """What the module's paper variant lacks (the starts of the errors it may give: the first
    one its stages check), or [] if it should run."""
    found = []
    for stage in MODULES[name].get_config("paper").stages:
        found += [f"{p}: no local stand-in for"
                  for p in _unbound_providers(getattr(stage, "provider", None),
                                              f"stages.{stage.name}.provider")]
        data = getattr(stage, "data", None)
        if not isinstance(data, sources.Dataset):
            continue
        for leaf in sources.leaves(data.source):
            if isinstance(leaf, sources.Unavailable):
                found.append(f"stages.{stage.name}.data: dataset {leaf.name!r} ({leaf.split}) "
                             "has no fbjax reader")
        reason = getattr(data.encoder, "unavailable", None)
        if reason:
            found.append(f"stages.{stage.name}.data: {reason}")
    return found


def _check(result: dict) -> str | None:
    """None if the run did what its config says it should; else what went wrong."""
    name = result["module"].rsplit("/", 1)[-1][:-3]
    err = result["stderr"]
    if "Traceback" in err or result["rc"] == "raised":
        return f"{name}: raised\n{err[-3000:]}"
    missing = _missing(name)
    if not missing:
        if result["rc"] != 0:
            return f"{name}: exit {result['rc']}, expected to train\n{err[-3000:]}"
        if not result["steps"] or any(s != STEPS for s in result["steps"].values()):
            return f"{name}: trained steps {result['steps']}, expected {STEPS} in every stage"
        return None
    lines = [line for line in err.splitlines() if line.startswith("fbjax train: error:")]
    if result["rc"] != 2 or len(lines) != 1 or not any(m in lines[0] for m in missing):
        return f"{name}: expected exit 2 and one line naming one of {missing!r}\n{err[-3000:]}"
    if "INFO fbjax" in err:  # it got as far as loading weights or data
        return f"{name}: failed only after starting to load\n{err[-3000:]}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_paper_variant_trains_or_names_what_is_missing(chunk, tmp_path):
    names = MODULE_NAMES[chunk::CHUNKS]
    results_file = tmp_path / "results.json"
    args = [*cli_runs.FBJAX[:2], "tests.paper_runs", str(tmp_path), str(results_file),
            *(f"experiments/{n}.py" for n in names)]
    proc = subprocess.run(args, check=False, cwd=cli_runs.REPO, env=cli_runs.env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(results_file.read_text())
    assert [r["module"] for r in results] == [f"experiments/{n}.py" for n in names]
    for r in results:
        status = "trains" if r["rc"] == 0 else "fails clearly"
        last = (r["stderr"].strip().splitlines() or [""])[-1]
        print(f"{r['module']}: {status} ({r['seconds']} s){'' if r['rc'] == 0 else ': ' + last}")
    problems = [p for p in map(_check, results) if p]
    assert not problems, "\n\n".join(problems)


# ----------------------------------------------------------------------------- the plumbing


def test_data_that_cannot_be_built_is_refused_naming_the_stage():
    from experiments import common
    from fbjax.run import stages

    online = sources.Dataset(source=sources.HHRLHF(subset="helpful-base"),
                             encoder=common.OnlineEncoder("refinements sampled from the policy"))
    with pytest.raises(sources.UnavailableError, match=r"online stage \(refinements sampled"):
        online.check_available()
    no_reader = sources.Dataset(source=sources.Mixture(parts=(
        sources.HHRLHF(subset="helpful-base"), sources.Unavailable(name="X", reason="why"))))
    with pytest.raises(sources.UnavailableError, match="dataset 'X' .* no fbjax reader: why"):
        no_reader.check_available()
    sources.Dataset(source=sources.HHRLHF(subset="helpful-base")).check_available()
    config = MODULES["dpo_rafailov2023"].get_config("paper")
    stage = dataclasses.replace(config.stages[0], data=no_reader)
    with pytest.raises(sources.UnavailableError, match=r"^stages\.train\.data: dataset 'X'"):
        stages._check_data(dataclasses.replace(config, stages=(stage,)))


def test_the_command_line_reports_unavailable_data_in_one_line(monkeypatch, capsys, tmp_path):
    from fbjax import cli
    from fbjax.run import stages

    def refuse(config, **kwargs):
        raise sources.UnavailableError("stages.train.data: dataset 'X' (train) has no reader")

    monkeypatch.setattr(stages, "run", refuse)
    args = ["train", "--experiment", "experiments/dpo_rafailov2023.py:smoke", "--workdir",
            str(tmp_path)]
    assert cli.main(args) == 2
    assert capsys.readouterr().err == \
        "fbjax train: error: stages.train.data: dataset 'X' (train) has no reader\n"

    def bug(config, **kwargs):
        raise NotImplementedError("an abstract method")

    monkeypatch.setattr(stages, "run", bug)
    with pytest.raises(NotImplementedError, match="abstract"):  # a bug keeps its traceback
        cli.main(args)


def test_a_padded_batch_smaller_than_a_group_names_train_batch():
    import numpy as np

    from fbjax.data import batching, packing
    from fbjax.train import inputs
    from fbjax.train.objective import SequenceStats

    group = packing.Group(np.arange(1, 4, dtype=np.int32),
                          tuple(np.arange(5, 8, dtype=np.int32) for _ in range(3)))
    spec = batching.BatchSpec(seq_len=16, num_rows=2, packing=False, share_prefix=False)
    with pytest.raises(ValueError, match="3 completions needs that many rows .* raise train.batch"):
        next(batching.BatchStream([group], spec, seed=0))
    rows = np.ones(4, np.float32)
    stats = SequenceStats(logps=rows, lengths=rows, valid=rows, ref_logps=rows,
                          token_logps=np.ones((4, 8)), token_mask=np.ones((4, 8)),
                          ref_token_logps=None, fields={})
    with pytest.raises(ValueError, match=r"train.batch to be a multiple of 3 .* \(got 4 rows\)"):
        inputs.listwise(3)(stats)


def test_a_stage_whose_data_gives_no_examples_says_so():
    import types

    from fbjax.run import stages

    stage = types.SimpleNamespace(name="train")
    with pytest.raises(ValueError, match=r"^stages\.train: its data gave no training examples"):
        stages._fit(None, stage, stage, "unused", None, None, [], None)
