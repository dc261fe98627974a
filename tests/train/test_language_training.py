"""Language-feedback methods train a tiny model through the real sharded step and move what
they target.

Every method starts from the same tiny model, briefly fine-tuned on a noisy demonstrator for
2-digit arithmetic (``fbjax.sim``), and trains for a few dozen steps
(``fbjax.train.stream.train_on_groups``) on feedback about answers to 24 prompts. What is asserted:

* CoH, LeTI, conditional training, ALT/FCP: conditioned on the desired feedback, correct answers
  gain log-probability relative to wrong ones (versus the undesired feedback), *and* greedy
  answers under the desired feedback earn a higher oracle reward than under the undesired one.
  Both are measured on the prompts trained on: in a few dozen steps a tiny model memorises which
  answer goes with which feedback, it does not learn arithmetic, so held-out reward would need a
  far longer run.
* ILF: two iterations of refine -> select -> fine-tune raise the oracle reward of greedy answers
  (refinements come from an oracle refiner, standing in for ILF's refinement model).
* CUT and token-level rewards: the flagged / faulty tokens lose probability.
* C3PO: the in-scope DPO margin grows while the original model's out-of-scope outputs do not
  become less likely.
* SAMI: the diagonal of the (constitution x response) log-prob matrix pulls away from the rest.

The layout tests at the top need no model: they feed token ids in as "log-probs" and check that
each layout gathers exactly the expected tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax import evaluation, sampling, sim
from fbjax import sharding as fsh
from fbjax.run.start import random_params
from fbjax.train.config import TrainConfig
from fbjax.train.stream import train_on_groups
from fbjax.data import encode, packing, templates
from fbjax.data import examples as ex
from fbjax.data import language as dl
from fbjax.models import config as mc
from fbjax.models.decoder import Decoder
from fbjax.objectives import language as L
from fbjax.objectives import logprobs
from fbjax.train import language_inputs as li
from tests.train.helpers import job
from fbjax.train import presets
from fbjax.train import step as steplib
from fbjax.train.objective import SequenceStats
from fbjax.train.optim import OptimizerConfig

SEQ_LEN = 64
SCORE_ROWS = 64


# ============================================================================ layouts, no model


def _stats_from_batch(batch: dict) -> SequenceStats:
    """Stats whose 'log-probs' are the token ids themselves, so gathers can be checked exactly."""
    b = {k: jnp.asarray(v) for k, v in batch.items()}
    mask = b["loss_mask"]
    k = b["slot_valid"].shape[1]
    tok = b["tokens"].astype(jnp.float32)
    seq = logprobs.sequence_sums(tok, mask, b["slot_ids"], k).reshape(-1)
    lengths = logprobs.sequence_sums(jnp.ones_like(mask), mask, b["slot_ids"], k).reshape(-1)
    fields = {key: v.reshape(-1) for key, v in b.items() if key not in steplib.TOKEN_KEYS
              and key != "slot_valid"}
    return SequenceStats(logps=seq, lengths=lengths, valid=b["slot_valid"].reshape(-1),
                         ref_logps=seq - 1.0, token_logps=tok, token_mask=mask,
                         ref_token_logps=None, fields=fields)


def _cut_like_groups(n: int, seed: int = 0) -> list[packing.Group]:
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n):
        plain = np.concatenate([[2], rng.integers(10, 60, rng.integers(1, 5))])
        judged = np.concatenate([[2], rng.integers(60, 99, rng.integers(1, 7))])
        response = rng.integers(100, 200, rng.integers(1, 6))
        groups.append(dl.multi_prompt_group([(plain, response, None), (judged, response, None)]))
    return groups


@pytest.mark.parametrize("layout", ["shared", "unshared", "padded"])
def test_aligned_pairs_gathers_the_same_response_twice(layout):
    groups = _cut_like_groups(12)
    if layout == "padded":
        batch, used = packing.padded(groups, seq_len=24, num_rows=8)
    else:
        batch, used = packing.pack(groups, seq_len=40, num_rows=3, num_slots=6,
                                   share_prefix=layout == "shared")
    assert used >= 4
    arrays, weights = li.aligned_pairs(_stats_from_batch(batch))
    plain = np.asarray(arrays["policy_token_logps_plain"])
    judged = np.asarray(arrays["policy_token_logps_judged"])
    mask = np.asarray(arrays["token_mask"])
    w = np.asarray(weights)
    assert w.sum() == used
    assert mask[w == 0].sum() == 0
    # Every consumed group shows up as one pair whose two copies hold exactly its response
    # (first-fit packing may reorder groups across rows, so compare as multisets).
    got = []
    for p in np.flatnonzero(w):
        t = int(mask[p].sum())
        assert mask[p, :t].tolist() == [1.0] * t
        assert plain[p, :t].tolist() == judged[p, :t].tolist()
        got.append(tuple(plain[p, :t].astype(int).tolist()))
    want = [tuple(g.completions[0][g.masks[0] > 0].tolist()) for g in groups[:used]]
    assert sorted(got) == sorted(want)


def test_scoped_pairs_and_sami_matrix_layouts():
    prompt = np.array([2, 5], np.int32)
    in_scope = packing.Group(prompt, (np.array([7, 1]), np.array([8, 8, 1])),
                             {"scope": (L.SCOPE_IN_CHOSEN, L.SCOPE_IN_REJECTED)})
    near = packing.Group(prompt, (np.array([9, 1]),), {"scope": (L.SCOPE_NEAR,)})
    out = packing.Group(prompt, (np.array([6, 6, 6, 1]),), {"scope": (L.SCOPE_OUT,)})
    batch, used = packing.pack([near, in_scope, out], seq_len=32, num_rows=1, num_slots=4,
                               share_prefix=True, fields=("scope",))
    assert used == 3
    arrays, weights = li.scoped_pairs(_stats_from_batch(batch))
    # Slots: near, chosen, rejected, out; the rejected slot is only a partner.
    assert np.asarray(weights).tolist() == [1.0, 1.0, 0.0, 1.0]
    assert float(arrays["policy_logps"][1]) == 8.0  # tokens 7 + EOS (1)
    assert float(arrays["policy_partner_logps"][1]) == 17.0  # 8 + 8 + 1
    assert np.asarray(arrays["in_scope"]).tolist() == [0.0, 1.0, 0.0, 0.0]
    assert np.asarray(arrays["out_of_scope"]).tolist() == [0.0, 0.0, 0.0, 1.0]

    # SAMI: slot i * n + j -> matrix entry [i, j].
    ctx = [np.array([2, 40 + i], np.int32) for i in range(2)]
    ys = [np.array([50 + j, 1], np.int32) for j in range(2)]
    g = dl.multi_prompt_group([(c, y, None) for c in ctx for y in ys])
    batch, _ = packing.pack([g], seq_len=32, num_rows=1, num_slots=4, share_prefix=True)
    arrays, weights = li.sami_matrix(2)(_stats_from_batch(batch))
    assert np.asarray(arrays["logp_matrix"]).tolist() == [[[51.0, 52.0], [51.0, 52.0]]]
    assert np.asarray(arrays["lengths"]).tolist() == [[[2.0, 2.0], [2.0, 2.0]]]
    assert np.asarray(weights).tolist() == [1.0]


def test_key_visibility_mask_by_hand_and_through_the_decoder():
    from fbjax.models.decoder import attention_mask

    # One row: [BOS a b c] as one segment, then [BOS d] as another; key 2 hidden.
    idx = jnp.arange(6)[None]
    seg = jnp.array([[1, 1, 1, 1, 2, 2]])
    zero = jnp.zeros_like(seg)
    visible = jnp.array([[1, 1, 0, 1, 1, 1]])
    got = attention_mask(idx, idx, seg, seg, zero, zero, idx, idx, None, visible)[0, 0]
    want = np.zeros((6, 6), bool)
    for q in range(6):
        for k in range(6):
            want[q, k] = k <= q and (q < 4) == (k < 4) and k != 2
    assert np.asarray(got).tolist() == want.tolist()
    # Through the model: all-visible equals no mask; hiding key 2 leaves the queries before it
    # alone and changes those from 2 on (in its own segment only).
    model = mc.llama(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                     mlp_dim=32, max_seq_len=16)
    dec = Decoder(model)
    tokens = jnp.array([[2, 5, 6, 7, 2, 8]])
    pos = jnp.array([[0, 1, 2, 3, 0, 1]])
    params = dec.init(jax.random.PRNGKey(0), tokens, pos, seg)["params"]
    plain, _ = dec.apply({"params": params}, tokens, pos, seg)
    ones, _ = dec.apply({"params": params}, tokens, pos, seg, key_visible=jnp.ones_like(seg))
    hidden, _ = dec.apply({"params": params}, tokens, pos, seg, key_visible=visible)
    np.testing.assert_allclose(ones, plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hidden[0, :2], plain[0, :2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hidden[0, 4:], plain[0, 4:], rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(hidden[0, 2:4] - plain[0, 2:4])).min() > 1e-4


# ============================================================================ the tiny model


@dataclasses.dataclass(frozen=True)
class Env:
    task: object
    tok: object
    model: mc.ModelConfig
    mesh: object
    init: object  # random initialisation
    base: object  # after brief SFT on a noisy demonstrator: knows the format, often wrong
    prompts: tuple
    bad: tuple  # one systematically wrong answer per prompt


@pytest.fixture(scope="module")
def env() -> Env:
    task = sim.make_task("arithmetic", max_operand=20)
    tok = sim.build_tokenizer([task], vocab_size=384, n_per_task=200)
    model = mc.llama(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, mlp_dim=128, max_seq_len=128)
    mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])
    rng = np.random.default_rng(0)
    prompts = task.sample_prompts(rng, 24)
    bad = tuple(task.demonstration(p, rng, 0.0) for p in prompts)
    init = random_params(model, mesh, fsh.MeshConfig().rules, 0)
    env = Env(task, tok, model, mesh, init, init, tuple(prompts), bad)
    demos = [(p, task.demonstration(p, rng, 0.5)) for p in prompts for _ in range(4)]
    base, _ = train(env, presets.sft(), encode.sft(demos, tok), steps=60, rows=8)
    return dataclasses.replace(env, base=base)


def _config(model, objective, *, steps, slots=8, share_prefix=True, lr=3e-3, rows=4):
    return job(model, objective,
               TrainConfig(steps=steps, batch=rows, seq_len=SEQ_LEN, slots_per_row=slots,
                           log_every=steps, share_prefix=share_prefix),
               optimizer=OptimizerConfig(learning_rate=lr, warmup_steps=3, schedule="constant"),
               name="language-test")


def train(env: Env, objective, groups, *, steps=40, params=None, **kw):
    cfg = _config(env.model, objective, steps=steps, **kw)
    result = train_on_groups(cfg, groups, env.base if params is None else params,
                             mesh=env.mesh)
    assert result.history and math.isfinite(result.history[-1]["loss"])
    return result.state.params, result.history


@functools.lru_cache(maxsize=4)
def _token_scorer(model_cfg):
    model = Decoder(model_cfg)
    return jax.jit(lambda p, b: steplib.token_logps(model, p, b, chunk_size=8192))


def token_logps(env: Env, params, sequences) -> list[np.ndarray]:
    """Per-token log-probs of ``(context ids, response ids)`` sequences, one array each."""
    groups = [packing.Group(np.asarray(c, np.int32), (np.asarray(r, np.int32),))
              for c, r in sequences]
    score = _token_scorer(env.model)
    out = []
    for i in range(0, len(groups), SCORE_ROWS):
        chunk = groups[i:i + SCORE_ROWS]
        batch, used = packing.padded(chunk, seq_len=SEQ_LEN, num_rows=SCORE_ROWS)
        tok = np.asarray(score(params, {k: jnp.asarray(v) for k, v in batch.items()}))
        for r in range(used):
            out.append(tok[r][batch["loss_mask"][r] > 0])
    return out


def seq_logps(env: Env, params, contexts, responses) -> np.ndarray:
    seqs = [(encode.prompt_ids(env.tok, c), encode.completion_ids(env.tok, y))
            for c, y in zip(contexts, responses)]
    return np.array([t.sum() for t in token_logps(env, params, seqs)])


def conditioning_gap(env: Env, params, good_context, bad_context) -> float:
    """How much more the desired condition favours correct over wrong answers than the
    undesired condition does (0 for a model that ignores the condition)."""
    sols = [env.task.solution(p) for p in env.prompts]
    good_c = [good_context(p) for p in env.prompts]
    bad_c = [bad_context(p, b) for p, b in zip(env.prompts, env.bad)]
    sol_gap = seq_logps(env, params, good_c, sols) - seq_logps(env, params, bad_c, sols)
    bad_gap = (seq_logps(env, params, good_c, list(env.bad))
               - seq_logps(env, params, bad_c, list(env.bad)))
    return float(np.mean(sol_gap - bad_gap))


GREEDY = dict(max_new_tokens=4, temperature=0.0)


def greedy_reward(env: Env, params, contexts) -> float:
    """Mean oracle reward of greedy answers to the training prompts shown as ``contexts``."""
    cfg = sampling.SamplingConfig(**GREEDY, stop_tokens=(env.tok.eos_id,))
    out = evaluation.sample(params, env.model, env.tok, list(contexts), sampling_config=cfg,
                            rng=jax.random.key(0))
    return float(np.mean([env.task.reward(p, y) for p, y in zip(env.prompts, out.texts)]))


def _check_conditioning(env, params, good_context, bad_context, min_gain=1.0):
    before = conditioning_gap(env, env.base, good_context, bad_context)
    after = conditioning_gap(env, params, good_context, bad_context)
    assert after > before + min_gain and after > min_gain, (before, after)
    # And the oracle agrees (on the prompts trained on: a tiny model memorises, it does not
    # learn arithmetic in a few dozen steps): the desired condition gives better answers.
    good = greedy_reward(env, params, [good_context(p) for p in env.prompts])
    bad = greedy_reward(env, params, [bad_context(p, b) for p, b in zip(env.prompts, env.bad)])
    assert good > bad + 0.2, (good, bad)


def _feedback_records(env: Env, kind=sim.feedback.critiques):
    prompts = list(env.prompts) * 2
    outputs = [env.task.solution(p) for p in env.prompts] + list(env.bad)
    return kind(env.task, prompts, outputs)


# ============================================================================ methods


def test_chain_of_hindsight(env):
    ranked = [ex.RankedExample(prompt=ex.user_prompt(p), completions=(env.task.solution(p), b),
                               scores=(1.0, env.task.reward(p, b)))
              for p, b in zip(env.prompts, env.bad)]
    pos, neg = templates.COH_POSITIVE[0], templates.COH_NEGATIVE[0]
    # Four shuffles of each prompt's outputs (CoH reshuffles every time a sequence is seen); one
    # phrase pair, so that the tiny model sees each condition often enough in a short run.
    groups = dl.chain_of_hindsight_groups(ranked * 4, env.tok, np.random.default_rng(1),
                                          past_mask_rate=0.05, positive_phrases=(pos,),
                                          negative_phrases=(neg,))
    groups += dl.pretraining_groups([p + env.task.solution(p) for p in env.prompts[:8]], env.tok)
    params, history = train(env, li.chain_of_hindsight(pretraining_weight=0.5), groups, steps=60,
                            rows=16)
    assert 0.0 < history[-1]["pretraining"] < 1.0  # both kinds of sequence were trained on
    _check_conditioning(env, params, lambda p: templates.chain_of_hindsight_prompt(p, pos),
                        lambda p, b: templates.chain_of_hindsight_prompt(p, neg))


def test_leti(env):
    groups = dl.leti_groups(_feedback_records(env), env.tok)
    params, _ = train(env, li.leti(), groups, steps=120, rows=8)
    # The bad condition as trained: bad token and the critique before the problem.
    _check_conditioning(env, params, lambda p: templates.leti_prompt(p, templates.GOOD_TOKEN),
                        lambda p, b: templates.leti_prompt(p, templates.BAD_TOKEN,
                                                           feedback=env.task.critique(p, b)))


def test_conditional_training(env):
    groups = dl.conditional_groups(_feedback_records(env), env.tok, threshold=1.0)
    params, _ = train(env, li.conditional_training(), groups, steps=50)
    _check_conditioning(env, params, lambda p: templates.conditional_prompt(p),
                        lambda p, b: templates.conditional_prompt(p, templates.BAD_TOKEN))


def test_alt_step_distributions_and_training(env):
    groups = dl.feedback_conditioned_groups(_feedback_records(env), env.tok)
    # The step's per-token KL(ref || policy) and entropy, against the full logits of the model
    # read at each scored token's predictor, on a packed prefix-shared batch.
    batch, _ = packing.pack(groups[:6], seq_len=SEQ_LEN, num_rows=2, num_slots=8,
                            share_prefix=True)
    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    model = Decoder(env.model)
    stats = steplib.sequence_stats(model, env.base, env.init, jb, need_reference=False,
                                   chunk_size=64, need_distributions=True)

    def log_softmax(params):
        hidden, _ = model.apply({"params": params}, jb["tokens"], jb["positions"],
                                jb["segment_ids"], jb["branch_ids"])
        logits = np.asarray(hidden @ steplib.output_projection(params, env.model), np.float64)
        z = logits - logits.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lr = log_softmax(env.base), log_softmax(env.init)
    pred = np.asarray(batch["predictor"])
    kl = np.take_along_axis((np.exp(lr) * (lr - lp)).sum(-1), pred, 1)
    ent = np.take_along_axis(-(np.exp(lp) * lp).sum(-1), pred, 1)
    scored = batch["loss_mask"] > 0
    np.testing.assert_allclose(np.asarray(stats.token_kl)[scored], kl[scored], rtol=2e-3,
                               atol=2e-4)
    np.testing.assert_allclose(np.asarray(stats.token_entropy)[scored], ent[scored], rtol=2e-3,
                               atol=2e-4)
    # Training with ALT's loss: the KL to the start is measured and stays small, and the model
    # learns the conditioning as plain likelihood does.
    params, history = train(env, li.alt(), groups, steps=50)
    assert 0.0 < history[-1]["kl"] < 1.0 and history[-1]["entropy"] > 0.0
    desired = env.task.critique(env.prompts[0], env.task.solution(env.prompts[0]))
    _check_conditioning(
        env, params, lambda p: templates.feedback_conditioned_prompt(p, desired),
        lambda p, b: templates.feedback_conditioned_prompt(p, env.task.critique(p, b)))


def test_feedback_conditioned_alt_fcp(env):
    groups = dl.feedback_conditioned_groups(_feedback_records(env), env.tok)
    params, _ = train(env, li.feedback_conditioned(), groups, steps=50)
    desired = env.task.critique(env.prompts[0], env.task.solution(env.prompts[0]))
    _check_conditioning(
        env, params, lambda p: templates.feedback_conditioned_prompt(p, desired),
        lambda p, b: templates.feedback_conditioned_prompt(p, env.task.critique(p, b)))


def test_ilf_loop_improves_oracle_reward(env):
    task, tok = env.task, env.tok
    greedy = sampling.SamplingConfig(max_new_tokens=4, temperature=0.0,
                                     stop_tokens=(tok.eos_id,))
    prompts = list(env.prompts)

    def generate(params, ps):
        return evaluation.sample(params, env.model, tok, ps, sampling_config=greedy,
                                 rng=jax.random.key(0)).texts

    def refine(params, refinement_prompts):
        # An oracle refiner stands in for ILF's refinement LM; selection must find its fix
        # among a wrong candidate and the policy's own answer.
        rng = np.random.default_rng(len(refinement_prompts))
        out = []
        for rp in refinement_prompts:
            p = rp.rsplit("Refinement: ", 1)[1]
            out.append([task.demonstration(p, rng, 0.0), task.solution(p)])
        return out

    def scorer(e, refinement):
        return task.reward(dl.prompt_text(e.prompt), refinement)

    def train_fn(params, pairs):
        return train(env, li.ilf(), dl.ilf_groups(pairs, tok), steps=30, params=params)[0]

    reward_before = np.mean([task.reward(p, y)
                             for p, y in zip(prompts, generate(env.base, prompts))])
    params, history = dl.ilf_loop(
        env.base, prompts, generate=generate,
        feedback=lambda ps, outs: sim.feedback.critiques(task, list(ps), list(outs)),
        refine=refine, train=train_fn, iterations=2, scorer=scorer,
    )
    assert all(r == task.solution(p) for p, r in history[0])  # selection found the fixes
    reward_after = np.mean([task.reward(p, y) for p, y in zip(prompts, generate(params, prompts))])
    assert reward_after > reward_before + 0.2, (reward_before, reward_after)


def test_cut_lowers_flagged_tokens(env):
    records = _feedback_records(env, kind=sim.feedback.judgments)
    # The loss's mechanics on a context where the judgment precedes the instruction (so the
    # plain and judged contexts end alike and the tiny model's ratio reflects the judgment, not
    # the format), every positive kept; the released layout is tested exactly in
    # tests/objectives/test_language.py.
    judged_prompt = templates.feedback_conditioned_prompt
    groups = dl.cut_groups(records, env.tok, judged_prompt=judged_prompt, positive_ratio=None)
    negatives = [e for e in records if e.score < 1.0]

    def copies(e):
        text = dl.prompt_text(e.prompt)
        y = encode.completion_ids(env.tok, e.completion)
        judged = encode.prompt_ids(env.tok, judged_prompt(text, e.feedback))
        return (encode.prompt_ids(env.tok, text), y), (judged, y)

    pairs = [copies(e) for e in negatives]
    plain0 = np.concatenate(token_logps(env, env.base, [p for p, _ in pairs]))
    judged0 = np.concatenate(token_logps(env, env.base, [j for _, j in pairs]))
    flagged = np.asarray(L.cut_inappropriate_tokens(plain0[None], judged0[None],
                                                    np.ones((1, len(plain0)))))[0] > 0
    assert 0 < flagged.sum() < len(flagged)
    params, history = train(env, li.cut(), groups, steps=120)
    assert 0.0 < history[-1]["cut/flagged_fraction"] < 1.0
    plain1 = np.concatenate(token_logps(env, params, [p for p, _ in pairs]))
    delta = plain1 - plain0
    # Flagged tokens lose probability without the judgment, clearly more than the others. The
    # others are not trained under the plain prompt; most barely move, but a few (the same token
    # ids as flagged ones elsewhere) fall by several nats, so their mean swings with the CPU's
    # float rounding (it passed on one machine and not on another): compare medians and the
    # share of tokens that fell, which such a tail does not move.
    assert delta[flagged].mean() < -0.5, delta[flagged].mean()
    assert np.median(delta[flagged]) < np.median(delta[~flagged]) - 0.3, (
        np.median(delta[flagged]), np.median(delta[~flagged]))
    assert (delta[flagged] < 0).mean() > (delta[~flagged] < 0).mean() + 0.2


def test_token_weighted_lowers_faulty_tokens(env):
    spans = sim.feedback.fault_spans(env.task, list(env.prompts), list(env.bad))
    groups = dl.token_reward_groups(spans, env.tok)
    seqs = [(g.prompt, g.completions[0]) for g in groups]
    weights = np.concatenate([g.masks[0] for g in groups])
    assert (weights < 0).any() and (weights > 0).any()
    before = np.concatenate(token_logps(env, env.base, seqs))
    params, _ = train(env, li.token_weighted(), groups, steps=40)
    delta = np.concatenate(token_logps(env, params, seqs)) - before
    assert delta[weights < 0].mean() < -0.5, delta[weights < 0].mean()
    assert delta[weights > 0].mean() > 0.0, delta[weights > 0].mean()


def test_c3po_in_scope_margin_up_out_of_scope_kept(env):
    task, tok = env.task, env.tok
    rng = np.random.default_rng(2)
    prompts = task.sample_prompts(rng, 48)
    plus = [p for p in prompts if "+" in p][:16]
    minus = [p for p in prompts if "-" in p][:16]
    other = [f"Feedback: {p}" for p in task.sample_prompts(rng, 16)]  # unrelated prompt form
    original = functools.partial(
        evaluation.sample, env.base, env.model, tok,
        sampling_config=sampling.SamplingConfig(max_new_tokens=4, temperature=1.0,
                                                stop_tokens=(tok.eos_id,)),
        rng=jax.random.key(3))
    orig_plus, orig_minus, orig_other = (original(ps).texts for ps in (plus, minus, other))
    # Feedback "answer additions correctly": in scope are additions, revised = the solution.
    in_scope = [ex.PairedExample(prompt=ex.user_prompt(p), chosen=task.solution(p), rejected=y)
                for p, y in zip(plus, orig_plus) if y != task.solution(p)]
    groups = dl.c3po_groups(in_scope, list(zip(minus, orig_minus)),
                            list(zip(other, orig_other)), tok)

    def margin(params):
        chosen = seq_logps(env, params, [e.prompt[0][1] for e in in_scope],
                           [e.chosen for e in in_scope])
        rejected = seq_logps(env, params, [e.prompt[0][1] for e in in_scope],
                             [e.rejected for e in in_scope])
        return chosen - rejected

    def out_of_scope(params):
        lp = seq_logps(env, params, other, orig_other)
        n = [len(encode.completion_ids(tok, y)) for y in orig_other]
        return lp / np.array(n)

    params, history = train(env, li.c3po(beta=0.5, out_of_scope_weight=1.0), groups, steps=40)
    gain = np.mean(margin(params) - margin(env.base))
    drift = np.mean(out_of_scope(params) - out_of_scope(env.base))
    assert gain > 2.0, gain
    # The original model's out-of-scope outputs do not become less likely (per token; the
    # likelihood term may make them more likely, which is the direction it pulls).
    assert drift > -0.25, drift
    assert history[-1]["rewards/accuracy"] > 0.5


def test_sami_separates_constitutions(env):
    task, tok = env.task, env.tok
    constitutions = [templates.COH_POSITIVE[2], templates.COH_NEGATIVE[2]]  # correct / incorrect
    data = [(p, constitutions, [task.solution(p), b]) for p, b in zip(env.prompts, env.bad)]
    groups = dl.sami_groups(data, tok)

    def diagonal_margin(params):
        sols = [task.solution(p) for p in env.prompts]
        m = np.zeros((len(env.prompts), 2, 2))
        for i, c in enumerate(constitutions):
            ctx = [dl.sami_prompt(p, c) for p in env.prompts]
            m[:, i, 0] = seq_logps(env, params, ctx, sols)
            m[:, i, 1] = seq_logps(env, params, ctx, list(env.bad))
        ones = jnp.ones_like(jnp.asarray(m))  # m holds sums; compared as sums
        loss, metrics = L.sami(jnp.asarray(m), ones, ones)
        return float(np.mean(metrics["sami/diagonal_margin"])), float(np.mean(loss))

    margin0, loss0 = diagonal_margin(env.base)
    params, _ = train(env, li.sami(2), groups, steps=40)
    margin1, loss1 = diagonal_margin(params)
    assert margin1 > margin0 + 1.0, (margin0, margin1)
    assert loss1 < loss0
