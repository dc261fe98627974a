"""Tests for fbjax.tokenizers (sentencepiece) and fbjax.data.chat: training, special ids, added
tokens, chat templates, the CLI."""

import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from fbjax.data.chat import GEMMA, LLAMA2, PLAIN, ChatTemplate, get_chat_template, render_chat
from fbjax.data.templates import Segment, render
from fbjax.tokenizers import (
    SentencePieceTokenizer as Tokenizer,
    check_vocab,
    load_tokenizer,
    save_tokenizer,
    train_sentencepiece,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYMBOLS = ("<|good|>", "<|bad|>")


def _corpus(n=300):
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and ran to the big red dog with bird".split()
    out = []
    for _ in range(n):
        a, b = rng.integers(0, 100, size=2)
        out.append(" ".join(rng.choice(words, size=6)) + f" {a}+{b}={a + b}")
    out += ["Human: hello there\n\nAssistant: hi, how can I help?"] * 20
    return out


@pytest.fixture(scope="module")
def tok():
    return train_sentencepiece(_corpus(), vocab_size=320, user_defined_symbols=SYMBOLS)


# ---------------------------------------------------------------- training


def test_training_is_deterministic(tok):
    again = train_sentencepiece(_corpus(), vocab_size=320, user_defined_symbols=SYMBOLS)
    assert again.model_proto == tok.model_proto
    assert again == tok and hash(again) == hash(tok)


def test_special_ids_and_user_symbols(tok):
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    # User-defined symbols come right after the specials, in order, as single tokens.
    assert tok.token_to_id("<|good|>") == 4 and tok.token_to_id("<|bad|>") == 5
    assert tok.encode("<|good|>") == [4]
    ids = tok.encode("the cat<|bad|>sat")
    assert 5 in ids and tok.decode(ids) == "the cat<|bad|>sat"
    assert tok.vocab_size == tok.base_vocab_size == 320 and tok.num_added_tokens == 0


@pytest.mark.parametrize(
    "text",
    ["the cat  sat\n\n on 12+7=19", "  leading and trailing  ", "ünïcødé ✓ 日本語 🙂",
     "\t\r"],
)
def test_round_trip_any_text_without_unk(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids  # byte fallback
    assert tok.decode(ids) == text


def test_segments_concatenate_exactly(tok):
    # No dummy prefix / whitespace folding: separate encodes decode to the joined text.
    parts = ["Human: hi", "\n\nAssistant:", " the cat", " "]
    ids = [i for p in parts for i in tok.encode(p)]
    assert tok.decode(ids) == "".join(parts)


def test_bos_eos(tok):
    assert tok.encode("cat", add_bos=True, add_eos=True) == [2, *tok.encode("cat"), 1]
    assert tok.decode([2, *tok.encode("cat"), 1, 0]) == "cat"  # control ids decode to nothing


def test_unigram_and_bad_model_type():
    t = train_sentencepiece(_corpus(100), vocab_size=300, model_type="unigram")
    assert t.decode(t.encode("the red dog")) == "the red dog"
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece(_corpus(10), vocab_size=300, model_type="word")
    with pytest.raises(ValueError, match="non-empty"):
        train_sentencepiece([], vocab_size=300)
    with pytest.raises(ValueError, match="training failed \\(vocab_size=100\\)"):
        train_sentencepiece(_corpus(10), vocab_size=100)  # below the 256 byte pieces


# ---------------------------------------------------------------- files


def test_save_load(tok, tmp_path):
    path = tmp_path / "tokenizer.model"
    tok.save_model(path)
    loaded = Tokenizer.load(path)
    assert loaded == tok
    out = tmp_path / "again.model"
    train_sentencepiece(_corpus(), vocab_size=320, user_defined_symbols=SYMBOLS, out_path=out)
    assert out.read_bytes() == tok.model_proto


def test_added_tokens_survive_save_load(tok, tmp_path):
    t = tok.with_added_tokens(["<start_of_turn>", "<end_of_turn>"])
    path = tmp_path / "tokenizer.model"
    t.save_model(path)
    # The proto stays the base model (other readers see the same file); the tokens sit beside.
    assert path.read_bytes() == tok.model_proto
    assert json.loads((tmp_path / "tokenizer.model.added_tokens.json").read_text()) == {
        "added_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    loaded = Tokenizer.load(path)
    assert loaded == t and loaded.token_to_id("<end_of_turn>") == 321
    assert Tokenizer.load(path, added_tokens=["<x>", "<end_of_turn>"]).added_tokens == (
        "<start_of_turn>", "<end_of_turn>", "<x>")
    assert load_tokenizer(tmp_path) == t  # a directory: its tokenizer.model
    # Saving a tokenizer without added tokens over it removes the stale list.
    tok.save_model(path)
    assert not (tmp_path / "tokenizer.model.added_tokens.json").exists()
    assert Tokenizer.load(path) == tok
    (tmp_path / "tokenizer.model.added_tokens.json").write_text('{"added_tokens": "<x>"}')
    with pytest.raises(ValueError, match="added_tokens.json: 'added_tokens' must be a list"):
        Tokenizer.load(path)


def test_save_tokenizer_and_load_tokenizer_dispatch(tok, tmp_path):
    assert save_tokenizer(tok, tmp_path / "w") == str(tmp_path / "w" / "tokenizer.model")
    assert load_tokenizer(tmp_path / "w") == tok
    assert load_tokenizer(tmp_path / "w" / "tokenizer.model") == tok
    with pytest.raises(FileNotFoundError, match="looked for tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(TypeError, match="not an fbjax tokenizer"):
        save_tokenizer(object(), tmp_path)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match="nope/tokenizer.model"):
        Tokenizer.load(missing)
    bad = tmp_path / "garbage.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.model"):
        Tokenizer.load(bad)


def test_llama_style_ids_are_read_from_the_model():
    # Llama layout: unk=0, bos=1, eos=2 and no pad piece.
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(100)), model_writer=buf, vocab_size=300, unk_id=0,
        bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, num_threads=1, minloglevel=2,
    )
    t = Tokenizer(buf.getvalue())
    assert (t.unk_id, t.bos_id, t.eos_id) == (0, 1, 2)
    assert t.pad_id == 0  # no pad in the model: falls back to unk (padding is masked anyway)
    assert t.encode("cat", add_bos=True)[0] == 1


def test_pickle(tok):
    t2 = tok.with_added_tokens(["<x>"])
    back = pickle.loads(pickle.dumps(t2))
    assert back == t2 and back.encode("a<x>b") == t2.encode("a<x>b")


# ---------------------------------------------------------------- added tokens


def test_added_tokens_are_appended_after_the_base_vocab(tok):
    t = tok.with_added_tokens(["<start_of_turn>", "<end_of_turn>", "<|good|>"])
    # <|good|> is already a piece: skipped, not duplicated.
    assert t.added_tokens == ("<start_of_turn>", "<end_of_turn>")
    assert (t.base_vocab_size, t.num_added_tokens, t.vocab_size) == (320, 2, 322)
    assert t.token_to_id("<start_of_turn>") == 320 and t.token_to_id("<end_of_turn>") == 321
    text = "<start_of_turn>user\nthe cat<end_of_turn>"
    ids = t.encode(text)
    assert ids == [320, *tok.encode("user\nthe cat"), 321]
    assert t.decode(ids) == text
    assert t.id_to_token(321) == "<end_of_turn>"
    # Idempotent, and the original is untouched (immutable).
    assert t.with_added_tokens(["<end_of_turn>"]) == t
    assert tok.vocab_size == 320
    with pytest.raises(AttributeError):
        tok.foo = 1


def test_longest_added_token_wins(tok):
    t = tok.with_added_tokens(["<a>", "<a><b>"])
    assert t.encode("x<a><b>y") == [*tok.encode("x"), t.token_to_id("<a><b>"), *tok.encode("y")]


def test_ids_out_of_range_and_unknown_tokens(tok):
    with pytest.raises(ValueError, match=r"outside the tokenizer's vocabulary \[0, 320\)"):
        tok.decode([5, 320])
    with pytest.raises(KeyError, match="<nope>"):
        tok.token_to_id("<nope>")
    with pytest.raises(ValueError, match="already a piece"):
        Tokenizer(tok.model_proto, ("<|good|>",))


def test_check_vocab_names_both_sizes(tok):
    t = tok.with_added_tokens(["<x>", "<y>"])
    check_vocab(t, 322)
    check_vocab(t, 384)  # padded embeddings are fine
    with pytest.raises(ValueError, match="tokenizer vocab size 322.*model vocab size 320") as e:
        check_vocab(t, 320)
    assert "2 added tokens" in str(e.value) and "by 2 rows" in str(e.value)
    with pytest.raises(ValueError, match="322.*384"):
        check_vocab(t, 384, exact=True)


def test_encode_with_offsets(tok):
    t = tok.with_added_tokens(["<x>"])
    text = "the cat<x>ü 12"
    ids, offsets = t.encode_with_offsets(text)
    assert ids == t.encode(text)
    # Non-empty spans tile the text in order.
    covered = [text[b:e] for b, e in offsets if e > b]
    assert "".join(covered) == text
    assert offsets[ids.index(t.token_to_id("<x>"))] == (7, 10)


# ---------------------------------------------------------------- chat templates


def test_gemma_template_segments():
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?")]
    segs = render_chat(GEMMA, turns, add_generation_prompt=True)
    assert segs == (
        Segment("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n", False),
        Segment("Hello<end_of_turn>", True),
        Segment("\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n", False),
    )


def test_llama2_template_segments_and_turn_ids(tok):
    turns = [("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    segs = render_chat(LLAMA2, turns)
    assert segs == (
        Segment("[INST] <<SYS>>\nS\n<</SYS>>\n\na [/INST] ", False),
        Segment("b ", True, eos=True),
        Segment("[INST] c [/INST] ", False, bos=True),
        Segment("d ", True),
    )
    tokens, mask = render(segs, tok)
    enc = tok.encode
    want = [2, *enc(segs[0].text), *enc("b "), 1, 2, *enc(segs[2].text), *enc("d "), 1]
    want_mask = (
        [0] * (1 + len(enc(segs[0].text)))
        + [1] * (len(enc("b ")) + 1)
        + [0] * (1 + len(enc(segs[2].text)))
        + [1] * (len(enc("d ")) + 1)
    )
    assert tokens.tolist() == want and mask.tolist() == want_mask


def test_plain_template_segments():
    segs = render_chat(PLAIN, [("system", "S"), ("user", "Q"), ("assistant", "A")])
    assert segs == (Segment("S\n\nHuman: Q\n\nAssistant: ", False), Segment("A", True))
    assert get_chat_template("plain") is PLAIN


def test_chat_errors():
    with pytest.raises(ValueError, match="turn 1 has role 'user', expected 'assistant'"):
        render_chat(PLAIN, [("user", "a"), ("user", "b")])
    with pytest.raises(ValueError, match="last turn to be a user turn"):
        render_chat(PLAIN, [("user", "a"), ("assistant", "b")], add_generation_prompt=True)
    with pytest.raises(ValueError, match="unknown chat template 'chatml'"):
        get_chat_template("chatml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        PLAIN.name = "x"
    assert isinstance(GEMMA, ChatTemplate) and GEMMA.special_tokens == (
        "<start_of_turn>", "<end_of_turn>")


# ---------------------------------------------------------------- CLI


def test_cli_trains_from_txt_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("\n".join(_corpus(150)))
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "other": 1}) for t in _corpus(50)))
    out = tmp_path / "out" / "tok.model"
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_tokenizer.py"), str(txt), str(jl),
           "--out", str(out), "--vocab-size", "300", "--symbol", "<|good|>"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    t = Tokenizer.load(out)
    assert t.vocab_size == 300 and t.encode("<|good|>") == [4]


def test_cli_missing_file_is_named(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import train_tokenizer
    finally:
        sys.path.pop(0)
    missing = str(tmp_path / "missing.txt")
    rc = train_tokenizer.main([missing, "--out", str(tmp_path / "t.model")])
    assert rc == 2
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        list(train_tokenizer.read_texts([missing], ["text"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no string field 'text'"):
        list(train_tokenizer.read_texts([str(bad)], ["text"]))


# ---------------------------------------------------------------- one protocol, two kinds


def _hf_tokenizer():
    from fbjax.tokenizers import HFTokenizer
    from tests.test_paper_path import train_byte_bpe

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    return HFTokenizer(train_byte_bpe(_corpus(50), 300, [bos, eos]), bos=bos, eos=eos)


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizer_json"])
def test_both_kinds_handle_special_tokens_in_text_alike(tok, kind):
    from fbjax.tokenizers import Tokenizer as TokenizerProtocol

    t = (tok if kind == "sentencepiece" else _hf_tokenizer()).with_added_tokens(["<|ok|>"])
    assert isinstance(t, TokenizerProtocol)
    bos, eos, good = t.id_to_token(t.bos_id), t.id_to_token(t.eos_id), "<|ok|>"
    text = f"a{bos}b{eos}c{good}d"
    # Each special string in text is its one id, whichever kind of tokenizer reads it ...
    assert t.encode(text) == [*t.encode("a"), t.bos_id, *t.encode("b"), t.eos_id,
                              *t.encode("c"), t.token_to_id(good), *t.encode("d")]
    assert t.encode(text, add_bos=True, add_eos=True) == [t.bos_id, *t.encode(text), t.eos_id]
    # ... decoding drops BOS/EOS/PAD unless asked to keep them, and keeps added tokens.
    assert t.decode(t.encode(text)) == f"abc{good}d"
    assert t.decode(t.encode(text), skip_control=False) == text
    assert t.control_ids == {t.bos_id, t.eos_id, t.pad_id}
    assert t.token_to_id(good) == t.base_vocab_size == t.vocab_size - 1


def test_tokenizers_import_nothing_from_fbjax_data():
    code = ("import sys, fbjax.tokenizers; "
            "print(sorted(m for m in sys.modules if m.startswith('fbjax.data')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "[]"
