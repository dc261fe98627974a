"""A thin, explicit wrapper around sentencepiece.

Three things are kept explicit rather than hidden in configuration:

* **Special ids.** ``bos_id``/``eos_id``/``pad_id``/``unk_id`` are read from the model proto, so a
  Llama (unk=0, bos=1, eos=2, no pad) and a Gemma (pad=0, eos=1, bos=2, unk=3) model both work.
* **Added tokens.** Control tokens a method needs (``<|good|>``, ``<|bad|>``, turn markers) are
  either trained into the model (``train_sentencepiece(user_defined_symbols=...)``, they then
  have ordinary ids inside the base vocabulary) or, for a model that we load and cannot retrain,
  registered with :meth:`Tokenizer.with_added_tokens`. Those get ids ``base_vocab_size + i``,
  appended after the base vocabulary, so **the model's embedding (and an untied output head) must
  grow by** :attr:`Tokenizer.num_added_tokens` rows to :attr:`Tokenizer.vocab_size`;
  :func:`check_vocab` says so when it is forgotten.
* **Chat templates.** :class:`ChatTemplate` is a frozen description of a turn format and
  :func:`render_chat` a pure function from ``(role, text)`` turns to typed
  :class:`~fbjax.data.templates.Segment` s, which :func:`fbjax.data.templates.render` turns into
  tokens and a loss mask. Nothing is parsed back out of a rendered string.

Models trained by :func:`train_sentencepiece` use the identity normalizer, no dummy prefix and no
whitespace folding, so ``decode(encode(s)) == s`` for every string (byte fallback covers any
character) and the concatenation of separately encoded segments decodes to the concatenated text.

Checkpoints that ship a Hugging Face ``tokenizer.json`` instead (GPT-2, Llama-3, Qwen2) load as
:class:`fbjax.hf_tokenizer.HFTokenizer`, which has the same interface; :func:`load_tokenizer`
picks the right one for a checkpoint directory and :func:`save_tokenizer` writes either.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Iterable, Sequence

import sentencepiece as spm

from fbjax.data.templates import Segment

# Beside a saved ``tokenizer.model``: the tokens :meth:`Tokenizer.with_added_tokens` appended.
ADDED_TOKENS_SUFFIX = ".added_tokens.json"
SENTENCEPIECE_FILE = "tokenizer.model"

# Gemma's layout of the four special ids; any fixed choice works, this one keeps pad = 0 so that
# zero-initialised buffers are padding.
_PAD_ID, _EOS_ID, _BOS_ID, _UNK_ID = 0, 1, 2, 3


class Tokenizer:
    """A sentencepiece model plus optional added tokens appended after its vocabulary.

    Immutable: :meth:`with_added_tokens` returns a new tokenizer. Picklable (the serialized model
    proto travels, not the C++ processor), so it can cross process boundaries in data loaders.
    """

    __slots__ = ("_proto", "_sp", "_added", "_added_ids", "_split_re")

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
        object.__setattr__(
            self, "_added_ids", {t: sp.get_piece_size() + i for i, t in enumerate(added)}
        )
        # Longest first so that a token that is a prefix of another never wins the match.
        pattern = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
        object.__setattr__(self, "_split_re", re.compile(f"({pattern})") if added else None)

    def __setattr__(self, name, value):
        raise AttributeError("Tokenizer is immutable")

    def __reduce__(self):
        return (Tokenizer, (self._proto, self._added))

    def __eq__(self, other):
        return (
            isinstance(other, Tokenizer)
            and self._proto == other._proto
            and self._added == other._added
        )

    def __hash__(self):
        return hash((self._proto, self._added))

    def __repr__(self):
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, base_vocab_size={self.base_vocab_size}, "
            f"added_tokens={self._added})"
        )

    # ---------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | os.PathLike, *, added_tokens: Sequence[str] = ()) -> "Tokenizer":
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

    def with_added_tokens(self, tokens: Iterable[str]) -> "Tokenizer":
        """Returns a tokenizer with ``tokens`` appended after the vocabulary (existing ones kept).

        Tokens the tokenizer already maps to a single id (base pieces or earlier added tokens)
        are skipped, so the call is idempotent. The caller must grow the model's embedding to
        :attr:`vocab_size` rows; the new rows are usually initialised to the mean embedding.
        """
        new = list(self._added)
        for tok in tokens:
            if tok not in new and _piece_id(self._sp, tok) is None:
                new.append(tok)
        return Tokenizer(self._proto, tuple(new))

    def save(self, path: str | os.PathLike) -> None:
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
                ids.append(self._added_ids[chunk])
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
                ids.append(self._added_ids[chunk])
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

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; control ids (bos/eos/pad) decode to nothing, added tokens to text."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        out: list[str] = []
        run: list[int] = []
        base = self.base_vocab_size
        for i in ids:
            if i >= base:
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                out.append(self._added[i - base])
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)

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


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a checkpoint directory or a tokenizer file.

    A directory: its sentencepiece ``tokenizer.model`` if it has one (Llama-2, Mistral, Gemma;
    they often also ship a ``tokenizer.json``, which then is not used), else its Hugging Face
    ``tokenizer.json`` (GPT-2, Llama-3, Qwen2) as :class:`fbjax.hf_tokenizer.HFTokenizer`. A file:
    ``*.json`` is a ``tokenizer.json``, anything else a sentencepiece model.
    """
    from fbjax.hf_tokenizer import TOKENIZER_FILE, HFTokenizer

    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, SENTENCEPIECE_FILE)):
            return Tokenizer.load(os.path.join(path, SENTENCEPIECE_FILE))
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
    return Tokenizer.load(path)


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> str:
    """Writes ``tokenizer`` into ``directory`` under its conventional name(s), so that
    :func:`load_tokenizer` (directory) reads it back; returns the main file's path."""
    from fbjax.hf_tokenizer import TOKENIZER_FILE, HFTokenizer

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save(directory)
        return os.path.join(directory, TOKENIZER_FILE)
    if isinstance(tokenizer, Tokenizer):
        path = os.path.join(directory, SENTENCEPIECE_FILE)
        tokenizer.save(path)
        return path
    raise TypeError(f"cannot save a {type(tokenizer).__name__}: not an fbjax tokenizer")


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
) -> Tokenizer:
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
    tok = Tokenizer(buf.getvalue())
    if out_path is not None:
        tok.save(out_path)
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


# ==================================================================== chat templates


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A turn format, as text pieces around each turn.

    Rendering (see :func:`render_chat`) lays out, per turn::

        user:       user_prefix + text + user_suffix + assistant_prefix      (not trainable)
        assistant:  text + assistant_suffix                                  (trainable)
                    turn_separator                                           (not trainable)

    ``assistant_suffix`` is trainable because it is the model's stop marker (Gemma's
    ``<end_of_turn>``); ``assistant_prefix`` is part of the prompt the model is given at
    generation time. ``system_prefix``/``system_suffix`` of ``None`` means the format has no
    system role and the system text is merged into the first user message via ``system_merge``.
    ``eos_between_turns`` reproduces Llama-2, where every finished exchange ends with EOS and the
    next one starts with BOS (as ids, not text). ``special_tokens`` lists the markers that must be
    single tokens: pass them to ``train_sentencepiece(user_defined_symbols=...)`` or
    :meth:`Tokenizer.with_added_tokens`.
    """

    name: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str = ""
    turn_separator: str = ""
    system_prefix: str | None = None
    system_suffix: str | None = None
    system_merge: str = "{system}\n\n{user}"
    eos_between_turns: bool = False
    special_tokens: tuple[str, ...] = ()


LLAMA2 = ChatTemplate(
    name="llama2",
    user_prefix="[INST] ",
    user_suffix=" [/INST]",
    assistant_prefix=" ",
    assistant_suffix=" ",
    system_merge="<<SYS>>\n{system}\n<</SYS>>\n\n{user}",
    eos_between_turns=True,
)

GEMMA = ChatTemplate(
    name="gemma",
    user_prefix="<start_of_turn>user\n",
    user_suffix="<end_of_turn>\n",
    assistant_prefix="<start_of_turn>model\n",
    assistant_suffix="<end_of_turn>",
    turn_separator="\n",
    special_tokens=("<start_of_turn>", "<end_of_turn>"),
)

PLAIN = ChatTemplate(
    name="plain",
    user_prefix="Human: ",
    user_suffix="\n\n",
    assistant_prefix="Assistant: ",
    turn_separator="\n\n",
    system_prefix="",
    system_suffix="\n\n",
)

CHAT_TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (LLAMA2, GEMMA, PLAIN)}


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown chat template {name!r}; known: {sorted(CHAT_TEMPLATES)}"
        ) from None


def render_chat(
    template: ChatTemplate,
    turns: Sequence[tuple[str, str]],
    *,
    add_generation_prompt: bool = False,
) -> tuple[Segment, ...]:
    """Renders ``(role, text)`` turns into segments; assistant turns are the trainable ones.

    Roles: an optional leading ``"system"``, then alternating ``"user"``/``"assistant"``
    starting with ``"user"``. ``add_generation_prompt`` (last turn must be a user turn) ends the
    prompt with the assistant prefix, ready for sampling. Adjacent untrainable text is merged
    into one segment so a prompt is tokenized in one piece. BOS/EOS at the ends are added by
    :func:`fbjax.data.templates.render`, not here.
    """
    turns = list(turns)
    system = None
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"turn {i} has role {role!r}, expected {expected!r} (an optional leading "
                f"'system' turn, then alternating 'user'/'assistant' starting with 'user')"
            )
    if not turns:
        raise ValueError("a chat needs at least one user turn")
    if add_generation_prompt and turns[-1][0] != "user":
        raise ValueError("add_generation_prompt needs the last turn to be a user turn")

    segments: list[Segment] = []
    pending = ""  # untrainable text not yet emitted
    pending_bos = False

    if system is not None and template.system_prefix is not None:
        pending += template.system_prefix + system + (template.system_suffix or "")

    for i, (role, text) in enumerate(turns):
        if role == "user":
            if i == 0 and system is not None and template.system_prefix is None:
                text = template.system_merge.format(system=system, user=text)
            pending += template.user_prefix + text + template.user_suffix
            if i + 1 < len(turns) or add_generation_prompt:
                pending += template.assistant_prefix
        else:
            segments.append(Segment(pending, False, bos=pending_bos))
            pending, pending_bos = "", False
            last = i == len(turns) - 1
            eos = template.eos_between_turns and not last
            segments.append(Segment(text + template.assistant_suffix, True, eos=eos))
            if eos:
                pending_bos = True
            if not last:
                pending += template.turn_separator
    if pending or pending_bos:
        segments.append(Segment(pending, False, bos=pending_bos))
    return tuple(segments)
