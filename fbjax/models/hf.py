"""Import and export of Hugging Face checkpoints, without torch.

A Hugging Face checkpoint directory holds ``config.json`` and either ``model.safetensors`` or
shards listed in ``model.safetensors.index.json``. We read both with ``safetensors.numpy`` and map
them onto the fbjax parameter tree (``fbjax.models.decoder``), and write the reverse so that
``transformers.AutoModelForCausalLM.from_pretrained`` loads what we save.

Supported ``model_type`` values: llama, mistral, qwen2, gemma (v1) and gpt2. The mapping is exact
(transposes and reshapes only), so a load followed by a save reproduces the tensors bitwise.

Layout conventions:

* HF ``nn.Linear`` weights are ``[out, in]``; our kernels are ``[in, ...out]`` with the head axis
  split out (``q`` is ``[D, H, hd]``, ``o`` is ``[H, hd, D]``).
* GPT-2 uses ``Conv1D`` whose weights are already ``[in, out]``, and fuses q/k/v into one
  ``c_attn`` of shape ``[D, 3D]`` (q, k, v concatenated along the output axis).
* Gemma stores RMSNorm weights as offsets from 1, exactly as our ``RMSNorm`` with
  ``norm_weight_offset=1`` does, so norm weights copy unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 & co. so np.dtype('bfloat16') works)
import numpy as np

# The project's one checkpoint error; re-exported here for callers of this module.
from fbjax.checkpoint.errors import CheckpointError
from fbjax.models.config import Activation, Family, ModelConfig, Norm, Positions, preset

SUPPORTED_MODEL_TYPES = tuple(f.value for f in Family)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"

_ARCHITECTURES = {
    Family.LLAMA: "LlamaForCausalLM",
    Family.MISTRAL: "MistralForCausalLM",
    Family.QWEN2: "Qwen2ForCausalLM",
    Family.GEMMA: "GemmaForCausalLM",
    Family.GPT2: "GPT2LMHeadModel",
}

# Reward models: the same backbone with a one-label sequence-classification head (``score``).
_REWARD_ARCHITECTURES = {
    Family.LLAMA: "LlamaForSequenceClassification",
    Family.MISTRAL: "MistralForSequenceClassification",
    Family.QWEN2: "Qwen2ForSequenceClassification",
    Family.GEMMA: "GemmaForSequenceClassification",
    Family.GPT2: "GPT2ForSequenceClassification",
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
_IGNORED_KEYS = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


# ----------------------------------------------------------------------------- config


def _activation(name: str | None, source: str, key: str) -> Activation:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise CheckpointError(
            f"{source}: {key}={name!r} is not supported; supported: {sorted(_ACTIVATIONS)}"
        ) from None


def _rope_theta(hf: Mapping[str, Any], source: str, default: float) -> float:
    """The RoPE base; rejects every RoPE scaling variant (we implement only plain RoPE).

    transformers 4.x writes ``rope_theta`` and ``rope_scaling``; 5.x folds both into
    ``rope_parameters``. Accept either.
    """
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for spec in (params, scaling):
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind != "default":
            raise CheckpointError(
                f"{source}: RoPE scaling {kind!r} is not supported (only plain RoPE, "
                f"rope_type='default'); got {dict(spec)}"
            )
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1.0):
        raise CheckpointError(f"{source}: partial_rotary_factor={partial} is not supported")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    return float(default if theta is None else theta)


def _require(hf: Mapping[str, Any], key: str, source: str) -> Any:
    if hf.get(key) is None:
        raise CheckpointError(f"{source}: missing required field {key!r}")
    return hf[key]


def _qwen2_sliding_window(hf: Mapping[str, Any], num_layers: int, source: str) -> int | None:
    """Qwen2 slides only on layers ``i >= max_window_layers``; we support all-or-none."""
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        sliding = [t == "sliding_attention" for t in layer_types]
    elif hf.get("use_sliding_window") and window is not None:
        first = hf.get("max_window_layers", num_layers)
        sliding = [i >= first for i in range(num_layers)]
    else:
        sliding = [False] * num_layers
    if not any(sliding) or window is None:
        return None
    if not all(sliding):
        raise CheckpointError(
            f"{source}: sliding-window attention on only some layers ({sum(sliding)} of "
            f"{num_layers}) is not supported; fbjax applies one window to every layer"
        )
    return int(window)


def config_from_hf(hf: Mapping[str, Any], *, source: str = CONFIG_FILE) -> ModelConfig:
    """Map a Hugging Face ``config.json`` dict to a :class:`ModelConfig`.

    ``source`` names the file in error messages. Fields missing from ``hf`` take the defaults
    of the corresponding transformers config class (not fbjax's presets), since those are what
    the checkpoint was trained with. A ``*ForSequenceClassification`` checkpoint with one label
    is a reward model (``reward_head=True``).
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


def _backbone_config_from_hf(hf: Mapping[str, Any], source: str) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type={model_type!r} is not supported; "
            f"supported model types: {list(SUPPORTED_MODEL_TYPES)}"
        )
    family = Family(model_type)

    if family is Family.GPT2:
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
            raise CheckpointError(
                f"{source}: GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported"
            )
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
        head_dim = 256 if family is Family.GEMMA else hidden // heads
    sizes = dict(
        vocab_size=int(_require(hf, "vocab_size", source)),
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        # None means "hidden_size // num_heads", which keeps configs canonical.
        head_dim=None if head_dim * heads == hidden else int(head_dim),
        mlp_dim=int(_require(hf, "intermediate_size", source)),
        max_seq_len=int(hf.get("max_position_embeddings", 2048)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(hf, source, default=10000.0),
    )

    if family is Family.GEMMA:
        # Gemma checkpoints say hidden_act="gelu" but mean the tanh approximation; transformers
        # prefers ``hidden_activation`` (4.x) and rewrites "gelu" (5.x). Do the same.
        key = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
        name = hf.get(key) or "gelu_pytorch_tanh"
        name = "gelu_pytorch_tanh" if name == "gelu" else name
        bias = bool(hf.get("attention_bias", False))
        return preset(
            family,
            **sizes,
            activation=_activation(name, source, key),
            qkv_bias=bias,
            out_bias=bias,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
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
    if family is Family.MISTRAL:
        window = hf.get("sliding_window")
        return preset(
            family, **sizes, **common, sliding_window=None if window is None else int(window)
        )
    # Qwen2: biases on q/k/v only, always.
    return preset(
        family, **sizes, **common, qkv_bias=True, out_bias=False,
        sliding_window=_qwen2_sliding_window(hf, num_layers, source),
    )


# The architecture switches each HF model class hard-codes; a ModelConfig that differs cannot be
# expressed as that model_type. ``None`` values are checked by hand in ``config_to_hf``.
_FIXED = {
    Family.LLAMA: dict(norm=Norm.RMS, norm_weight_offset=0.0, gated_mlp=True,
                       positions=Positions.ROPE, scale_embeddings=False, sliding_window=None),
    Family.MISTRAL: dict(norm=Norm.RMS, norm_weight_offset=0.0, gated_mlp=True,
                         positions=Positions.ROPE, scale_embeddings=False, qkv_bias=False,
                         out_bias=False, mlp_bias=False),
    Family.QWEN2: dict(norm=Norm.RMS, norm_weight_offset=0.0, gated_mlp=True,
                       positions=Positions.ROPE, scale_embeddings=False, qkv_bias=True,
                       out_bias=False, mlp_bias=False),
    Family.GEMMA: dict(norm=Norm.RMS, norm_weight_offset=1.0, gated_mlp=True,
                       positions=Positions.ROPE, scale_embeddings=True, mlp_bias=False,
                       sliding_window=None),
    Family.GPT2: dict(norm=Norm.LAYER, gated_mlp=False, positions=Positions.LEARNED,
                      scale_embeddings=False, qkv_bias=True, out_bias=True, mlp_bias=True,
                      sliding_window=None),
}


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for ``config``.

    Raises if ``config`` switches an architecture feature that the family's transformers class
    cannot express (e.g. a Llama with sliding-window attention).
    """
    family = config.family
    wrong = {
        name: (getattr(config, name), want)
        for name, want in _FIXED[family].items()
        if getattr(config, name) != want
    }
    if family in (Family.LLAMA, Family.GEMMA) and config.qkv_bias != config.out_bias:
        wrong["out_bias"] = (config.out_bias, config.qkv_bias)
    if family is Family.GPT2 and (
        config.num_kv_heads != config.num_heads or config.head_size * config.num_heads
        != config.hidden_size
    ):
        wrong["num_kv_heads/head_dim"] = ((config.num_kv_heads, config.head_size), "MHA, D/H")
    if wrong:
        detail = ", ".join(f"{k}={got!r} (needs {want!r})" for k, (got, want) in wrong.items())
        raise ValueError(
            f"cannot export a {family.value!r} ModelConfig to Hugging Face: {detail}"
        )

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

    hf.update(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_size,
        intermediate_size=config.mlp_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        hidden_act=_ACTIVATION_NAMES[config.activation],
        # Both spellings, so transformers 4.x (rope_theta) and 5.x (rope_parameters) agree.
        rope_theta=config.rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    if family is Family.LLAMA:
        hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif family is Family.GEMMA:
        hf.update(attention_bias=config.qkv_bias, hidden_activation=hf["hidden_act"])
    elif family is Family.MISTRAL:
        hf.update(sliding_window=config.sliding_window)
    else:
        sliding = config.sliding_window is not None
        hf.update(
            use_sliding_window=sliding,
            sliding_window=config.sliding_window,
            max_window_layers=0 if sliding else config.num_layers,
            layer_types=[("sliding_attention" if sliding else "full_attention")]
            * config.num_layers,
        )
    return hf


# ----------------------------------------------------------------------------- weight names


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One HF tensor <-> one or more fbjax params.

    ``to_ours(w) -> {path: array}`` and ``to_hf({path: array}) -> w`` are exact inverses.
    ``hf_shape`` is the shape the HF tensor must have (None: the same as our single param's).
    """

    hf_name: str
    paths: tuple[str, ...]
    to_ours: Callable[[np.ndarray], dict[str, np.ndarray]]
    to_hf: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    hf_shape: tuple[int, ...] | None = None


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


def _rules(config: ModelConfig) -> list[_Rule]:
    """Every tensor of the HF checkpoint for ``config`` and how it maps to our tree."""
    d, h, kv, hd, f = (config.hidden_size, config.num_heads, config.num_kv_heads,
                       config.head_size, config.mlp_dim)
    rules: list[_Rule] = []
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
    else:
        rules.append(_copy("model.embed_tokens.weight", "embedding"))
        for i in range(config.num_layers):
            pre, ours = f"model.layers.{i}.", f"layer_{i}"
            att = pre + "self_attn."
            for name, heads in (("q", h), ("k", kv), ("v", kv)):
                rules.append(_linear(f"{att}{name}_proj.weight", f"{ours}/attn/{name}/kernel",
                                     (d,), (heads, hd)))
                if config.qkv_bias:
                    rules.append(_bias(f"{att}{name}_proj.bias", f"{ours}/attn/{name}/bias",
                                       (heads, hd)))
            rules.append(_linear(att + "o_proj.weight", f"{ours}/attn/o/kernel", (h, hd), (d,)))
            if config.out_bias:
                rules.append(_copy(att + "o_proj.bias", f"{ours}/attn/o/bias"))
            for name, (n_in, n_out) in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d))):
                rules.append(_linear(f"{pre}mlp.{name}_proj.weight", f"{ours}/mlp/{name}/kernel",
                                     (n_in,), (n_out,)))
                if config.mlp_bias:
                    rules.append(_copy(f"{pre}mlp.{name}_proj.bias", f"{ours}/mlp/{name}/bias"))
            rules += [_copy(pre + "input_layernorm.weight", f"{ours}/attn_norm/scale"),
                      _copy(pre + "post_attention_layernorm.weight", f"{ours}/mlp_norm/scale")]
        rules.append(_copy("model.norm.weight", "final_norm/scale"))
    if not config.tie_embeddings and not config.reward_head:
        rules.append(_linear("lm_head.weight", "lm_head", (d,), (config.vocab_size,)))
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


def read_safetensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory, single-file or sharded (memory-mapped)."""
    from safetensors.numpy import load_file

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
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(hf_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint shard listed in {index} not found: {path}")
        tensors.update(load_file(path))
    return tensors


def _canonical_names(tensors: dict[str, np.ndarray], family: Family) -> dict[str, np.ndarray]:
    """Add the ``model.``/``transformer.`` prefix that bare-backbone checkpoints lack.

    The original GPT-2 release, for instance, names its tensors ``h.0.attn...`` without the
    ``transformer.`` prefix that ``GPT2LMHeadModel`` uses.
    """
    prefix = "transformer." if family is Family.GPT2 else "model."
    return {
        k if k.startswith((prefix, "lm_head.", "score.")) else prefix + k: v
        for k, v in tensors.items()
    }


def params_from_hf(
    config: ModelConfig, tensors: Mapping[str, np.ndarray], *, dtype: str = "float32",
    source: str = "checkpoint",
) -> dict[str, Any]:
    """HF tensors -> our nested (unboxed) param dict, checking names and shapes."""
    tensors = _canonical_names(dict(tensors), config.family)
    shapes = expected_shapes(config)
    flat: dict[str, np.ndarray] = {}
    missing = []
    for rule in _rules(config):
        if rule.hf_name not in tensors:
            missing.append(rule.hf_name)
            continue
        array = np.asarray(tensors.pop(rule.hf_name))
        want = rule.hf_shape or shapes[rule.paths[0]]
        if array.shape != tuple(want):
            raise CheckpointError(
                f"{source}: tensor {rule.hf_name} has shape {array.shape} but its config.json "
                f"implies {tuple(want)}"
            )
        flat.update(rule.to_ours(array))
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''} for {config.family.value}")
    # A tied checkpoint may still carry lm_head.weight (a copy of the embedding): drop it.
    if config.tie_embeddings or config.reward_head:
        tensors.pop("lm_head.weight", None)
    unused = sorted(k for k in tensors if not _IGNORED_KEYS.search(k))
    if unused:
        raise CheckpointError(
            f"{source}: unexpected tensors {unused[:8]}{' ...' if len(unused) > 8 else ''}; "
            "the config does not describe this checkpoint"
        )
    # Every rule's output shape follows from its hf_shape; this guards the rules themselves.
    assert {k: v.shape for k, v in flat.items()} == shapes, "HF mapping rules out of sync"
    target = np.dtype(dtype)
    return unflatten({k: flat[k].astype(target, copy=False) for k in shapes})


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
