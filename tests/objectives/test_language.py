"""Language-feedback methods: exact data layouts and hand-derived loss values.

Data tests use a character-level sentencepiece model trained here (vocabulary too small for any
merge), so every expected id is a per-character lookup. Loss tests derive values with
``math.log``/``math.exp`` in the test body.
"""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fbjax.data import examples as ex
from fbjax.data import language as dl
from fbjax.data import templates as T
from fbjax.objectives import language as L
from fbjax.sim import ArithmeticTask
from fbjax.sim.feedback import SpanExample
from fbjax.tokenizers import train_sentencepiece

SYMBOLS = ("<|good|>", "<|bad|>")
TEXTS = [
    "12+7=", "19", "18", "4-1=", "3", "Good: ", "Bad: ", "\nFeedback: ",
    "Feedback: The ones digit should be 9, not 8.\n", "Incorrect: the ones digit is wrong.",
    "The answer is correct.", "be brief", "be kind", "Hi", "hey",
    "<|lang_feedback|>", "<|/lang_feedback|>", "\nJudgment: ", "\nA response matching the judgment:\n",
]


@pytest.fixture(scope="module")
def tok():
    chars = set("".join(TEXTS))
    return train_sentencepiece(
        TEXTS * 20, vocab_size=4 + len(SYMBOLS) + 256 + len(chars), user_defined_symbols=SYMBOLS
    )


def ids(tok, text):
    """Expected ids: one per character (control symbols are single tokens)."""
    out, k = [], 0
    while k < len(text):
        sym = next((s for s in SYMBOLS if text.startswith(s, k)), None)
        if sym:
            out.append(tok.token_to_id(sym))
            k += len(sym)
        else:
            out.append(tok.token_to_id("\u2581" if text[k] == " " else text[k]))
            k += 1
    return out


def assert_group(group, tok, prompt, completions, *, eos_weight=1.0):
    """``completions``: [(parts, ...)] with parts = [(text, weight)], EOS (``eos_weight``)
    appended."""
    assert group.prompt.tolist() == prompt
    assert len(group.completions) == len(completions)
    for k, parts in enumerate(completions):
        tokens, mask = [], []
        for text, w in parts:
            t = ids(tok, text) if isinstance(text, str) else list(text)
            tokens += t
            mask += [float(w)] * len(t)
        tokens.append(tok.eos_id)
        mask.append(eos_weight)
        assert group.completions[k].tolist() == tokens, k
        got_mask = np.ones(len(tokens)) if group.masks is None else group.masks[k]
        assert np.asarray(got_mask).tolist() == mask, k


# ============================================================================ data: templates


def test_chain_of_hindsight_exact(tok):
    # The released data: per comparison, p, n, pn and np sequences, an EOS after every output,
    # the prompt once; loss on outputs and EOS only.
    e = ex.RankedExample(prompt=ex.user_prompt("12+7="), completions=("19", "17", "18"),
                         scores=(1.0, 0.6, 0.5))  # positive = best, negative = worst
    groups = dl.chain_of_hindsight_groups([e], tok, np.random.default_rng(3),
                                          positive_phrases=("Good:",), negative_phrases=("Bad:",))
    assert len(groups) == 4
    p, n = ("19", "Good:"), ("18", "Bad:")
    bos = [tok.bos_id]
    for g, order in zip(groups, [(p,), (n,), (p, n), (n, p)]):
        (o1, m1) = order[0]
        parts = [(o1, 1)]
        if len(order) == 2:
            (o2, m2) = order[1]
            parts += [([tok.eos_id], 1), (f"\n{m2} ", 0), (o2, 1)]
        assert_group(g, tok, bos + ids(tok, f"12+7=\n{m1} "), [parts])
        assert g.slot_fields == {"pretraining": (0.0,)}
    # Ties are no comparison; the legacy one-sequence layout is still available.
    tie = ex.RankedExample(prompt=ex.user_prompt("12+7="), completions=("18", "17"),
                           scores=(0.5, 0.5))
    assert dl.chain_of_hindsight_groups([tie], tok, np.random.default_rng(0)) == []
    (legacy,) = dl.chain_of_hindsight_groups([e], tok, np.random.default_rng(3), orders=None,
                                             eos_after_each=False)
    assert len(legacy.completions) == 1 and int((legacy.completions[0] == tok.eos_id).sum()) == 1
    # Paraphrases are index-paired, one pair per sequence.
    many = dl.chain_of_hindsight_groups([e] * 20, tok, np.random.default_rng(0))
    texts = {tok.decode(np.concatenate([g.prompt, g.completions[0]]).tolist()) for g in many}
    for good, bad in zip(T.COH_POSITIVE, T.COH_NEGATIVE):
        assert any(good in t and bad in t for t in texts)
        assert not any(good in t and b in t for t in texts for b in T.COH_NEGATIVE if b != bad)


def test_forgetful_key_visibility():
    g = dl.Group(np.array([2, 10, 11], np.int32), (np.array([12, 13, 1], np.int32),
                                                   np.array([14, 1], np.int32)))
    prompt, comps = dl.forgetful_key_visibility(g, np.random.default_rng(0))
    assert prompt.tolist() == [1, 1, 1] and [c.tolist() for c in comps] == [[1, 1, 1], [1, 1]]
    # Ratio 1: every key but the first is hidden.
    prompt, comps = dl.forgetful_key_visibility(g, np.random.default_rng(0), min_ratio=1.0,
                                                max_ratio=1.0)
    assert prompt.tolist() == [1, 0, 0] and [c.tolist() for c in comps] == [[0, 0, 0], [0, 0]]
    # The draws by hand: r ~ U[lo, hi], then one uniform per token, hidden below r.
    rng = np.random.default_rng(7)
    r = rng.uniform(0.2, 0.6)
    want = (rng.random(8) >= r).astype(np.float32)
    want[0] = 1.0
    prompt, comps = dl.forgetful_key_visibility(g, np.random.default_rng(7), min_ratio=0.2,
                                                max_ratio=0.6)
    assert np.concatenate([prompt, *comps]).tolist() == want.tolist()
    with pytest.raises(ValueError):
        dl.forgetful_key_visibility(g, rng, min_ratio=0.5, max_ratio=0.2)


def test_mask_past_tokens():
    g = dl.Group(np.array([2, 10, 11], np.int32), (np.array([12, 13, 1], np.int32),),
                 masks=(np.array([1.0, 1.0, 1.0], np.float32),))
    same = dl.mask_past_tokens(g, np.random.default_rng(0), rate=0.0, mask_id=3)
    assert same.prompt.tolist() == [2, 10, 11] and same.completions[0].tolist() == [12, 13, 1]
    # rate 1: everything but BOS and the final token is replaced; replaced tokens are not trained.
    full = dl.mask_past_tokens(g, np.random.default_rng(0), rate=1.0, mask_id=3)
    assert full.prompt.tolist() == [2, 3, 3]
    assert full.completions[0].tolist() == [3, 3, 1]
    assert full.masks[0].tolist() == [0.0, 0.0, 1.0]
    # A small rate masks about that fraction.
    long = dl.Group(np.arange(2, 10002, dtype=np.int32) % 50 + 4, (np.full(2, 7, np.int32),))
    out = dl.mask_past_tokens(long, np.random.default_rng(1), rate=0.05, mask_id=3)
    assert 0.04 < np.mean(out.prompt == 3) < 0.06


def test_pretraining_groups(tok):
    (g,) = dl.pretraining_groups(["Hi"], tok)
    assert_group(g, tok, [tok.bos_id], [[("Hi", 1)]])
    assert g.slot_fields == {"pretraining": (1.0,)}


def _feedback(prompt, completion, feedback, score):
    return ex.FeedbackExample(prompt=ex.user_prompt(prompt), completion=completion,
                              feedback=feedback, score=score)


def test_leti_exact(tok):
    crit = "The ones digit should be 9, not 8."
    good = _feedback("12+7=", "19", "The answer is correct.", 1.0)
    bad = _feedback("12+7=", "18", crit, 0.5)
    g_good, g_bad = dl.leti_groups([good, bad], tok)
    bos = [tok.bos_id]
    # Successes carry no feedback (LeTI gives textual feedback for failures). Every token after
    # the reward token is trained: the group's prompt is BOS + reward token.
    assert_group(g_good, tok, bos + ids(tok, "<|good|>"), [[("12+7=", 1), ("19", 1)]])
    assert_group(g_bad, tok, bos + ids(tok, "<|bad|>"),
                 [[(f"<|lang_feedback|>{crit}<|/lang_feedback|>", 1), ("12+7=", 1), ("18", 1)]])
    assert g_bad.slot_fields == {"pretraining": (0.0,)}
    # Pretraining text mixed 1:1 (cycled), or at another ratio.
    pt = dl.pretraining_groups(["Hi"], tok)
    mixed = dl.mix_pretraining([g_good, g_bad], pt)
    assert [g.slot_fields["pretraining"][0] for g in mixed] == [0.0, 0.0, 1.0, 1.0]
    assert len(dl.mix_pretraining([g_good, g_bad], pt, ratio=0.5)) == 3
    assert dl.mix_pretraining([g_good, g_bad], pt, ratio=0.0) == [g_good, g_bad]
    with pytest.raises(ValueError, match="no pretraining groups"):
        dl.mix_pretraining([g_good], [])


def test_conditional_exact(tok):
    data = [_feedback("12+7=", "19", "", 1.0), _feedback("12+7=", "18", "", 0.5)]
    g_good, g_bad = dl.conditional_groups(data, tok, threshold=0.9, untagged_fraction=0.0)
    assert_group(g_good, tok, [tok.bos_id] + ids(tok, "<|good|>12+7="), [[("19", 1)]])
    assert_group(g_bad, tok, [tok.bos_id] + ids(tok, "<|bad|>12+7="), [[("18", 1)]])


def test_conditional_threshold_and_untagged_fraction(tok):
    # Korbak et al.'s toxicity rule: aligned iff toxicity <= 0.00056, as rewards -toxicity
    # against -0.00056 (boundary included).
    tox = [0.0, 0.00056, 0.00057, 0.3]
    data = [_feedback("12+7=", "19", "", -t) for t in tox]
    groups = dl.conditional_groups(data, tok, threshold=-0.00056, untagged_fraction=0.0)
    good, bad = ids(tok, "<|good|>")[0], ids(tok, "<|bad|>")[0]
    assert [int(g.prompt[1]) for g in groups] == [good, good, bad, bad]
    # Untagged examples: the plain prompt, no control token; which ones = one uniform draw per
    # example below the fraction (1% by default, as released).
    many = [_feedback("12+7=", "19", "", 1.0)] * 400
    got = dl.conditional_groups(many, tok, threshold=0.9, untagged_fraction=0.25,
                                rng=np.random.default_rng(3))
    want = np.random.default_rng(3).random(400) < 0.25
    plain = [tok.bos_id] + ids(tok, "12+7=")
    assert [g.prompt.tolist() == plain for g in got] == want.tolist()
    assert 60 < want.sum() < 140
    default = dl.conditional_groups(many, tok, threshold=0.9)
    n_plain = sum(g.prompt.tolist() == plain for g in default)
    assert n_plain == int((np.random.default_rng(0).random(400) < 0.01).sum())
    assert_group(next(g for g in got if g.prompt.tolist() == plain), tok, plain, [[("19", 1)]])
    with pytest.raises(ValueError, match="untagged_fraction"):
        dl.conditional_groups(many, tok, threshold=0.9, untagged_fraction=1.5)


def test_feedback_conditioned_exact(tok):
    crit = "The ones digit should be 9, not 8."
    (g,) = dl.feedback_conditioned_groups([_feedback("12+7=", "18", crit, 0.5)], tok)
    assert_group(g, tok, [tok.bos_id] + ids(tok, f"Feedback: {crit}\n12+7="), [[("18", 1)]])
    # The sampling prompt is the untrained prefix.
    assert T.feedback_conditioned_prompt("12+7=", crit) == f"Feedback: {crit}\n12+7="


def test_cut_exact(tok):
    judgment = "Incorrect: the ones digit is wrong."
    neg = _feedback("12+7=", "18", judgment, 0.5)
    pos = _feedback("12+7=", "19", "The answer is correct.", 1.0)
    g_neg, g_pos = dl.cut_groups([neg, pos], tok, positive_ratio=None)
    bos = [tok.bos_id]
    # Negative: the contexts differ from the first character, so only BOS is shared; slot 0 is
    # the plain prompt, slot 1 the judgment-conditioned one, the response tokens are identical.
    # The judged context, as released: the instruction, then the judgment, then the request to
    # match it; the contexts share BOS + the instruction.
    judged = f"\nJudgment: {judgment}\nA response matching the judgment:\n"
    assert_group(g_neg, tok, bos + ids(tok, "12+7="), [
        [("18", 1)],
        [(judged, 0), ("18", 1)],
    ])
    assert g_neg.slot_fields == {"negative": (1.0, 1.0)}
    # Positive: both copies under the plain prompt (likelihood only).
    assert_group(g_pos, tok, bos + ids(tok, "12+7="), [[("19", 1)], [("19", 1)]])
    assert g_pos.slot_fields == {"negative": (0.0, 0.0)}
    # The released Alpaca wording, word for word.
    assert dl.cut_alpaca_judged_prompt("Add.", "Wrong.") == (
        "Below is an instruction that describes a task. Write a response to the instruction and "
        "the response should match the corresponding judgment.\n\n### Instruction:\nAdd.\n\n"
        "### Judgment:\nWrong.\n\n### Response:\n")


def test_cut_downsamples_positives_to_a_quarter_of_the_negatives(tok):
    neg = _feedback("12+7=", "18", "Incorrect: the ones digit is wrong.", 0.5)
    pos = _feedback("12+7=", "19", "The answer is correct.", 1.0)
    data = [pos, neg, pos, neg, neg, pos, neg, pos, pos, neg, neg, neg, neg]  # 8 neg, 5 pos
    groups = dl.cut_groups(data, tok, rng=np.random.default_rng(5))
    kinds = [g.slot_fields["negative"][0] for g in groups]
    assert kinds.count(1.0) == 8 and kinds.count(0.0) == 2  # int(0.25 * 8)
    # Which positives: rng.choice over the positives' indices, data order kept.
    pos_idx = [k for k, e in enumerate(data) if e.score >= 1.0]
    chosen = set(np.random.default_rng(5).choice(pos_idx, size=2, replace=False).tolist())
    kept = [k for k, e in enumerate(data) if e.score < 1.0 or k in chosen]
    assert kinds == [0.0 if data[k].score >= 1.0 else 1.0 for k in kept]
    assert len(dl.cut_groups(data, tok, positive_ratio=None)) == 13
    # Fewer positives than the quota: all kept.
    assert len(dl.cut_groups(data, tok, positive_ratio=1.0)) == 13


def test_sami_groups_layout(tok):
    (g,) = dl.sami_groups([("Hi", ["be brief", "be kind"], ["hey", "Hi"])], tok)
    bos = [tok.bos_id]
    assert g.prompt.tolist() == bos + ids(tok, "be ")  # common prefix of both contexts
    want = []
    for c in ("brief", "kind"):  # slot i * n + j: response j under constitution i
        for y in ("hey", "Hi"):
            want.append([(f"{c}\nHi", 0), (y, 1)])
    assert_group(g, tok, bos + ids(tok, "be "), want, eos_weight=0.0)
    # SAMI's released code masks the response's EOS: each completion ends in EOS, weight 0.
    for c, m in zip(g.completions, g.masks):
        assert c[-1] == tok.eos_id and m[-1] == 0.0 and m[-2] == 1.0
    (g1,) = dl.sami_groups([("Hi", ["be brief", "be kind"], ["hey", "Hi"])], tok, score_eos=True)
    assert all(m[-1] == 1.0 for m in g1.masks)
    # A query whose responses coincide is dropped, as the released generation script does.
    same = [("Hi", ["be brief", "be kind"], ["hey", "hey"]),
            ("Yo", ["be brief", "be kind"], ["hey", "Yo"])]
    (kept,) = dl.sami_groups(same, tok)
    assert kept.prompt.tolist()[:1] == bos and len(kept.completions) == 4
    # slot i * n + j: the rest of context i, then the query "Yo", then response j
    assert [tok.decode(c[:-1]) for c in kept.completions] == [
        "brief\nYohey", "brief\nYoYo", "kind\nYohey", "kind\nYoYo"]
    assert len(dl.sami_groups(same, tok, keep_identical=True)) == 2


def test_c3po_groups_fields(tok):
    pair = ex.PairedExample(prompt=ex.user_prompt("12+7="), chosen="19", rejected="18")
    groups = dl.c3po_groups([pair], [("4-1=", "3")], [("Hi", "hey")], tok)
    assert [g.slot_fields["scope"] for g in groups] == [
        (L.SCOPE_IN_CHOSEN, L.SCOPE_IN_REJECTED), (L.SCOPE_NEAR,), (L.SCOPE_OUT,)]
    assert_group(groups[0], tok, [tok.bos_id] + ids(tok, "12+7="), [[("19", 1)], [("18", 1)]])
    assert_group(groups[2], tok, [tok.bos_id] + ids(tok, "Hi"), [[("hey", 1)]])


def test_token_reward_groups(tok):
    task = ArithmeticTask()
    spans = task.fault_spans("12+7=", "18")
    assert spans == ((1, 2),)
    e = SpanExample(prompt=ex.user_prompt("12+7="), completion="18", spans=spans, score=0.5)
    (g,) = dl.token_reward_groups([e], tok)
    assert g.prompt.tolist() == [tok.bos_id] + ids(tok, "12+7=")
    assert g.completions[0].tolist() == ids(tok, "18") + [tok.eos_id]
    assert g.masks[0].tolist() == [1.0, -1.0, 1.0]  # the wrong ones digit is penalised


# ============================================================================ data: ILF


def test_bow_cosine():
    assert dl.bow_cosine("a b", "b a") == pytest.approx(1.0)
    assert dl.bow_cosine("a b", "c d") == 0.0
    assert dl.bow_cosine("", "a") == 0.0
    assert dl.bow_cosine("the cat sat", "The cat ran") == pytest.approx(2 / 3)


def test_ilf_selection_and_loop():
    fb = _feedback("Write about a cat:", "A dog.", "Mention the cat, not the dog.", 0.0)
    cands = [["A dog barked.", "The cat sat.", "Birds."]]
    assert dl.select_refinements([fb], cands) == [("Write about a cat:", "The cat sat.")]
    # A scorer replaces the similarity (e.g. a reward model).
    assert dl.select_refinements([fb], cands, scorer=lambda e, r: -len(r)) == [
        ("Write about a cat:", "Birds.")]
    with pytest.raises(ValueError):
        dl.select_refinements([fb], [])

    # The loop with fakes: the "policy" is a dict prompt -> answer, refinements fix answers.
    seen = {}

    def refine(state, prompts):
        seen.setdefault("prompts", prompts)
        return [["wrong", p.rsplit("Refinement: ", 1)[1] + " ok"] for p in prompts]

    def train(state, pairs):
        return {**state, **{p: r for p, r in pairs}}

    state, history = dl.ilf_loop(
        {"q1": "bad", "q2": "bad"}, ["q1", "q2"],
        generate=lambda s, ps: [s[p] for p in ps],
        feedback=lambda ps, outs: [_feedback(p, o, "it should be ok", 0.0)
                                   for p, o in zip(ps, outs)],
        refine=refine, train=train, iterations=2,
    )
    # The default selection (similarity to the feedback) picks the candidate saying "ok".
    assert state == {"q1": "q1 ok", "q2": "q2 ok"}
    assert history[0] == [("q1", "q1 ok"), ("q2", "q2 ok")]
    assert seen["prompts"][0] == "q1bad\nFeedback: it should be ok\nRefinement: q1"


# ============================================================================ losses


def test_cut_flags_constructed_case():
    # Three responses of four tokens; the judgment raises tokens 1 (pair 0) and 2, 3 (pair 1).
    p_plain = np.array([[0.5, 0.2, 0.4, 0.3], [0.3, 0.3, 0.1, 0.2], [0.4, 0.4, 0.4, 0.4]])
    p_judged = np.array([[0.5, 0.5, 0.41, 0.1], [0.3, 0.3, 0.4, 0.9], [0.4, 0.9, 0.4, 0.4]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]], np.float32)  # pair 2: t1 masked
    flags = L.cut_inappropriate_tokens(np.log(p_plain), np.log(p_judged), mask)
    # 0.41 / 0.4 = 1.025 < 1.1 is not flagged; the masked token is not either.
    assert flags.tolist() == [[0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert L.cut_inappropriate_tokens(np.log(p_plain), np.log(p_judged), mask,
                                      threshold=1.02)[0, 2] == 1.0
    with pytest.raises(ValueError):
        L.cut_inappropriate_tokens(np.log(p_plain), np.log(p_judged), mask, threshold=0.9)


def test_cut_value_and_gradient_direction():
    p_plain = np.array([[0.5, 0.2, 0.4]])
    p_judged = np.array([[0.5, 0.6, 0.3]])
    mask = np.ones((1, 3), np.float32)
    lp, lj = jnp.log(p_plain), jnp.log(p_judged)
    loss, metrics = L.cut(lp, lj, mask, unlikelihood_weight=0.5)
    judged_nll = -(math.log(0.5) + math.log(0.6) + math.log(0.3)) / 3
    plain = (-math.log(0.5) - 0.5 * math.log(1 - 0.2) - math.log(0.4)) / 3
    assert float(loss[0]) == pytest.approx(0.5 * (judged_nll + plain), rel=1e-6)
    assert float(metrics["cut/flagged_fraction"][0]) == pytest.approx(1 / 3)
    assert float(metrics["logps/flagged"][0]) == pytest.approx(math.log(0.2), rel=1e-6)
    # Descent lowers the flagged token's plain log-prob and raises the others'.
    g_plain, g_judged = jax.grad(lambda a, b: L.cut(a, b, mask)[0].sum(), argnums=(0, 1))(lp, lj)
    assert g_plain[0, 1] > 0 and g_plain[0, 0] < 0 and g_plain[0, 2] < 0
    assert np.all(np.asarray(g_judged) < 0)  # likelihood under the judgment everywhere
    # d/dlogp of -log(1 - p) is p / (1 - p); halved, over 3 tokens.
    assert float(g_plain[0, 1]) == pytest.approx(0.5 * (0.2 / 0.8) / 3, rel=1e-5)


def test_cut_can_keep_the_final_token_out_of_the_flagged_set():
    # Row 0: tokens 1 and 2 (the last) are made more likely by the judgment; row 1 is padded
    # after token 1, so its last scored token is token 1.
    p_plain = np.array([[0.5, 0.2, 0.4], [0.5, 0.2, 0.9]])
    p_judged = np.array([[0.5, 0.6, 0.9], [0.5, 0.6, 0.9]])
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    lp, lj = jnp.log(p_plain), jnp.log(p_judged)
    _, flag_all = L.cut(lp, lj, mask)
    loss, kept = L.cut(lp, lj, mask, flag_final_token=False)
    np.testing.assert_allclose(np.asarray(flag_all["cut/flagged_fraction"]), [2 / 3, 1 / 2],
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(kept["cut/flagged_fraction"]), [1 / 3, 0.0], rtol=1e-6)
    # Row 0: unlikelihood on token 1 only, likelihood on the final token.
    judged_nll = -(math.log(0.5) + math.log(0.6) + math.log(0.9)) / 3
    plain = (-math.log(0.5) - math.log(1 - 0.2) - math.log(0.4)) / 3
    assert float(loss[0]) == pytest.approx(0.5 * (judged_nll + plain), rel=1e-6)


def test_cut_masked_entries_are_inert():
    mask = jnp.array([[1.0, 1.0, 0.0]])
    a = jnp.log(jnp.array([[0.5, 0.2, 0.3]]))
    b = jnp.log(jnp.array([[0.5, 0.6, 0.3]]))
    junk_a = a.at[0, 2].set(jnp.inf)
    junk_b = b.at[0, 2].set(-jnp.inf)
    l1, _ = L.cut(a, b, mask)
    l2, _ = L.cut(junk_a, junk_b, mask)
    assert float(l1[0]) == pytest.approx(float(l2[0]))
    g = jax.grad(lambda x: L.cut(x, junk_b, mask)[0].sum())(junk_a)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[0, 2]) == 0.0


def _infonce_by_hand(m):
    n = len(m)
    rows = [-(m[i][i] - math.log(sum(math.exp(m[i][j]) for j in range(n)))) for i in range(n)]
    cols = [-(m[j][j] - math.log(sum(math.exp(m[i][j]) for i in range(n)))) for j in range(n)]
    return 0.5 * (sum(rows) / n + sum(cols) / n)


def test_sami_matches_hand_infonce_3x3():
    m = [[-2.0, -5.0, -4.0], [-6.0, -1.5, -3.0], [-3.5, -4.5, -2.5]]
    loss, metrics = L.sami(jnp.array([m]), jnp.ones((1, 3, 3)), jnp.ones((1, 3, 3)))
    assert float(loss[0]) == pytest.approx(_infonce_by_hand(m), rel=1e-6)
    assert float(metrics["sami/row_accuracy"][0]) == 1.0
    off = [m[i][j] for i in range(3) for j in range(3) if i != j]
    assert float(metrics["sami/diagonal_margin"][0]) == pytest.approx(
        (-2.0 - 1.5 - 2.5) / 3 - sum(off) / 6)
    # Uniform logits: log n both ways.
    flat, _ = L.sami(jnp.zeros((1, 3, 3)), jnp.ones((1, 3, 3)), jnp.ones((1, 3, 3)))
    assert float(flat[0]) == pytest.approx(math.log(3))


def test_sami_padding_and_grads():
    m = jnp.array([[[-2.0, -5.0, -4.0], [-6.0, -1.5, -3.0], [-3.5, -4.5, -2.5]]])
    valid = jnp.ones((1, 3, 3)).at[0, 2, :].set(0.0).at[0, :, 2].set(0.0)
    loss, _ = L.sami(m.at[0, 2, 2].set(1e4), jnp.ones((1, 3, 3)), valid)
    sub = [[-2.0, -5.0], [-6.0, -1.5]]
    assert float(loss[0]) == pytest.approx(_infonce_by_hand(sub), rel=1e-6)
    check_grads(lambda x: L.sami(x, 2 * jnp.ones((1, 3, 3)), jnp.ones((1, 3, 3)))[0], (m,), order=1, modes=["rev"])


def test_c3po_values():
    beta = 0.5
    lp = jnp.array([-4.0, -6.0, -3.0, -8.0, -1.0])
    ref = jnp.array([-5.0, -5.0, -3.0, -6.0, -1.0])
    lengths = jnp.array([2.0, 3.0, 3.0, 4.0, 1.0])
    scope = jnp.array([L.SCOPE_IN_CHOSEN, L.SCOPE_IN_REJECTED, L.SCOPE_NEAR, L.SCOPE_OUT, 0.0])
    partner = jnp.roll(lp, -1)
    loss, metrics = L.c3po(lp, partner, ref, jnp.roll(ref, -1), lengths, scope, beta=beta,
                           near_scope_weight=0.3, out_of_scope_weight=0.7)
    margin = beta * ((-4.0 + 5.0) - (-6.0 + 5.0))
    want = [math.log1p(math.exp(-margin)), 0.0, 0.3 * 3.0 / 3.0, 0.7 * 8.0 / 4.0, 0.0]
    np.testing.assert_allclose(np.asarray(loss), want, rtol=1e-6)
    assert float(metrics["rewards/margin"][0]) == pytest.approx(margin)
    # The in-scope term is DPO: raising the chosen and lowering the rejected lowers the loss.
    g = jax.grad(lambda x: L.c3po(x, jnp.roll(x, -1), ref, jnp.roll(ref, -1), lengths, scope)[0]
                 .sum())(lp)
    assert g[0] < 0


def test_token_weighted_value_and_direction():
    lp = jnp.log(jnp.array([[0.5, 0.25, 0.9, 0.7]]))
    w = jnp.array([[1.0, -1.0, 2.0, 0.0]])
    loss, metrics = L.token_weighted(lp, w)
    want = (-math.log(0.5) - math.log(0.75) - 2 * math.log(0.9)) / 4.0
    assert float(loss[0]) == pytest.approx(want, rel=1e-6)
    assert float(metrics["logps/negative"][0]) == pytest.approx(math.log(0.25), rel=1e-6)
    g = jax.grad(lambda x: L.token_weighted(x, w)[0].sum())(lp)
    assert g[0, 0] < 0 and g[0, 1] > 0 and g[0, 2] < 0 and g[0, 3] == 0


def test_nll_with_pretraining():
    loss, _ = L.nll_with_pretraining(jnp.array([-6.0, -4.0]), jnp.array([2.0, 4.0]),
                                     jnp.array([0.0, 1.0]), pretraining_weight=0.25)
    np.testing.assert_allclose(np.asarray(loss), [3.0, 0.25], rtol=1e-6)


def test_jit_and_vmap_consistency():
    rng = np.random.default_rng(0)
    lp = jnp.asarray(np.log(rng.uniform(0.05, 0.95, (4, 6))), jnp.float32)
    lj = jnp.asarray(np.log(rng.uniform(0.05, 0.95, (4, 6))), jnp.float32)
    mask = jnp.asarray(rng.integers(0, 2, (4, 6)), jnp.float32)
    eager, _ = L.cut(lp, lj, mask)
    jitted, _ = jax.jit(L.cut)(lp, lj, mask)
    mapped, _ = jax.vmap(lambda a, b, c: L.cut(a[None], b[None], c[None]))(lp, lj, mask)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    np.testing.assert_allclose(eager, mapped[:, 0], rtol=1e-6)
    m = jnp.asarray(rng.normal(size=(5, 3, 3)), jnp.float32)
    e2, _ = L.sami(m, jnp.ones_like(m), jnp.ones_like(m))
    v2, _ = jax.vmap(lambda x: L.sami(x[None], jnp.ones((1, 3, 3)), jnp.ones((1, 3, 3))))(m)
    np.testing.assert_allclose(e2, v2[:, 0], rtol=1e-6)


def test_extreme_inputs_finite():
    big = jnp.array([[-1e4, -1e-9, 0.0]])
    for fn in (lambda x: L.cut(x, x + 1.0, jnp.ones_like(x))[0].sum(),
               lambda x: L.token_weighted(x, jnp.array([[1.0, -1.0, -1.0]]))[0].sum()):
        assert np.isfinite(float(fn(big)))
        assert np.all(np.isfinite(np.asarray(jax.grad(fn)(big))))
    huge = jnp.array([[[1e4, -1e4], [-1e4, 1e4]]])
    loss, _ = L.sami(huge, jnp.ones((1, 2, 2)), jnp.ones((1, 2, 2)))
    assert np.isfinite(float(loss[0]))


def test_doctests():
    result = doctest.testmod(L, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_c3po_defaults_reproduce_the_released_loss():
    # The released trainer: DPO(beta 0.1) + 0.1 * CE_near + 0.2 * CE_out (token means). One
    # in-scope pair, one near- and one out-of-scope example (1:1:1); the step's batch mean
    # through the real layout is that loss / 3.
    from fbjax.train import language_inputs as LI
    from fbjax.train.objective import SequenceStats, apply_objective

    lp = jnp.array([-4.0, -9.0, -6.0, -10.0])
    ref = jnp.array([-5.0, -7.0, -6.0, -10.0])
    lengths = jnp.array([2.0, 3.0, 3.0, 4.0])
    scope = jnp.array([L.SCOPE_IN_CHOSEN, L.SCOPE_IN_REJECTED, L.SCOPE_NEAR, L.SCOPE_OUT])
    stats = SequenceStats(
        logps=lp, lengths=lengths, valid=jnp.ones(4), ref_logps=ref,
        token_logps=jnp.zeros((1, 12)), token_mask=jnp.ones((1, 12)), ref_token_logps=None,
        fields={"scope": scope},
    )
    loss_sum, count, _, _ = apply_objective(LI.c3po(), stats, None, jax.random.PRNGKey(0))
    # rho_w = 1, rho_l = -2: DPO = softplus(-0.1 * 3); CE_near = 6 / 3 = 2; CE_out = 10 / 4.
    released = math.log1p(math.exp(-0.3)) + 0.1 * 2.0 + 0.2 * 2.5
    assert float(count) == 3.0
    assert float(loss_sum) / float(count) * 3.0 == pytest.approx(released, rel=1e-6)
    assert released == pytest.approx(1.2543552444, rel=1e-9)


def test_sami_uses_mean_token_logps_hand_value():
    # Two constitutions, responses of 12 and 40 tokens; -1.0 nat per token under their own
    # constitution, -1.5 under the other. Token means: [[-1, -1.5], [-1.5, -1]]: every row and
    # column cross-entropy is log(1 + e^-0.5), so the loss is 0.474077.
    lengths = jnp.array([[[12.0, 40.0], [12.0, 40.0]]])
    per_token = jnp.array([[[-1.0, -1.5], [-1.5, -1.0]]])
    sums = per_token * lengths  # [[-12, -60], [-18, -40]]
    loss, _ = L.sami(sums, lengths, jnp.ones((1, 2, 2)))
    assert float(loss[0]) == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)
    assert float(loss[0]) == pytest.approx(0.474077, abs=1e-6)
    # Summed log-probs (per_token=False): rows lse(-12, -60) + 12 ~ 0 and lse(-18, -40) + 40 =
    # 22 + log1p(e^-22); columns log1p(e^-6) and log1p(e^-20); the loss follows length.
    summed, _ = L.sami(sums, lengths, jnp.ones((1, 2, 2)), per_token=False)
    rows = math.log1p(math.exp(-48.0)) + 22.0 + math.log1p(math.exp(-22.0))
    cols = math.log1p(math.exp(-6.0)) + math.log1p(math.exp(-20.0))
    assert float(summed[0]) == pytest.approx(0.5 * (rows / 2 + cols / 2), rel=1e-6)
    assert float(summed[0]) == pytest.approx(5.5006, abs=1e-4)


def test_alt_loss_by_hand():
    # Row 0: tokens with log-probs -1, -3 (third masked); KL 0.2, 0.0; entropy 1, 2.
    lp = jnp.array([[-1.0, -3.0, 5.0], [-0.5, 0.0, 0.0]])
    kl = jnp.array([[0.2, 0.0, 9.0], [0.4, 0.0, 0.0]])
    ent = jnp.array([[1.0, 2.0, 9.0], [0.5, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, metrics = L.alt(lp, kl, ent, mask)
    want0 = (1.0 + 3.0) / 2 + 0.05 * (0.2 + 0.0) / 2 - 0.06 * (1.0 + 2.0) / 2  # 1.915
    want1 = 0.5 + 0.05 * 0.4 - 0.06 * 0.5  # 0.49
    np.testing.assert_allclose(np.asarray(loss), [want0, want1], rtol=1e-6)
    assert want0 == pytest.approx(1.915) and want1 == pytest.approx(0.49)
    np.testing.assert_allclose(np.asarray(metrics["kl"]), [0.1, 0.4], rtol=1e-6)
    # No KL / entropy terms: token-mean NLL.
    plain, _ = L.alt(lp, kl, ent, mask, kl_coef=0.0, entropy_coef=0.0)
    np.testing.assert_allclose(np.asarray(plain), [2.0, 0.5], rtol=1e-6)


def test_token_kl_and_entropy_against_numpy():
    from fbjax.objectives import logprobs

    rng = np.random.default_rng(0)
    b, length, d, v = 2, 5, 4, 11
    h, hr = rng.normal(size=(2, b, length, d)).astype(np.float32)
    w, wr = rng.normal(size=(2, d, v)).astype(np.float32)
    pred = np.array([[0, 0, 1, 2, 3], [0, 0, 1, 1, 3]])  # read at predictor[t]

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lr = log_softmax(h @ w), log_softmax(hr @ wr)
    kl_all = (np.exp(lr) * (lr - lp)).sum(-1)
    ent_all = -(np.exp(lp) * lp).sum(-1)
    want_kl = np.take_along_axis(kl_all, pred, 1)
    want_ent = np.take_along_axis(ent_all, pred, 1)
    for chunk in (3, 4, 11, 64):  # padded chunks, exact chunks, one chunk
        kl, ent = logprobs.token_kl_and_entropy(h, w, hr, wr, jnp.asarray(pred), chunk_size=chunk)
        np.testing.assert_allclose(np.asarray(kl), want_kl, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-4, atol=1e-5)
    kl_same, _ = logprobs.token_kl_and_entropy(h, w, h, w, jnp.asarray(pred), chunk_size=4)
    np.testing.assert_allclose(np.asarray(kl_same), 0.0, atol=1e-5)


def test_feedback_balanced_pool():
    fb = [("1+1=", "2", "ok"), ("1+1=", "3", "off by one"), ("1+1=", "4", "off by one"),
          ("1+1=", "5", "off by one"), ("2+2=", "4", "ok"), ("2+2=", "4", "ok")]
    data = [_feedback(p, c, f, 1.0) for p, c, f in fb]
    pool = dl.feedback_balanced_pool(data, np.random.default_rng(0), per_feedback=1)
    # One per (prompt, feedback): "ok" and one of the three "off by one" for 1+1=, one "ok" for
    # 2+2=; which one by rng.permutation over that category.
    r = np.random.default_rng(0)
    off = [1, 2, 3][int(r.permutation(3)[0])]
    two = [4, 5][int(r.permutation(2)[0])]
    assert pool == [data[0], data[off], data[two]]
    assert dl.feedback_balanced_pool(data, np.random.default_rng(0)) == data
    two_each = dl.feedback_balanced_pool(data, np.random.default_rng(1), per_feedback=2)
    assert [e.feedback for e in two_each] == ["ok", "off by one", "off by one", "ok", "ok"]
    with pytest.raises(ValueError):
        dl.feedback_balanced_pool(data, np.random.default_rng(0), per_feedback=0)
