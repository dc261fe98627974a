"""The training loop's settings: one frozen dataclass, read by the loop and the batch stream."""

from __future__ import annotations

import dataclasses
from typing import Any

from fbjax.models.lora import LoraConfig
from fbjax.objectives.logprobs import CHUNK as LOGPROB_CHUNK  # noqa: E402  (the one default)
from fbjax.train.nonfinite import NonFinitePolicy


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop settings. ``batch`` rows of ``seq_len`` tokens make one global batch (in the padded
    layout a row is one (prompt, completion) sequence, so ``batch`` pairs need ``2 * batch``
    rows; packed rows hold several groups)."""

    steps: int = 100
    batch: int = 8
    seq_len: int = 128
    microbatches: int = 1
    log_every: int = 10
    logprob_chunk: int = LOGPROB_CHUNK
    # The LM head runs only at scored positions (fbjax.objectives.logprobs.token_logps), at most
    # max_scored_tokens a row per pass, the rows of a batch shard pooled (more passes where
    # they hold more; same values either way). None: an eighth of the row rounded up to 32;
    # rows of at most 128 tokens take one plain pass. scored_head=False runs it at every
    # position.
    scored_head: bool = True
    max_scored_tokens: int | None = None
    # Pack several groups per row; share one prompt copy between a group's completions.
    packing: bool = True
    share_prefix: bool = True
    slots_per_row: int = 8
    # Truncation policy (fbjax.data.packing.truncate_group): prompts keep their end,
    # completions their start.
    max_prompt_len: int = 1024
    max_completion_len: int = 1024

    @property
    def scored_bound(self) -> int | None:
        """Positions a row per LM-head pass, or None for every position (one plain pass)."""
        if not self.scored_head:
            return None
        if self.max_scored_tokens is None and self.seq_len <= 128:
            # The simulator's rows: a pass's gathers and scan cost about what they save there.
            return None
        # Passes pool a shard's rows, so a small pass costs little: one row with many scored
        # positions no longer sets every row's share. An eighth of the row covers TRL's padded
        # layout (12% scored) in one pass and packed rows (45% scored) in about four; on this
        # CPU the packed step took the same time with 128, 256 and 512 a row
        # (tools/bench_scored_pass.py, docs/performance.md).
        bound = self.max_scored_tokens or -(-self.seq_len // 256) * 32
        return bound if bound < self.seq_len else None

    def __post_init__(self):
        for name in ("steps", "batch", "seq_len", "microbatches", "log_every", "slots_per_row",
                     "logprob_chunk", "max_prompt_len", "max_completion_len"):
            value = getattr(self, name)
            # bool is an int in Python; steps=True must not mean one step.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"train.{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"train.{name} must be >= 1, got {value}")
        if self.max_scored_tokens is not None and (
                isinstance(self.max_scored_tokens, bool) or self.max_scored_tokens < 1):
            raise ValueError(f"train.max_scored_tokens must be >= 1 or None, got "
                             f"{self.max_scored_tokens!r}")
        if self.batch % self.microbatches:
            raise ValueError(f"train.batch={self.batch} must divide into "
                             f"train.microbatches={self.microbatches} equal parts")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainJob:
    """What the loop trains: a model, an objective and its optimizer, for ``train`` steps.

    ``rules`` are the mesh's logical-axis rules; ``seed`` seeds the data order and the step's
    random key; ``nonfinite`` says what a non-finite step does (halt, or roll back)."""

    name: str
    model: Any
    objective: Any
    optimizer: Any
    train: TrainConfig
    rules: Any
    seed: int = 0
    nonfinite: NonFinitePolicy = NonFinitePolicy()
    # LoRA adapters on the frozen start (fbjax.models.lora); None trains every weight.
    lora: LoraConfig | None = None
    # Where the start came from: with LoRA, the identity of the base the adapters belong to.
    init_from: str | None = None
