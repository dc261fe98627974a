"""The one tokenizer interface the data pipeline, templates and sampler use.

Two implementations stand behind it and behave the same on special tokens:
:class:`~fbjax.tokenizers.sentencepiece_tokenizer.SentencePieceTokenizer` (``tokenizer.model``)
and :class:`~fbjax.tokenizers.json_tokenizer.HFTokenizer` (``tokenizer.json``):

* every special token written in text (BOS/EOS/PAD/UNK texts, a file's own special tokens,
  added tokens) is matched literally and becomes its one id, never split;
* ``decode`` drops the BOS/EOS/PAD ids (``control_ids``) unless ``skip_control=False``, and
  writes every other id, added tokens included, as its text;
* added tokens get ids after the base vocabulary (``base_vocab_size + i``);
* ``save(directory)`` writes the conventional file(s) that ``load_tokenizer(directory)`` reads.
"""

from __future__ import annotations

import os
from typing import Iterable, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> ids, special ids, vocabulary sizes and persistence (module docstring)."""

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def unk_id(self) -> int: ...

    @property
    def control_ids(self) -> frozenset[int]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def base_vocab_size(self) -> int: ...

    @property
    def num_added_tokens(self) -> int: ...

    @property
    def added_tokens(self) -> tuple[str, ...]: ...

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...

    def decode(self, ids: Iterable[int], *, skip_control: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int: ...

    def id_to_token(self, idx: int) -> str: ...

    def with_added_tokens(self, tokens: Iterable[str]) -> Tokenizer: ...

    def save(self, directory: str | os.PathLike) -> str: ...


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, *, exact: bool = False) -> None:
    """Raises ``ValueError`` naming both sizes if the tokenizer's ids do not fit the model.

    A model may have more embedding rows than the tokenizer has ids (vocabularies are often
    padded to a multiple of 128); ``exact=True`` forbids that too.
    """
    n = tokenizer.vocab_size
    if n > model_vocab_size or (exact and n != model_vocab_size):
        hint = ""
        if tokenizer.num_added_tokens and n > model_vocab_size:
            hint = (
                f" ({tokenizer.base_vocab_size} base pieces + {tokenizer.num_added_tokens} added "
                f"tokens): grow the embedding (and any untied output layer) by "
                f"{n - model_vocab_size} rows"
            )
        raise ValueError(
            f"tokenizer vocab size {n} does not match model vocab size {model_vocab_size}{hint}"
        )
