"""A deterministic, resumable stream of packed batches over a list of groups.

Order is a seeded permutation per epoch; the iterator state is two integers (epoch and position
in that epoch's permutation), so a checkpoint restores exactly the batches an uninterrupted run
would see.

Multi-host: every host packs the same *global* batch (``spec.num_rows * shard_count`` rows) from
the same order and keeps only its own rows of it. So the global batch is exactly the one a single
process would pack, every host consumes the same groups, and the iterator state is the same on all
hosts and independent of the host count: a checkpoint resumes the same data order on any number
of processes. The price is that each host lays out the whole global batch (a host-side cost equal
to single-process packing; the device work is still split).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fbjax.data import packing


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchSpec:
    """Static shape and layout of every batch a stream produces (one host's share of rows)."""

    seq_len: int
    num_rows: int
    num_slots: int = 1
    packing: bool = True
    share_prefix: bool = True
    fields: tuple[str, ...] = ()


class BatchStream:
    """Packs groups into batches forever (epochs reshuffled by seed). ``next(stream)`` -> batch."""

    def __init__(
        self,
        groups: Sequence[packing.Group],
        spec: BatchSpec,
        *,
        seed: int,
        shuffle: bool = True,
        shard_index: int = 0,
        shard_count: int = 1,
        rows: Sequence[int] | None = None,
    ):
        """``spec.num_rows`` is this host's share; the global batch has ``shard_count`` times as
        many rows. The host keeps global ``rows`` (ascending; by default the contiguous block
        ``shard_index``); pass the rows its devices hold when the mesh orders hosts otherwise."""
        if not groups:
            raise ValueError("BatchStream needs at least one example group")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count: {shard_index}/{shard_count}")
        self.groups = groups
        self.spec = spec
        self.seed = seed
        self.shuffle = shuffle
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.global_rows = spec.num_rows * shard_count
        if rows is None:
            rows = range(shard_index * spec.num_rows, (shard_index + 1) * spec.num_rows)
        rows = np.asarray(rows, dtype=np.int64)
        if (len(rows) != spec.num_rows or np.any(np.diff(rows) <= 0)
                or rows[0] < 0 or rows[-1] >= self.global_rows):
            raise ValueError(
                f"rows must be {spec.num_rows} ascending indices below {self.global_rows}, "
                f"got {rows.tolist()}"
            )
        # A contiguous block is sliced (a view); only an irregular set needs a gather.
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        self._keep = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
        self.epoch = 0
        self.position = 0
        self._order, self._order_epoch = self._permutation(0), 0

    def _permutation(self, epoch: int) -> np.ndarray:
        n = len(self.groups)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return order

    def _upcoming(self, limit: int):
        epoch, pos, order = self.epoch, self.position, self._order
        for _ in range(limit):
            if pos >= len(order):
                epoch, pos = epoch + 1, 0
                order = self._permutation(epoch)
            yield epoch, pos, self.groups[order[pos]]
            pos += 1

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        spec, num_rows = self.spec, self.global_rows
        lookahead = list(self._upcoming(num_rows * max(spec.num_slots, 1)))
        groups = [g for _, _, g in lookahead]
        if spec.packing:
            batch, used = packing.pack(
                groups,
                seq_len=spec.seq_len,
                num_rows=num_rows,
                num_slots=spec.num_slots,
                share_prefix=spec.share_prefix,
                fields=spec.fields,
            )
        else:
            batch, used = packing.padded(
                groups, seq_len=spec.seq_len, num_rows=num_rows, fields=spec.fields
            )
        if used == 0 and not spec.packing:
            raise ValueError(
                f"an example group of {len(groups[0].completions)} completions needs that many "
                f"rows in the padded layout (one sequence per row), but a batch has "
                f"{num_rows}: raise train.batch"
            )
        if used == 0:
            raise ValueError(
                f"example group of {groups[0].length(spec.share_prefix)} tokens does not fit a "
                f"batch row (seq_len={spec.seq_len}, slots={spec.num_slots})"
            )
        last_epoch, last_pos, _ = lookahead[used - 1]
        self.epoch, self.position = last_epoch, last_pos + 1
        if self.epoch != self._order_epoch:
            self._order, self._order_epoch = self._permutation(self.epoch), self.epoch
        self.last_groups = groups[:used]  # of the whole global batch
        if self.shard_count > 1:
            batch = {k: v[self._keep] for k, v in batch.items()}
        return batch

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "position": int(self.position), "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"data iterator state was saved with seed {state['seed']}, this run uses "
                f"{self.seed}; resume with the same seed"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order, self._order_epoch = self._permutation(self.epoch), self.epoch
