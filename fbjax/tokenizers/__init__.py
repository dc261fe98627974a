"""Tokenizers behind one protocol: sentencepiece ``tokenizer.model`` and Hugging Face
``tokenizer.json`` (:mod:`fbjax.tokenizers.protocol` says what both guarantee).

This package imports nothing from ``fbjax.data``; chat templates live in ``fbjax.data.chat``.
"""

from fbjax.tokenizers.json_tokenizer import TOKENIZER_FILE, HFTokenizer
from fbjax.tokenizers.loading import load_tokenizer, save_tokenizer
from fbjax.tokenizers.protocol import Tokenizer, check_vocab
from fbjax.tokenizers.sentencepiece_tokenizer import (
    ADDED_TOKENS_SUFFIX,
    SENTENCEPIECE_FILE,
    SentencePieceTokenizer,
    train_sentencepiece,
)

__all__ = [
    "ADDED_TOKENS_SUFFIX",
    "HFTokenizer",
    "SENTENCEPIECE_FILE",
    "SentencePieceTokenizer",
    "TOKENIZER_FILE",
    "Tokenizer",
    "check_vocab",
    "load_tokenizer",
    "save_tokenizer",
    "train_sentencepiece",
]
