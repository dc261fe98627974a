"""BatchStream, fbjax's loader, on the real HH-RLHF file: epochs, exact resume, hosts' rows.

These replace the tests of the grain pipeline, which was measured against BatchStream and
removed (docs/data_loading.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fbjax.data import encode, packing
from fbjax.data.batching import BatchSpec, BatchStream
from fbjax.data.hh_rlhf import read_hh_rlhf
from fbjax.data.reading import ReadConfig
from fbjax.tokenizers import train_sentencepiece

REAL_TEST_SPLIT = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf"
                   / "harmless-base" / "test.jsonl.gz")
pytestmark = pytest.mark.skipif(
    not REAL_TEST_SPLIT.exists(), reason=f"shared HH-RLHF split not present at {REAL_TEST_SPLIT}"
)

SEQ_LEN = 256
SPEC = BatchSpec(seq_len=SEQ_LEN, num_rows=4, num_slots=8, fields=("weights",))


@pytest.fixture(scope="module")
def groups():
    examples = read_hh_rlhf(REAL_TEST_SPLIT, ReadConfig(on_error="skip")).examples[:300]
    texts = [t for e in examples[:100] for t in (e.chosen, e.rejected)]
    tok = train_sentencepiece(texts, vocab_size=512)  # offline, about a second
    return [
        packing.truncate_group(g, seq_len=SEQ_LEN, max_prompt_len=128, max_completion_len=SEQ_LEN,
                               share_prefix=True)
        for g in encode.paired(examples, tok)
    ]


def take(stream, n):
    return [next(stream) for _ in range(n)]


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def batches_per_epoch(groups, spec=SPEC):
    stream, n = BatchStream(groups, spec, seed=0, shuffle=False), 0
    while stream.epoch == 0:
        next(stream)
        n += 1
    return n


def test_every_group_once_per_epoch_in_a_seeded_order(groups):
    def consumed(seed, epochs=2):
        stream, order = BatchStream(groups, SPEC, seed=seed), []
        index = {id(g): i for i, g in enumerate(groups)}
        while stream.epoch < epochs:
            next(stream)
            order += [index[id(g)] for g in stream.last_groups]
        return order

    a, b, c = consumed(7), consumed(7), consumed(8)
    n = len(groups)
    assert a == b and a[:n] != c[:n]
    assert sorted(a[:n]) == list(range(n)) and sorted(a[n:2 * n]) == list(range(n))
    assert a[:n] != a[n:2 * n]  # a fresh permutation each epoch


def test_restored_mid_epoch_state_yields_the_uninterrupted_batches(groups):
    per_epoch = batches_per_epoch(groups)
    stop, more = per_epoch // 2, per_epoch + 2  # continue across the next epoch boundary
    want = take(BatchStream(groups, SPEC, seed=3), stop + more)

    first = BatchStream(groups, SPEC, seed=3)
    take(first, stop)
    state = json.loads(json.dumps(first.get_state()))  # as the checkpoint stores it
    assert state["epoch"] == 0 and 0 < state["position"] < len(groups)
    resumed = BatchStream(groups, SPEC, seed=3)
    resumed.set_state(state)
    got = take(resumed, more)
    assert resumed.epoch >= 1
    assert all(same(g, w) for g, w in zip(got, want[stop:], strict=True))


def test_each_host_resumes_its_rows_of_the_single_process_batch(groups):
    per_epoch = batches_per_epoch(groups)
    single = take(BatchStream(groups, SPEC, seed=5), per_epoch)
    half = BatchSpec(seq_len=SEQ_LEN, num_rows=2, num_slots=8, fields=("weights",))
    for host in range(2):
        stream = BatchStream(groups, half, seed=5, shard_index=host, shard_count=2)
        got = take(stream, 3)
        resumed = BatchStream(groups, half, seed=5, shard_index=host, shard_count=2)
        resumed.set_state(stream.get_state())
        got += take(resumed, per_epoch - 3)
        rows = slice(2 * host, 2 * host + 2)
        assert all(same(g, {k: v[rows] for k, v in w.items()}) for g, w in zip(got, single))


def test_state_from_another_seed_is_rejected(groups):
    stream = BatchStream(groups, SPEC, seed=1)
    with pytest.raises(ValueError, match="saved with seed 2"):
        stream.set_state({"epoch": 0, "position": 5, "seed": 2})
