"""Train a small sentencepiece tokenizer from text or JSON-lines files.

    python tools/train_tokenizer.py data/a.txt data/b.jsonl --out tok.model --vocab-size 512 \\
        --field prompt --field completion --symbol '<|good|>' --symbol '<|bad|>'

``.txt`` files: one text per non-empty line. ``.jsonl`` files: one JSON object per line, each
``--field`` (default ``text``) giving a string to train on. Training is deterministic and uses
byte fallback, so the resulting model encodes any text (see ``fbjax.tokenizers``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator, Sequence

# Runnable as a script from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fbjax.tokenizers import train_sentencepiece  # noqa: E402


def read_texts(paths: Sequence[str], fields: Sequence[str]) -> Iterator[str]:
    """Texts from ``.txt`` (one per line) and ``.jsonl`` (the named fields) files."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file not found: {path}")
    for path in paths:
        is_jsonl = path.endswith((".jsonl", ".json"))
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if not is_jsonl:
                    yield line
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({e})") from None
                for field in fields:
                    value = obj.get(field) if isinstance(obj, dict) else None
                    if not isinstance(value, str):
                        raise ValueError(f"{path}:{lineno}: no string field {field!r}")
                    if value:
                        yield value


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help=".txt or .jsonl files")
    ap.add_argument("--out", required=True, help="output path of the .model file")
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    ap.add_argument("--field", action="append", default=None,
                    help="JSON field to read from .jsonl inputs (repeatable; default: text)")
    ap.add_argument("--symbol", action="append", default=[],
                    help="user-defined symbol kept as one token, e.g. '<|good|>' (repeatable)")
    ap.add_argument("--max-texts", type=int, default=0, help="use only the first N texts")
    args = ap.parse_args(argv)

    try:
        texts = list(read_texts(args.inputs, args.field or ["text"]))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_texts:
        texts = texts[: args.max_texts]
    if not texts:
        print("error: the inputs contain no text", file=sys.stderr)
        return 2
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tok = train_sentencepiece(
        texts,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        user_defined_symbols=tuple(args.symbol),
        out_path=args.out,
    )
    print(f"wrote {args.out}: vocab_size={tok.vocab_size} from {len(texts)} texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
