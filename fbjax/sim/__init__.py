"""Simulated tasks with programmatic oracles, and feedback emitters over a policy's samples.

The default experiments use these to show, on one CPU and without downloads, that each feedback
family (rewards, preferences, thumbs, negatives-only, language feedback, token-level faults)
improves a tiny model that brief SFT on a noisy demonstrator left mediocre::

    rng = np.random.default_rng(0)
    task = make_task("arithmetic")
    tok = build_tokenizer([task, make_task("constraints")])
    sft = sft_corpus(task, rng, 5000, quality=0.6)          # (prompt, completion) pairs
    ... sample completions from the policy ...
    pairs = feedback.preferences(task, prompts, samples_a, samples_b, rng, temperature=0.1)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fbjax.data.templates import BAD_TOKEN, COH_NEGATIVE, COH_POSITIVE, GOOD_TOKEN
from fbjax.sim import feedback
from fbjax.sim.arithmetic import ArithmeticTask
from fbjax.sim.constraints import ConstraintTask
from fbjax.sim.task import Task, evaluate, fault_mask, sft_corpus

TASKS = {"arithmetic": ArithmeticTask, "constraints": ConstraintTask}

CONTROL_TOKENS = (GOOD_TOKEN, BAD_TOKEN)


def make_task(name: str, **kwargs) -> Task:
    """A task by name (``"arithmetic"`` or ``"constraints"``) with config overrides."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown sim task {name!r}; known: {sorted(TASKS)}") from None
    return cls(**kwargs)


def tokenizer_corpus(
    tasks: Sequence[Task], rng: np.random.Generator, n_per_task: int = 1000
) -> list[str]:
    """Texts covering everything the simulator emits: prompts, good and bad completions, their
    critiques, judgments and refinements, and the feedback-template phrases. Prompts and
    completions appear on their own because templates tokenize segments separately."""
    texts: list[str] = []
    for task in tasks:
        for p in task.sample_prompts(rng, n_per_task):
            c = task.demonstration(p, rng, 0.5)
            texts += [p, c, task.critique(p, c), task.judgment(p, c), task.refine(p, c)]
    phrases = [*COH_POSITIVE, *COH_NEGATIVE, "Feedback: "]
    reps = max(1, n_per_task // 20)
    texts += [f"{ph} " for ph in phrases for _ in range(reps)]
    return texts


def build_tokenizer(
    tasks: Sequence[Task],
    *,
    vocab_size: int = 512,
    seed: int = 0,
    n_per_task: int = 1000,
    model_type: str = "bpe",
    out_path: str | None = None,
):
    """A small BPE tokenizer for the given tasks with ``<|good|>``/``<|bad|>`` as single tokens;
    deterministic in ``seed``. Takes about a second."""
    from fbjax.tokenizers import train_sentencepiece  # sentencepiece only when needed

    texts = tokenizer_corpus(tasks, np.random.default_rng(seed), n_per_task)
    return train_sentencepiece(
        texts,
        vocab_size=vocab_size,
        model_type=model_type,
        user_defined_symbols=CONTROL_TOKENS,
        out_path=out_path,
    )


__all__ = [
    "ArithmeticTask",
    "CONTROL_TOKENS",
    "ConstraintTask",
    "TASKS",
    "Task",
    "build_tokenizer",
    "evaluate",
    "fault_mask",
    "feedback",
    "make_task",
    "sft_corpus",
    "tokenizer_corpus",
]
