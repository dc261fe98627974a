"""Loader throughput and exact resume: fbjax's BatchStream against grain doing the same job.

    python tools/bench_loader.py [--file ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz]
        [--repeats 5] [--seq-len 512] [--rows 16] [--slots 8] [--workers 0]

Needs ``grain`` (the ``bench`` extra), which fbjax itself no longer depends on; see
docs/data_loading.md for the figures and the decision they support.

Both paths start from the same typed examples (``fbjax.data.hh_rlhf.read_hh_rlhf``, the reader the
TFDS builder runs) and produce the same batch layout (``fbjax.data.packing.pack``, prefix
sharing on). Timed per repeat, each over one epoch's worth of batches:

* ``read``: release file -> typed examples (shared by every path);
* ``tokenize``: examples -> truncated token groups, once (``fbjax.data.encode.paired``);
* ``fbjax``: ``BatchStream`` over the groups (seeded permutation per epoch, packing);
* ``grain``: ``MapDataset`` over the same groups (``shuffle``, ``repeat``, shard slice), packed by
  an ``IterDataset`` whose iterator takes groups by index until one does not fit, exactly as
  ``BatchStream`` does. Packing consumes a data-dependent number of records per batch, so it
  cannot be a ``map`` over ``.batch(k)``; that variant is timed too (``grain-batch-k``, k = the
  mean number of groups that fit) and the groups it has to drop are counted;
* ``grain-lazy``: grain's lazy mode, tokenizing inside ``.map`` every time a record is read
  (what streaming a dataset larger than memory would cost per epoch);
* with ``--workers N``: ``grain`` behind ``mp_prefetch`` with N worker processes.

Resume is checked for ``fbjax`` and ``grain``: an iterator stopped mid-epoch, its state
JSON-serialised and restored into a fresh iterator, must yield exactly the arrays an uninterrupted
one does, across the next epoch boundary. The machine's load (/proc/loadavg) is printed with
every timing: on a shared machine the figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import grain
except ImportError:
    sys.exit("tools/bench_loader.py compares against grain: pip install grain")

from fbjax.data import encode, packing
from fbjax.data.batching import BatchSpec, BatchStream
from fbjax.data.hh_rlhf import read_hh_rlhf
from fbjax.data.reading import ReadConfig
from fbjax.tokenizers import train_sentencepiece

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FILE = os.path.join(REPO, "..", "shared", "data", "hh-rlhf", "harmless-base",
                            "test.jsonl.gz")


# The release has 4 malformed records (empty replies); skip and count them, as the builders'
# on_error="skip" does.
SKIP = ReadConfig(on_error="skip")


def read(path):
    return read_hh_rlhf(path, SKIP)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ----------------------------------------------------------------------------- shared steps


def build_tokenizer(examples, vocab_size: int):
    """A small BPE trained offline on the file's own text (nothing is downloaded)."""
    texts = []
    for e in examples[:600]:
        texts += [encode.default_prompt_text(e.prompt), e.chosen, e.rejected]
    return train_sentencepiece(texts, vocab_size=vocab_size)


def truncation(spec: BatchSpec, max_prompt_len: int):
    return {"seq_len": spec.seq_len, "max_prompt_len": max_prompt_len,
            "max_completion_len": spec.seq_len, "share_prefix": spec.share_prefix}


def encode_all(examples, tok, trunc) -> list[packing.Group]:
    return [packing.truncate_group(g, **trunc) for g in encode.paired(examples, tok)]


def encode_one(example, tok, trunc) -> packing.Group:
    return packing.truncate_group(encode.paired([example], tok)[0], **trunc)


def pack(groups, spec: BatchSpec):
    return packing.pack(groups, seq_len=spec.seq_len, num_rows=spec.num_rows,
                        num_slots=spec.num_slots, share_prefix=spec.share_prefix,
                        fields=spec.fields)


# ----------------------------------------------------------------------------- grain path


class GrainPack(grain.IterDataset):
    """fbjax packing as a grain transform: batches of a random-access ``MapDataset`` of groups.

    A batch takes groups in order until one fits no row (``packing.pack``), so the number of
    records per batch depends on their lengths; the iterator reads ahead by index and advances
    by what was used. Its state is the next index, so it resumes exactly. (Over an
    ``IterDataset`` parent, a streaming source, it would instead have to keep the parent's state
    at the first unused group and replay from there.)
    """

    def __init__(self, parent: grain.MapDataset, spec: BatchSpec):
        super().__init__(parent)
        self.groups, self.spec = parent, spec

    def __iter__(self):
        return _GrainPackIterator(self.groups, self.spec)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        # mp_prefetch gives each worker process a slice; grain's default would push it down to
        # the source, which only takes contiguous slices. Worker w packs every n-th group of the
        # shuffled stream, and grain interleaves the workers' batches.
        del sequential_slice
        self.groups = self.groups[sl]


class _GrainPackIterator(grain.DatasetIterator):
    def __init__(self, groups: grain.MapDataset, spec: BatchSpec):
        super().__init__()
        self.groups, self.spec, self.next_index = groups, spec, 0
        self.lookahead = spec.num_rows * max(spec.num_slots, 1)

    def __next__(self):
        start = self.next_index
        # Read lazily: ``pack`` stops at the first group that does not fit, so only the used
        # groups and one more are fetched (a grain element costs tens of microseconds).
        window = (self.groups[i] for i in range(start, start + self.lookahead))
        batch, used = pack(window, self.spec)
        if used == 0:
            raise ValueError("a group does not fit a batch row")
        self.next_index = start + used
        return batch

    def get_state(self):
        return {"next_index": self.next_index}

    def set_state(self, state):
        self.next_index = int(state["next_index"])


def grain_groups(source, *, seed: int, shuffle: bool = True, shard_index: int = 0,
                 shard_count: int = 1) -> grain.MapDataset:
    """Shuffled (fresh permutation per epoch), repeated forever, this host's slice."""
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(None)[shard_index::shard_count]


def grain_batch_k(groups: grain.MapDataset, spec: BatchSpec, k: int, dropped: list):
    """The batch-level-transform attempt: k groups per batch, packed; what does not fit is lost."""

    def pack_k(window):
        batch, used = pack(list(window), spec)
        dropped.append(len(window) - used)
        return batch

    return groups.batch(k, batch_fn=list).map(pack_k)


# ----------------------------------------------------------------------------- measuring


def run_batches(it, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return time.perf_counter() - t0


def consumed(it, n: int) -> int:
    """Pairs an iterator has taken so far (BatchStream: epoch and position; grain: index)."""
    if isinstance(it, BatchStream):
        return it.epoch * n + it.position
    return it.get_state()["next_index"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def check_resume(make, stop: int, more: int) -> bool:
    """Stop after ``stop`` batches, JSON round-trip the state, restore, compare ``more``."""
    full = make()
    want = [next(full) for _ in range(stop + more)]
    first = make()
    for _ in range(stop):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    resumed = make()
    resumed.set_state(state)
    return all(same(next(resumed), w) for w in want[stop:])


def element_cost(groups, seed: int, n: int = 20000) -> dict[str, float]:
    """Microseconds to fetch one group: a Python list, grain's source, grain shuffled+repeated."""
    order = np.random.default_rng(seed).permutation(len(groups))
    out = {}
    for name, get in (("list[perm[i]]", lambda i: groups[order[i % len(groups)]]),
                      ("grain source", grain.MapDataset.source(groups).__getitem__),
                      ("grain shuffle+repeat", grain_groups(groups, seed=seed).__getitem__)):
        t0 = time.perf_counter()
        for i in range(n):
            get(i % len(groups) if name == "grain source" else i)
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out


def summary(values) -> str:
    return f"{statistics.median(values):10.1f}  [{min(values):.1f} .. {max(values):.1f}]"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", default=DEFAULT_FILE)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--max-prompt-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--workers", type=int, default=0, help="also time grain with mp_prefetch")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    spec = BatchSpec(seq_len=args.seq_len, num_rows=args.rows, num_slots=args.slots,
                     packing=True, share_prefix=True, fields=("weights",))
    result = read(args.file)
    examples = result.examples
    tok = build_tokenizer(examples, args.vocab)
    trunc = truncation(spec, args.max_prompt_len)
    groups = encode_all(examples, tok, trunc)
    n = len(groups)
    # One epoch's worth of batches (the unshuffled stream's count; shuffled epochs differ by 1-2).
    probe = BatchStream(groups, spec, seed=args.seed, shuffle=False)
    per_epoch = 0
    while probe.epoch == 0:
        next(probe)
        per_epoch += 1
    k = max(1, round(n / per_epoch))
    nbytes = sum(g.prompt.nbytes + sum(c.nbytes for c in g.completions) for g in groups)
    print(f"{args.file}: {result.report.summary()}")
    print(f"token groups in memory: {nbytes / 2**20:.2f} MiB of token ids "
          f"({nbytes / n:.0f} B per pair)")
    print(f"{n} pairs; tokenizer vocab {args.vocab}; batch {args.rows} rows x "
          f"{args.seq_len} tokens, {args.slots} slots, prefix sharing; {per_epoch} batches/epoch "
          f"(~{n / per_epoch:.1f} pairs per batch)")

    # Same work: unshuffled, the grain pipeline packs exactly BatchStream's batches.
    plain = BatchStream(groups, spec, seed=args.seed, shuffle=False)
    g_plain = iter(GrainPack(grain_groups(groups, seed=args.seed, shuffle=False), spec))
    same_work = all(same(next(plain), next(g_plain)) for _ in range(per_epoch + 3))
    print(f"unshuffled grain pipeline == BatchStream, {per_epoch + 3} batches: {same_work}")

    stop, more = per_epoch // 2, per_epoch  # restore mid-epoch, continue past the boundary
    r_fbjax = check_resume(lambda: BatchStream(groups, spec, seed=args.seed), stop, more)
    r_grain = check_resume(
        lambda: iter(GrainPack(grain_groups(groups, seed=args.seed), spec)), stop, more)
    print(f"exact resume (stop at batch {stop}, compare the next {more}): "
          f"fbjax {r_fbjax}, grain {r_grain}")
    if args.workers:
        # grain's worker processes read absl flags, which only absl.app would parse.
        from absl import flags

        flags.FLAGS.mark_as_parsed()
        opts = grain.MultiprocessingOptions(num_workers=args.workers)
        r_mp = check_resume(lambda: iter(GrainPack(grain_groups(groups, seed=args.seed), spec)
                                         .mp_prefetch(opts)), stop, more)
        print(f"exact resume, grain with {args.workers} worker processes: {r_mp}")
    print(f"per-element lookup, loadavg {loadavg()}: " + ", ".join(
        f"{name} {us:.1f} us" for name, us in element_cost(groups, args.seed).items()))

    rows: dict[str, list[float]] = {}

    def record(name, value):
        rows.setdefault(name, []).append(value)

    for r in range(args.repeats):
        load = [loadavg()]
        t0 = time.perf_counter()
        ex = read(args.file).examples
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        gs = encode_all(ex, tok, trunc)
        t_tok = time.perf_counter() - t0
        it_fbjax = BatchStream(gs, spec, seed=args.seed + r)
        t_fbjax = run_batches(it_fbjax, per_epoch)
        load.append(loadavg())
        it_grain = iter(GrainPack(grain_groups(gs, seed=args.seed + r), spec))
        t_grain = run_batches(it_grain, per_epoch)
        lazy = grain_groups(ex, seed=args.seed + r).map(lambda e: encode_one(e, tok, trunc))
        it_lazy = iter(GrainPack(lazy, spec))
        t_lazy = run_batches(it_lazy, per_epoch)
        dropped: list[int] = []
        bk = grain_batch_k(grain_groups(gs, seed=args.seed + r), spec, k, dropped)
        t_bk = run_batches(iter(bk.to_iter_dataset()), per_epoch)
        load.append(loadavg())
        record("read  examples/s", n / t_read)
        record("tokenize examples/s", n / t_tok)
        record("fbjax BatchStream  batches/s", per_epoch / t_fbjax)
        record("grain pack         batches/s", per_epoch / t_grain)
        record("grain-lazy pack    batches/s", per_epoch / t_lazy)
        record("grain-batch-k      batches/s", per_epoch / t_bk)
        record("grain-batch-k dropped pairs/epoch", float(sum(dropped)))
        record("fbjax BatchStream  pairs/s", consumed(it_fbjax, n) / t_fbjax)
        record("grain pack         pairs/s", consumed(it_grain, n) / t_grain)
        record("grain-lazy pack    pairs/s", consumed(it_lazy, n) / t_lazy)
        record("end-to-end fbjax   examples/s", n / (t_read + t_tok + t_fbjax))
        record("end-to-end grain   examples/s", n / (t_read + t_tok + t_grain))
        record("end-to-end grain-lazy examples/s", n / (t_read + t_lazy))
        line = (f"repeat {r}: read {t_read:.2f}s tokenize {t_tok:.2f}s | epoch: fbjax "
                f"{t_fbjax:.3f}s grain {t_grain:.3f}s grain-lazy {t_lazy:.2f}s "
                f"grain-batch-k {t_bk:.3f}s ({sum(dropped)} pairs dropped)")
        if args.workers:
            mp = GrainPack(grain_groups(gs, seed=args.seed + r), spec).mp_prefetch(opts)
            it = iter(mp)
            next(it)  # worker start-up, not counted
            t_mp = run_batches(it, per_epoch)
            record(f"grain pack x{args.workers} workers batches/s", per_epoch / t_mp)
            line += f" grain x{args.workers} workers {t_mp:.3f}s"
            load.append(loadavg())
        print(f"{line} | loadavg {' -> '.join(load)}", flush=True)

    print(f"\n{'median [min .. max] over ' + str(args.repeats) + ' repeats':>42}")
    for name, values in rows.items():
        print(f"{name:>36}  {summary(values)}")
    print(f"loadavg at the end: {loadavg()} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
