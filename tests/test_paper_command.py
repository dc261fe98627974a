"""A paper variant on the user's own files, through the command line, exactly as the README shows:

    fbjax train --experiment experiments/dpo_rafailov2023.py:paper --workdir W \\
      --set init_from=CKPT --set data.manual_dir=DATA --set data.on_error=skip \\
      --set train.steps=2 --set train.batch=4 --set train.seq_len=256

CKPT is a tiny random Llama with a byte-level ``tokenizer.json`` (``fbjax.models.tiny``); DATA
holds ``<subset>/{train,test}.jsonl.gz`` for the four HH-RLHF subsets, each a copy of the shared
harmless-base test file, whose 4 records with an empty reply are skipped and counted per file.
The run is a subprocess with one CPU device, as on a user's machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import cli_runs

sys.path.insert(0, str(cli_runs.REPO / "tools"))
import make_tiny_checkpoint as tiny_tool  # noqa: E402

HH_FILE = Path(tiny_tool.HH_FILE)
pytestmark = pytest.mark.skipif(not HH_FILE.exists(), reason=f"{HH_FILE} is not present")


def _command(workdir: Path, ckpt: Path, data: Path) -> list[str]:
    return [*cli_runs.FBJAX, "train", "--experiment",
            "experiments/dpo_rafailov2023.py:paper", "--workdir", str(workdir),
            "--set", f"init_from={ckpt}", "--set", f"data.manual_dir={data}",
            "--set", "data.on_error=skip", "--set", "train.steps=2", "--set", "train.batch=4",
            "--set", "train.seq_len=256", "--no-progress"]


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    # Full XLA optimisation: this run computes the reference over 9,232 pairs, which takes
    # twice as long compiled without LLVM's passes.
    return subprocess.run(args, cwd=cli_runs.REPO, env=cli_runs.env(fast_compile=False),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("paper") / "CKPT"
    assert tiny_tool.main(["--out", str(path)]) == 0
    return path


def test_missing_files_fail_fast_naming_every_expected_file(ckpt, tmp_path):
    empty = tmp_path / "DATA"
    empty.mkdir()
    t0 = time.monotonic()
    out = _run(_command(tmp_path / "W", ckpt, empty), timeout=120)
    seconds = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-3000:]
    assert seconds < 30, seconds
    assert "Traceback" not in out.stderr
    for subset in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"):
        assert str(empty / subset / "train.jsonl.gz") in out.stderr, out.stderr[-3000:]


@pytest.mark.slow
def test_the_readme_command_trains_two_steps_on_the_real_file(ckpt, tmp_path):
    data = tmp_path / "DATA"
    tiny_tool.write_hh_manual_dir(str(data), str(HH_FILE))
    workdir = tmp_path / "W"
    out = _run(_command(workdir, ckpt, data), timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    history = [json.loads(line) for line in (workdir / "train" / "history.jsonl").open()]
    assert history[-1]["step"] == 2  # logged every 10 steps, and at the last
    assert abs(history[-1]["loss"] - 0.6931) < 0.01  # two small steps from policy == reference
    for subset in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"):
        line = f"{data / subset / 'train.jsonl.gz'}: skipped 4 malformed records"
        assert line in out.stderr, out.stderr[-4000:]
    assert "dpo_rafailov2023: train step 2 loss" in out.stdout
