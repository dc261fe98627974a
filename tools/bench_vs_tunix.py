"""One DPO training step, fbjax vs Tunix (``google-tunix``), same checkpoint, data and objective.

Tunix pins its own dependency set, so it lives in a separate virtual environment that also holds
fbjax (the same jax, flax and optax versions as fbjax's own environment)::

    python3 -m venv /work/venv-tunix
    /work/venv-tunix/bin/pip install "jax==0.10.2" "google-tunix==0.1.7" matplotlib chex
    /work/venv-tunix/bin/pip install -e . --no-deps     # fbjax, from a checkout

The checkpoint is a small Llama built and saved by transformers, which needs torch; Tunix's
environment has none, so the script asks fbjax's environment (``--torch-python``) to write it
(``--make-model``, the same code as ``tools/bench_vs_trl.py``), then loads it into both::

    /work/venv-tunix/bin/python tools/bench_vs_tunix.py --pairs 8 --reps 7 \\
        --torch-python /work/main/.venv/bin/python --out vs_tunix.json

Both libraries run in this one process, one jitted step each, timed alternately.

What is held equal:

* **weights**: the transformers checkpoint, loaded into Tunix's own Llama (``tunix.models.llama3``,
  ``create_model_from_safe_tensors``) and into fbjax (``fbjax.models.hf.load_hf``); float32 in
  both. The per-sequence log-probs of the two agree before timing (``logp_max_abs_diff``).
  The checkpoint's RoPE base is 1e6 (``--rope-theta``): Tunix 0.1.7's Llama attention calls
  ``apply_rope`` without the config's ``rope_theta``, so it always uses that function's default,
  1e6 (with transformers' default 1e4 the log-prob sums differed by 0.1).
* **data**: ``--pairs`` random real HH-RLHF pairs (harmless-base test split, BPE as in
  ``tools/report_padding.py``), cut to Tunix's grid: the prompt keeps its last
  ``--max-prompt-len`` tokens, each completion its first ``--max-response-len`` (a cut
  completion keeps EOS last). Every layout below scores exactly these tokens.
* **objective and optimizer**: sigmoid DPO, beta 0.1, summed completion log-probs, reference =
  the initial weights; the same optax transformation (``fbjax.train.optim.make_optimizer``:
  global-norm clip 1.0 then AdamW, lr 1e-6 linear decay), handed to Tunix's trainer.
  The losses of every step are printed side by side (they must agree).

What Tunix gets: ``tunix.sft.dpo.dpo_trainer.DPOTrainer`` with ``ref_model`` = a second copy of
the weights, driven exactly as ``PeftTrainer.train`` drives one update: ``_prepare_inputs``
(Tunix's layout: prompts left-padded to ``--max-prompt-len``, completions right-padded to
``--max-response-len``, chosen and rejected stacked into ``2 x pairs`` rows, its ``[B, T, T]``
causal mask and positions, and the reference log-probs from its jitted ``compute_logps``), then
its jitted train step (``jit_train_and_eval_step``, nnx graph cached as ``train`` does it:
forward, backward, optimizer update, optimizer state donated). ``tunix`` times both parts, as a
Tunix run pays them every step; ``tunix_cached`` prepares the batch once (reference included) and
times only the jitted step, which is Tunix with its reference computed ahead, the like of
fbjax's reference cache (Tunix has no cache of its own; this is the most it could save).

What fbjax gets: ``fbjax.train.step.make_train_step`` (jitted), on two layouts: ``grid``, one
sequence per row padded to Tunix's row length (``2 x pairs`` rows of prompt + response tokens,
the same computed tokens as Tunix), and ``packed``, its default: the pairs packed into rows of
``--row-len`` tokens, each prompt stored once for both completions. Each with the reference
forward in the step and with it cached (``fbjax.train.reference``, computed once outside).

Ratios are Tunix's step time over fbjax's, per repetition (median and range); the load average
is printed, since figures under load are not representative.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import bench_alternate  # noqa: E402
import bench_vs_trl  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import report_padding  # noqa: E402

from fbjax.data import encode, packing  # noqa: E402
from fbjax.train.optim import OptimizerConfig, make_optimizer  # noqa: E402

EOS, PAD = bench_vs_trl.EOS, bench_vs_trl.PAD


def cut_to_grid(group: packing.Group, max_prompt: int, max_response: int) -> packing.Group:
    """The prompt's last ``max_prompt`` tokens, each completion's first ``max_response``.

    A cut completion still ends with EOS, as in ``bench_vs_trl.cut``.
    """
    comps = []
    for c in group.completions:
        if len(c) > max_response:
            c = np.concatenate([c[: max_response - 1], [EOS]])
        comps.append(np.asarray(c, np.int32))
    prompt = np.asarray(group.prompt[-max_prompt:], np.int32)
    return packing.Group(prompt, tuple(comps), group.slot_fields)


def load_batch(args) -> tuple[list[packing.Group], int]:
    pairs, _ = report_padding.load_pairs(args.data)
    tok = report_padding.tokenizer_for(pairs, args.vocab_size, args.tokenizer_cache)
    rng = np.random.default_rng(args.seed)
    chosen = [pairs[i] for i in rng.choice(len(pairs), args.pairs, replace=False)]
    groups = [cut_to_grid(g, args.max_prompt_len, args.max_response_len)
              for g in encode.paired(chosen, tok)]
    return groups, tok.vocab_size


def ensure_model(args, vocab: int) -> None:
    """Writes the transformers checkpoint to ``--model-dir`` unless it is there."""
    if os.path.exists(os.path.join(args.model_dir, "config.json")):
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        if not args.torch_python:
            raise SystemExit(f"--model-dir {args.model_dir} holds no config.json and torch is not "
                             "installed here: pass --torch-python (a python with torch and "
                             "transformers) to write it")
        cmd = ([args.torch_python, os.path.abspath(__file__)] + sys.argv[1:]
               + ["--make-model", "--model-dir", args.model_dir])
        subprocess.run(cmd, check=True)
        return
    bench_vs_trl.make_hf_model(args, vocab, args.model_dir)


def optimizer():
    return make_optimizer(
        OptimizerConfig(learning_rate=1e-6, schedule="linear", grad_clip=1.0), 1000)


# ----------------------------------------------------------------------------- Tunix


class TunixStep:
    """Tunix's DPOTrainer, one update per call, as ``PeftTrainer.train`` runs it (docstring)."""

    def __init__(self, model_dir: str, groups, args, cached: bool):
        from tunix.models.llama3 import model as llama_lib
        from tunix.models.llama3 import params as llama_params
        from tunix.sft import sharding_utils
        from tunix.sft.dpo import dpo_trainer

        with open(os.path.join(model_dir, "config.json")) as f:
            hf = json.load(f)
        rope = hf.get("rope_parameters") or {}
        config = llama_lib.ModelConfig(
            num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
            embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
            num_heads=hf["num_attention_heads"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            num_kv_heads=hf["num_key_value_heads"],
            rope_theta=int(rope.get("rope_theta", hf.get("rope_theta", 10000))),
            norm_eps=hf["rms_norm_eps"], weight_tying=hf["tie_word_embeddings"])
        if rope.get("rope_type", "default") != "default":
            raise SystemExit(f"{model_dir}: rope type {rope['rope_type']!r}; Tunix's Llama "
                             "applies plain RoPE")
        load = lambda: llama_params.create_model_from_safe_tensors(  # noqa: E731
            model_dir, config, dtype=jnp.float32)
        self.model, ref_model = load(), load()
        self.trainer = dpo_trainer.DPOTrainer(
            model=self.model, ref_model=ref_model, optimizer=optimizer(),
            training_config=dpo_trainer.DPOTrainingConfig(
                eval_every_n_steps=10**9, max_steps=None, algorithm="dpo", beta=0.1))
        self.input = self._training_input(groups, args.max_prompt_len, args.max_response_len)
        self._shard = lambda ex: sharding_utils.shard_input(
            ex, self.trainer.config.data_sharding_axis)
        self.train_step, _ = self.trainer.jit_train_and_eval_step(cache_nnx_graph=True)
        self.cached = cached
        self.example = self._shard(self.trainer._prepare_inputs(self.input))
        self.layout = f"{self.example.input_ids.shape[0]} x {self.example.input_ids.shape[1]} padded"
        self.computed_tokens = int(self.example.input_ids.size)

    @staticmethod
    def _training_input(groups, max_prompt: int, max_response: int):
        """Tunix's tokenized input: prompts left-padded, completions right-padded."""
        from tunix.sft.dpo import dpo_trainer

        n = len(groups)
        prompt = np.full((n, max_prompt), PAD, np.int32)
        comp = [np.full((n, max_response), PAD, np.int32) for _ in range(2)]
        for i, g in enumerate(groups):
            prompt[i, max_prompt - len(g.prompt):] = g.prompt
            for k in range(2):
                comp[k][i, : len(g.completions[k])] = g.completions[k]
        masks = [np.zeros((n, w), np.int32) for w in (max_prompt, max_response, max_response)]
        for i, g in enumerate(groups):
            masks[0][i, max_prompt - len(g.prompt):] = 1
            for k in range(2):
                masks[1 + k][i, : len(g.completions[k])] = 1
        return dpo_trainer.TrainingInput(
            prompt_ids=prompt, prompt_mask=masks[0], chosen_ids=comp[0], chosen_mask=masks[1],
            rejected_ids=comp[1], rejected_mask=masks[2])

    def __call__(self) -> float:
        example = self.example if self.cached else self._shard(
            self.trainer._prepare_inputs(self.input))
        loss, _, _ = self.train_step(example)
        return float(loss)

    def sequence_logps(self) -> np.ndarray:
        """Summed completion log-probs, [chosen..., rejected...], under the current policy."""
        from tunix.sft.dpo import dpo_trainer

        ex = self.example
        out = dpo_trainer.compute_logps(self.model, ex.input_ids, ex.positions,
                                        ex.attention_mask, ex.logits_to_keep,
                                        ex.completion_mask)
        return np.concatenate([np.asarray(out[0]), np.asarray(out[1])])


# ----------------------------------------------------------------------------- main


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_alternate.add_common_args(p, report_padding.DEFAULT_DATA)
    p.add_argument("--max-prompt-len", type=int, default=192, help="Tunix's prompt width")
    p.add_argument("--max-response-len", type=int, default=192, help="Tunix's response width")
    p.add_argument("--rope-theta", type=float, default=1_000_000.0,
                   help="the checkpoint's RoPE base; Tunix 0.1.7's Llama applies 1e6 whatever "
                        "its ModelConfig.rope_theta says, so another value makes the models differ")
    p.add_argument("--chunk", type=int, default=8192, help="fbjax log-softmax vocabulary chunk")
    p.add_argument("--reps", type=int, default=7, help="timed steps of each, alternating")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default=None,
                   help="the transformers checkpoint (written there if absent; default: a "
                        "temporary directory)")
    p.add_argument("--torch-python", default=None,
                   help="a python with torch + transformers, to write the checkpoint when this "
                        "environment has no torch")
    p.add_argument("--make-model", action="store_true",
                   help="only write the checkpoint to --model-dir (run by --torch-python)")
    p.add_argument("--tokenizer-cache", default=None)
    p.add_argument("--out", default=None)
    args = bench_alternate.parse_args(p, argv)
    if args.warmup < 2 and not args.make_model:
        # Tunix's jitted step compiles on its first call and again on its second (measured: its
        # jit cache holds two entries after two calls), so timing may start at the third.
        p.error("--warmup must be at least 2: Tunix's train step compiles on its first two calls")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse(argv)
    groups, vocab = load_batch(args)
    if args.make_model:
        bench_vs_trl.make_hf_model(args, vocab, args.model_dir)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir is None:
            args.model_dir = os.path.join(tmp, "model")
        ensure_model(args, vocab)
        return run(args, groups)


def run(args, groups) -> dict:
    from importlib.metadata import version

    import tunix  # noqa: F401

    real_tokens = sum(len(g.prompt) + sum(len(c) for c in g.completions) for g in groups)
    grid = args.max_prompt_len + args.max_response_len
    load_before = bench_alternate.load_average()
    md = args.model_dir
    steps = {
        "fbjax_packed": bench_vs_trl.FbjaxStep(md, groups, args),
        "fbjax_grid": bench_vs_trl.FbjaxStep(md, groups, args, layout="padded", padded_len=grid),
        "tunix": TunixStep(md, groups, args, cached=False),
        "fbjax_packed_cached": bench_vs_trl.FbjaxStep(md, groups, args, cached=True),
        "fbjax_grid_cached": bench_vs_trl.FbjaxStep(md, groups, args, layout="padded",
                                                    padded_len=grid, cached=True),
        "tunix_cached": TunixStep(md, groups, args, cached=True),
    }
    lp_fb, lp_tx = steps["fbjax_grid"].sequence_logps(), steps["tunix"].sequence_logps()
    logp_diff = float(np.max(np.abs(lp_fb - lp_tx)))
    print(f"{len(groups)} pairs, {real_tokens} real tokens; per-sequence log-prob "
          f"|fbjax - Tunix| max {logp_diff:.2e} (sums of magnitude ~{np.abs(lp_tx).mean():.0f})")

    losses, times, loads = bench_alternate.time_alternately(
        steps, warmup=args.warmup, reps=args.reps)

    medians = {name: statistics.median(t) for name, t in times.items()}
    pairs = {"tunix_grid": [("fbjax_grid", "tunix"), ("fbjax_grid_cached", "tunix_cached")],
             "packing": [("fbjax_packed", "tunix"), ("fbjax_packed_cached", "tunix_cached")]}
    ratios = {kind: {f"{a} vs {b}": bench_alternate.ratio_stats(times[a], times[b])
                     for a, b in ab} for kind, ab in pairs.items()}
    layouts = {n: s.layout for n, s in steps.items()}
    computed = {n: s.computed_tokens for n, s in steps.items()}
    reference = {n: ("cached" if n.endswith("_cached") else "in step") for n in steps}
    result = {
        "pairs": len(groups), "real_tokens": real_tokens, "computed_tokens": computed,
        "layouts": layouts, "reference": reference,
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "kv_heads": args.kv_heads, "mlp": args.mlp, "vocab": args.vocab_size},
        "logp_max_abs_diff": logp_diff, "step_s": times, "step_s_median": medians,
        "tokens_per_s": {n: real_tokens / m for n, m in medians.items()},
        "ratios": ratios,
        "load_average": {"before": load_before, "per_rep_1min": loads,
                         "after": bench_alternate.load_average()},
        "losses": losses,
        "versions": {"jax": jax.__version__, "google-tunix": version("google-tunix"),
                     "flax": version("flax"), "optax": version("optax")},
        "malloc_kept_freed_memory": args.malloc_tuned,
        "cpus": os.cpu_count(),
    }
    bench_alternate.report(result, peer='Tunix', reps=args.reps, out=args.out, ref_width=10)
    return result


if __name__ == "__main__":
    main()
