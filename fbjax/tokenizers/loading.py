"""Finding and writing a checkpoint's tokenizer, whichever kind it is."""

from __future__ import annotations

import os

from fbjax.tokenizers.json_tokenizer import TOKENIZER_FILE, HFTokenizer
from fbjax.tokenizers.protocol import Tokenizer
from fbjax.tokenizers.sentencepiece_tokenizer import SENTENCEPIECE_FILE, SentencePieceTokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a checkpoint directory or a tokenizer file.

    A directory: its sentencepiece ``tokenizer.model`` if it has one (Llama-2, Mistral, Gemma;
    they often also ship a ``tokenizer.json``, which then is not used), else its Hugging Face
    ``tokenizer.json`` (GPT-2, Llama-3, Qwen2) as :class:`HFTokenizer`. A file: ``*.json`` is a
    ``tokenizer.json``, anything else a sentencepiece model.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, SENTENCEPIECE_FILE)):
            return SentencePieceTokenizer.load(os.path.join(path, SENTENCEPIECE_FILE))
        if os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
            return HFTokenizer.load(path)
        raise FileNotFoundError(
            f"no tokenizer in {path}: looked for {SENTENCEPIECE_FILE} (sentencepiece) and "
            f"{TOKENIZER_FILE} (Hugging Face tokenizers)"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer not found: {path} (neither a file nor a directory)")
    if path.endswith(".json"):
        return HFTokenizer.load(path)
    return SentencePieceTokenizer.load(path)


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> str:
    """Writes ``tokenizer`` into ``directory`` under its conventional name(s), so that
    :func:`load_tokenizer` (directory) reads it back; returns the main file's path."""
    if not isinstance(tokenizer, (HFTokenizer, SentencePieceTokenizer)):
        raise TypeError(f"cannot save a {type(tokenizer).__name__}: not an fbjax tokenizer")
    return tokenizer.save(directory)
