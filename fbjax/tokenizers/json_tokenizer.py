"""Hugging Face ``tokenizer.json`` tokenizers (GPT-2, Llama-3, Qwen2 byte-level BPE).

:class:`HFTokenizer` wraps the ``tokenizers`` library behind the :class:`fbjax.tokenizers.Tokenizer`
protocol (``encode``/``decode``/special ids/added tokens/pickling/save and load), as
:class:`~fbjax.tokenizers.sentencepiece_tokenizer.SentencePieceTokenizer` does, so the data
pipeline, templates and sampler take either. Both match every special token written in text
(control tokens included) to its id, and both decode BOS/EOS/PAD to nothing by default.

Special tokens come from the checkpoint directory, first found wins per token:
``tokenizer_config.json`` (a key that is present there, even as ``null``, is final), then
``special_tokens_map.json``, then the ``*_token_id`` fields of ``config.json`` /
``generation_config.json``; a tokenizer with exactly one special token and no EOS named anywhere
uses it as EOS (GPT-2's ``<|endoftext|>``). Fallbacks, because the pipeline always needs the id:

* BOS falls back to EOS (Qwen2 names no BOS; its ``<|endoftext|>`` is the document separator);
* PAD falls back to EOS (GPT-2 and Llama-3 name none; padding is masked out everywhere);
* UNK falls back to PAD (byte-level BPE never needs it; ``unk_id`` is only used as a mask id).

Guarantees, for byte-level BPE without a normalizer (GPT-2, Llama-3): ``decode(encode(s)) == s``
for every string, and decoding separately encoded segments concatenated gives the concatenated
text, as :class:`~fbjax.tokenizers.sentencepiece_tokenizer.SentencePieceTokenizer` guarantees
for the models it trains. Qwen2's
tokenizer NFC-normalizes, so text that is not NFC comes back NFC. Added tokens (the file's own,
special or not, and :meth:`HFTokenizer.with_added_tokens`) are matched literally in text, as
transformers does by default.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger("fbjax")

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
_ID_FILES = ("config.json", "generation_config.json")
_ROLES = ("bos", "eos", "pad", "unk")


def _restore(tokenizer_json, bos, eos, pad, unk, added):
    return HFTokenizer(tokenizer_json, eos=eos, bos=bos, pad=pad, unk=unk, added_tokens=added)


class HFTokenizer:
    """A ``tokenizer.json`` model plus optional added tokens appended after its vocabulary.

    ``bos``/``eos``/``pad``/``unk`` name special tokens by their text (None: not defined, see the
    module docstring for the fallbacks). Immutable and picklable (the JSON travels).
    """

    __slots__ = ("_json", "_tok", "_names", "_ids", "_added", "_base_size")

    def __init__(
        self,
        tokenizer_json: str,
        *,
        eos: str,
        bos: str | None = None,
        pad: str | None = None,
        unk: str | None = None,
        added_tokens: Sequence[str] = (),
    ):
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as _Tok

        try:
            tok = _Tok.from_str(tokenizer_json)
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"not a valid tokenizer.json: {e}") from e
        # Files may enable truncation or padding; either would silently change encodings.
        tok.no_truncation()
        tok.no_padding()
        vocab = tok.get_vocab(with_added_tokens=True)
        base_size = max(vocab.values()) + 1 if vocab else 0
        added = tuple(added_tokens)
        if len(set(added)) != len(added):
            raise ValueError(f"duplicate added tokens: {added}")
        for i, t in enumerate(added):
            if not t:
                raise ValueError("an added token must be a non-empty string")
            if t in vocab:
                raise ValueError(f"{t!r} is already a token of the tokenizer (id {vocab[t]}); "
                                 "do not add it again")
            tok.add_tokens([AddedToken(t, normalized=False, special=False)])
            if tok.token_to_id(t) != base_size + i:
                raise ValueError(f"added token {t!r} got id {tok.token_to_id(t)}, expected "
                                 f"{base_size + i} (the vocabulary's ids have gaps)")
        names = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
        if eos is None:
            raise ValueError("an EOS token is required (every completion ends with it)")
        ids = {}
        for role, name in names.items():
            if name is not None:
                ids[role] = tok.token_to_id(name)
                if ids[role] is None:
                    raise ValueError(f"{role} token {name!r} is not a token of the tokenizer")
        ids.setdefault("bos", ids["eos"])
        ids.setdefault("pad", ids["eos"])
        ids.setdefault("unk", ids["pad"])
        set_ = object.__setattr__
        set_(self, "_json", tokenizer_json)
        set_(self, "_tok", tok)
        set_(self, "_names", names)
        set_(self, "_ids", ids)
        set_(self, "_added", added)
        set_(self, "_base_size", base_size)

    def __setattr__(self, name, value):
        raise AttributeError("HFTokenizer is immutable")

    def __reduce__(self):
        n = self._names
        return (_restore, (self._json, n["bos"], n["eos"], n["pad"], n["unk"], self._added))

    def _key(self):
        return (self._json, tuple(self._names.items()), self._added)

    def __eq__(self, other):
        return isinstance(other, HFTokenizer) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f"HFTokenizer(vocab_size={self.vocab_size}, "
                f"base_vocab_size={self.base_vocab_size}, special_tokens={self._names}, "
                f"added_tokens={self._added})")

    # ---------------------------------------------------------------- construction

    @classmethod
    def load(cls, path: str | os.PathLike, *, added_tokens: Sequence[str] = ()) -> HFTokenizer:
        """Loads a checkpoint directory's ``tokenizer.json`` (or that file itself) with the
        special tokens and added tokens its sibling files declare (module docstring)."""
        path = os.fspath(path)
        directory, file = (path, os.path.join(path, TOKENIZER_FILE)) if os.path.isdir(path) \
            else (os.path.dirname(path), path)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        with open(file, encoding="utf-8") as f:
            text = f.read()
        try:
            probe = _probe(text)
            names = _special_names(directory, probe)
            if names["eos"] is None:
                names["eos"] = _any_special(text, file)
            if names["eos"] is None:
                raise ValueError(
                    f"no EOS token: none of {TOKENIZER_CONFIG_FILE}, {SPECIAL_TOKENS_MAP_FILE}, "
                    f"{', '.join(_ID_FILES)} in {directory} names one"
                )
            added = _config_added_tokens(directory, probe)
            tok = cls(text, **names, added_tokens=added)
        except ValueError as e:
            raise ValueError(f"cannot load tokenizer from {file}: {e}") from e
        if not tok.byte_level:
            log.warning("%s is not a byte-level BPE tokenizer: encode/decode round trips and "
                        "segment concatenation are not guaranteed", file)
        return tok.with_added_tokens(added_tokens)

    def with_added_tokens(self, tokens: Iterable[str]) -> HFTokenizer:
        """A tokenizer with ``tokens`` appended after the vocabulary (existing ones kept).

        Tokens that already have an id are skipped (idempotent). The model's embedding must grow
        to :attr:`vocab_size` rows.
        """
        new = list(self._added)
        for t in tokens:
            if t not in new and self._tok.token_to_id(t) is None:
                new.append(t)
        if len(new) == len(self._added):
            return self
        n = self._names
        return HFTokenizer(self._json, eos=n["eos"], bos=n["bos"], pad=n["pad"], unk=n["unk"],
                           added_tokens=new)

    def save(self, directory: str | os.PathLike) -> str:
        """Writes ``tokenizer.json`` (the base file, verbatim) and ``tokenizer_config.json``
        (special tokens, added tokens as ``added_tokens_decoder``) into ``directory``; both
        :meth:`load` and transformers' ``AutoTokenizer`` read the result."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, TOKENIZER_FILE), "w", encoding="utf-8") as f:
            f.write(self._json)
        added = {
            str(self._base_size + i): {"content": t, "special": False, "normalized": False,
                                       "lstrip": False, "rstrip": False, "single_word": False}
            for i, t in enumerate(self._added)
        }
        config = {f"{role}_token": self._names[role] for role in _ROLES}
        config.update(added_tokens_decoder=added, tokenizer_class="PreTrainedTokenizerFast")
        with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
        return os.path.join(directory, TOKENIZER_FILE)

    # ---------------------------------------------------------------- vocabulary

    @property
    def tokenizer_json(self) -> str:
        return self._json

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """The special tokens as declared (None where the checkpoint names none)."""
        return dict(self._names)

    @property
    def byte_level(self) -> bool:
        """Whether the decoder is byte-level (the round-trip guarantees hold)."""
        decoder = json.loads(self._json).get("decoder") or {}
        parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" \
            else [decoder]
        return any(p.get("type") == "ByteLevel" for p in parts)

    @property
    def base_vocab_size(self) -> int:
        """Ids of ``tokenizer.json`` (its own added tokens included)."""
        return self._base_size

    @property
    def num_added_tokens(self) -> int:
        return len(self._added)

    @property
    def vocab_size(self) -> int:
        return self._base_size + len(self._added)

    @property
    def added_tokens(self) -> tuple[str, ...]:
        return self._added

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def unk_id(self) -> int:
        return self._ids["unk"]

    def token_to_id(self, token: str) -> int:
        """Id of a single token (in the vocabulary's own spelling, e.g. ``Ġthe``)."""
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise KeyError(f"{token!r} is not a single token of this tokenizer")
        return idx

    def id_to_token(self, idx: int) -> str:
        self._check_ids([idx])
        return self._tok.id_to_token(idx)

    # ---------------------------------------------------------------- encode / decode

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; no special tokens are added unless asked for."""
        # add_special_tokens=False: the file's post-processor (Llama-3's BOS template) must not
        # add ids; BOS/EOS are the caller's explicit choice, as with the sentencepiece wrapper.
        ids = self._tok.encode(text, add_special_tokens=False).ids if text else []
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and the ``[begin, end)`` character span of ``text`` each token covers.

        A character split into several byte tokens is covered by the last of them; the others
        get an empty span (as in ``SentencePieceTokenizer.encode_with_offsets``).
        """
        if not text:
            return [], []
        enc = self._tok.encode(text, add_special_tokens=False)
        raw = list(enc.offsets)
        offsets = []
        for i, (b, e) in enumerate(raw):
            # tokenizers gives every byte token of a character that character's whole span.
            if i + 1 < len(raw) and raw[i + 1][0] < e:
                e = raw[i + 1][0]
            offsets.append((min(b, e), e))
        return list(enc.ids), offsets

    def decode(self, ids: Iterable[int], *, skip_control: bool = True) -> str:
        """Text of ``ids``. BOS/EOS/PAD ids decode to nothing, or with ``skip_control=False`` to
        their text; other special tokens always decode to their text."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        if skip_control:
            ids = [i for i in ids if i not in self.control_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    @property
    def control_ids(self) -> frozenset[int]:
        """BOS, EOS and PAD: the ids :meth:`decode` drops by default."""
        return frozenset({self.bos_id, self.eos_id, self.pad_id})

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the tokenizer's vocabulary "
                             f"[0, {self.vocab_size})")


# ---------------------------------------------------------------- reading a checkpoint's files


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_name(value: Any, path: str, key: str) -> str | None:
    """A special token as transformers writes it: a string, ``{"content": ...}`` or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{path}: {key} must be a string, an object with 'content', or null; "
                     f"got {value!r}")


def _probe(text: str):
    """The raw ``tokenizers`` object, to look ids up before the special tokens are known."""
    from tokenizers import Tokenizer as _Tok

    try:
        return _Tok.from_str(text)
    except Exception as e:
        raise ValueError(f"not a valid tokenizer.json: {e}") from e


def _id_to_name(probe: Any, value: Any, path: str, key: str) -> str | None:
    if isinstance(value, list):  # Llama-3 Instruct lists several EOS ids; the first is canonical
        value = value[0] if value else None
    if value is None:
        return None
    if not isinstance(value, int):
        raise ValueError(f"{path}: {key} must be an int or a list of ints, got {value!r}")
    name = probe.id_to_token(value)
    if name is None:
        raise ValueError(f"{path}: {key}={value} is not an id of the tokenizer")
    return name


def _special_names(directory: str, probe: Any) -> dict[str, str | None]:
    names: dict[str, str | None] = {}
    for file in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
        path = os.path.join(directory, file)
        data = _read_json(path) or {}
        for role in _ROLES:
            key = f"{role}_token"
            if role not in names and key in data:
                names[role] = _token_name(data[key], path, key)
    for file in _ID_FILES:
        path = os.path.join(directory, file)
        data = _read_json(path) or {}
        for role in _ROLES:
            key = f"{role}_token_id"
            if role not in names and data.get(key) is not None:
                names[role] = _id_to_name(probe, data[key], path, key)
    return {role: names.get(role) for role in _ROLES}


def _any_special(text: str, file: str) -> str | None:
    """The only special token of a tokenizer.json, if it has exactly one (GPT-2)."""
    try:
        entries = json.loads(text).get("added_tokens") or []
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON: {e}") from e
    special = [t["content"] for t in entries if t.get("special")]
    return special[0] if len(special) == 1 else None


def _config_added_tokens(directory: str, probe: Any) -> list[str]:
    """Tokens of ``tokenizer_config.json``'s ``added_tokens_decoder`` that ``tokenizer.json``
    lacks (what :meth:`HFTokenizer.save` writes), in id order, checked to follow the vocab."""
    path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    table = (_read_json(path) or {}).get("added_tokens_decoder") or {}
    vocab = probe.get_vocab(with_added_tokens=True)
    base = max(vocab.values()) + 1 if vocab else 0
    out = []
    for key in sorted(table, key=int):
        name = _token_name(table[key], path, f"added_tokens_decoder[{key}]")
        if name in vocab:
            continue
        if int(key) != base + len(out):
            raise ValueError(f"{path}: added token {name!r} has id {key}, but the next free id of "
                             f"{TOKENIZER_FILE} is {base + len(out)}")
        out.append(name)
    return out
