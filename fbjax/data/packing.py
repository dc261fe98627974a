"""Turning tokenized examples into the batch layout of ``docs/batch_layout.md``.

A :class:`Group` is what must stay in one row: a prompt and its completions (one for SFT or
thumbs up/down, two for a preference pair, K for a ranked list). Three layouts:

* **padded**: one (prompt, completion) sequence per row, right-padded (the baseline most
  libraries use; a pair occupies rows 2i and 2i+1).
* **packed**: several groups per row, each (prompt, completion) its own attention segment.
* **packed + prefix sharing**: as packed, but a group's completions share one copy of its prompt:
  ``[prompt][completion 1][completion 2]`` in one segment, completions on separate branches so
  each attends to the prompt and itself only (the prompt is computed once).

All three give the same per-completion log-probs (tested against the model), so the choice is
purely about wasted compute, which :func:`layout_stats` reports.

Truncation policy (applied per group by :func:`truncate_group` before packing): the prompt keeps
its last ``max_prompt_len`` tokens (the end of a conversation matters most; where that would leave
its completions no room in the row, its last half row), each completion keeps
its first ``max_completion_len`` tokens, and if the group (packed) or a (prompt, completion)
sequence (padded) still does not fit ``seq_len`` the longest completions are cut further from
the right.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Group:
    """A prompt and the completions that must be scored together.

    ``slot_fields`` holds one value per completion for each slot-level batch field
    (e.g. ``{"labels": (1.0,)}`` for a desirable thumbs-up example). ``masks`` optionally gives
    per-token loss weights for each completion (templates such as Chain of Hindsight interleave
    trained and untrained text); by default every completion token is scored.
    """

    prompt: np.ndarray
    completions: tuple[np.ndarray, ...]
    slot_fields: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    masks: tuple[np.ndarray, ...] | None = None

    def __post_init__(self):
        if len(self.prompt) < 1:
            raise ValueError("a group needs at least one prompt token (e.g. BOS) to score from")
        if self.masks is not None and [len(m) for m in self.masks] != [
            len(c) for c in self.completions
        ]:
            raise ValueError("Group.masks must match the completions' lengths")
        for key, values in self.slot_fields.items():
            if len(values) != len(self.completions):
                raise ValueError(
                    f"slot field {key!r} has {len(values)} values for "
                    f"{len(self.completions)} completions"
                )

    def length(self, share_prefix: bool) -> int:
        comp = sum(len(c) for c in self.completions)
        if share_prefix:
            return len(self.prompt) + comp
        return len(self.prompt) * len(self.completions) + comp


def truncate_group(
    group: Group, *, seq_len: int, max_prompt_len: int, max_completion_len: int,
    share_prefix: bool, packed: bool = True,
) -> Group:
    """Applies the documented truncation policy (see module docstring).

    ``packed``: the whole group shares one row of ``seq_len`` (once or, without
    ``share_prefix``, once per completion, the prompt). Padded rows (``packed=False``) hold one
    (prompt, completion) sequence each, so there every completion may use the row less the
    prompt; squeezing a pair into one row's budget left the paper variants' 512-token rows with
    256-token prompts no room at all.
    """
    comps = [c[:max_completion_len] for c in group.completions]
    masks = None if group.masks is None else [m[:max_completion_len] for m in group.masks]
    n = len(comps)
    copies = 1 if share_prefix or not packed else n  # prompt copies in the prompt's row

    def budgets_for(prompt_len: int) -> tuple[list[int], list[list[int]]]:
        if packed:
            return [seq_len - prompt_len * copies], [list(range(n))]
        return [seq_len - prompt_len] * n, [[i] for i in range(n)]

    prompt = group.prompt[-max_prompt_len:]
    budgets, parts = budgets_for(len(prompt))
    if any(b < len(p) for b, p in zip(budgets, parts)):
        # max_prompt_len set for a longer row (a paper's 256 of 512, run at seq_len=256): the
        # prompt keeps its last half row's worth of tokens, so the completions keep the rest.
        prompt = group.prompt[-max(1, seq_len // (2 * copies)):]
        budgets, parts = budgets_for(len(prompt))
    for budget, part in zip(budgets, parts):
        if budget < len(part):
            raise ValueError(
                f"a prompt of {len(prompt)} tokens leaves no room for {len(part)} completion(s) "
                f"in train.seq_len={seq_len}; raise train.seq_len or lower train.max_prompt_len"
            )
        while sum(len(comps[i]) for i in part) > budget:
            longest = max(part, key=lambda i: len(comps[i]))
            comps[longest] = comps[longest][:-1]
            if masks is not None:
                masks[longest] = masks[longest][:-1]
    return dataclasses.replace(
        group, prompt=prompt, completions=tuple(comps),
        masks=None if masks is None else tuple(masks),
    )


def _empty(num_rows: int, seq_len: int, num_slots: int, fields: Sequence[str]) -> dict:
    shape = (num_rows, seq_len)
    batch = {
        "tokens": np.zeros(shape, np.int32),
        "positions": np.zeros(shape, np.int32),
        "segment_ids": np.zeros(shape, np.int32),
        "branch_ids": np.zeros(shape, np.int32),
        "predictor": np.zeros(shape, np.int32),
        "loss_mask": np.zeros(shape, np.float32),
        "slot_ids": np.zeros(shape, np.int32),
        "slot_valid": np.zeros((num_rows, num_slots), np.float32),
    }
    for f in fields:
        batch[f] = np.zeros((num_rows, num_slots), np.float32)
    return batch


class _Row:
    def __init__(self, batch: dict, row: int):
        self.batch, self.row, self.cursor, self.segment, self.slot = batch, row, 0, 0, 0

    def put(self, tokens: np.ndarray, positions: np.ndarray, branch: int,
            weights: np.ndarray | None, predictor_first: int | None) -> int:
        """Writes tokens at the cursor; returns the row index of the first one."""
        b, r, start = self.batch, self.row, self.cursor
        end = start + len(tokens)
        b["tokens"][r, start:end] = tokens
        b["positions"][r, start:end] = positions
        b["segment_ids"][r, start:end] = self.segment
        b["branch_ids"][r, start:end] = branch
        b["predictor"][r, start:end] = np.arange(start - 1, end - 1)
        if predictor_first is not None and len(tokens):
            b["predictor"][r, start] = predictor_first
        if weights is not None:
            b["loss_mask"][r, start:end] = weights
            b["slot_ids"][r, start:end] = self.slot
        self.cursor = end
        return start

    def add_group(self, group: Group, share_prefix: bool) -> None:
        p = len(group.prompt)
        if share_prefix:
            self.segment += 1
            start = self.put(group.prompt, np.arange(p), 0, None, None)
            last_prompt = start + p - 1
        for k, comp in enumerate(group.completions):
            weights = np.ones(len(comp), np.float32) if group.masks is None else group.masks[k]
            if share_prefix:
                self.put(comp, np.arange(p, p + len(comp)), k + 1, weights, last_prompt)
            else:
                self.segment += 1
                self.put(group.prompt, np.arange(p), 0, None, None)
                self.put(comp, np.arange(p, p + len(comp)), 0, weights, None)
            self.batch["slot_valid"][self.row, self.slot] = 1.0
            for key, values in group.slot_fields.items():
                self.batch[key][self.row, self.slot] = values[k]
            self.slot += 1


def pack(
    groups: Sequence[Group],
    *,
    seq_len: int,
    num_rows: int,
    num_slots: int,
    share_prefix: bool,
    fields: Sequence[str] = (),
) -> tuple[dict, int]:
    """Packs groups, in order, into ``num_rows`` rows (first fit). Returns ``(batch, consumed)``.

    Groups are taken in order until one fits no row (it starts the next batch), so the data order
    and therefore resumption are deterministic. Rows that receive nothing stay padding.
    """
    batch = _empty(num_rows, seq_len, num_slots, fields)
    rows = [_Row(batch, r) for r in range(num_rows)]
    consumed = 0
    for group in groups:
        need = group.length(share_prefix)
        if need > seq_len:
            raise ValueError(
                f"group of {need} tokens exceeds seq_len={seq_len}; truncate it first "
                "(fbjax.data.packing.truncate_group)"
            )
        row = next(
            (r for r in rows
             if r.cursor + need <= seq_len and r.slot + len(group.completions) <= num_slots),
            None,
        )
        if row is None:
            break
        row.add_group(group, share_prefix)
        consumed += 1
    return batch, consumed


def padded(
    groups: Sequence[Group], *, seq_len: int, num_rows: int, fields: Sequence[str] = ()
) -> tuple[dict, int]:
    """One (prompt, completion) sequence per row, K = 1. Returns ``(batch, consumed)``.

    A group is taken only if all its sequences fit in the remaining rows, so pairs stay in
    consecutive rows ``(2i, 2i + 1)``.
    """
    batch = _empty(num_rows, seq_len, 1, fields)
    row = consumed = 0
    for group in groups:
        if row + len(group.completions) > num_rows:
            break
        for k, comp in enumerate(group.completions):
            single = Group(group.prompt, (comp,), {f: (v[k],) for f, v in group.slot_fields.items()},
                           None if group.masks is None else (group.masks[k],))
            if single.length(False) > seq_len:
                raise ValueError(
                    f"sequence of {single.length(False)} tokens exceeds seq_len={seq_len}; "
                    "truncate it first (fbjax.data.packing.truncate_group)"
                )
            _Row(batch, row).add_group(single, share_prefix=False)
            row += 1
        consumed += 1
    return batch, consumed


def layout_stats(batch: Mapping[str, np.ndarray], groups: Sequence[Group]) -> dict[str, float]:
    """Where the computed tokens went: real work, padding, and duplicated prompts.

    ``groups`` are the groups packed into ``batch`` (the ``consumed`` prefix).
    """
    computed = batch["tokens"].size
    unique = sum(len(g.prompt) + sum(len(c) for c in g.completions) for g in groups)
    nonpad = int(np.sum(batch["segment_ids"] > 0))
    return {
        "computed_tokens": float(computed),
        "unique_tokens": float(unique),
        "padding_fraction": (computed - nonpad) / computed,
        "duplicate_prompt_fraction": (nonpad - unique) / computed,
        "waste_fraction": (computed - unique) / computed,
    }
