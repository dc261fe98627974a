"""How much of a batch's compute is wasted, per layout, on real HH-RLHF preference pairs.

    python tools/report_padding.py --data /work/shared/data/hh-rlhf/harmless-base/test.jsonl.gz \\
        --out padding.json

Pairs are read with ``fbjax.data.hh_rlhf`` (malformed records skipped), tokenized with a
sentencepiece BPE tokenizer trained on the split's own texts (``--vocab-size``, default 8000), so
token counts are realistic, and truncated to a ``--max-len`` token limit per (prompt, completion)
sequence: the prompt keeps its last ``max_len // 2`` tokens, each completion its first
``max_len - len(prompt)``. Every layout then scores exactly the same tokens.

The layouts are compared at the same number of computed tokens per batch (``--batch-tokens``,
default 8 x 512 = 4096):

* padded: ``batch_tokens / max_len`` rows of ``max_len`` (one sequence per row, pairs in
  consecutive rows), the static-shape baseline;
* padded-dynamic: the same rows cut to the batch's longest sequence, as TRL's collator pads
  (so its batches hold fewer computed tokens, and the shape changes every batch);
* packed: rows of 2 x and 4 x ``max_len`` (4 x 1024 and 2 x 2048 by default), several
  (prompt, completion) segments per row, the prompt repeated for each completion;
* packed + prefix-shared: the same rows, one prompt copy per pair.

A packed row must be able to hold the longest group (2 x max_len tokens without sharing), hence
rows of at least 2 x ``max_len``. Groups are taken in a seeded random order, as the training
stream does, and packed first-fit (``fbjax.data.packing``); the figures are summed over one
epoch with :func:`fbjax.data.packing.layout_stats`. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Sequence

import numpy as np

# Runnable as a script from a checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fbjax.data import encode, packing  # noqa: E402
from fbjax.data.examples import render_transcript  # noqa: E402
from fbjax.data.hh_rlhf import read_hh_rlhf  # noqa: E402
from fbjax.data.reading import ReadConfig  # noqa: E402
from fbjax.tokenizers import SentencePieceTokenizer as Tokenizer, train_sentencepiece  # noqa: E402

TOKEN_KEYS = ("tokens", "positions", "segment_ids", "branch_ids", "predictor", "loss_mask",
              "slot_ids")
DEFAULT_DATA = "/work/shared/data/hh-rlhf/harmless-base/test.jsonl.gz"


def load_pairs(path: str):
    """HH-RLHF pairs from one original ``*.jsonl.gz`` file (malformed records skipped)."""
    result = read_hh_rlhf([path], ReadConfig(on_error="skip"))
    return result.examples, result.report


def tokenizer_for(pairs, vocab_size: int, cache_path: str | None = None) -> Tokenizer:
    """A BPE tokenizer trained on the pairs' texts (prompt transcripts and both replies).

    With ``cache_path``, a tokenizer saved there is reused (training takes a while on 2 cores).
    """
    if cache_path and os.path.isfile(cache_path):
        return Tokenizer.load(cache_path)
    texts = [t for e in pairs for t in (render_transcript(e.prompt), e.chosen, e.rejected)]
    return train_sentencepiece(texts, vocab_size=vocab_size, model_type="bpe",
                               max_sentence_length=1 << 17, out_path=cache_path)


def truncate(group: packing.Group, max_len: int) -> packing.Group:
    """Each (prompt, completion) sequence to at most ``max_len`` tokens (module docstring)."""
    prompt = group.prompt[-(max_len // 2):]
    room = max_len - len(prompt)
    return dataclasses.replace(
        group, prompt=prompt, completions=tuple(c[:room] for c in group.completions)
    )


def hh_groups(path: str, *, vocab_size: int, max_len: int, tokenizer_cache: str | None = None):
    """Truncated token groups (prompt, chosen, rejected) of the split, and the tokenizer."""
    pairs, _ = load_pairs(path)
    tok = tokenizer_for(pairs, vocab_size, tokenizer_cache)
    groups = [truncate(g, max_len) for g in encode.paired(pairs, tok)]
    return groups, tok


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    rows: int
    seq_len: int
    packed: bool
    share_prefix: bool
    slots: int = 1
    dynamic: bool = False  # padded to the batch's longest sequence instead of seq_len


def layouts(max_len: int, batch_tokens: int, slots: int) -> list[Layout]:
    rows = batch_tokens // max_len
    out = [Layout("padded", rows, max_len, False, False),
           Layout("padded-dynamic", rows, max_len, False, False, dynamic=True)]
    for factor in (2, 4):
        seq = factor * max_len
        for share in (False, True):
            name = f"packed{'+prefix' if share else ''}"
            out.append(Layout(name, batch_tokens // seq, seq, True, share, slots))
    return out


def epoch_stats(groups: Sequence[packing.Group], layout: Layout, seed: int) -> dict[str, float]:
    """``layout_stats`` summed over one epoch of batches (groups in a seeded random order)."""
    order = np.random.default_rng(seed).permutation(len(groups))
    ordered = [groups[i] for i in order]
    fields = tuple(sorted({k for g in groups for k in g.slot_fields}))
    computed = unique = nonpad = 0.0
    batches = pos = 0
    while pos < len(ordered):
        window = ordered[pos : pos + layout.rows * layout.slots]
        if layout.packed:
            batch, used = packing.pack(window, seq_len=layout.seq_len, num_rows=layout.rows,
                                       num_slots=layout.slots, share_prefix=layout.share_prefix,
                                       fields=fields)
        else:
            batch, used = packing.padded(window, seq_len=layout.seq_len, num_rows=layout.rows,
                                         fields=fields)
        if used == 0:
            raise ValueError(f"a group does not fit a {layout.name} row of {layout.seq_len}")
        if layout.dynamic:
            longest = int(np.max(np.sum(batch["segment_ids"] > 0, axis=1)))
            batch = {k: v[:, :longest] if k in TOKEN_KEYS else v for k, v in batch.items()}
        s = packing.layout_stats(batch, window[:used])
        computed += s["computed_tokens"]
        unique += s["unique_tokens"]
        nonpad += s["computed_tokens"] * (1.0 - s["padding_fraction"])
        batches += 1
        pos += used
    return {
        "layout": layout.name,
        "rows": layout.rows,
        "seq_len": layout.seq_len,
        "slots_per_row": layout.slots,
        "batches": batches,
        "computed_tokens": computed,
        "unique_tokens": unique,
        "padding_fraction": (computed - nonpad) / computed,
        "duplicate_prompt_fraction": (nonpad - unique) / computed,
        "waste_fraction": (computed - unique) / computed,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="an HH-RLHF *.jsonl.gz file")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-len", type=int, default=512, help="token limit per sequence")
    p.add_argument("--batch-tokens", type=int, default=4096, help="computed tokens per batch")
    p.add_argument("--slots", type=int, default=32, help="completion slots per packed row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-cache", default=None,
                   help="save the trained tokenizer here, or reuse one saved there")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    pairs, report = load_pairs(args.data)
    tok = tokenizer_for(pairs, args.vocab_size, args.tokenizer_cache)
    raw = encode.paired(pairs, tok)
    groups = [truncate(g, args.max_len) for g in raw]
    seq_lens = np.array([len(g.prompt) + len(c) for g in raw for c in g.completions])
    data = {
        "path": args.data,
        "pairs": len(groups),
        "records_skipped": report.num_skipped,
        "tokenizer_vocab": tok.vocab_size,
        "max_len": args.max_len,
        "sequences_truncated": int(np.sum(seq_lens > args.max_len)),
        "sequence_tokens_p50_p90_p99_max": [
            float(np.percentile(seq_lens, q)) for q in (50, 90, 99)] + [float(seq_lens.max())],
        "prompt_tokens_mean": float(np.mean([len(g.prompt) for g in groups])),
        "completion_tokens_mean": float(np.mean([len(c) for g in groups for c in g.completions])),
    }
    rows = [epoch_stats(groups, lay, args.seed)
            for lay in layouts(args.max_len, args.batch_tokens, args.slots)]
    base = rows[0]["computed_tokens"]
    for r in rows:
        r["compute_vs_padded"] = r["computed_tokens"] / base

    print(f"{data['pairs']} pairs from {args.data}; BPE vocab {data['tokenizer_vocab']}; "
          f"<= {args.max_len} tokens per sequence ({data['sequences_truncated']} sequences cut); "
          f"sequence length p50/p90/p99/max = "
          f"{'/'.join(f'{x:.0f}' for x in data['sequence_tokens_p50_p90_p99_max'])}")
    header = (f"{'layout':<15}{'rows x len':>12}{'batches':>9}{'padding':>9}{'dup prompt':>12}"
              f"{'waste':>8}{'compute':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        seq = "<=" + str(r["seq_len"]) if r["layout"] == "padded-dynamic" else r["seq_len"]
        print(f"{r['layout']:<15}{r['rows']:>5} x {seq:<5}{r['batches']:>9}"
              f"{r['padding_fraction']:>9.1%}{r['duplicate_prompt_fraction']:>12.1%}"
              f"{r['waste_fraction']:>8.1%}{r['compute_vs_padded']:>8.2f}x")
    print("(fractions of computed tokens; compute = computed tokens per epoch relative to padded)")
    result = {"data": data, "layouts": rows, "seconds": time.perf_counter() - t0}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
