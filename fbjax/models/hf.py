"""Import and export of Hugging Face checkpoints, without torch.

A Hugging Face checkpoint directory holds ``config.json`` and either ``model.safetensors`` or
shards listed in ``model.safetensors.index.json``. We read both with safetensors' numpy API and
map them onto the fbjax parameter tree (``fbjax.models.decoder``), and write the reverse so that
``transformers.AutoModelForCausalLM.from_pretrained`` loads what we save. ``load_hf`` reads the
whole checkpoint into host memory; ``load_hf_sharded`` streams it tensor by tensor onto a mesh.

Supported ``model_type`` values: llama (with RoPE scaling llama3 / linear / dynamic / yarn),
mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, gpt2, gpt_neox, phi3, olmo2, and the
mixture-of-experts mixtral and qwen3_moe. The config
mapping follows what transformers 5 reads (and the 4.x spellings it converts); a field whose
value fbjax does not implement is refused by name. The weight mapping is exact (transposes,
reshapes, splits and concatenations only), so a load followed by a save reproduces the tensors
bitwise.

Layout conventions:

* HF ``nn.Linear`` weights are ``[out, in]``; our kernels are ``[in, ...out]`` with the head axis
  split out (``q`` is ``[D, H, hd]``, ``o`` is ``[H, hd, D]``).
* GPT-2 uses ``Conv1D`` whose weights are already ``[in, out]``, and fuses q/k/v into one
  ``c_attn`` of shape ``[D, 3D]`` (q, k, v concatenated along the output axis).
* GPT-NeoX fuses q/k/v into ``query_key_value`` with output rows grouped per head
  (``[H, 3, hd]``); Phi-3 fuses ``qkv_proj`` (q | k | v) and ``gate_up_proj`` (gate | up).
* Gemma stores RMSNorm weights as offsets from 1, exactly as our ``RMSNorm`` with
  ``norm_weight_offset=1`` does, so norm weights copy unchanged.
* MoE checkpoints store one ``[F, D]`` / ``[D, F]`` tensor per expert (Mixtral's ``w1`` gate,
  ``w3`` up, ``w2`` down; Qwen3-MoE's ``gate_proj`` / ``up_proj`` / ``down_proj``); ours are
  stacked ``[E, D, F]`` / ``[E, F, D]``, assembled from the per-expert tensors as they arrive.
* ``post_attention_layernorm`` is the MLP's pre-norm in Llama-style models but the attention
  output's post-norm in Gemma 2/3 and OLMo 2 (``_norm_names``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 & co. so np.dtype('bfloat16') works)
import numpy as np

# The project's one checkpoint error; re-exported here for callers of this module.
from fbjax.checkpoint.errors import CheckpointError
from fbjax.models.config import (
    TRAINING_ONLY_FIELDS,
    Activation,
    Family,
    ModelConfig,
    Positions,
    QKNorm,
    RopeScaling,
    RopeType,
    preset,
)

SUPPORTED_MODEL_TYPES = tuple(f.value for f in Family)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

_ARCHITECTURES = {
    Family.LLAMA: "LlamaForCausalLM",
    Family.MISTRAL: "MistralForCausalLM",
    Family.QWEN2: "Qwen2ForCausalLM",
    Family.QWEN3: "Qwen3ForCausalLM",
    Family.GEMMA: "GemmaForCausalLM",
    Family.GEMMA2: "Gemma2ForCausalLM",
    Family.GEMMA3: "Gemma3ForCausalLM",
    Family.GPT2: "GPT2LMHeadModel",
    Family.GPT_NEOX: "GPTNeoXForCausalLM",
    Family.PHI3: "Phi3ForCausalLM",
    Family.OLMO2: "Olmo2ForCausalLM",
    Family.MIXTRAL: "MixtralForCausalLM",
    Family.QWEN3_MOE: "Qwen3MoeForCausalLM",
}

# Reward models: the same backbone with a one-label sequence-classification head (``score``).
_REWARD_ARCHITECTURES = {
    Family.LLAMA: "LlamaForSequenceClassification",
    Family.MISTRAL: "MistralForSequenceClassification",
    Family.QWEN2: "Qwen2ForSequenceClassification",
    Family.QWEN3: "Qwen3ForSequenceClassification",
    Family.GEMMA: "GemmaForSequenceClassification",
    Family.GEMMA2: "Gemma2ForSequenceClassification",
    Family.GEMMA3: "Gemma3ForSequenceClassification",
    Family.GPT2: "GPT2ForSequenceClassification",
    Family.GPT_NEOX: "GPTNeoXForSequenceClassification",
    Family.PHI3: "Phi3ForSequenceClassification",
    Family.OLMO2: "Olmo2ForSequenceClassification",
    Family.MIXTRAL: "MixtralForSequenceClassification",
    Family.QWEN3_MOE: "Qwen3MoeForSequenceClassification",
}

# HF activation names -> ours. "gelu_new", "gelu_fast" and "gelu_pytorch_tanh" are all the tanh
# approximation (they differ only in how the constant is written).
_ACTIVATIONS = {
    "silu": Activation.SILU,
    "swish": Activation.SILU,
    "gelu": Activation.GELU,
    "gelu_new": Activation.GELU_TANH,
    "gelu_fast": Activation.GELU_TANH,
    "gelu_pytorch_tanh": Activation.GELU_TANH,
}
_ACTIVATION_NAMES = {
    Activation.SILU: "silu",
    Activation.GELU: "gelu",
    Activation.GELU_TANH: "gelu_pytorch_tanh",
}

# Non-parameter buffers that some checkpoints carry; they hold no information we need.
_IGNORED_KEYS = re.compile(
    r"(\.attn\.bias|\.attn\.masked_bias|\.attention\.bias|\.attention\.masked_bias|"
    r"rotary_emb\.inv_freq)$")


# ----------------------------------------------------------------------------- config


def _activation(name: str | None, source: str, key: str) -> Activation:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise CheckpointError(
            f"{source}: {key}={name!r} is not supported; supported: {sorted(_ACTIVATIONS)}"
        ) from None


# transformers' default RoPE base when a config names none (Gemma 3: per layer type, below).
_DEFAULT_THETA = 10_000.0
_FAMILY_THETA = {Family.MIXTRAL: 1_000_000.0}  # MixtralConfig's default

# Fields whose non-neutral values change the computation in ways fbjax does not implement; a
# config setting one is refused by name. (Training-only fields such as dropout are ignored.)
_UNIMPLEMENTED = {
    "use_bidirectional_attention": (None, False),
    "scale_attn_by_inverse_layer_idx": (None, False),
    "attn_logit_softcapping": (None,),  # families other than Gemma 2/3 (checked per family)
    "final_logit_softcapping": (None,),
}
_SOFTCAP_FAMILIES = (Family.GEMMA2, Family.GEMMA3)


def _refuse_unimplemented(hf: Mapping[str, Any], family: Family, source: str) -> None:
    for key, neutral in _UNIMPLEMENTED.items():
        if key.endswith("softcapping") and family in _SOFTCAP_FAMILIES:
            continue
        if key in hf and hf[key] not in neutral:
            raise CheckpointError(f"{source}: {key}={hf[key]!r} is not implemented")


def _rope_specs(hf: Mapping[str, Any], family: Family, source: str) -> tuple[dict, dict | None]:
    """The RoPE parameters of global and (Gemma 3) sliding layers, as transformers resolves them.

    transformers 4.x writes ``rope_theta`` + ``rope_scaling`` (``type`` or ``rope_type``); 5.x
    writes ``rope_parameters`` (nested by layer type for Gemma 3). ``rope_scaling`` wins over
    ``rope_parameters`` when both are set, as in transformers' ``convert_rope_params_to_dict``.
    """
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    nested = isinstance(params, Mapping) and (
        "full_attention" in params or "sliding_attention" in params)
    if family is Family.GEMMA3:
        layers = params if nested else {}
        full = dict(layers.get("full_attention") or {"rope_type": "default"})
        if scaling:
            full.update(scaling)
        full.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
        local = dict(layers.get("sliding_attention") or {"rope_type": "default"})
        local.setdefault("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
        return full, local
    if nested:
        raise CheckpointError(
            f"{source}: rope_parameters per layer type ({sorted(params)}) is not implemented for "
            f"model_type={family.value!r}")
    spec = dict(scaling or params or {})
    if family is Family.GPT_NEOX:
        spec.setdefault("rope_theta", hf.get("rotary_emb_base", hf.get("rope_theta", _DEFAULT_THETA)))
        spec.setdefault("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    else:
        spec.setdefault("rope_theta", hf.get("rope_theta", _FAMILY_THETA.get(family, _DEFAULT_THETA)))
        if hf.get("partial_rotary_factor") is not None:
            spec.setdefault("partial_rotary_factor", hf["partial_rotary_factor"])
    kind = spec.get("rope_type", spec.get("type", "default"))
    if family is Family.PHI3 and kind in ("su", "yarn"):
        kind = "longrope"  # transformers' Phi3Config renames both
    spec["rope_type"] = kind
    return spec, None


def _rope_scaling(spec: Mapping[str, Any], hf: Mapping[str, Any], source: str) -> RopeScaling:
    """One ``rope_parameters`` dict -> :class:`RopeScaling` (refusing what is not implemented)."""
    kind = spec["rope_type"]
    try:
        rope_type = RopeType(kind)
    except ValueError:
        raise CheckpointError(
            f"{source}: rope_scaling.rope_type={kind!r} is not implemented; implemented: "
            f"{[t.value for t in RopeType]}") from None
    if rope_type is RopeType.DEFAULT:
        return RopeScaling()

    def need(key):
        if spec.get(key) is None:
            raise CheckpointError(f"{source}: rope_scaling.{key} is required for rope_type={kind!r}")
        return spec[key]

    if rope_type in (RopeType.LINEAR, RopeType.DYNAMIC):
        return RopeScaling(kind=rope_type, factor=float(need("factor")))
    max_len = int(hf.get("max_position_embeddings", 2048))
    # A top-level original_max_position_embeddings overrides the nested one (standardize_rope_params).
    original = int(hf.get("original_max_position_embeddings")
                   or spec.get("original_max_position_embeddings") or max_len)
    # None stands for "the model's context" (RopeScaling); keeps round trips canonical.
    stored = None if original == max_len else original
    if rope_type is RopeType.LLAMA3:
        return RopeScaling(
            kind=rope_type, factor=float(need("factor")), original_max_len=stored,
            low_freq_factor=float(need("low_freq_factor")),
            high_freq_factor=float(need("high_freq_factor")))
    factor = spec.get("factor")
    factor = max_len / original if factor is None else float(factor)
    if rope_type is RopeType.LONGROPE:
        attention = spec.get("attention_factor")
        return RopeScaling(
            kind=rope_type, factor=factor, original_max_len=stored,
            short_factor=need("short_factor"), long_factor=need("long_factor"),
            attention_factor=None if attention is None else float(attention))
    attention = spec.get("attention_factor")
    mscale, mscale_all = spec.get("mscale"), spec.get("mscale_all_dim")
    if attention is None and mscale and mscale_all:
        def get_mscale(m):
            return 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0
        attention = get_mscale(mscale) / get_mscale(mscale_all)
    return RopeScaling(
        kind=rope_type, factor=factor, original_max_len=stored,
        beta_fast=float(spec.get("beta_fast") or 32), beta_slow=float(spec.get("beta_slow") or 1),
        truncate=bool(spec.get("truncate", True)),
        attention_factor=None if attention is None else float(attention))


def _rope_fields(hf: Mapping[str, Any], family: Family, source: str) -> dict[str, Any]:
    full, local = _rope_specs(hf, family, source)
    fields = dict(rope_theta=float(full["rope_theta"]),
                  rope_scaling=_rope_scaling(full, hf, source),
                  rope_fraction=float(full.get("partial_rotary_factor", 1.0)))
    if local is not None:
        if local.get("rope_type", local.get("type", "default")) != "default":
            raise CheckpointError(
                f"{source}: rope_parameters.sliding_attention.rope_type="
                f"{local.get('rope_type', local.get('type'))!r} is not implemented (local layers "
                "use plain RoPE)")
        fields["local_rope_theta"] = float(local["rope_theta"])
    return fields


def _require(hf: Mapping[str, Any], key: str, source: str) -> Any:
    if hf.get(key) is None:
        raise CheckpointError(f"{source}: missing required field {key!r}")
    return hf[key]


def _sliding_fields(hf: Mapping[str, Any], family: Family, num_layers: int,
                    source: str) -> dict[str, Any]:
    """``sliding_window`` and ``sliding_layers`` as the family's transformers classes derive them."""
    if family in (Family.LLAMA, Family.GEMMA, Family.GPT2, Family.GPT_NEOX, Family.OLMO2):
        return {}
    window = hf.get("sliding_window", 4096 if family in (Family.GEMMA2, Family.GEMMA3) else None)
    if family in (Family.QWEN2, Family.QWEN3, Family.QWEN3_MOE) and not hf.get(
            "use_sliding_window", False):
        window = None
    layer_types = hf.get("layer_types")
    if layer_types is None:
        if family in (Family.QWEN2, Family.QWEN3):
            first = hf.get("max_window_layers", 28)
            layer_types = ["sliding_attention" if window is not None and i >= first
                           else "full_attention" for i in range(num_layers)]
        elif family is Family.GEMMA2:
            layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                           for i in range(num_layers)]
        elif family is Family.GEMMA3:
            pattern = hf.get("sliding_window_pattern", 6)
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                           for i in range(num_layers)]
        else:  # Mistral, Phi-3, Mixtral, Qwen3-MoE: one window on every layer
            layer_types = ["sliding_attention"] * num_layers
    if len(layer_types) != num_layers:
        raise CheckpointError(f"{source}: layer_types has {len(layer_types)} entries for "
                              f"num_hidden_layers={num_layers}")
    unknown = sorted({t for t in layer_types} - {"sliding_attention", "full_attention"})
    if unknown:
        raise CheckpointError(f"{source}: layer_types {unknown} are not implemented")
    sliding = tuple(t == "sliding_attention" for t in layer_types)
    if window is None or not any(sliding):
        return {"sliding_window": None}
    return {"sliding_window": int(window),
            "sliding_layers": None if all(sliding) else sliding}


def config_from_hf(hf: Mapping[str, Any], *, source: str = CONFIG_FILE) -> ModelConfig:
    """Map a Hugging Face ``config.json`` dict to a :class:`ModelConfig`.

    ``source`` names the file in error messages. Fields missing from ``hf`` take the defaults
    of the corresponding transformers config class (not fbjax's presets), since those are what
    the checkpoint was trained with. A field fbjax does not implement, set to a value that
    changes the computation, is refused by name. A ``*ForSequenceClassification`` checkpoint
    with one label is a reward model (``reward_head=True``).
    """
    config = _backbone_config_from_hf(hf, source)
    classifiers = [a for a in hf.get("architectures") or () if a.endswith("ForSequenceClassification")]
    if not classifiers:
        return config
    labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
    if labels != 1:
        raise CheckpointError(
            f"{source}: {classifiers[0]} with {labels} labels; only one-label (reward) "
            "sequence classifiers are supported"
        )
    return dataclasses.replace(config, reward_head=True)


# transformers' rms_norm_eps / layer_norm_eps defaults per family.
_DEFAULT_EPS = {Family.PHI3: 1e-5, Family.OLMO2: 1e-5, Family.GPT_NEOX: 1e-5,
                Family.MIXTRAL: 1e-5}


def _backbone_config_from_hf(hf: Mapping[str, Any], source: str) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type={model_type!r} is not supported; "
            f"supported model types: {list(SUPPORTED_MODEL_TYPES)}"
        )
    family = Family(model_type)
    _refuse_unimplemented(hf, family, source)

    if family is Family.GPT2:
        if not hf.get("scale_attn_weights", True):
            raise CheckpointError(f"{source}: scale_attn_weights=False is not implemented")
        hidden = int(_require(hf, "n_embd", source))
        heads = int(_require(hf, "n_head", source))
        return preset(
            family,
            vocab_size=int(_require(hf, "vocab_size", source)),
            hidden_size=hidden,
            num_layers=int(_require(hf, "n_layer", source)),
            num_heads=heads,
            num_kv_heads=heads,
            mlp_dim=int(hf.get("n_inner") or 4 * hidden),
            max_seq_len=int(hf.get("n_positions", 1024)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            activation=_activation(
                hf.get("activation_function", "gelu_new"), source, "activation_function"
            ),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )

    hidden = int(_require(hf, "hidden_size", source))
    heads = int(_require(hf, "num_attention_heads", source))
    num_layers = int(_require(hf, "num_hidden_layers", source))
    head_dim = hf.get("head_dim")
    if head_dim is None:
        head_dim = 256 if family in (Family.GEMMA, Family.GEMMA2, Family.GEMMA3) else hidden // heads
    eps_key = "layer_norm_eps" if family is Family.GPT_NEOX else "rms_norm_eps"
    sizes = dict(
        vocab_size=int(_require(hf, "vocab_size", source)),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        # None means "hidden_size // num_heads", which keeps configs canonical.
        head_dim=None if head_dim * heads == hidden else int(head_dim),
        # Qwen3-MoE's experts are moe_intermediate_size wide (its intermediate_size sizes the
        # dense layers of mlp_only_layers, which are refused).
        mlp_dim=int(hf.get("moe_intermediate_size", 768)) if family is Family.QWEN3_MOE
        else int(_require(hf, "intermediate_size", source)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=float(hf.get(eps_key, _DEFAULT_EPS.get(family, 1e-6))),
        **_rope_fields(hf, family, source),
        **_sliding_fields(hf, family, num_layers, source),
    )
    if family in (Family.GEMMA, Family.GEMMA2, Family.GEMMA3):
        # Follow what transformers reads: GemmaMLP uses ``hidden_act`` (rewriting the legacy
        # "gelu" of the official releases to the tanh form); Gemma 2/3 use ``hidden_activation``.
        if family is Family.GEMMA:
            key, name = "hidden_act", hf.get("hidden_act") or "gelu_pytorch_tanh"
            name = "gelu_pytorch_tanh" if name == "gelu" else name
        else:
            key, name = "hidden_activation", hf.get("hidden_activation") or "gelu_pytorch_tanh"
        bias = bool(hf.get("attention_bias", False))
        extra = {}
        if family is not Family.GEMMA:
            extra = dict(query_scale=float(hf.get("query_pre_attn_scalar", 256)),
                         attn_logit_softcap=_optional_float(
                             hf.get("attn_logit_softcapping", 50.0 if family is Family.GEMMA2 else None)),
                         final_logit_softcap=_optional_float(
                             hf.get("final_logit_softcapping", 30.0 if family is Family.GEMMA2 else None)))
        return preset(
            family, **sizes, **extra,
            activation=_activation(name, source, key),
            qkv_bias=bias,
            out_bias=bias,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )

    if family is Family.GPT_NEOX:
        bias = bool(hf.get("attention_bias", True))
        return preset(
            family, **sizes,
            activation=_activation(hf.get("hidden_act", "gelu"), source, "hidden_act"),
            qkv_bias=bias, out_bias=bias,
            parallel_residual=bool(hf.get("use_parallel_residual", True)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    common = dict(
        activation=_activation(hf.get("hidden_act", "silu"), source, "hidden_act"),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    if family is Family.LLAMA:
        bias = bool(hf.get("attention_bias", False))
        return preset(
            family, **sizes, **common, qkv_bias=bias, out_bias=bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
        )
    if family in (Family.QWEN3, Family.OLMO2):
        bias = bool(hf.get("attention_bias", False))
        return preset(family, **sizes, **common, qkv_bias=bias, out_bias=bias)
    if family in (Family.MIXTRAL, Family.QWEN3_MOE):
        return preset(family, **sizes, **common, **_moe_fields(hf, family, source))
    if family in (Family.MISTRAL, Family.PHI3):
        return preset(family, **sizes, **common)
    # Qwen2: biases on q/k/v only, always.
    return preset(family, **sizes, **common, qkv_bias=True, out_bias=False)


def _moe_fields(hf: Mapping[str, Any], family: Family, source: str) -> dict[str, Any]:
    """Expert count, top-k, renormalisation and aux-loss coefficient, with transformers'
    defaults; layouts fbjax does not implement (dense layers among MoE ones, router jitter)
    are refused by name."""
    if hf.get("router_jitter_noise"):
        raise CheckpointError(f"{source}: router_jitter_noise={hf['router_jitter_noise']!r} is "
                              "not implemented (multiplicative router-input noise in training)")
    local, legacy = hf.get("num_local_experts"), hf.get("num_experts")
    if local is not None and legacy is not None and local != legacy:
        raise CheckpointError(f"{source}: num_local_experts={local!r} and num_experts={legacy!r} "
                              "disagree")
    mixtral = family is Family.MIXTRAL
    experts = local if local is not None else legacy
    experts = int(experts if experts is not None else (8 if mixtral else 128))
    if mixtral:
        normalize = True  # MixtralTopKRouter always renormalises the top-k probabilities
    else:
        normalize = bool(hf.get("norm_topk_prob", False))
        if hf.get("mlp_only_layers"):
            raise CheckpointError(f"{source}: mlp_only_layers={hf['mlp_only_layers']!r} is not "
                                  "implemented (dense MLP layers among MoE layers)")
        if int(hf.get("decoder_sparse_step", 1)) != 1:
            raise CheckpointError(f"{source}: decoder_sparse_step={hf['decoder_sparse_step']!r} "
                                  "is not implemented (dense MLP layers among MoE layers)")
    if experts <= 0:
        raise CheckpointError(f"{source}: num_experts={experts} is not implemented (a "
                              f"{family.value} model without experts)")
    return dict(num_experts=experts,
                experts_per_token=int(hf.get("num_experts_per_tok", 2 if mixtral else 8)),
                norm_topk_prob=normalize,
                router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def _rope_to_hf(theta: float, scaling: RopeScaling, fraction: float,
                max_len: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"rope_type": scaling.kind.value, "rope_theta": theta}
    if fraction != 1.0:
        spec["partial_rotary_factor"] = fraction
    if scaling.kind is not RopeType.DEFAULT:
        spec["factor"] = scaling.factor
    if scaling.kind in (RopeType.LLAMA3, RopeType.YARN) and scaling.original_max_len:
        spec["original_max_position_embeddings"] = scaling.original_max_len
    if scaling.kind is RopeType.LONGROPE:
        # transformers requires the key even where it equals the model's context.
        spec["original_max_position_embeddings"] = scaling.original_max_len or max_len
        spec.update(short_factor=list(scaling.short_factor), long_factor=list(scaling.long_factor))
        if scaling.attention_factor is not None:
            spec["attention_factor"] = scaling.attention_factor
    if scaling.kind is RopeType.LLAMA3:
        spec.update(low_freq_factor=scaling.low_freq_factor,
                    high_freq_factor=scaling.high_freq_factor)
    if scaling.kind is RopeType.YARN:
        spec.update(beta_fast=scaling.beta_fast, beta_slow=scaling.beta_slow,
                    truncate=scaling.truncate)
        if scaling.attention_factor is not None:
            spec["attention_factor"] = scaling.attention_factor
    return spec


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for ``config``.

    Raises, naming the fields, if ``config`` switches an architecture feature that the family's
    transformers class cannot express (e.g. a Llama with sliding-window attention): the written
    config must read back as ``config`` itself.
    """
    hf = _config_to_hf(config)
    back = config_from_hf(hf)
    if back != config:
        wrong = {f.name: (getattr(config, f.name), getattr(back, f.name))
                 for f in dataclasses.fields(config)
                 if getattr(config, f.name) != getattr(back, f.name)
                 and f.name not in TRAINING_ONLY_FIELDS}
        if wrong:
            detail = ", ".join(f"{k}={got!r} (the {config.family.value} class gives {want!r})"
                               for k, (got, want) in wrong.items())
            raise ValueError(
                f"cannot export a {config.family.value!r} ModelConfig to Hugging Face: {detail}")
    return hf


def _config_to_hf(config: ModelConfig) -> dict[str, Any]:
    family = config.family
    dtype = np.dtype(config.param_dtype).name
    hf: dict[str, Any] = {
        "architectures": [(_REWARD_ARCHITECTURES if config.reward_head else _ARCHITECTURES)[family]],
        "model_type": family.value,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "dtype": dtype,
        "torch_dtype": dtype,  # transformers 4.x reads this name
    }
    if config.reward_head:
        hf.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if family is Family.GPT2:
        hf.update(
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.mlp_dim,
            n_positions=config.max_seq_len,
            layer_norm_epsilon=config.norm_eps,
            activation_function="gelu_new" if config.activation is Activation.GELU_TANH
            else _ACTIVATION_NAMES[config.activation],
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
        )
        return hf

    act_key = "hidden_activation" if family in (Family.GEMMA2, Family.GEMMA3) else "hidden_act"
    hf.update(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_size,
        intermediate_size=config.mlp_dim,
        max_position_embeddings=config.max_seq_len,
        **{act_key: _ACTIVATION_NAMES[config.activation]},
    )
    hf["layer_norm_eps" if family is Family.GPT_NEOX else "rms_norm_eps"] = config.norm_eps
    # Both spellings, so transformers 4.x (rope_theta, rope_scaling) and 5.x (rope_parameters)
    # agree.
    spec = _rope_to_hf(config.rope_theta, config.rope_scaling, config.rope_fraction,
                       config.max_seq_len)
    hf["rope_theta"] = config.rope_theta
    if config.rope_scaling.kind is not RopeType.DEFAULT:
        hf["rope_scaling"] = {k: v for k, v in spec.items() if k != "rope_theta"}
    if config.rope_scaling.kind is RopeType.LONGROPE:
        # Phi3Config's top-level default (4096) would override the nested value otherwise.
        hf["original_max_position_embeddings"] = spec["original_max_position_embeddings"]
    if family is Family.GEMMA3:
        local = {"rope_type": "default", "rope_theta": config.local_rope_theta}
        hf["rope_local_base_freq"] = config.local_rope_theta
        hf["rope_parameters"] = {"full_attention": spec, "sliding_attention": local}
    else:
        hf["rope_parameters"] = spec
    if family is Family.GPT_NEOX:
        hf.update(rotary_pct=config.rope_fraction, rotary_emb_base=config.rope_theta,
                  use_parallel_residual=config.parallel_residual,
                  attention_bias=config.qkv_bias)
    elif config.rope_fraction != 1.0:
        hf["partial_rotary_factor"] = config.rope_fraction

    if family in (Family.LLAMA, Family.GEMMA, Family.GEMMA2, Family.GEMMA3, Family.QWEN3,
                  Family.OLMO2, Family.QWEN3_MOE):
        hf["attention_bias"] = config.qkv_bias
    if family is Family.LLAMA:
        hf["mlp_bias"] = config.mlp_bias
    if family is Family.MIXTRAL:
        hf.update(num_local_experts=config.num_experts, router_jitter_noise=0.0)
    if family is Family.QWEN3_MOE:
        hf.update(num_experts=config.num_experts, moe_intermediate_size=config.mlp_dim,
                  norm_topk_prob=config.norm_topk_prob, decoder_sparse_step=1,
                  mlp_only_layers=[])
    if config.num_experts:
        hf.update(num_experts_per_tok=config.experts_per_token,
                  router_aux_loss_coef=config.router_aux_loss_coef)
    if family in (Family.GEMMA2, Family.GEMMA3):
        q = config.query_scale
        # transformers' strict config types this field int.
        hf.update(query_pre_attn_scalar=int(q) if float(q).is_integer() else q,
                  attn_logit_softcapping=config.attn_logit_softcap,
                  final_logit_softcapping=config.final_logit_softcap)
    if family in (Family.MISTRAL, Family.PHI3, Family.QWEN2, Family.QWEN3, Family.GEMMA2,
                  Family.GEMMA3, Family.MIXTRAL, Family.QWEN3_MOE):
        types = ["sliding_attention" if config.is_sliding(i) else "full_attention"
                 for i in range(config.num_layers)]
        hf["sliding_window"] = config.sliding_window
        if family in (Family.QWEN2, Family.QWEN3):
            sliding = config.sliding_window is not None
            first = next((i for i, t in enumerate(types) if t == "sliding_attention"),
                         config.num_layers)
            hf.update(use_sliding_window=sliding, max_window_layers=first)
        if family is Family.QWEN3_MOE:
            hf["use_sliding_window"] = config.sliding_window is not None
        elif family not in (Family.MISTRAL, Family.PHI3, Family.MIXTRAL):
            hf["layer_types"] = types
    return hf


# ----------------------------------------------------------------------------- weight names


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One HF tensor <-> one or more fbjax params.

    ``to_ours(w) -> {path: array}`` and ``to_hf({path: array}) -> w`` are exact inverses.
    ``hf_shape`` is the shape the HF tensor must have (None: the same as our single param's).
    ``part``: ``(index, count)`` when the tensor is one slice ``[index]`` of our param, which
    ``count`` such tensors make up together (one expert of a stacked MoE kernel).
    """

    hf_name: str
    paths: tuple[str, ...]
    to_ours: Callable[[np.ndarray], dict[str, np.ndarray]]
    to_hf: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    hf_shape: tuple[int, ...] | None = None
    part: tuple[int, int] | None = None


def _copy(hf_name: str, path: str) -> _Rule:
    return _Rule(hf_name, (path,), lambda w: {path: w}, lambda p: p[path])


def _linear(hf_name: str, path: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
    """An ``nn.Linear`` weight ``[out, in]`` <-> our kernel ``[*in_shape, *out_shape]``."""
    n_out = int(np.prod(out_shape))
    n_in = int(np.prod(in_shape))
    return _Rule(
        hf_name,
        (path,),
        lambda w: {path: np.ascontiguousarray(w.T).reshape(*in_shape, *out_shape)},
        lambda p: np.ascontiguousarray(p[path].reshape(n_in, n_out).T),
        (n_out, n_in),
    )


def _conv1d(hf_name: str, path: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
    """A GPT-2 ``Conv1D`` weight ``[in, out]`` <-> our kernel ``[*in_shape, *out_shape]``."""
    n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    return _Rule(
        hf_name, (path,), lambda w: {path: w.reshape(*in_shape, *out_shape)},
        lambda p: p[path].reshape(n_in, n_out), (n_in, n_out),
    )


def _expert_linear(hf_name: str, path: str, index: int, count: int, n_in: int,
                   n_out: int) -> _Rule:
    """One expert's ``nn.Linear`` weight ``[out, in]`` <-> slice ``[index]`` of our stacked
    ``[E, in, out]`` expert kernel."""
    return _Rule(hf_name, (path,), lambda w: {path: np.ascontiguousarray(w.T)},
                 lambda p: np.ascontiguousarray(p[path][index].T), (n_out, n_in),
                 (index, count))


def _moe_rules(config: ModelConfig, pre: str, ours: str) -> list[_Rule]:
    """A MoE layer: the router (``[E, D]`` linear) and every expert's three projections."""
    d, f, e = config.hidden_size, config.mlp_dim, config.num_experts
    if config.family is Family.MIXTRAL:
        block, names = pre + "block_sparse_moe.", (("w1", "gate"), ("w3", "up"), ("w2", "down"))
    else:
        block = pre + "mlp."
        names = (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down"))
    rules = [_linear(block + "gate.weight", f"{ours}/moe/router", (d,), (e,))]
    for j in range(e):
        for theirs, mine in names:
            n_in, n_out = (f, d) if mine == "down" else (d, f)
            rules.append(_expert_linear(f"{block}experts.{j}.{theirs}.weight",
                                        f"{ours}/moe/{mine}", j, e, n_in, n_out))
    return rules


def _bias(hf_name: str, path: str, shape: tuple[int, ...]) -> _Rule:
    """A flat ``[out]`` bias <-> our bias ``[*shape]`` (heads split out)."""
    return _Rule(hf_name, (path,), lambda w: {path: w.reshape(shape)},
                 lambda p: p[path].reshape(-1), (int(np.prod(shape)),))


def _gpt2_qkv(prefix: str, layer: str, d: int, h: int, hd: int, bias: bool) -> _Rule:
    """GPT-2's fused ``c_attn``: ``[D, 3D]`` weight (or ``[3D]`` bias) = q | k | v."""
    kind = "bias" if bias else "kernel"
    paths = tuple(f"{layer}/attn/{n}/{kind}" for n in "qkv")
    ours = (h, hd) if bias else (d, h, hd)
    theirs = (h * hd,) if bias else (d, h * hd)

    def to_ours(w):
        return {p: part.reshape(ours) for p, part in zip(paths, np.split(w, 3, axis=-1))}

    def to_hf(p):
        return np.concatenate([p[path].reshape(theirs) for path in paths], axis=-1)

    name = f"{prefix}attn.c_attn.{'bias' if bias else 'weight'}"
    return _Rule(name, paths, to_ours, to_hf, theirs[:-1] + (3 * h * hd,))


def _split_out(hf_name: str, parts: tuple[tuple[str, tuple[int, ...]], ...], d: int) -> _Rule:
    """A fused ``nn.Linear`` weight ``[sum(out), D]`` whose output rows are the listed params
    one after another (Phi-3's ``qkv_proj`` = q | k | v, ``gate_up_proj`` = gate | up)."""
    paths = tuple(p for p, _ in parts)
    sizes = [int(np.prod(shape)) for _, shape in parts]

    def to_ours(w):
        chunks = np.split(w, np.cumsum(sizes)[:-1], axis=0)
        return {p: np.ascontiguousarray(c.T).reshape(d, *shape)
                for (p, shape), c in zip(parts, chunks)}

    def to_hf(p):
        return np.concatenate(
            [np.ascontiguousarray(p[path].reshape(d, n).T) for path, n in zip(paths, sizes)], axis=0)

    return _Rule(hf_name, paths, to_ours, to_hf, (sum(sizes), d))


def _neox_qkv(hf_name: str, layer: str, d: int, h: int, hd: int, bias: bool) -> _Rule:
    """GPT-NeoX's fused ``query_key_value``: output rows grouped by head, ``[H, 3, hd]``
    (q, k, v of head 0, then of head 1, ...), the layout its attention's ``view`` implies."""
    kind = "bias" if bias else "kernel"
    paths = tuple(f"{layer}/attn/{n}/{kind}" for n in "qkv")

    def to_ours(w):
        if bias:
            grouped = w.reshape(h, 3, hd)
            return {p: np.ascontiguousarray(grouped[:, i]) for i, p in enumerate(paths)}
        grouped = w.reshape(h, 3, hd, d)  # [out, in] with out = (head, qkv, hd)
        return {p: np.ascontiguousarray(grouped[:, i].transpose(2, 0, 1))
                for i, p in enumerate(paths)}

    def to_hf(p):
        if bias:
            return np.stack([p[path] for path in paths], axis=1).reshape(3 * h * hd)
        stacked = np.stack([p[path].transpose(1, 2, 0) for path in paths], axis=1)  # [H,3,hd,D]
        return np.ascontiguousarray(stacked.reshape(3 * h * hd, d))

    return _Rule(hf_name, paths, to_ours, to_hf, (3 * h * hd,) if bias else (3 * h * hd, d))


# HF norm names -> ours, per family. (Llama's "post_attention_layernorm" is the MLP's pre-norm;
# Gemma 2/3's and OLMo 2's is the attention output's post-norm.)
def _norm_names(family: Family) -> dict[str, str]:
    if family in (Family.GEMMA2, Family.GEMMA3):
        return {"input_layernorm": "attn_norm", "post_attention_layernorm": "attn_post_norm",
                "pre_feedforward_layernorm": "mlp_norm",
                "post_feedforward_layernorm": "mlp_post_norm"}
    if family is Family.OLMO2:
        return {"post_attention_layernorm": "attn_post_norm",
                "post_feedforward_layernorm": "mlp_post_norm"}
    return {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}


def _neox_rules(config: ModelConfig) -> list[_Rule]:
    d, h, hd, f = config.hidden_size, config.num_heads, config.head_size, config.mlp_dim
    rules = [_copy("gpt_neox.embed_in.weight", "embedding")]
    for i in range(config.num_layers):
        pre, ours = f"gpt_neox.layers.{i}.", f"layer_{i}"
        for theirs, mine in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm")):
            rules += [_copy(f"{pre}{theirs}.weight", f"{ours}/{mine}/scale"),
                      _copy(f"{pre}{theirs}.bias", f"{ours}/{mine}/bias")]
        rules.append(_neox_qkv(pre + "attention.query_key_value.weight", ours, d, h, hd, False))
        rules.append(_linear(pre + "attention.dense.weight", f"{ours}/attn/o/kernel", (h, hd), (d,)))
        if config.qkv_bias:
            rules.append(_neox_qkv(pre + "attention.query_key_value.bias", ours, d, h, hd, True))
            rules.append(_copy(pre + "attention.dense.bias", f"{ours}/attn/o/bias"))
        rules += [_linear(pre + "mlp.dense_h_to_4h.weight", f"{ours}/mlp/up/kernel", (d,), (f,)),
                  _copy(pre + "mlp.dense_h_to_4h.bias", f"{ours}/mlp/up/bias"),
                  _linear(pre + "mlp.dense_4h_to_h.weight", f"{ours}/mlp/down/kernel", (f,), (d,)),
                  _copy(pre + "mlp.dense_4h_to_h.bias", f"{ours}/mlp/down/bias")]
    rules += [_copy("gpt_neox.final_layer_norm.weight", "final_norm/scale"),
              _copy("gpt_neox.final_layer_norm.bias", "final_norm/bias")]
    return rules


def _llama_like_rules(config: ModelConfig) -> list[_Rule]:
    """Llama's tensor names, with each family's fused projections, q/k norms and norm names."""
    d, h, kv, hd, f = (config.hidden_size, config.num_heads, config.num_kv_heads,
                       config.head_size, config.mlp_dim)
    family = config.family
    rules = [_copy("model.embed_tokens.weight", "embedding")]
    for i in range(config.num_layers):
        pre, ours = f"model.layers.{i}.", f"layer_{i}"
        att = pre + "self_attn."
        if family is Family.PHI3:
            rules.append(_split_out(att + "qkv_proj.weight", (
                (f"{ours}/attn/q/kernel", (h, hd)), (f"{ours}/attn/k/kernel", (kv, hd)),
                (f"{ours}/attn/v/kernel", (kv, hd))), d))
        else:
            for name, heads in (("q", h), ("k", kv), ("v", kv)):
                rules.append(_linear(f"{att}{name}_proj.weight", f"{ours}/attn/{name}/kernel",
                                     (d,), (heads, hd)))
                if config.qkv_bias:
                    rules.append(_bias(f"{att}{name}_proj.bias", f"{ours}/attn/{name}/bias",
                                       (heads, hd)))
        rules.append(_linear(att + "o_proj.weight", f"{ours}/attn/o/kernel", (h, hd), (d,)))
        if config.out_bias:
            rules.append(_copy(att + "o_proj.bias", f"{ours}/attn/o/bias"))
        if config.qk_norm is not QKNorm.NONE:
            rules += [_copy(att + "q_norm.weight", f"{ours}/attn/q_norm/scale"),
                      _copy(att + "k_norm.weight", f"{ours}/attn/k_norm/scale")]
        if config.num_experts:
            rules += _moe_rules(config, pre, ours)
        elif family is Family.PHI3:
            rules.append(_split_out(pre + "mlp.gate_up_proj.weight", (
                (f"{ours}/mlp/gate/kernel", (f,)), (f"{ours}/mlp/up/kernel", (f,))), d))
            rules.append(_linear(pre + "mlp.down_proj.weight", f"{ours}/mlp/down/kernel", (f,), (d,)))
        else:
            for name, (n_in, n_out) in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d))):
                rules.append(_linear(f"{pre}mlp.{name}_proj.weight", f"{ours}/mlp/{name}/kernel",
                                     (n_in,), (n_out,)))
                if config.mlp_bias:
                    rules.append(_copy(f"{pre}mlp.{name}_proj.bias", f"{ours}/mlp/{name}/bias"))
        rules += [_copy(f"{pre}{theirs}.weight", f"{ours}/{mine}/scale")
                  for theirs, mine in _norm_names(family).items()]
    rules.append(_copy("model.norm.weight", "final_norm/scale"))
    return rules


def _rules(config: ModelConfig) -> list[_Rule]:
    """Every tensor of the HF checkpoint for ``config`` and how it maps to our tree."""
    d, h, hd = config.hidden_size, config.num_heads, config.head_size
    rules: list[_Rule] = []
    head = "lm_head.weight"
    if config.family is Family.GPT2:
        rules += [_copy("transformer.wte.weight", "embedding"),
                  _copy("transformer.wpe.weight", "position_embedding")]
        for i in range(config.num_layers):
            pre, ours = f"transformer.h.{i}.", f"layer_{i}"
            rules += [
                _copy(pre + "ln_1.weight", f"{ours}/attn_norm/scale"),
                _copy(pre + "ln_1.bias", f"{ours}/attn_norm/bias"),
                _gpt2_qkv(pre, ours, d, h, hd, bias=False),
                _gpt2_qkv(pre, ours, d, h, hd, bias=True),
                _conv1d(pre + "attn.c_proj.weight", f"{ours}/attn/o/kernel", (h, hd), (d,)),
                _copy(pre + "attn.c_proj.bias", f"{ours}/attn/o/bias"),
                _copy(pre + "ln_2.weight", f"{ours}/mlp_norm/scale"),
                _copy(pre + "ln_2.bias", f"{ours}/mlp_norm/bias"),
                _copy(pre + "mlp.c_fc.weight", f"{ours}/mlp/up/kernel"),
                _copy(pre + "mlp.c_fc.bias", f"{ours}/mlp/up/bias"),
                _copy(pre + "mlp.c_proj.weight", f"{ours}/mlp/down/kernel"),
                _copy(pre + "mlp.c_proj.bias", f"{ours}/mlp/down/bias"),
            ]
        rules += [_copy("transformer.ln_f.weight", "final_norm/scale"),
                  _copy("transformer.ln_f.bias", "final_norm/bias")]
    elif config.family is Family.GPT_NEOX:
        rules += _neox_rules(config)
        head = "embed_out.weight"
    else:
        rules += _llama_like_rules(config)
    if not config.tie_embeddings and not config.reward_head:
        rules.append(_linear(head, "lm_head", (d,), (config.vocab_size,)))
    if config.reward_head:
        rules.append(_linear("score.weight", "reward_head", (d,), (1,)))
    return rules


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """``{'/'-joined path: shape}`` of the decoder's parameters (computed without allocating)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from fbjax.models.decoder import Decoder

    ones = jnp.ones((1, 1), jnp.int32)
    shapes = jax.eval_shape(Decoder(config).init, jax.random.key(0), ones, ones * 0, ones)
    flat = flatten(nn.meta.unbox(shapes)["params"])
    return {k: tuple(v.shape) for k, v in flat.items()}


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{'a/b/c': leaf}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b/c': leaf}`` -> nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def to_numpy_flat(params: Any) -> dict[str, np.ndarray]:
    """Params (optionally under ``'params'``, boxed or not, on device or host) -> flat numpy."""
    import flax.linen as nn
    import jax

    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    params = jax.device_get(nn.meta.unbox(params))
    return {k: np.asarray(v) for k, v in flatten(params).items()}


# ----------------------------------------------------------------------------- safetensors io


def _read_config(hf_dir: str) -> dict[str, Any]:
    path = os.path.join(hf_dir, CONFIG_FILE)
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"Hugging Face checkpoint directory not found: {hf_dir}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Hugging Face config not found: {path}")
    with open(path) as f:
        return json.load(f)


def _weight_files(hf_dir: str) -> list[str]:
    """Paths of the safetensors files of a checkpoint directory (single-file or sharded)."""
    single = os.path.join(hf_dir, SAFETENSORS_FILE)
    index = os.path.join(hf_dir, SAFETENSORS_INDEX_FILE)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
        files = [SAFETENSORS_FILE]
    else:
        others = sorted(n for n in os.listdir(hf_dir) if n.endswith((".bin", ".pt", ".pth")))
        hint = f" (found {others}; convert them to safetensors first)" if others else ""
        raise FileNotFoundError(
            f"no safetensors weights in {hf_dir}: expected {single} or {index}{hint}"
        )
    paths = [os.path.join(hf_dir, name) for name in files]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint shard listed in {index} not found: {path}")
    return paths


def read_safetensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory, single-file or sharded (memory-mapped)."""
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for path in _weight_files(hf_dir):
        tensors.update(load_file(path))
    return tensors


def params_from_hf(
    config: ModelConfig, tensors: Mapping[str, np.ndarray], *, dtype: str = "float32",
    source: str = "checkpoint",
) -> dict[str, Any]:
    """HF tensors -> our nested (unboxed) param dict, checking names and shapes."""
    target = np.dtype(dtype)
    flat = _convert(config, dict(tensors).items(), lambda path, a: a.astype(target, copy=False),
                    source)
    return unflatten(flat)


def _convert(config: ModelConfig, items, place: Callable[[str, np.ndarray], Any],
             source: str) -> dict[str, Any]:
    """Map ``(hf_name, array)`` pairs, consumed one at a time, to ``{path: place(path, ours)}``,
    checking every name and shape. Only the tensor in hand is held as a host array."""
    prefix = {Family.GPT2: "transformer.", Family.GPT_NEOX: "gpt_neox."}.get(config.family, "model.")
    shapes = expected_shapes(config)
    rules = {rule.hf_name: rule for rule in _rules(config)}
    flat: dict[str, Any] = {}
    parts: dict[str, dict[int, np.ndarray]] = {}  # stacked params still being assembled
    unused = []
    for name, array in items:
        if not name.startswith((prefix, "lm_head.", "embed_out.", "score.")):
            name = prefix + name  # bare-backbone checkpoints (e.g. the original GPT-2 release)
        rule = rules.pop(name, None)
        if rule is None:
            tied_copy = name == "lm_head.weight" and (config.tie_embeddings or config.reward_head)
            if not tied_copy and not _IGNORED_KEYS.search(name):
                unused.append(name)
            continue
        array = np.asarray(array)
        want = rule.hf_shape or shapes[rule.paths[0]]
        if array.shape != tuple(want):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {array.shape} but its config.json "
                f"implies {tuple(want)}"
            )
        for path, value in rule.to_ours(array).items():
            if rule.part is None:
                flat[path] = place(path, value)
                continue
            index, count = rule.part
            slices = parts.setdefault(path, {})
            slices[index] = value
            if len(slices) == count:  # complete: stack, place, drop the host slices
                flat[path] = place(path, np.stack([slices[i] for i in range(count)]))
                del parts[path]
    if rules:
        missing = sorted(rules)
        raise CheckpointError(f"{source}: missing tensors {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''} for {config.family.value}")
    if unused:
        unused.sort()
        raise CheckpointError(
            f"{source}: unexpected tensors {unused[:8]}{' ...' if len(unused) > 8 else ''}; "
            "the config does not describe this checkpoint"
        )
    # Every rule's output shape follows from its hf_shape; this guards the rules themselves.
    assert {k: tuple(v.shape) for k, v in flat.items()} == shapes, "HF mapping rules out of sync"
    return flat


def _iter_safetensors(hf_dir: str):
    """``(name, array)`` of a checkpoint directory, one shard open at a time, one tensor read
    at a time (safetensors' lazy ``safe_open``)."""
    from safetensors import safe_open

    for path in _weight_files(hf_dir):
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_hf_sharded(hf_dir: str, *, mesh, rules, dtype: str = "float32"
                    ) -> tuple[ModelConfig, dict[str, Any]]:
    """Like :func:`load_hf`, but streaming: tensors are read one at a time and each is placed
    on ``mesh`` with the sharding its logical axes get under ``rules``
    (``jax.make_array_from_callback``, so every device receives only its slice), then
    dropped from host memory. Peak host memory is about one tensor beyond what the devices
    hold, instead of the whole checkpoint.
    """
    import flax.linen as nn
    import jax

    from fbjax.models.decoder import Decoder

    hf_dir = os.fspath(hf_dir)
    config = config_from_hf(_read_config(hf_dir), source=os.path.join(hf_dir, CONFIG_FILE))
    config = dataclasses.replace(config, param_dtype=np.dtype(dtype).name)
    ones = np.ones((1, 1), np.int32)
    boxed = jax.eval_shape(Decoder(config).init, jax.random.key(0), ones, ones * 0, ones)
    specs = nn.get_partition_spec(boxed)["params"]
    shardings = flatten(nn.logical_to_mesh_sharding(specs, mesh, rules))
    target = np.dtype(dtype)

    def place(path, value):
        value = value.astype(target, copy=False)
        return jax.make_array_from_callback(value.shape, shardings[path], lambda idx: value[idx])

    return config, unflatten(_convert(config, _iter_safetensors(hf_dir), place, hf_dir))


def params_to_hf(config: ModelConfig, params: Any) -> dict[str, np.ndarray]:
    """Our params -> ``{hf_name: array}`` (contiguous, dtype unchanged)."""
    flat = to_numpy_flat(params)
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(flat))
    if missing:
        raise ValueError(f"params lack {missing[:8]} required by the config")
    return {r.hf_name: np.ascontiguousarray(r.to_hf(flat)) for r in _rules(config)}


def _parse_size(size: int | str) -> int:
    """``1000``, ``"5GB"``, ``"500MiB"`` -> bytes (the units transformers accepts)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size={size!r}: use bytes or e.g. '5GB', '500MiB'")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(number * scale)


def write_safetensors(
    out_dir: str, tensors: Mapping[str, np.ndarray], *, max_shard_size: int | str | None = None
) -> list[str]:
    """Write ``model.safetensors``, or shards plus an index when over ``max_shard_size``.

    Shards follow transformers' naming (``model-00001-of-00003.safetensors``). Returns the files
    written. The ``format: pt`` metadata is what transformers checks before loading.
    """
    from safetensors.numpy import save_file

    metadata = {"format": "pt"}
    limit = None if max_shard_size is None else _parse_size(max_shard_size)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        array = tensors[name]
        # A tensor larger than the limit gets a shard of its own (as in transformers).
        if limit is not None and shards[-1] and size + array.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if limit is None or len(shards) == 1:
        save_file(dict(tensors), os.path.join(out_dir, SAFETENSORS_FILE), metadata=metadata)
        return [SAFETENSORS_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(out_dir, name), metadata=metadata)
        weight_map.update({k: name for k in shard})
    index = {
        "metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
        "weight_map": dict(sorted(weight_map.items())),
    }
    with open(os.path.join(out_dir, SAFETENSORS_INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
    return names + [SAFETENSORS_INDEX_FILE]


# ----------------------------------------------------------------------------- public API


def load_hf(hf_dir: str, *, dtype: str = "float32") -> tuple[ModelConfig, dict[str, Any]]:
    """Load a Hugging Face checkpoint directory as ``(ModelConfig, params)``.

    ``params`` is the unboxed tree that goes under ``{'params': ...}``, as host numpy arrays in
    ``dtype`` (callers place/shard them); the returned config has ``param_dtype=dtype``.
    """
    hf_dir = os.fspath(hf_dir)
    hf = _read_config(hf_dir)
    config = config_from_hf(hf, source=os.path.join(hf_dir, CONFIG_FILE))
    config = dataclasses.replace(config, param_dtype=np.dtype(dtype).name)
    params = params_from_hf(config, read_safetensors(hf_dir), dtype=dtype, source=hf_dir)
    return config, params


def save_hf(
    out_dir: str,
    config: ModelConfig,
    params: Any,
    *,
    max_shard_size: int | str | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write ``config.json`` and safetensors weights that ``transformers`` loads.

    Tensors keep their dtype (config.json advertises it). With a tied head no ``lm_head.weight``
    is written, as transformers itself does. ``extra_config`` is merged into config.json last,
    for what ModelConfig does not hold (e.g. ``bos_token_id``/``eos_token_id``/``pad_token_id``).
    Returns the files written.
    """
    out_dir = os.fspath(out_dir)
    hf = {**config_to_hf(config), **(extra_config or {})}
    tensors = params_to_hf(config, params)
    dtypes = {a.dtype.name for a in tensors.values()}
    if len(dtypes) == 1:  # the dtype actually stored, which may differ from param_dtype
        hf["dtype"] = hf["torch_dtype"] = dtypes.pop()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    return [CONFIG_FILE] + write_safetensors(out_dir, tensors, max_shard_size=max_shard_size)


# ----------------------------------------------------------------------------- checks


def check_sequence_length(config: ModelConfig, length: int) -> None:
    """Raise if a sequence of ``length`` tokens exceeds what the model was built for.

    For learned positions (GPT-2) this is a hard limit: JAX would clamp positions past the
    table silently. For RoPE it is the context length the checkpoint was trained on.
    """
    if length > config.max_seq_len:
        kind = "position-embedding table size" if config.positions is Positions.LEARNED else (
            "trained context length (max_position_embeddings)")
        raise ValueError(
            f"sequence length {length} exceeds the model's max_seq_len={config.max_seq_len} "
            f"({kind}) for family {config.family.value!r}; truncate or shorten the data"
        )
