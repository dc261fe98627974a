"""Sentencepiece ``tokenizer.model`` behind the :class:`fbjax.tokenizers.Tokenizer` protocol.

Two things are kept explicit rather than hidden in configuration:

* **Special ids.** ``bos_id``/``eos_id``/``pad_id``/``unk_id`` are read from the model proto, so a
  Llama (unk=0, bos=1, eos=2, no pad) and a Gemma (pad=0, eos=1, bos=2, unk=3) model both work.
  Their texts (``<s>``, ``</s>``, ...) in input text are ordinary text, never these ids, as in
  :class:`~fbjax.tokenizers.json_tokenizer.HFTokenizer`.
* **Added tokens.** Control tokens a method needs (``<|good|>``, ``<|bad|>``, turn markers) are
  either trained into the model (``train_sentencepiece(user_defined_symbols=...)``, they then
  have ordinary ids inside the base vocabulary) or, for a model that we load and cannot retrain,
  registered with :meth:`SentencePieceTokenizer.with_added_tokens`. Those get ids
  ``base_vocab_size + i``, appended after the base vocabulary, so **the model's embedding (and an
  untied output head) must grow by** ``num_added_tokens`` rows to ``vocab_size``;
  :func:`fbjax.tokenizers.check_vocab` says so when it is forgotten. Both kinds are matched
  literally in text.

Models trained by :func:`train_sentencepiece` use the identity normalizer, no dummy prefix and no
whitespace folding, so ``decode(encode(s)) == s`` for every string (byte fallback covers any
character) and the concatenation of separately encoded segments decodes to the concatenated text.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Iterable, Sequence

import sentencepiece as spm

# Beside a saved ``tokenizer.model``: the tokens :meth:`Tokenizer.with_added_tokens` appended.
ADDED_TOKENS_SUFFIX = ".added_tokens.json"
SENTENCEPIECE_FILE = "tokenizer.model"

# Gemma's layout of the four special ids; any fixed choice works, this one keeps pad = 0 so that
# zero-initialised buffers are padding.
_PAD_ID, _EOS_ID, _BOS_ID, _UNK_ID = 0, 1, 2, 3


class SentencePieceTokenizer:
    """A sentencepiece model plus optional added tokens appended after its vocabulary.

    Immutable: :meth:`with_added_tokens` returns a new tokenizer. Picklable (the serialized model
    proto travels, not the C++ processor), so it can cross process boundaries in data loaders.
    """

    __slots__ = ("_proto", "_sp", "_added", "_added_ids", "_literal_ids", "_split_re")

    def __init__(self, model_proto: bytes, added_tokens: Sequence[str] = ()):
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # sentencepiece raises a bare RuntimeError/OSError
            raise ValueError(f"not a valid sentencepiece model proto: {e}") from e
        added = tuple(added_tokens)
        if len(set(added)) != len(added):
            raise ValueError(f"duplicate added tokens: {added}")
        for tok in added:
            if not tok:
                raise ValueError("an added token must be a non-empty string")
            # A token the model already knows as one piece keeps its own id: adding it again would
            # give two ids for the same text.
            if _piece_id(sp, tok) is not None:
                raise ValueError(
                    f"{tok!r} is already a piece of the sentencepiece model "
                    f"(id {sp.piece_to_id(tok)}); do not add it again"
                )
        object.__setattr__(self, "_proto", bytes(model_proto))
        object.__setattr__(self, "_sp", sp)
        object.__setattr__(self, "_added", added)
        added_ids = {t: sp.get_piece_size() + i for i, t in enumerate(added)}
        object.__setattr__(self, "_added_ids", added_ids)
        # Every special token is matched literally in text, as tokenizer.json tokenizers do
        # (HFTokenizer): the added tokens, and the control / unknown pieces (``<s>``, ``</s>``,
        # ``<pad>``, ``<unk>``), which sentencepiece itself would spell out as plain text.
        control = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                   if sp.is_control(i) or sp.is_unknown(i)}
        literal = {**control, **added_ids}
        object.__setattr__(self, "_literal_ids", literal)
        # Longest first so that a token that is a prefix of another never wins the match.
        pattern = "|".join(re.escape(t) for t in sorted(literal, key=len, reverse=True))
        object.__setattr__(self, "_split_re", re.compile(f"({pattern})") if literal else None)

    def __setattr__(self, name, value):
        raise AttributeError("SentencePieceTokenizer is immutable")

    def __reduce__(self):
        return (SentencePieceTokenizer, (self._proto, self._added))

    def __eq__(self, other):
        return (
            isinstance(other, SentencePieceTokenizer)
            and self._proto == other._proto
            and self._added == other._added
        )

    def __hash__(self):
        return hash((self._proto, self._added))

    def __repr__(self):
        return (
            f"SentencePieceTokenizer(vocab_size={self.vocab_size}, base_vocab_size={self.base_vocab_size}, "
            f"added_tokens={self._added})"
        )

    # ---------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | os.PathLike, *, added_tokens: Sequence[str] = ()) -> SentencePieceTokenizer:
        """Loads a ``tokenizer.model`` file (Llama/Gemma style sentencepiece proto).

        Added tokens that :meth:`save` recorded beside it (``<path>.added_tokens.json``) come
        first, then ``added_tokens`` (as :meth:`with_added_tokens`).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model file not found: {path}")
        with open(path, "rb") as f:
            proto = f.read()
        saved = _read_added_tokens(path + ADDED_TOKENS_SUFFIX)
        try:
            return cls(proto, saved).with_added_tokens(added_tokens)
        except ValueError as e:
            raise ValueError(f"cannot load tokenizer from {path}: {e}") from e

    def with_added_tokens(self, tokens: Iterable[str]) -> SentencePieceTokenizer:
        """Returns a tokenizer with ``tokens`` appended after the vocabulary (existing ones kept).

        Tokens the tokenizer already maps to a single id (base pieces or earlier added tokens)
        are skipped, so the call is idempotent. The caller must grow the model's embedding to
        :attr:`vocab_size` rows; the new rows are usually initialised to the mean embedding.
        """
        new = list(self._added)
        for tok in tokens:
            if tok not in new and _piece_id(self._sp, tok) is None:
                new.append(tok)
        return SentencePieceTokenizer(self._proto, tuple(new))

    def save(self, directory: str | os.PathLike) -> str:
        """Writes ``directory/tokenizer.model`` (and its added tokens); returns its path."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, SENTENCEPIECE_FILE)
        self.save_model(path)
        return path

    def save_model(self, path: str | os.PathLike) -> None:
        """Writes the base sentencepiece model, and the added tokens (which the proto cannot
        hold) to ``<path>.added_tokens.json``, which :meth:`load` reads back."""
        path = os.fspath(path)
        with open(path, "wb") as f:
            f.write(self._proto)
        sidecar = path + ADDED_TOKENS_SUFFIX
        if self._added:
            with open(sidecar, "w", encoding="utf-8") as f:
                json.dump({"added_tokens": list(self._added)}, f, indent=2, ensure_ascii=False)
        elif os.path.exists(sidecar):
            # A stale list from an earlier save would add tokens this tokenizer does not have.
            os.remove(sidecar)

    # ---------------------------------------------------------------- vocabulary

    @property
    def model_proto(self) -> bytes:
        return self._proto

    @property
    def base_vocab_size(self) -> int:
        """Number of pieces in the sentencepiece model."""
        return self._sp.get_piece_size()

    @property
    def num_added_tokens(self) -> int:
        """Tokens appended after the base vocabulary (rows the embedding must grow by)."""
        return len(self._added)

    @property
    def vocab_size(self) -> int:
        """Total number of ids: what the model's embedding must have (at least) as rows."""
        return self.base_vocab_size + self.num_added_tokens

    @property
    def added_tokens(self) -> tuple[str, ...]:
        return self._added

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def pad_id(self) -> int:
        """The model's pad id; Llama models define none (-1), then unk is used.

        Padding is masked out everywhere (``segment_ids == 0``), so any valid id serves.
        """
        pad = self._sp.pad_id()
        return pad if pad >= 0 else max(self._sp.unk_id(), 0)

    def token_to_id(self, token: str) -> int:
        """Id of a single piece or added token; ``KeyError`` naming it if there is none."""
        if token in self._added_ids:
            return self._added_ids[token]
        pid = _piece_id(self._sp, token)
        if pid is None:
            raise KeyError(f"{token!r} is not a single token of this tokenizer")
        return pid

    def id_to_token(self, idx: int) -> str:
        self._check_ids([idx])
        if idx >= self.base_vocab_size:
            return self._added[idx - self.base_vocab_size]
        return self._sp.id_to_piece(idx)

    # ---------------------------------------------------------------- encode / decode

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; added tokens are matched literally and never split."""
        ids: list[int] = [self.bos_id] if add_bos else []
        for chunk, is_added in self._chunks(text):
            if is_added:
                ids.append(self._literal_ids[chunk])
            elif chunk:
                ids.extend(self._sp.encode(chunk))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and the ``[begin, end)`` character span of ``text`` each token covers.

        Used to map character-level annotations (fault spans) to tokens. A character split into
        several byte-fallback tokens is covered by the last of them; the others get an empty span.
        """
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        start = 0
        for chunk, is_added in self._chunks(text):
            if is_added:
                ids.append(self._literal_ids[chunk])
                offsets.append((start, start + len(chunk)))
            elif chunk:
                # sentencepiece reports byte offsets into the UTF-8 encoding; map them to chars.
                byte_to_char = _byte_to_char_map(chunk)
                for piece in self._sp.encode(chunk, out_type="proto").pieces:
                    ids.append(piece.id)
                    offsets.append(
                        (start + byte_to_char[piece.begin], start + byte_to_char[piece.end])
                    )
            start += len(chunk)
        return ids, offsets

    def decode(self, ids: Iterable[int], *, skip_control: bool = True) -> str:
        """Text of ``ids``. BOS/EOS/PAD ids decode to nothing, or with ``skip_control=False`` to
        their text (so text holding them round-trips); added tokens decode to their text."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        out: list[str] = []
        run: list[int] = []
        base = self.base_vocab_size
        control = self.control_ids
        for i in ids:
            if i >= base or (not skip_control and i in control):
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                out.append(self._added[i - base] if i >= base else self._sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)

    @property
    def control_ids(self) -> frozenset[int]:
        """BOS, EOS and PAD: the ids :meth:`decode` drops by default."""
        return frozenset({self.bos_id, self.eos_id, self.pad_id})

    def _chunks(self, text: str):
        if self._split_re is None:
            yield text, False
            return
        for k, part in enumerate(self._split_re.split(text)):
            yield part, k % 2 == 1  # re.split puts captured separators at odd positions

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} are outside the tokenizer's vocabulary "
                f"[0, {self.vocab_size})"
            )


def _read_added_tokens(path: str) -> tuple[str, ...]:
    if not os.path.isfile(path):
        return ()
    try:
        with open(path, encoding="utf-8") as f:
            tokens = json.load(f)["added_tokens"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read added tokens from {path}: {e!r}") from e
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: 'added_tokens' must be a list of strings")
    return tuple(tokens)


def _piece_id(sp: spm.SentencePieceProcessor, token: str) -> int | None:
    pid = sp.piece_to_id(token)
    # piece_to_id maps unknown pieces to unk; only a real match round-trips.
    return pid if sp.id_to_piece(pid) == token else None


def _byte_to_char_map(text: str) -> list[int]:
    """``m[b]`` = index of the character that starts at or contains byte ``b`` (len -> len)."""
    m: list[int] = []
    for ci, ch in enumerate(text):
        n = len(ch.encode("utf-8"))
        # Offsets inside a multi-byte char point past it: such a boundary only closes the char.
        m.append(ci)
        m.extend([ci + 1] * (n - 1))
    m.append(len(text))
    return m


# ==================================================================== training


def train_sentencepiece(
    texts: Iterable[str],
    *,
    vocab_size: int,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = (),
    out_path: str | os.PathLike | None = None,
    split_digits: bool = True,
    max_sentence_length: int = 16384,
) -> SentencePieceTokenizer:
    """Trains a small sentencepiece model in memory from ``texts``; deterministic.

    ``user_defined_symbols`` become single pieces with ids right after the four special ids
    (pad=0, eos=1, bos=2, unk=3), in the order given. Byte fallback is on so any text encodes
    without unk; ``split_digits`` keeps digits as single tokens (arithmetic stays learnable).
    If ``out_path`` is given the ``.model`` proto is also written there.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    # sentencepiece treats each iterator item as a sentence; embedded newlines are legal with the
    # identity normalizer, empty items are not useful.
    sentences = [t for t in texts if t]
    if not sentences:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    buf = io.BytesIO()
    try:
        _train(buf, sentences, vocab_size, model_type, user_defined_symbols, split_digits,
               max_sentence_length)
    except RuntimeError as e:
        # e.g. a vocab_size below 4 specials + symbols + 256 bytes + distinct characters.
        raise ValueError(f"sentencepiece training failed (vocab_size={vocab_size}): {e}") from e
    tok = SentencePieceTokenizer(buf.getvalue())
    if out_path is not None:
        tok.save_model(out_path)
    return tok


def _train(buf, sentences, vocab_size, model_type, user_defined_symbols, split_digits,
           max_sentence_length):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type=model_type,
        user_defined_symbols=list(user_defined_symbols),
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=split_digits,
        # Exact round trips: no NFKC, no dummy prefix, keep every space.
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        pad_id=_PAD_ID,
        eos_id=_EOS_ID,
        bos_id=_BOS_ID,
        unk_id=_UNK_ID,
        # Determinism: one thread, no sentence sampling or shuffling.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        # Tiny corpora may not support the requested size; take what they support.
        hard_vocab_limit=False,
        max_sentence_length=max_sentence_length,
        minloglevel=2,
    )
