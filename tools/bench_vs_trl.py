"""One DPO training step, fbjax vs TRL, on the same model, weights, batch and objective (CPU).

    python tools/bench_vs_trl.py --pairs 8 --reps 7 --out vs_trl.json

What is held equal:

* **model and weights**: a small Llama built with transformers (``LlamaConfig`` /
  ``LlamaForCausalLM``, random init), saved with ``save_pretrained`` and loaded into fbjax with
  ``fbjax.models.hf.load_hf``; TRL trains the saved model itself. The per-sequence log-probs of
  both are compared on the batch before timing (``logp_max_abs_diff``).
* **batch**: ``--pairs`` real HH-RLHF pairs (harmless-base test split), drawn at random, tokenized
  with a sentencepiece BPE trained on the split (``tools/report_padding.py``), each (prompt,
  completion) cut to ``--max-len`` tokens (a cut completion keeps EOS as its last token). TRL
  receives the same token ids through a word-level tokenizer whose word ``<i>`` is id ``i``
  (checked: TRL's tokenized ids equal fbjax's).
* **objective**: sigmoid DPO, beta 0.1, summed completion log-probs, reference = the initial
  model, AdamW with global-norm clipping at 1.0, float32, no gradient checkpointing, dropout off.

Every fbjax step uses training's default LM head at scored positions (passes of an eighth of
the row, ``TrainConfig.scored_bound``), or ``--max-scored`` positions a row per pass; TRL's
fused head likewise projects only the labelled positions.

Five steps are timed, one of each per repetition, in turn:

* ``fbjax``: fbjax's default, the pairs packed into rows of ``--row-len`` tokens with the prompt
  shared by both completions, the reference forward in the step;
* ``fbjax_cached``: the same layout, the reference log-probs computed once beforehand
  (``fbjax.train.reference``) and read from the batch;
* ``fbjax_padded_cached``: TRL's layout (one sequence per row, padded to the batch's longest),
  reference cached, so against ``trl_best`` only the step differs;
* ``trl``: TRL's defaults (reference forward in every step, eager PyTorch);
* ``trl_best``: TRL at its best on this CPU: ``precompute_ref_log_probs=True`` and the policy
  compiled with ``torch.compile`` (see ``TrlStep``).

Two comparisons are reported, each as the median and range over repetitions of the per-
repetition ratio (TRL's step time over fbjax's): like for like with both caching the reference
(``fbjax_cached`` and ``fbjax_padded_cached`` against ``trl_best``), and default against default
(``fbjax`` against ``trl``); also fbjax's default against ``trl_best``. ``--also-padded`` adds
fbjax on TRL's layout with the reference in the step (against ``trl``).

TRL options considered: ``padding_free=True`` is disabled in TRL 1.16 (it warns and falls back to
padding); TRL 1.16 has no ``use_logits_to_keep`` (its fused LM head already projects only the
labelled positions); ``torch_compile_mode="max-autotune"`` was not tried (inductor's default mode
is used). ``bf16=True`` (autocast to bfloat16; this machine's CPU has AMX-bf16, so it can be
faster than float32) changes the numerics, so it is not like for like with fbjax's float32 step:
``--trl-bf16`` adds it as an extra step, ``trl_best_bf16`` (``trl_best`` with the step under
``torch.autocast("cpu", dtype=torch.bfloat16)``, which is what ``Trainer`` does with
``bf16=True``; applied by hand because accelerate's state is one per process and the flag would
switch every trainer in it), with its own ratios. Its losses are printed, not expected to match.

Every step is jitted (fbjax) or TRL's own; ``Trainer.train()`` owns its loop, so to time single
steps alternately with fbjax this script performs exactly what ``Trainer._inner_training_loop``
does for one optimizer step with ``gradient_accumulation_steps=1``, using the trainer's own
objects: ``trainer.training_step(model, inputs)`` (DPOTrainer's loss: policy forward with TRL's
fused LM head, reference forward unless precomputed, backward),
``accelerator.clip_grad_norm_``, ``optimizer.step()``, ``lr_scheduler.step()``,
``model.zero_grad()``; ``inputs`` come from DPOTrainer's own collator on its own tokenized
dataset (with ``trl_best``, carrying the precomputed reference sums).

Steps are timed alternately after ``--warmup`` rounds (which include XLA's and torch.compile's
compilations), each synchronised. Throughput counts real tokens: each prompt once plus both
completions, the same number for all, so the tokens/s ratio is the inverse ratio of step times.
The load average is printed before, during and after: under load torch slows more than XLA, so
only figures from a quiet machine represent the code. TRL and torch are optional dependencies needed only here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from typing import Sequence

import numpy as np

# Runnable as a script from a checkout; report_padding is a sibling tool.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bench_alternate  # noqa: E402
import report_padding  # noqa: E402
from fbjax import sharding as fsh  # noqa: E402
from fbjax.data import encode, packing  # noqa: E402
from fbjax.models import hf as fhf  # noqa: E402
from fbjax.models.decoder import Decoder  # noqa: E402
from fbjax.train import presets  # noqa: E402
from fbjax.train import reference  # noqa: E402
from fbjax.train import step as steplib  # noqa: E402
from fbjax.train.config import TrainConfig  # noqa: E402
from fbjax.train.optim import OptimizerConfig, make_optimizer  # noqa: E402

EOS, PAD = 1, 0  # fbjax.tokenizers' special ids


def cut(group: packing.Group, max_len: int) -> packing.Group:
    """``report_padding.truncate``, but a cut completion still ends with EOS (see docstring)."""
    out = report_padding.truncate(group, max_len)
    comps = tuple(
        c if c[-1] == EOS else np.concatenate([c[:-1], [EOS]]).astype(np.int32)
        for c in out.completions
    )
    return packing.Group(out.prompt, comps, out.slot_fields)


def load_batch(args) -> list[packing.Group]:
    pairs, _ = report_padding.load_pairs(args.data)
    tok = report_padding.tokenizer_for(pairs, args.vocab_size, args.tokenizer_cache)
    rng = np.random.default_rng(args.seed)
    chosen = [pairs[i] for i in rng.choice(len(pairs), args.pairs, replace=False)]
    return [cut(g, args.max_len) for g in encode.paired(chosen, tok)], tok.vocab_size


# ----------------------------------------------------------------------------- the model


def make_hf_model(args, vocab: int, out_dir: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.mlp,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=max(args.row_len, 1024),
        rms_norm_eps=1e-6, rope_theta=float(getattr(args, "rope_theta", 10_000.0)),
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=2, eos_token_id=EOS, pad_token_id=PAD, initializer_range=0.02,
    )
    LlamaForCausalLM(cfg).save_pretrained(out_dir)


def hf_tokenizer(vocab: int):
    """Word ``<i>`` <-> id ``i``: TRL tokenizes text, and this text round-trips our ids.

    Special tokens are matched as substrings before splitting, so no word may contain another:
    the brackets ensure that (``t1`` would be found inside ``t15``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {_word(i): i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token=_word(3)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=_word(PAD),
                                   eos_token=_word(EOS), bos_token=_word(2), unk_token=_word(3))


def _word(i: int) -> str:
    return f"<{int(i)}>"


def as_text(ids) -> str:
    return " ".join(_word(i) for i in ids)


# ----------------------------------------------------------------------------- TRL


class TrlStep:
    """DPOTrainer's training step, one optimizer update per call (module docstring).

    ``best=True`` is TRL at its best on this CPU: ``precompute_ref_log_probs=True`` (DPOTrainer
    computes every reference sum once, in its constructor, and the collator hands them to the
    loss) and the policy compiled with ``torch.compile`` (inductor, default mode), which is what
    ``torch_compile=True`` makes ``Trainer`` do through ``accelerator.prepare``; compiled here
    directly because the accelerate state is one per process and this script holds two trainers.
    """

    def __init__(self, model_dir: str, groups, vocab: int, args, workdir: str,
                 best: bool = False, bf16: bool = False):
        import datasets
        import torch
        import transformers
        from transformers import LlamaForCausalLM
        from trl import DPOConfig, DPOTrainer

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()

        self.torch = torch
        rows = [{"prompt": as_text(g.prompt), "chosen": " " + as_text(g.completions[0]),
                 "rejected": " " + as_text(g.completions[1])} for g in groups]
        config = DPOConfig(
            output_dir=workdir, per_device_train_batch_size=len(groups), beta=0.1,
            loss_type=["sigmoid"], max_length=None, bf16=False, activation_checkpointing=False,
            use_cpu=True, report_to="none", save_strategy="no", learning_rate=1e-6,
            max_grad_norm=1.0, seed=args.seed, dataloader_num_workers=0,
            precompute_ref_log_probs=best,
        )
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.trainer = DPOTrainer(model=model, ref_model=None, args=config,
                                  train_dataset=datasets.Dataset.from_list(rows),
                                  processing_class=hf_tokenizer(vocab))
        tr = self.trainer
        tr.create_optimizer_and_scheduler(num_training_steps=1000)
        # Set by the inner loop before each update (the number of micro-batches in it).
        tr.current_gradient_accumulation_steps = 1
        examples = [tr.train_dataset[i] for i in range(len(groups))]
        for g, ex in zip(groups, examples):  # TRL sees exactly fbjax's token ids
            assert ex["prompt_ids"] == g.prompt.tolist(), "TRL tokenized the prompt differently"
            assert ex["chosen_ids"] == g.completions[0].tolist()
            assert ex["rejected_ids"] == g.completions[1].tolist()
        keys = ("prompt_ids", "chosen_ids", "rejected_ids")
        if best:
            keys += ("ref_chosen_logps", "ref_rejected_logps")
        self.inputs = tr.data_collator([{k: ex[k] for k in keys} for ex in examples])
        # Trainer's inner loop calls training_step with the wrapped (here: compiled) model;
        # trainer.model stays the plain module whose parameters the optimizer holds.
        self.model = torch.compile(tr.model) if best else tr.model
        # What Trainer does with bf16=True on a CPU (accelerator.autocast: torch.autocast to
        # bfloat16), applied around the step: accelerate's state is one per process, so setting
        # bf16 in this trainer's config would switch the other trainers to bf16 too.
        self.autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                         else contextlib.nullcontext())

    def __call__(self) -> float:
        tr = self.trainer
        with self.autocast:
            loss = tr.training_step(self.model, dict(self.inputs))
        if tr.args.max_grad_norm > 0:
            tr.accelerator.clip_grad_norm_(tr.model.parameters(), tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.lr_scheduler.step()
        tr.model.zero_grad()
        return float(loss)

    def sequence_logps(self) -> np.ndarray:
        """Summed completion log-probs of [chosen..., rejected...] under the current policy."""
        torch = self.torch
        model = self.trainer.model
        with torch.no_grad():
            ids, mask = self.inputs["input_ids"], self.inputs["completion_mask"]
            logits = model(input_ids=ids, attention_mask=self.inputs["attention_mask"]).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(
                -1, ids[:, 1:, None])[..., 0]
            return (logp * mask[:, 1:]).sum(-1).numpy()


# ----------------------------------------------------------------------------- fbjax


class FbjaxStep:
    """fbjax's jitted DPO step on the pairs.

    ``layout="prefix"`` (the default of ``fbjax.train.stream.batch_stream``): the pairs packed into
    rows of ``--row-len`` tokens, each prompt shared by its two completions, as few rows as
    first-fit needs. ``layout="padded"``: one sequence per row, padded to the batch's longest
    sequence, as TRL lays the batch out (isolates the layout's share of the difference).
    """

    def __init__(self, model_dir: str, groups, args, layout: str = "prefix",
                 cached: bool = False, padded_len: int | None = None):
        config, params = fhf.load_hf(model_dir)
        self.config, self.model = config, Decoder(config)
        mesh = fsh.make_mesh(fsh.MeshConfig(shape=(1, 1, 1)), jax.devices()[:1])
        rules = fsh.RULES_FSDP_TP
        objective = presets.dpo(beta=0.1)
        optimizer = make_optimizer(
            OptimizerConfig(learning_rate=1e-6, schedule="linear", grad_clip=1.0), 1000)
        longest = max(len(g.prompt) + len(c) for g in groups for c in g.completions)
        self.padded = packing.padded(groups, seq_len=padded_len or longest,
                                     num_rows=2 * len(groups), fields=("weights",))[0]
        fields = ("weights",)
        if cached:  # computed once, outside the timed steps (fbjax.train.reference)
            sums = reference.compute_reference_logps(params, config, groups, chunk_size=args.chunk)
            groups, fields = reference.attach(groups, sums), ("weights", reference.FIELD)
        self.batch = (self._pack(groups, args.row_len, fields) if layout == "prefix" else
                      packing.padded(groups, seq_len=padded_len or longest,
                                     num_rows=2 * len(groups), fields=fields)[0])
        self.layout = (f"{self.batch['tokens'].shape[0]} x {self.batch['tokens'].shape[1]} "
                       + ("packed + prefix-shared" if layout == "prefix" else "padded"))
        self.state, shardings = steplib.create_state(
            params, model=self.model, optimizer=optimizer, objective=objective,
            rng=jax.random.key(args.seed), mesh=mesh, rules=rules,
            reference_params=None if cached else params)
        bsh = steplib.batch_shardings(mesh, self.batch)
        self.device_batch = {k: jax.device_put(v, bsh[k]) for k, v in self.batch.items()}
        # fbjax's training default: the LM head at scored positions, passes of an eighth of
        # the row; --max-scored sets the pass (train.max_scored_tokens), same values.
        self.max_scored = TrainConfig(seq_len=self.batch["tokens"].shape[1],
                                      max_scored_tokens=args.max_scored).scored_bound
        self.step = steplib.make_train_step(
            model=self.model, objective=objective, optimizer=optimizer, mesh=mesh, rules=rules,
            state_sharding=shardings, batch_sharding=bsh, chunk_size=args.chunk,
            max_scored=self.max_scored)

    @property
    def computed_tokens(self) -> int:
        return int(self.batch["tokens"].size)

    @staticmethod
    def _pack(groups, row_len, fields=("weights",)):
        kw = dict(seq_len=row_len, num_slots=2 * len(groups), share_prefix=True, fields=fields)
        batch, used = packing.pack(groups, num_rows=len(groups), **kw)
        rows = int(np.sum(batch["segment_ids"].max(axis=1) > 0))
        batch, used = packing.pack(groups, num_rows=rows, **kw)  # same first fit, no empty rows
        assert used == len(groups), "the pairs do not fit; raise --row-len"
        return batch

    def __call__(self) -> float:
        self.state, metrics = self.step(self.state, self.device_batch)
        loss, count = jax.device_get(metrics["loss"])
        return float(loss) / float(count)

    def sequence_logps(self) -> np.ndarray:
        """Summed completion log-probs, [chosen..., rejected...] as TRL orders them."""
        batch = {k: jnp.asarray(v) for k, v in self.padded.items()}
        stats = jax.jit(lambda p, b: steplib.sequence_stats(
            self.model, p, None, b, need_reference=False, chunk_size=8192))(self.state.params,
                                                                             batch)
        lp = np.asarray(stats.logps)
        return np.concatenate([lp[0::2], lp[1::2]])


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_alternate.add_common_args(p, report_padding.DEFAULT_DATA)
    p.add_argument("--max-len", type=int, default=512, help="token limit per sequence")
    p.add_argument("--chunk", type=int, default=8192, help="fbjax log-softmax vocabulary chunk")
    p.add_argument("--reps", type=int, default=7, help="timed steps of each, alternating")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--also-padded", action="store_true",
                   help="also time fbjax on TRL's padded layout with the reference in the step")
    p.add_argument("--trl-bf16", action="store_true",
                   help="also time trl_best under bf16 autocast (bf16=True; float32 weights)")
    p.add_argument("--tokenizer-cache", default=None)
    p.add_argument("--out", default=None)
    args = bench_alternate.parse_args(p, argv)

    import torch
    import transformers
    import trl

    groups, vocab = load_batch(args)
    real_tokens = sum(len(g.prompt) + sum(len(c) for c in g.completions) for g in groups)
    load_before = bench_alternate.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        make_hf_model(args, vocab, model_dir)
        steps = {"fbjax": FbjaxStep(model_dir, groups, args),
                 "fbjax_cached": FbjaxStep(model_dir, groups, args, cached=True),
                 "fbjax_padded_cached": FbjaxStep(model_dir, groups, args, layout="padded",
                                                  cached=True)}
        if args.also_padded:
            steps["fbjax_padded"] = FbjaxStep(model_dir, groups, args, layout="padded")
        steps["trl"] = TrlStep(model_dir, groups, vocab, args, os.path.join(tmp, "trl"))
        steps["trl_best"] = TrlStep(model_dir, groups, vocab, args, os.path.join(tmp, "trl_b"),
                                    best=True)
        if args.trl_bf16:
            steps["trl_best_bf16"] = TrlStep(model_dir, groups, vocab, args,
                                             os.path.join(tmp, "trl_bf"), best=True, bf16=True)

        # Same weights, same batch: the two libraries' log-probs must agree before training.
        lp_fb, lp_tr = steps["fbjax"].sequence_logps(), steps["trl"].sequence_logps()
        logp_diff = float(np.max(np.abs(lp_fb - lp_tr)))
        print(f"{len(groups)} pairs, {real_tokens} real tokens; per-sequence log-prob "
              f"|fbjax - TRL| max {logp_diff:.2e} (sums of magnitude ~{np.abs(lp_tr).mean():.0f})")

        # All start from the same weights and take the same AdamW updates (a cached reference
        # holds the initial model's sums, as the in-step one computes), so their losses should
        # stay close step by step: a check that the same step is being timed. The warm-up
        # rounds include torch.compile's and XLA's compilations.
        losses, times, loads = bench_alternate.time_alternately(
            steps, warmup=args.warmup, reps=args.reps)

    medians = {name: statistics.median(t) for name, t in times.items()}
    # fbjax step vs TRL step, per repetition (tokens/s ratio = inverse ratio of step times).
    pairs = {"like_for_like_cached": [("fbjax_cached", "trl_best"),
                                      ("fbjax_padded_cached", "trl_best")],
             "default_vs_default": [("fbjax", "trl")],
             "fbjax_default_vs_trl_best": [("fbjax", "trl_best")]}
    if args.also_padded:
        pairs["default_vs_default"].append(("fbjax_padded", "trl"))
    if args.trl_bf16:  # not like for like in numerics: fbjax stays float32
        pairs["trl_bf16_autocast"] = [("fbjax_cached", "trl_best_bf16"),
                                      ("trl_best", "trl_best_bf16")]
    ratios = {kind: {f"{a} vs {b}": bench_alternate.ratio_stats(times[a], times[b])
                     for a, b in ab} for kind, ab in pairs.items()}
    computed = {name: (step.computed_tokens if name.startswith("fbjax")
                       else int(step.inputs["input_ids"].numel()))
                for name, step in steps.items()}
    layouts = {name: (step.layout if name.startswith("fbjax") else
                      f"{step.inputs['input_ids'].shape[0]} x {step.inputs['input_ids'].shape[1]}"
                      " padded") for name, step in steps.items()}
    reference = {"fbjax": "in step", "fbjax_padded": "in step", "fbjax_cached": "cached",
                 "fbjax_padded_cached": "cached", "trl": "in step",
                 "trl_best": "precomputed + torch.compile",
                 "trl_best_bf16": "precomp. + compile + bf16"}
    result = {
        "pairs": len(groups),
        "real_tokens": real_tokens,
        "computed_tokens": computed,
        "layouts": layouts,
        "reference": {name: reference[name] for name in steps},
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "kv_heads": args.kv_heads, "mlp": args.mlp, "vocab": vocab},
        "logp_max_abs_diff": logp_diff,
        "fbjax_max_scored": {name: steps[name].max_scored for name in steps
                             if name.startswith("fbjax")},
        "step_s": times,
        "step_s_median": medians,
        "tokens_per_s": {name: real_tokens / m for name, m in medians.items()},
        "ratios": ratios,
        "load_average": {"before": load_before, "per_rep_1min": loads,
                         "after": bench_alternate.load_average()},
        "losses": losses,
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__},
        "torch_threads": torch.get_num_threads(),
        "malloc_kept_freed_memory": args.malloc_tuned,
        "cpus": os.cpu_count(),
    }
    bench_alternate.report(result, peer='TRL', reps=args.reps, out=args.out, ref_width=29)
    return result


if __name__ == "__main__":
    main()
