"""Tests for fbjax.data.templates: exact token ids and loss masks for every template.

Two tokenizers trained in-test: a character-level one (vocabulary too small for any merge), where
the expected ids follow from looking up each character, and a BPE one, where merges could cross
segment boundaries and exact ids are pinned.
"""

import dataclasses

import numpy as np
import pytest

from fbjax.data import templates as T
from fbjax.data.templates import Segment, render
from fbjax.tokenizers import train_sentencepiece

SYMBOLS = ("<|good|>", "<|bad|>")
TEXTS = [
    "12+7=", "19", "18", "Write 2 words starting with b:", "bat bee", "cat",
    "A helpful answer: ", "An unhelpful answer: ", "A good answer: ", "A bad answer: ",
    "A correct answer: ", "An incorrect answer: ", "\nFeedback: The ones digit should be 9.\n",
]


def _char_tokenizer():
    texts = TEXTS + [T.LETI_FEEDBACK_BEGIN, T.LETI_FEEDBACK_END]  # not in btok's corpus
    chars = set("".join(texts))
    # 4 specials + symbols + 256 byte pieces + one piece per character: no room for merges.
    return train_sentencepiece(
        texts * 20, vocab_size=4 + len(SYMBOLS) + 256 + len(chars), user_defined_symbols=SYMBOLS
    )


@pytest.fixture(scope="session")
def ctok():
    return _char_tokenizer()


@pytest.fixture(scope="session")
def btok():
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(300):
        a, b = rng.integers(0, 100, size=2)
        lines += [f"{a}+{b}=", str(a + b), f"{a}+{b}={a + b}"]
    return train_sentencepiece(lines + TEXTS * 20, vocab_size=360, user_defined_symbols=SYMBOLS)


def ids(tok, text):
    """Expected ids under the character-level tokenizer, looked up one character at a time."""
    out = []
    k = 0
    while k < len(text):
        sym = next((s for s in SYMBOLS if text.startswith(s, k)), None)
        if sym:
            out.append(tok.token_to_id(sym))
            k += len(sym)
        else:
            out.append(tok.token_to_id("\u2581" if text[k] == " " else text[k]))
            k += 1
    return out


def expect(tok, parts, *, bos=True, eos_mask=None):
    """Expected (tokens, mask) for [(text, trainable), ...] plus BOS/EOS."""
    tokens, mask = ([tok.bos_id], [0.0]) if bos else ([], [])
    for text, trainable in parts:
        t = ids(tok, text)
        tokens += t
        mask += [float(trainable)] * len(t)
    if eos_mask is not None:
        tokens.append(tok.eos_id)
        mask.append(float(eos_mask))
    return tokens, mask


def check(segments, tok, want, **kw):
    tokens, mask = render(segments, tok, **kw)
    assert tokens.dtype == np.int32 and mask.dtype == np.float32
    assert tokens.shape == mask.shape
    assert tokens.tolist() == want[0]
    assert mask.tolist() == want[1]


# ---------------------------------------------------------------- render


def test_char_tokenizer_has_no_merges(ctok):
    assert ctok.encode("12+7=19 bat") == ids(ctok, "12+7=19 bat")


def test_prompt_completion(ctok):
    segs = T.prompt_completion("12+7=", "19")
    check(segs, ctok, expect(ctok, [("12+7=", False), ("19", True)], eos_mask=1))
    check(segs, ctok, expect(ctok, [("12+7=", False), ("19", True)], bos=False), add_bos=False,
          add_eos=False)


def test_eos_is_trainable_only_after_a_trainable_segment(ctok):
    segs = (Segment("19", True), Segment("12+7=", False))
    check(segs, ctok, expect(ctok, [("19", True), ("12+7=", False)], eos_mask=0))
    tokens, mask = render((), ctok)
    assert tokens.tolist() == [ctok.bos_id, ctok.eos_id] and mask.tolist() == [0, 0]


def test_segment_bos_eos_flags(ctok):
    segs = (Segment("12+7=", False), Segment("19", True, eos=True),
            Segment("cat", False, bos=True), Segment("bat", True, eos=True))
    b, e = ctok.bos_id, ctok.eos_id
    want_t = [b, *ids(ctok, "12+7="), *ids(ctok, "19"), e,
              b, *ids(ctok, "cat"), *ids(ctok, "bat"), e]
    want_m = [0] * 6 + [1, 1, 1] + [0] * 4 + [1, 1, 1, 1]
    # The final segment already ends in EOS: render adds no second one.
    check(segs, ctok, (want_t, want_m))


def test_segment_is_frozen_and_typed():
    s = Segment("a", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.text = "b"
    with pytest.raises(TypeError):
        Segment(["a"], True)
    with pytest.raises(TypeError):
        Segment("a", True, False)  # bos/eos are keyword-only


def test_separate_tokenization_keeps_the_boundary_exact(btok):
    # Jointly, BPE merges "d|b" across the boundary into one token, so no token boundary sits at
    # the segment boundary; tokenized separately it does, and the mask is exact.
    joint = btok.encode("Feedback: ")
    prompt, completion = btok.encode("Feed"), btok.encode("back: ")
    assert "db" in [btok.id_to_token(i) for i in joint]
    tokens, mask = render(T.prompt_completion("Feed", "back: "), btok, add_bos=False,
                          add_eos=False)
    assert tokens.tolist() == prompt + completion != joint
    assert mask.tolist() == [0.0] * len(prompt) + [1.0] * len(completion)
    assert btok.decode(tokens) == btok.decode(joint) == "Feedback: "


def test_pinned_bpe_ids(btok):
    # Golden ids from sentencepiece 0.2 on the fixed corpus: guards against silent changes in
    # training options (normalizer, dummy prefix, digit splitting).
    segs = (Segment("<|bad|>12+7=", False), Segment("18", True), Segment("\nFeedback: ", False),
            Segment("wrong", True))
    tokens, mask = render(segs, btok)
    assert tokens.tolist() == PINNED_LETI_TOKENS
    assert mask.tolist() == PINNED_LETI_MASK


# ---------------------------------------------------------------- Chain of Hindsight


def test_chain_of_hindsight_exact(ctok):
    rng = np.random.default_rng(0)
    segs = T.chain_of_hindsight("12+7=", [("19", True), ("18", False)], rng,
                                eos_after_each=False)
    # Reproduce the builder's draws: permutation, then one phrase index per output.
    r = np.random.default_rng(0)
    order = r.permutation(2).tolist()
    outputs = [("19", True), ("18", False)]
    parts = []
    head = "12+7="
    for k in order:
        text, good = outputs[k]
        phrases = T.COH_POSITIVE if good else T.COH_NEGATIVE
        parts += [(head + "\n" + phrases[int(r.integers(3))] + " ", False), (text, True)]
        head = ""
    assert [(s.text, s.trainable) for s in segs] == parts
    check(segs, ctok, expect(ctok, parts, eos_mask=1))
    # The default (as released): a trained EOS after every output, the draws unchanged.
    with_eos = T.chain_of_hindsight("12+7=", [("19", True), ("18", False)],
                                    np.random.default_rng(0))
    assert [(s.text, s.trainable, s.eos) for s in with_eos] == [
        (text, trainable, trainable) for text, trainable in parts]


def test_chain_of_hindsight_eos_after_every_output(ctok):
    segs = T.chain_of_hindsight(
        "12+7=", [("19", True), ("18", False)], np.random.default_rng(1), shuffle=False,
        positive_phrases=("A good answer:",), negative_phrases=("A bad answer:",),
    )
    tokens, mask = render(segs, ctok)
    eos = ctok.eos_id
    head, mid = ids(ctok, "12+7=\nA good answer: "), ids(ctok, "\nA bad answer: ")
    assert tokens.tolist() == ([ctok.bos_id] + head + ids(ctok, "19") + [eos] + mid
                               + ids(ctok, "18") + [eos])
    assert mask.tolist() == ([0.0] * (1 + len(head)) + [1.0] * 3 + [0.0] * len(mid)
                             + [1.0] * 3)


def test_chain_of_hindsight_unshuffled_layout(ctok):
    segs = T.chain_of_hindsight(
        "12+7=", [("19", True), ("18", False)], np.random.default_rng(1), shuffle=False,
        positive_phrases=("A good answer:",), negative_phrases=("A bad answer:",),
        eos_after_each=False,
    )
    parts = [("12+7=\nA good answer: ", False), ("19", True), ("\nA bad answer: ", False),
             ("18", True)]
    check(segs, ctok, expect(ctok, parts, eos_mask=1))
    assert T.chain_of_hindsight_prompt("12+7=", "A good answer:") == "12+7=\nA good answer: "


def test_chain_of_hindsight_shuffles_and_paraphrases():
    outs = [("19", True), ("18", False)]
    firsts, phrases = set(), set()
    for seed in range(40):
        segs = T.chain_of_hindsight("12+7=", outs, np.random.default_rng(seed))
        firsts.add(segs[1].text)
        phrases.update(s.text.strip().split("\n")[-1] for s in segs if not s.trainable)
    assert firsts == {"19", "18"}
    assert phrases == set(T.COH_POSITIVE) | set(T.COH_NEGATIVE)
    a = T.chain_of_hindsight("12+7=", outs, np.random.default_rng(3))
    assert a == T.chain_of_hindsight("12+7=", outs, np.random.default_rng(3))
    with pytest.raises(ValueError):
        T.chain_of_hindsight("12+7=", [], np.random.default_rng(0))


# ---------------------------------------------------------------- LeTI, conditional, ALT/FCP


def test_leti_exact(ctok):
    # LeTI's released run_leti.py: reward token, feedback in its markers (failures only), then
    # problem and solution; loss on every token after the reward token.
    fb = "The ones digit should be 9."
    segs = T.leti("12+7=", "18", good=False, feedback=fb)
    parts = [("<|bad|>", False), (f"<|lang_feedback|>{fb}<|/lang_feedback|>", True),
             ("12+7=", True), ("18", True)]
    check(segs, ctok, expect(ctok, parts, eos_mask=1))
    tokens, mask = render(segs, ctok)
    assert tokens[1] == ctok.token_to_id("<|bad|>")  # the reward token is one id
    # By hand: [BOS, <|bad|>] untrained, then every id trained, EOS included.
    body = ids(ctok, f"<|lang_feedback|>{fb}<|/lang_feedback|>12+7=18")
    assert tokens.tolist() == [ctok.bos_id, ctok.token_to_id("<|bad|>")] + body + [ctok.eos_id]
    assert mask.tolist() == [0.0, 0.0] + [1.0] * (len(body) + 1)
    # The feedback precedes the program: the program is conditioned on it.
    assert tokens.tolist().index(ids(ctok, "8")[0]) > len(ids(ctok, fb))

    # Solution-only loss (ablation).
    segs = T.leti("12+7=", "18", good=False, feedback="ok", train_on_context=False)
    parts = [("<|bad|>", False), ("<|lang_feedback|>ok<|/lang_feedback|>", False),
             ("12+7=", False), ("18", True)]
    check(segs, ctok, expect(ctok, parts, eos_mask=1))
    # No feedback (LeTI gives it only for failures): good token, problem, solution; the sampling
    # prompt is exactly this prefix.
    check(T.leti("12+7=", "19", good=True), ctok,
          expect(ctok, [("<|good|>", False), ("12+7=", True), ("19", True)], eos_mask=1))
    assert T.leti_prompt("12+7=") == "<|good|>12+7="
    assert T.leti_prompt("12+7=", "<|bad|>", feedback=fb) == "".join(
        seg.text for seg in T.leti("12+7=", "18", good=False, feedback=fb)[:-1])


def test_conditional_training_threshold(ctok):
    good = T.conditional_training("12+7=", "19", 0.5, threshold=0.5)
    bad = T.conditional_training("12+7=", "18", 0.49, threshold=0.5)
    check(good, ctok, expect(ctok, [("<|good|>12+7=", False), ("19", True)], eos_mask=1))
    check(bad, ctok, expect(ctok, [("<|bad|>12+7=", False), ("18", True)], eos_mask=1))
    assert T.conditional_prompt("12+7=") == good[0].text


def test_feedback_conditioned_exact(ctok):
    segs = T.feedback_conditioned("12+7=", "18", "The ones digit should be 9.")
    parts = [("Feedback: The ones digit should be 9.\n12+7=", False), ("18", True)]
    check(segs, ctok, expect(ctok, parts, eos_mask=1))
    assert T.feedback_conditioned_prompt("12+7=", "The ones digit should be 9.") == parts[0][0]


# ---------------------------------------------------------------- token-level spans


def test_span_token_mask_and_segment_ranges(ctok, btok):
    segs = T.prompt_completion("Write 2 words starting with b:", "bat cat")
    ranges = T.segment_token_ranges(segs, ctok)
    n_prompt = len(ids(ctok, segs[0].text))
    assert ranges == ((1, 1 + n_prompt), (1 + n_prompt, 1 + n_prompt + 7))
    m = T.span_token_mask("bat cat", ctok, [(4, 7)])
    assert m.tolist() == [0, 0, 0, 0, 1, 1, 1]
    # With merges, a token is marked when it overlaps the span at all.
    toks, offs = btok.encode_with_offsets("bat cat")
    m = T.span_token_mask("bat cat", btok, [(4, 5)])
    assert m.tolist() == [float(b < 5 and 4 < e) for b, e in offs]
    tokens, mask = render(segs, ctok)
    lo, hi = ranges[1]
    assert (mask[lo:hi] == 1).all() and tokens[lo:hi].tolist() == ids(ctok, "bat cat")


PINNED_LETI_TOKENS = [2, 5, 321, 328, 322, 327, 323, 321, 325, 354, 302, 292, 303, 340, 324, 341,
                      334, 299, 351, 1]
PINNED_LETI_MASK = [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
