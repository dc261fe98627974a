"""Token groups -> this host's resumable stream of packed batches for a training run."""

from __future__ import annotations

from typing import Sequence

import jax

from fbjax.data import packing
from fbjax.data.batching import BatchSpec, BatchStream
from fbjax.models.config import ModelConfig
from fbjax.models.hf import check_sequence_length
from fbjax.sharding import batch_devices
from fbjax.train import loop
from fbjax.train.config import TrainConfig, TrainJob
from fbjax.train.reference import Truncation


def batch_stream(train: TrainConfig, model: ModelConfig, groups: Sequence[packing.Group],
                 *, seed: int, mesh=None) -> BatchStream:
    """This host's stream of packed batches for ``train``.

    Every host packs the same global batch and keeps the rows its devices hold in ``mesh``
    (default: process ``i`` keeps the ``i``-th block), so any process count trains on exactly
    the batches a single process would.
    """
    if not groups:
        raise ValueError("the stage's data produced no examples to train on")
    processes = jax.process_count()
    if train.batch % processes:
        raise ValueError(f"train.batch={train.batch} must divide over {processes} processes")
    if mesh is not None:
        devices = batch_devices(mesh)
        if train.batch % devices:
            raise ValueError(f"train.batch={train.batch} rows must divide over the {devices} "
                             f"devices of the mesh's batch axes {dict(mesh.shape)}")
    rows = None
    if mesh is not None and processes > 1:
        rows = loop.process_rows(mesh, train.batch)
        if len(rows) != train.batch // processes:
            raise ValueError(
                f"mesh {dict(mesh.shape)} gives process {jax.process_index()} {len(rows)} of "
                f"{train.batch} batch rows; the batch axes must split rows evenly over hosts"
            )
    fields = tuple(sorted({k for g in groups for k in g.slot_fields}))
    spec = BatchSpec(
        seq_len=train.seq_len,
        num_rows=train.batch // processes,
        num_slots=train.slots_per_row if train.packing else 1,
        packing=train.packing,
        share_prefix=train.share_prefix,
        fields=fields,
    )
    groups = Truncation.from_train(train).apply(groups)
    # Positions restart for every example, so the limit is the longest example, not the row.
    longest = max(len(g.prompt) + max(len(c) for c in g.completions) for g in groups)
    check_sequence_length(model, longest)
    return BatchStream(groups, spec, seed=seed, shard_index=jax.process_index(),
                       shard_count=processes, rows=rows)


def train_on_groups(job: TrainJob, groups: Sequence[packing.Group], params, *, mesh,
                    reference_params=None, workdir: str | None = None, progress: bool = False,
                    desc: str | None = None, checkpointer=None) -> loop.RunResult:
    """``job`` trained on ``groups`` from ``params``: the batch stream and the loop together."""
    stream = batch_stream(job.train, job.model, groups, seed=job.seed, mesh=mesh)
    return loop.train(job, stream, params, mesh=mesh, reference_params=reference_params,
                      workdir=workdir, progress=progress, desc=desc, checkpointer=checkpointer)
