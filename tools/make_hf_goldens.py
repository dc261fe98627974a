"""Build tiny random Hugging Face models and record their logits as golden files.

    python tools/make_hf_goldens.py [--out tests/goldens/hf]

For each golden (a family, or a family with one feature switched on, e.g. a RoPE scaling type)
this builds a seeded, randomly initialised transformers model (nothing is downloaded), saves it
with ``save_pretrained`` (safetensors), runs a fixed set of token sequences through it one at a
time in float32 on CPU, and writes under ``<out>/<name>/``:

    config.json, model.safetensors        the checkpoint (a few tens of KB)
    input_ids.npy, attention_mask.npy     the sequences, right-padded, int32 [N, L]
    logits.npy                            torch's float32 logits of each sequence run alone
                                          [N, L, V] (zeros on padding)

Each sequence's logits are computed alone, so the tests can compare fbjax's full, right-padded,
left-padded and packed layouts with the same reference.

``tests/models/test_hf_parity.py`` checks fbjax against these files without torch, and also
imports the builders below for its live comparison against transformers.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt2")
# Goldens beyond the original five: new families, and features switched on in old ones.
VARIANTS = ("llama3_rope", "llama_linear_rope", "llama_dynamic_rope", "llama_yarn_rope",
            "qwen2_partial_swa", "qwen3", "gemma2", "gemma3_text", "gpt_neox", "phi3", "olmo2",
            "phi3_longrope", "mixtral", "qwen3_moe")
GOLDENS = FAMILIES + VARIANTS
VOCAB = 97
SEQ_LEN = 12
LENGTHS = (12, 7, 5)  # the last two pack into one row of SEQ_LEN
PAD_ID = 0

# Shared sizes: 2 layers, 4 query heads over 2 kv heads, head_dim 8. Special token ids are set
# inside the tiny vocabulary (transformers warns about ids >= vocab_size otherwise).
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, intermediate_size=48, max_position_embeddings=64,
    rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=PAD_ID,
)


def tiny_config(family: str):
    """A transformers config for a tiny model of ``family`` (a name in ``GOLDENS``).

    Each switches on something the others don't, so the suite covers every mapping path:
    Llama biases everywhere, Mistral a sliding window shorter than the batch, Qwen2 a tied head
    and a large RoPE base, Gemma head_dim != hidden/heads, GPT-2 its fused Conv1D layout; the
    variants one RoPE scaling type each, a window on some layers only, q/k norms, soft-caps
    small enough to bite, Gemma 3's 5:1 local:global layers with two RoPE bases, GPT-NeoX's
    parallel residual and partial rotary, Phi-3's fused projections, Mixtral's top-2 of 4
    renormalised experts (with a sliding window) and Qwen3-MoE's top-2 of 4 unnormalised ones.
    """
    import transformers as tr

    one_layer = {**_COMMON, "num_hidden_layers": 1, "max_position_embeddings": 256}
    if family == "llama":
        return tr.LlamaConfig(**_COMMON, attention_bias=True, mlp_bias=True,
                              tie_word_embeddings=False)
    if family == "llama3_rope":
        return tr.LlamaConfig(**one_layer, rope_parameters=dict(
            rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=64))
    if family == "llama_linear_rope":
        return tr.LlamaConfig(**one_layer, rope_parameters=dict(
            rope_type="linear", rope_theta=10000.0, factor=2.0))
    if family == "llama_dynamic_rope":
        # Sequences longer than max_position_embeddings (8) trigger the NTK base growth.
        return tr.LlamaConfig(**{**one_layer, "max_position_embeddings": 8}, rope_parameters=dict(
            rope_type="dynamic", rope_theta=10000.0, factor=2.0))
    if family == "llama_yarn_rope":
        return tr.LlamaConfig(**one_layer, rope_parameters=dict(
            rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64))
    if family == "mistral":
        return tr.MistralConfig(**_COMMON, sliding_window=4, tie_word_embeddings=False)
    if family == "qwen2":
        return tr.Qwen2Config(**_COMMON, rope_theta=1_000_000.0, tie_word_embeddings=True)
    if family == "qwen2_partial_swa":
        return tr.Qwen2Config(**_COMMON, use_sliding_window=True, sliding_window=4,
                              max_window_layers=1, tie_word_embeddings=False)
    if family == "qwen3":
        return tr.Qwen3Config(**{**_COMMON, "head_dim": 16}, tie_word_embeddings=False)
    if family == "gemma":
        return tr.GemmaConfig(**{**_COMMON, "head_dim": 16}, hidden_act="gelu_pytorch_tanh",
                              tie_word_embeddings=True)
    if family == "gemma2":
        return tr.Gemma2Config(**{**_COMMON, "head_dim": 16}, sliding_window=4,
                               query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                               final_logit_softcapping=5.0, tie_word_embeddings=True)
    if family == "gemma3_text":
        return tr.Gemma3TextConfig(
            **{**_COMMON, "num_hidden_layers": 6, "intermediate_size": 32}, sliding_window=4,
            query_pre_attn_scalar=8, tie_word_embeddings=True, rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    if family == "gpt2":
        return tr.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                             n_positions=16, bos_token_id=1, eos_token_id=2,
                             pad_token_id=PAD_ID)
    if family == "gpt_neox":
        return tr.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=64, use_parallel_residual=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 0.5},
            bos_token_id=1, eos_token_id=2, pad_token_id=PAD_ID, tie_word_embeddings=False)
    if family == "phi3":
        return tr.Phi3Config(**{k: v for k, v in _COMMON.items() if k != "head_dim"},
                             sliding_window=5, partial_rotary_factor=0.5,
                             tie_word_embeddings=False)
    if family == "phi3_longrope":
        # Phi-3 128k's RoPE: the 12-token sequence is past original_max_position_embeddings (8)
        # and takes long_factor; the 7- and 5-token ones take short_factor.
        return tr.Phi3Config(**{k: v for k, v in _COMMON.items() if k != "head_dim"},
                             rope_parameters=dict(
                                 rope_type="longrope", rope_theta=10000.0,
                                 short_factor=[1.0, 1.3, 2.1, 3.4],
                                 long_factor=[1.5, 4.0, 9.0, 20.0],
                                 original_max_position_embeddings=8),
                             original_max_position_embeddings=8, tie_word_embeddings=False)
    if family == "olmo2":
        return tr.Olmo2Config(**{k: v for k, v in _COMMON.items() if k != "head_dim"},
                              tie_word_embeddings=False)
    if family == "mixtral":
        return tr.MixtralConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2,
                                sliding_window=5, tie_word_embeddings=False)
    if family == "qwen3_moe":
        return tr.Qwen3MoeConfig(**{**_COMMON, "head_dim": 16}, num_experts=4,
                                 num_experts_per_tok=2, moe_intermediate_size=24,
                                 norm_topk_prob=False, tie_word_embeddings=False)
    raise ValueError(f"unknown golden {family!r}; choose from {GOLDENS}")


def build_model(family: str, seed: int = 0):
    """A tiny random ``*ForCausalLM`` in float32 eval mode.

    transformers initialises norms to 1 (Gemma: 0) and biases to 0, and its 0.02 std makes every
    logit nearly 0. We redraw every parameter with larger scales so that a mis-mapped bias, norm
    or head would change the logits well beyond the parity tolerance.
    """
    import torch
    import transformers as tr

    torch.manual_seed(seed)
    config = tiny_config(family)
    model = tr.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1 and ("norm" in name or "ln_" in name):
                base = 0.0 if family.startswith("gemma") else 1.0
                param.copy_(base + 0.1 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            else:
                param.copy_(0.2 * noise)
    return model.float().eval()


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``[len(LENGTHS), SEQ_LEN]`` right-padded sequences of ``LENGTHS`` tokens and their mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, size=(len(LENGTHS), SEQ_LEN)).astype(np.int32)
    mask = (np.arange(SEQ_LEN)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.int32)
    ids[mask == 0] = PAD_ID
    return ids, mask


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 logits ``[B, L, V]`` of a transformers model on a padded batch."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)))
    return out.logits.float().numpy()


def alone_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[B, L, V]`` logits of each row's real tokens run alone (batch of one, no padding);
    zeros on padding. The reference for every fbjax layout (full, padded, packed)."""
    out = np.zeros(ids.shape + (model.config.vocab_size,), np.float32)
    for row, (tokens, m) in enumerate(zip(ids, mask)):
        n = int(m.sum())
        out[row, :n] = torch_logits(model, tokens[None, :n], np.ones((1, n), np.int32))[0]
    return out


def write_golden(family: str, out_dir: str) -> None:
    """Save the tiny ``family`` checkpoint, sequences and their logits to ``out_dir``."""
    model = build_model(family)
    model.save_pretrained(out_dir, safe_serialization=True)
    # Generation defaults are irrelevant to parity; keep the goldens minimal.
    gen_config = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(gen_config):
        os.remove(gen_config)
    ids, mask = batch()
    np.save(os.path.join(out_dir, "input_ids.npy"), ids)
    np.save(os.path.join(out_dir, "attention_mask.npy"), mask)
    np.save(os.path.join(out_dir, "logits.npy"), alone_logits(model, ids, mask))


def main(argv: list[str] | None = None) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "goldens", "hf"))
    parser.add_argument("--families", nargs="*", default=list(GOLDENS))
    args = parser.parse_args(argv)
    for family in args.families:
        out_dir = os.path.join(args.out, family)
        os.makedirs(out_dir, exist_ok=True)
        write_golden(family, out_dir)
        size = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
        print(f"{family}: {out_dir} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
