"""Shared pieces of the per-paper experiment modules (``experiments/<method>_<author><year>.py``).

Every paper module exposes two variants:

* ``paper``: the paper's setup as an :class:`~fbjax.config.ExperimentConfig` (model family and
  size with the Hugging Face checkpoint in ``init_from``, data as typed sources from
  ``fbjax.data.sources``, objective and hyperparameters, optimizer, schedule, batch, steps,
  mesh, and what the paper evaluates in :class:`PaperEval`). It is built and validated by the
  tests, never run there (no weights or data offline).
* ``sim``: the same objective on the feedback simulator with a tiny model, minutes on a CPU:
  a :class:`~experiments.feedback_families.FamiliesConfig` with that one method, made by
  :func:`sim_variant`. The data builders below turn the SFT policy's own samples into the
  feedback each method reads.

:func:`run` dispatches a config to the right runner; :func:`run_many` trains several ``sim``
methods from one shared SFT start (the experiment tables and the tests use it), and
:func:`smoke` shrinks a ``sim`` config to seconds of training for CI.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Sequence

import numpy as np

from experiments import feedback_families as ff
from experiments.feedback_families import FamiliesConfig, Method
from fbjax import recipes, sim
from fbjax import sharding as fsh
from fbjax.config import ExperimentConfig, TrainConfig
from fbjax.data import encode, language, templates
from fbjax.data import examples as ex
from fbjax.data.packing import Group
from fbjax.models import config as mc
from fbjax.objectives import binary
from fbjax.data.chat import ChatTemplate
from fbjax.train.objective import Objective
from fbjax.train.optim import OptimizerConfig

# ============================================================================ paper variants


@dataclasses.dataclass(frozen=True, kw_only=True)
class PaperEval:
    """What the paper evaluates and reports. fbjax does not run these benchmarks (they need
    external judges, harnesses or execution sandboxes); the record keeps the comparison target
    next to the config."""

    benchmark: str
    metric: str
    expected: str = ""


@dataclasses.dataclass(frozen=True)
class OnlineEncoder:
    """Stands in for a data stage that samples from the policy (self-generated responses,
    refinements, fresh feedback), which :func:`fbjax.recipes.run_single` does not have: the
    config validates, and loading its data says what is missing."""

    stage: str

    def __call__(self, data, tokenizer, *, prompt_text):
        del data, tokenizer, prompt_text
        raise NotImplementedError(
            f"this run needs an online stage ({self.stage}); fbjax.recipes.run_single trains on "
            "fixed data only"
        )


def hf(name: str) -> str:
    """``init_from`` for a Hugging Face checkpoint, read from ``$FBJAX_HF_DIR`` or the hub cache
    (:func:`fbjax.recipes.resolve_checkpoint`; nothing is downloaded)."""
    return f"hf:{name}"


# Architectures of the checkpoints the paper variants start from, as their config.json states
# them (a run checks them against the real file before training; these make the configs
# complete offline).
# Training dtype: bfloat16 matmuls, float32 parameters, per-block rematerialisation.
_BIG = dict(dtype="bfloat16", remat="block")


def _gpt2(hidden: int, layers: int, heads: int) -> mc.ModelConfig:
    return mc.gpt2(vocab_size=50257, hidden_size=hidden, num_layers=layers, num_heads=heads,
                   mlp_dim=4 * hidden, max_seq_len=1024, **_BIG)


_LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                  num_kv_heads=32, mlp_dim=11008, max_seq_len=4096, norm_eps=1e-5, **_BIG)
_LLAMA2_13B = dict(_LLAMA2_7B, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
                   mlp_dim=13824)
_MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                   num_kv_heads=8, mlp_dim=14336, max_seq_len=32768, norm_eps=1e-5, **_BIG)
_QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                  num_kv_heads=4, mlp_dim=18944, max_seq_len=32768, **_BIG)

CHECKPOINTS: dict[str, mc.ModelConfig] = {
    "openai-community/gpt2": _gpt2(768, 12, 12),
    "openai-community/gpt2-medium": _gpt2(1024, 24, 16),
    "openai-community/gpt2-large": _gpt2(1280, 36, 20),
    "openai-community/gpt2-xl": _gpt2(1600, 48, 25),
    "huggyllama/llama-7b": mc.llama(**{**_LLAMA2_7B, "max_seq_len": 2048, "norm_eps": 1e-6}),
    # LLaMA-7B with a pad token added by the Safe-RLHF authors.
    "PKU-Alignment/alpaca-7b-reproduced": mc.llama(
        **{**_LLAMA2_7B, "vocab_size": 32001, "max_seq_len": 2048, "norm_eps": 1e-6}),
    "meta-llama/Llama-2-7b-hf": mc.llama(**_LLAMA2_7B),
    "meta-llama/Llama-2-13b-hf": mc.llama(**_LLAMA2_13B),
    "locuslab/tofu_ft_llama2-7b": mc.llama(**_LLAMA2_7B),
    "haoranxu/ALMA-13B-Pretrain": mc.llama(**_LLAMA2_13B),
    "mistralai/Mistral-7B-v0.1": mc.mistral(**_MISTRAL_7B),
    "alignment-handbook/zephyr-7b-sft-full": mc.mistral(**_MISTRAL_7B),
    "mistralai/Mistral-7B-Instruct-v0.2": mc.mistral(
        **{**_MISTRAL_7B, "sliding_window": None, "rope_theta": 1_000_000.0}),
    "google/gemma-7b": mc.gemma(vocab_size=256000, hidden_size=3072, num_layers=28, num_heads=16,
                                num_kv_heads=16, head_dim=256, mlp_dim=24576, max_seq_len=8192,
                                **_BIG),
    "Qwen/Qwen2.5-7B-Instruct": mc.qwen2(**_QWEN25_7B),
    "Qwen/Qwen2.5-7B": mc.qwen2(**{**_QWEN25_7B, "max_seq_len": 131072}),
    "Qwen/Qwen2.5-Math-7B": mc.qwen2(**{**_QWEN25_7B, "max_seq_len": 4096, "rope_theta": 10000.0}),
    "Qwen/Qwen2.5-3B-Instruct": mc.qwen2(vocab_size=151936, hidden_size=2048, num_layers=36,
                                         num_heads=16, num_kv_heads=2, mlp_dim=11008,
                                         max_seq_len=32768, tie_embeddings=True, **_BIG),
    "Qwen/Qwen2.5-Coder-0.5B": mc.qwen2(vocab_size=151936, hidden_size=896, num_layers=24,
                                        num_heads=14, num_kv_heads=2, mlp_dim=4864,
                                        max_seq_len=32768, tie_embeddings=True, **_BIG),
}


def checkpoint(name: str) -> dict[str, Any]:
    """``model=`` and ``init_from=`` for ``ExperimentConfig`` from a checkpoint in
    :data:`CHECKPOINTS`."""
    return {"model": CHECKPOINTS[name], "init_from": hf(name)}


# Mesh presets: FSDP alone up to a few billion parameters; 7B+ adds 4- or 8-way tensor
# parallelism inside a host so the per-device activations of long sequences fit.
MESH_FSDP = fsh.MeshConfig(shape=(1, -1, 1), rules=fsh.RULES_FSDP)
MESH_FSDP_TP4 = fsh.MeshConfig(shape=(1, -1, 4), rules=fsh.RULES_FSDP_TP)
MESH_FSDP_TP8 = fsh.MeshConfig(shape=(1, -1, 8), rules=fsh.RULES_FSDP_TP)

# Chat templates the papers' base models were tuned with (not in fbjax.tokenizer's table).
ZEPHYR = ChatTemplate(name="zephyr", user_prefix="<|user|>\n", user_suffix="</s>\n",
                      assistant_prefix="<|assistant|>\n", system_prefix="<|system|>\n",
                      system_suffix="</s>\n")
MISTRAL_INST = ChatTemplate(name="mistral_inst", user_prefix="[INST] ", user_suffix=" [/INST]",
                            assistant_prefix="")
CHATML = ChatTemplate(name="chatml", user_prefix="<|im_start|>user\n", user_suffix="<|im_end|>\n",
                      assistant_prefix="<|im_start|>assistant\n",
                      system_prefix="<|im_start|>system\n", system_suffix="<|im_end|>\n")


def paper_train(
    *,
    examples: int,
    batch: int,
    completions: int,
    seq_len: int,
    max_prompt_len: int,
    epochs: float = 1.0,
    microbatches: int = 1,
    seed: int = 0,
) -> TrainConfig:
    """The loop of a paper's run in the padded layout the reference code uses: one
    (prompt, completion) sequence per row, so ``batch`` examples of ``completions`` sequences
    each are ``batch * completions`` rows, and ``epochs`` passes over ``examples`` are
    ``ceil(epochs * examples / batch)`` steps."""
    return TrainConfig(
        steps=math.ceil(epochs * examples / batch),
        batch_rows=batch * completions,
        seq_len=seq_len,
        microbatches=microbatches,
        log_every=10,
        seed=seed,
        packing=False,
        share_prefix=False,
        max_prompt_len=max_prompt_len,
        max_completion_len=seq_len - max_prompt_len,
    )


# ----------------------------------------------------------------------------- paper encoders


def ranked_groups(
    data: Sequence[ex.RankedExample], tokenizer, *, size: int,
    prompt_text: encode.PromptRenderer = encode.default_prompt_text,
) -> list[Group]:
    """Ranked lists as groups of exactly ``size`` completions, best first, with slot field
    ``relevance`` = the list's scores (``inputs.listwise(size)`` needs fixed-size groups).

    Longer lists keep their ``size`` best items (under Plackett-Luce the ranking of any subset
    follows the same model); shorter lists, and lists whose scores all tie (no order to learn),
    are left out.
    """
    groups = []
    for e in data:
        if len(e.completions) < size or e.scores[0] == e.scores[size - 1]:
            continue
        groups.append(Group(
            encode.prompt_ids(tokenizer, prompt_text(e.prompt)),
            tuple(encode.completion_ids(tokenizer, c) for c in e.completions[:size]),
            {"relevance": tuple(float(s) for s in e.scores[:size])},
        ))
    return groups


def paired_as_ranked(data: Sequence[ex.Example]) -> list[ex.Example]:
    """Preference pairs as two-item rankings (chosen scored 1, rejected 0); others unchanged."""
    return [
        ex.RankedExample(e.prompt, (e.chosen, e.rejected), (1.0, 0.0), dict(e.meta))
        if isinstance(e, ex.PairedExample) else e
        for e in data
    ]


def coh_groups(data: Sequence[ex.Example], tokenizer, *, prompt_text, seed: int = 0):
    """Chain of Hindsight sequences from pairs or rankings (``language.chain_of_hindsight_groups``,
    with its 0-5% past-token masking), shuffled phrases drawn from a seeded generator. Every
    output ends with a trained EOS, so the model learns to stop after the output it is prompted
    for (see ``templates.chain_of_hindsight``)."""
    rendered = [dataclasses.replace(e, prompt=ex.user_prompt(prompt_text(e.prompt)))
                for e in paired_as_ranked(data)]
    return language.chain_of_hindsight_groups(rendered, tokenizer, np.random.default_rng(seed),
                                              eos_after_each=True)


# ============================================================================ sim variants

SIM_BASE = FamiliesConfig(name="sim", samples_per_prompt=4)
SIM_TASK = SIM_BASE.task
# Preference-style objectives: the default experiment's stage (40 steps of 16 packed rows).
SIM_TRAIN = TrainConfig(steps=40, batch_rows=16, seq_len=96, slots_per_row=16, log_every=10)
SIM_OPTIMIZER = OptimizerConfig(learning_rate=1e-4, warmup_steps=5, schedule="constant")
# Likelihood-based methods (language feedback) learn a new, conditional sequence format, so they
# take an SFT-like learning rate and more steps: at 120 steps the feedback-conditioned ones (ALT,
# FCP, LeTI) still sampled worse than the SFT start under the new prompt, at 360 better. Their
# sequences carry critiques, which run to ~200 tokens for a badly wrong answer: rows as long as
# the model's context, and prompts cut from the start so the question itself always stays.
SIM_LM_TRAIN = dataclasses.replace(SIM_TRAIN, steps=360, seq_len=SIM_BASE.model.max_seq_len,
                                   max_prompt_len=SIM_BASE.model.max_seq_len - 16)
SIM_LM_OPTIMIZER = dataclasses.replace(SIM_OPTIMIZER, learning_rate=1e-3)


def sim_variant(method: Method, **overrides) -> FamiliesConfig:
    """The ``sim`` variant of a paper module: SFT on the simulator's noisy demonstrator, then
    ``method`` from that start on feedback over the SFT policy's own samples (4 per prompt, so
    pairwise, listwise and group methods all read the same pool)."""
    return dataclasses.replace(SIM_BASE, name=f"sim_{method.name.lower()}", methods=(method,),
                               **overrides)


# ----------------------------------------------------------------------------- sim feedback
# Builders: (task, pool, tokenizer, rng) -> token groups. ``pool`` is the SFT policy's K
# samples per prompt with their oracle rewards (fbjax.recipes.SamplePool).


def _pool_rows(pool: recipes.SamplePool):
    return zip(pool.prompts, pool.texts, np.asarray(pool.rewards))


def preference_pairs(task, pool, tokenizer, rng, *, flip_rate: float = 0.0,
                     temperature: float = 0.05):
    """Bradley-Terry preferences between disjoint sample pairs (0, 1), (2, 3), ... of each
    prompt; ``flip_rate`` flips labels at random (the noise cDPO / rDPO are built for)."""
    prompts, a, b = [], [], []
    for p, texts in zip(pool.prompts, pool.texts):
        for j in range(0, len(texts) - 1, 2):
            prompts.append(p)
            a.append(texts[j])
            b.append(texts[j + 1])
    pairs = sim.feedback.preferences(task, prompts, a, b, rng, temperature=temperature,
                                     flip_rate=flip_rate)
    return encode.paired(pairs, tokenizer)


def thumbs_without_kl(task, pool, tokenizer, rng):
    """Thumbs up iff the oracle reward is 1, without KTO's mismatched completions (PMPO)."""
    del rng
    data = sim.feedback.thumbs(task, pool.flat_prompts, pool.flat_texts, threshold=1.0)
    return encode.unpaired(data, tokenizer, kl_offset=None)


def balanced_thumbs(task, pool, tokenizer, rng):
    """Thumbs up iff the oracle reward is 1, with as many thumbs-down as thumbs-up (a random
    subset of the larger class), without KTO's mismatched completions (BCO).

    BCO's loss is a plain mean over both classes (TRL ``BCOTrainer.bco_loss``) and the paper
    trains on binarized preference pairs, one thumbs-up and one thumbs-down per prompt. The SFT
    policy's samples are two thirds wrong: at that mix the pushes down on wrong answers, which
    share most of their digits with right ones, outweigh the pushes up (0.46 -> 0.36)."""
    data = sim.feedback.thumbs(task, pool.flat_prompts, pool.flat_texts, threshold=1.0)
    up = [e for e in data if e.label]
    down = [e for e in data if not e.label]
    small, large = sorted((up, down), key=len)
    keep = sorted(rng.choice(len(large), size=len(small), replace=False).tolist())
    return encode.unpaired(small + [large[i] for i in keep], tokenizer, kl_offset=None)


def pmpo_class_means(objective: Objective, groups: list) -> Objective:
    """PMPO's alpha and beta for the data's class mix, so that the batch mean of the per-example
    loss is (up to a constant factor) the paper's objective
    ``-alpha E_accepted[logp] + (1 - alpha) E_rejected[logp] + beta KL``, whose expectations are
    per class; a plain batch mean over a mix with a fraction ``p`` accepted would instead weigh
    accepted and rejected examples ``alpha p : (1 - alpha)(1 - p)``."""
    labels = np.array([g.slot_fields["labels"][0] for g in groups])
    p = float(np.clip(labels.mean(), 1e-6, 1 - 1e-6))
    hp = objective.hparams
    alpha = hp.get("alpha", inspect.signature(binary.pmpo).parameters["alpha"].default)
    beta = hp.get("beta", inspect.signature(binary.pmpo).parameters["beta"].default)
    # Per example: accepted -alpha' logp, rejected (1 - alpha') logp, all beta' KL; matching
    # alpha' p = c alpha, (1 - alpha')(1 - p) = c (1 - alpha), beta' = c beta.
    accepted, rejected = alpha / p, (1.0 - alpha) / (1.0 - p)
    c = 1.0 / (accepted + rejected)
    return dataclasses.replace(
        objective, hparams={**hp, "alpha": accepted * c, "beta": beta * c})


def fault_tokens(task, pool, tokenizer, rng):
    """Unlikelihood's negatives as Welleck et al. define them: the tokens that should not have
    been generated (there, tokens repeating an earlier n-gram; here, the digits the oracle marks
    wrong, ``task.fault_spans``), not every token of a bad answer. Each wrong sample is one
    completion whose loss mask is 1 on its wrong tokens only; its right digits and EOS are left
    alone (pushing those down too, at a learning rate of 1e-4, took the oracle reward from 0.46
    to 0.13, against 0.31 with the wrong digits only)."""
    del rng
    spans = [e for e in sim.feedback.fault_spans(task, pool.flat_prompts, pool.flat_texts)
             if e.score < 1.0 and e.spans]
    groups = language.token_reward_groups(spans, tokenizer, fault_weight=1.0, clean_weight=0.0)
    return [g for g in groups if g.masks[0].any()]


def ranked_lists(task, pool, tokenizer, rng):
    """Each prompt's samples ranked by oracle reward (graded, in [0, 1]) as one listwise group."""
    del rng
    data = sim.feedback.ranked(task, list(pool.prompts), [list(t) for t in pool.texts])
    return ranked_groups(data, tokenizer, size=len(pool.texts[0]))


def negative_with_samples(task, pool, tokenizer, rng):
    """D2O groups: a human-style negative (the demonstrator's systematically wrong answer,
    ``quality=0``) followed by the SFT policy's K samples of the same prompt."""
    groups = []
    for p, texts in zip(pool.prompts, pool.texts):
        negative = task.demonstration(p, rng, 0.0)
        groups.append(Group(
            encode.prompt_ids(tokenizer, p),
            tuple(encode.completion_ids(tokenizer, t) for t in (negative, *texts)),
        ))
    return groups


def verified_groups(task, pool, tokenizer, rng):
    """NFT groups: a prompt's K samples with verifier labels (reward == 1) and the group's
    accuracy as slot fields. All-correct and all-wrong groups carry no signal and are dropped,
    as the reference implementation's group filter does."""
    del rng
    groups = []
    for p, texts, rewards in _pool_rows(pool):
        labels = (rewards >= 1.0).astype(np.float32)
        accuracy = float(labels.mean())
        if accuracy in (0.0, 1.0):
            continue
        groups.append(Group(
            encode.prompt_ids(tokenizer, p),
            tuple(encode.completion_ids(tokenizer, t) for t in texts),
            {"labels": tuple(float(x) for x in labels), "group_accuracy": (accuracy,) * len(texts)},
        ))
    return groups


def dissatisfaction_pairs(task, pool, tokenizer, rng):
    """DRIFT pairs: a sample the user is dissatisfied with (reward < 1, the worst of the prompt)
    as the rejected response, and the policy's best sample of the prompt as the chosen one,
    when it is strictly better."""
    del rng
    pairs = []
    for p, texts, rewards in _pool_rows(pool):
        worst, best = int(np.argmin(rewards)), int(np.argmax(rewards))
        if rewards[worst] >= 1.0 or rewards[best] <= rewards[worst]:
            continue
        meta = {"source": f"sim:{task.name}", "reward_chosen": float(rewards[best]),
                "reward_rejected": float(rewards[worst])}
        pairs.append(ex.PairedExample(ex.user_prompt(p), texts[best], texts[worst], meta=meta))
    return encode.paired(pairs, tokenizer)


def hindsight(task, pool, tokenizer, rng):
    """Chain of Hindsight sequences over each prompt's ranked samples, every output ended by a
    trained EOS: evaluation samples the first output's position, and with EOS after the last
    output only the model never learned to stop there (oracle reward 0.07, samples running on
    with more digits, often up to the 8-token limit)."""
    data = sim.feedback.ranked(task, list(pool.prompts), [list(t) for t in pool.texts])
    return language.chain_of_hindsight_groups(data, tokenizer, rng, eos_after_each=True)


def critiques(task, pool) -> list[ex.FeedbackExample]:
    return sim.feedback.critiques(task, pool.flat_prompts, pool.flat_texts)


def refinement_sft(task, pool, tokenizer, rng):
    """ILF: (input -> refinement) pairs, the refinement written by the task's oracle from the
    output and its critique (a perfect refiner in place of the paper's LM refiner and selector)."""
    del rng
    records = sim.feedback.refinements(task, pool.flat_prompts, pool.flat_texts)
    pairs = language.select_refinements(records, [[r.refinement] for r in records])
    return language.ilf_groups(pairs, tokenizer)


def leti_sequences(task, pool, tokenizer, rng):
    """LeTI: reward token, instruction, output and (for failures) the critique."""
    del rng
    return language.leti_groups(critiques(task, pool), tokenizer)


def judged_pairs(task, pool, tokenizer, rng):
    """CUT: each sample under the plain and the judgment-conditioned prompt."""
    del rng
    data = sim.feedback.judgments(task, pool.flat_prompts, pool.flat_texts)
    return language.cut_groups(data, tokenizer)


def is_addition(prompt: str) -> bool:
    """The scope of the simulated verbal feedback "carry correctly when adding" (C3PO)."""
    return "+" in prompt


def scoped_feedback(task, pool, tokenizer, rng, *, in_scope: Callable[[str], bool] = is_addition):
    """C3PO's data for the feedback "carry correctly when adding": in-scope (addition) prompts
    as (oracle-revised, original) pairs, near-scope (subtraction) prompts with the original
    model's sample for likelihood. The simulator has no unrelated prompts, so there is no
    out-of-scope set."""
    del rng
    revised, near = [], []
    for p, texts in zip(pool.prompts, pool.texts):
        original = texts[0]
        if in_scope(p):
            fixed = task.refine(p, original)
            if fixed != original:
                revised.append(ex.PairedExample(ex.user_prompt(p), fixed, original))
        else:
            near.append((p, original))
    return language.c3po_groups(revised, near, [], tokenizer)


def feedback_conditioned(task, pool, tokenizer, rng):
    """ALT / FCP: (critique, prompt) -> the sample that received that critique."""
    del rng
    return language.feedback_conditioned_groups(critiques(task, pool), tokenizer)


def desired_feedback_prompt(prompt: str, task=SIM_TASK) -> str:
    """Sample conditioned on the critique a correct answer gets."""
    praise = task.critique(prompt, task.solution(prompt))
    return templates.feedback_conditioned_prompt(prompt, praise)


def control_tokens(task, pool, tokenizer, rng):
    """Conditional training: ``<|good|>`` iff the reward is 1, else ``<|bad|>``."""
    del rng
    return language.conditional_groups(critiques(task, pool), tokenizer, threshold=1.0)


# SAMI's two principles, phrased with text the simulator's tokenizer knows.
SAMI_CONSTITUTIONS = (templates.COH_POSITIVE[2], templates.COH_NEGATIVE[2])


def constitution_matrix(task, pool, tokenizer, rng):
    """SAMI: per prompt, the best sample stands for the response under the first principle and
    the worst for the response under the second (the tiny policy cannot follow a written
    principle, so sampling under each is replaced by this assignment); prompts whose samples
    all score the same are left out."""
    del rng
    data = []
    for p, texts, rewards in _pool_rows(pool):
        best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
        if rewards[best] > rewards[worst]:
            data.append((p, SAMI_CONSTITUTIONS, (texts[best], texts[worst])))
    return language.sami_groups(data, tokenizer)


def principled_prompt(prompt: str) -> str:
    return language.sami_prompt(prompt, SAMI_CONSTITUTIONS[0])


def pick(variant: str, **builders: Callable[[], Any]):
    """``get_config`` body: the config of ``variant`` from its builder, or a clear error."""
    if variant not in builders:
        raise ValueError(f"unknown variant {variant!r}; choose one of {tuple(builders)}")
    return builders[variant]()


# ============================================================================ running


def run(config: Any, *, workdir: str, progress: bool = True, sft_cache: str | None = None):
    """``sim`` configs run SFT + the method (``feedback_families.run``; ``sft_cache`` reuses
    stored SFT params); ``paper`` configs are one training run (``fbjax.recipes.run_single``)."""
    if isinstance(config, FamiliesConfig):
        return ff.run(config, workdir=workdir, progress=progress, sft_cache=sft_cache)
    if isinstance(config, ExperimentConfig):
        return recipes.run_single(config, workdir=workdir, progress=progress)
    raise TypeError(f"no runner for {type(config).__name__}")


def merge(configs: Sequence[FamiliesConfig]) -> list[FamiliesConfig]:
    """Configs that differ only in their methods (and name), merged into one config each, so
    their methods share a single SFT start and sample pool."""
    merged: list[FamiliesConfig] = []
    for cfg in configs:
        key = dataclasses.replace(cfg, name="", methods=())
        for i, other in enumerate(merged):
            if dataclasses.replace(other, name="", methods=()) == key:
                merged[i] = dataclasses.replace(other, methods=other.methods + cfg.methods)
                break
        else:
            merged.append(dataclasses.replace(cfg, name="sim_many"))
    for cfg in merged:
        names = [m.name.lower() for m in cfg.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method names sharing a start must be unique (they name "
                             f"workdirs): {names}")
    return merged


def run_many(configs: Sequence[FamiliesConfig], *, workdir: str, progress: bool = True,
             sft_cache: str | None = None):
    """Runs several ``sim`` configs, sharing one SFT start among those that agree on everything
    but their methods; returns the summaries, one per shared start."""
    out = []
    for i, cfg in enumerate(merge(configs)):
        out.append(ff.run(cfg, workdir=f"{workdir}/{i}", progress=progress, sft_cache=sft_cache))
    return out


def smoke(cfg: FamiliesConfig, *, method_steps: int = 2) -> FamiliesConfig:
    """A ``sim`` config shrunk to seconds for CI: one-layer width-32 model on a data-parallel
    mesh (the fastest to compile on CPU devices), a short SFT that still leaves the policy
    producing some correct answers (so every feedback type has data), 32 feedback prompts,
    16 evaluation prompts and ``method_steps`` steps of each method."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, hidden_size=32, mlp_dim=64, num_layers=1),
        mesh=fsh.MeshConfig(shape=(-1, 1, 1), rules=fsh.RULES_FSDP),
        num_demos=2000,
        sft_train=dataclasses.replace(cfg.sft_train, steps=400, batch_rows=8, log_every=100),
        sft_optimizer=dataclasses.replace(cfg.sft_optimizer, learning_rate=1e-2),
        num_feedback_prompts=32,
        num_eval_prompts=16,
        methods=tuple(
            dataclasses.replace(m, train=dataclasses.replace(
                m.train, steps=method_steps, batch_rows=8, log_every=1))
            for m in cfg.methods
        ),
    )


# ============================================================================ reward models

BEST_OF = 4


def reward_model_start(model: mc.ModelConfig, params, rng):
    """Stiennon et al. 2020 start the reward model from the SFT policy with a fresh scalar head
    (and, in fbjax, without the LM head a reward model does not use)."""
    from fbjax.models.decoder import has_lm_head, init_reward_head

    rm = dataclasses.replace(model, reward_head=True)
    rm_params = {k: v for k, v in params.items() if k != "lm_head" or has_lm_head(rm)}
    rm_params["reward_head"] = init_reward_head(rm, rng)
    return rm, rm_params


def best_of_n_eval(ctx: ff.EvalContext, *, n: int = BEST_OF) -> dict[str, float]:
    """A reward model judged by what it is for: on held-out prompts, ``n`` samples of the SFT
    policy each; the reward model picks one (best-of-n). Reports the picked samples' oracle
    reward and accuracy, its win rate over the first sample, the analytical best-of-n KL bound
    ``log n - (n - 1) / n``, and the reward model's agreement with the oracle on every pair of
    samples the oracle tells apart (``rm_accuracy``), next to the samples' mean and the oracle's
    own best-of-n (the ceiling)."""
    from fbjax import evaluation

    pool = recipes.sample_pool(ctx.task, ctx.sft_params, ctx.sft_model, ctx.tokenizer,
                               list(ctx.prompts), samples_per_prompt=n,
                               sampling_config=ctx.sampling, rng=ctx.rng)
    groups = [Group(encode.prompt_ids(ctx.tokenizer, p),
                    tuple(encode.completion_ids(ctx.tokenizer, t) for t in texts))
              for p, texts in zip(pool.prompts, pool.texts)]
    scores = evaluation.sequence_rewards(ctx.params, ctx.model, groups).reshape(len(groups), n)
    oracle = np.asarray(pool.rewards, np.float64)
    picked = oracle[np.arange(len(groups)), scores.argmax(axis=1)]
    i, j = np.triu_indices(n, 1)
    told_apart = oracle[:, i] != oracle[:, j]
    agree = (scores[:, i] > scores[:, j]) == (oracle[:, i] > oracle[:, j])
    return {
        "reward": float(picked.mean()),
        "accuracy": float(np.mean(picked >= 1.0)),
        "win_rate": float(np.mean((picked > oracle[:, 0]) + 0.5 * (picked == oracle[:, 0]))),
        "kl": math.log(n) - (n - 1) / n,
        "rm_accuracy": float(agree[told_apart].mean()) if told_apart.any() else float("nan"),
        "reward_sample_mean": float(oracle.mean()),
        "reward_oracle_best_of_n": float(oracle.max(axis=1).mean()),
    }
