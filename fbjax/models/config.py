"""Model configuration: one frozen dataclass covers the decoder families fbjax supports.

The families differ in a handful of switches (norm type and placement, MLP gating and activation,
position encoding and its scaling, q/k norms, biases, residual wiring, soft-capping, per-layer
sliding windows, embedding tying and scaling). Each family preset below sets them the way the
corresponding Hugging Face implementation does, so imported checkpoints reproduce its logits.
"""

from __future__ import annotations

import dataclasses
import enum


class Family(str, enum.Enum):
    LLAMA = "llama"
    MISTRAL = "mistral"
    QWEN2 = "qwen2"
    QWEN3 = "qwen3"
    GEMMA = "gemma"
    GEMMA2 = "gemma2"
    GEMMA3 = "gemma3_text"
    GPT2 = "gpt2"
    GPT_NEOX = "gpt_neox"
    PHI3 = "phi3"
    OLMO2 = "olmo2"
    MIXTRAL = "mixtral"
    QWEN3_MOE = "qwen3_moe"


class Norm(str, enum.Enum):
    RMS = "rms"
    LAYER = "layer"


class Activation(str, enum.Enum):
    SILU = "silu"
    GELU = "gelu"  # exact erf form
    GELU_TANH = "gelu_tanh"


class Positions(str, enum.Enum):
    ROPE = "rope"
    LEARNED = "learned"


class QKNorm(str, enum.Enum):
    """RMSNorm of queries and keys before RoPE."""

    NONE = "none"
    HEAD = "head"  # over each head's head_dim (Qwen3, Gemma 3)
    FULL = "full"  # over the whole q / k projection, all heads at once (OLMo 2)


class RopeType(str, enum.Enum):
    """How the RoPE inverse frequencies are computed (transformers' ``rope_type``)."""

    DEFAULT = "default"
    LINEAR = "linear"  # positions divided by ``factor`` (Chen et al. 2023, arXiv:2306.15595)
    DYNAMIC = "dynamic"  # NTK-aware base growth with the sequence length (bloc97/emozilla)
    LLAMA3 = "llama3"  # Llama 3.1's band-wise frequency scaling
    YARN = "yarn"  # Peng et al. 2023, arXiv:2309.00071
    LONGROPE = "longrope"  # Ding et al. 2024, arXiv:2402.13753 (Phi-3's 128k checkpoints)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling, as transformers' ``rope_parameters`` / ``rope_scaling`` define it.

    ``factor``: the context extension factor (all types but default). ``original_max_len``: the
    pre-training context (llama3 and yarn); None means ``ModelConfig.max_seq_len``, as
    transformers defaults ``original_max_position_embeddings`` to ``max_position_embeddings``. ``low_freq_factor`` /
    ``high_freq_factor``: llama3's band edges. ``beta_fast`` / ``beta_slow``, ``truncate``: yarn's
    correction range (its paper's Eq. 17-18 defaults 32 / 1). ``attention_factor``: yarn's and
    longrope's cos/sin multiplier; None means yarn's ``0.1 ln(factor) + 1`` (Eq. 21) or
    longrope's ``sqrt(1 + ln(factor) / ln(original_max_len))``. ``short_factor`` /
    ``long_factor``: longrope's per-frequency divisors (one per rotary pair) for sequences up to
    and beyond ``original_max_len``.
    """

    kind: RopeType = RopeType.DEFAULT
    factor: float = 1.0
    original_max_len: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    def __post_init__(self):
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if value is not None:  # lists from JSON or --set; tuples keep the config hashable
                object.__setattr__(self, name, tuple(float(x) for x in value))
        if not isinstance(self.kind, RopeType):
            try:
                object.__setattr__(self, "kind", RopeType(self.kind))
            except ValueError:
                raise ValueError(
                    f"model.rope_scaling.kind={self.kind!r} is not implemented; choose one of "
                    f"{[k.value for k in RopeType]}"
                ) from None
        if self.kind is not RopeType.DEFAULT and self.factor <= 0:
            raise ValueError(f"model.rope_scaling.factor={self.factor} must be > 0")
        if self.kind is RopeType.LONGROPE:
            if self.short_factor is None or self.long_factor is None:
                raise ValueError("model.rope_scaling: longrope needs short_factor and long_factor")
            if len(self.short_factor) != len(self.long_factor):
                raise ValueError(
                    f"model.rope_scaling: short_factor has {len(self.short_factor)} entries and "
                    f"long_factor {len(self.long_factor)}; they must match")


class AttentionImpl(str, enum.Enum):
    """How attention is computed (``fbjax.models.attention``); all give the same values."""

    # a kernel on TPU/GPU where it covers the mask; else sparse on CPU, blockwise elsewhere
    # (dense on short rows)
    AUTO = "auto"
    DENSE = "dense"  # the reference: [B, H, T, S] scores, memory quadratic in the row length
    BLOCKWISE = "blockwise"  # online softmax over live key blocks, memory linear in the row
    # the live (row, query block, key block) triples gathered into one batched product
    SPARSE = "sparse"


# Settings that change how a model is trained or computed, not which weights it has: not part of
# a checkpoint's architecture (compared with an experiment's, or written to a Hugging Face config).
TRAINING_ONLY_FIELDS = ("dtype", "param_dtype", "remat", "init_std", "attention_impl",
                        "attention_block_size", "attention_sparse_block_size",
                        "add_router_aux_loss")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and architecture of a decoder-only transformer.

    Numerical policy: parameters are stored in ``param_dtype`` (float32 by default) and matmuls
    run in ``dtype`` (float32 on CPU, bfloat16 on accelerators). Log-probs are always computed
    in float32 from the final hidden states (see ``fbjax.objectives.logprobs``).
    """

    family: Family = Family.LLAMA
    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # defaults to hidden_size // num_heads
    mlp_dim: int = 128
    max_seq_len: int = 512
    norm: Norm = Norm.RMS
    norm_eps: float = 1e-6
    # Gemma stores RMSNorm weights as an offset from 1: y = x_hat * (1 + w).
    norm_weight_offset: float = 0.0
    activation: Activation = Activation.SILU
    gated_mlp: bool = True
    positions: Positions = Positions.ROPE
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    # Fraction of each head's dims that RoPE rotates (the first ones); GPT-NeoX's rotary_pct.
    rope_fraction: float = 1.0
    # RoPE base on sliding-window layers, unscaled (Gemma 3's rope_local_base_freq); None: the
    # same rotation as global layers.
    local_rope_theta: float | None = None
    qk_norm: QKNorm = QKNorm.NONE
    # Norm placement: ``pre_norms`` normalise the input of attention / MLP (most families);
    # ``post_norms`` normalise their outputs before the residual add (Gemma 2/3, OLMo 2).
    pre_norms: bool = True
    post_norms: bool = False
    # GPT-NeoX: x + attn(norm1(x)) + mlp(norm2(x)) instead of two sequential residual steps.
    parallel_residual: bool = False
    # Attention scores are scaled by query_scale ** -0.5 (Gemma 2/3's query_pre_attn_scalar);
    # None: head_dim ** -0.5.
    query_scale: float | None = None
    # cap * tanh(x / cap) on attention scores / output logits (Gemma 2); None: off.
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    # Gemma multiplies token embeddings by sqrt(hidden_size) before the first layer.
    scale_embeddings: bool = False
    sliding_window: int | None = None
    # Which layers use ``sliding_window`` (one bool per layer); None: every layer, when set.
    sliding_layers: tuple[bool, ...] | None = None
    attention_impl: AttentionImpl = AttentionImpl.AUTO
    # Query/key block of the blockwise path (and the kernels); under "auto", rows up to this
    # long use dense attention on accelerators where no kernel covers the mask.
    attention_block_size: int = 512
    # Block of the gathered (sparse) path, the default on CPU.
    attention_sparse_block_size: int = 64
    dtype: str = "float32"
    param_dtype: str = "float32"
    # "none" | "block" (checkpoint each decoder block) | "dots" (save matmul outputs only).
    remat: str = "none"
    init_std: float = 0.02
    # A scalar reward head on the final hidden state (Hugging Face ``*ForSequenceClassification``
    # with one label, ``score.weight``). A reward model has no LM head unless its embeddings
    # are tied: it scores sequences, it does not predict tokens.
    reward_head: bool = False
    # Mixture of experts (fbjax.models.moe): with num_experts > 0 every layer's MLP is
    # num_experts SwiGLU experts of width mlp_dim and a router sending each token to
    # experts_per_token of them. norm_topk_prob renormalises the chosen experts' router
    # probabilities to sum to 1 (Mixtral always; Qwen3-MoE's norm_topk_prob).
    num_experts: int = 0
    experts_per_token: int = 2
    norm_topk_prob: bool = True
    # The router's load-balancing loss (Switch Transformer Eq. 4) is always reported as the
    # metric ``moe/load_balancing_loss``; it is added to the training loss, times
    # router_aux_loss_coef, only with add_router_aux_loss (transformers adds it only when
    # output_router_logits=True, which its configs default to False).
    router_aux_loss_coef: float = 0.001
    add_router_aux_loss: bool = False

    def __post_init__(self):
        if not isinstance(self.family, Family):
            try:
                object.__setattr__(self, "family", Family(self.family))
            except ValueError:
                raise ValueError(
                    f"model.family={self.family!r} is not a supported family; "
                    f"choose one of {[f.value for f in Family]}"
                ) from None
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.sliding_layers is not None:
            object.__setattr__(self, "sliding_layers", tuple(bool(b) for b in self.sliding_layers))
            if len(self.sliding_layers) != self.num_layers:
                raise ValueError(
                    f"model.sliding_layers has {len(self.sliding_layers)} entries for "
                    f"model.num_layers={self.num_layers}"
                )
        if not 0.0 < self.rope_fraction <= 1.0:
            raise ValueError(f"model.rope_fraction={self.rope_fraction} must be in (0, 1]")
        for name, kind in (("norm", Norm), ("activation", Activation), ("positions", Positions),
                           ("qk_norm", QKNorm), ("attention_impl", AttentionImpl)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    raise ValueError(
                        f"model.{name}={value!r} is not valid; choose one of "
                        f"{[k.value for k in kind]}"
                    ) from None
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} must be a multiple of "
                f"model.num_heads={self.num_heads} (or set model.head_dim)"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} must be a multiple of "
                f"model.num_kv_heads={self.num_kv_heads}"
            )
        for key in ("attention_block_size", "attention_sparse_block_size"):
            size = getattr(self, key)
            if size < 8 or size % 8:
                raise ValueError(f"model.{key}={size} must be a positive multiple of 8")
        if self.num_experts < 0 or (
                self.num_experts and not 1 <= self.experts_per_token <= self.num_experts):
            raise ValueError(
                f"model.num_experts={self.num_experts} / model.experts_per_token="
                f"{self.experts_per_token}: need num_experts >= 0 and, with experts, "
                "1 <= experts_per_token <= num_experts")
        if self.num_experts and (not self.gated_mlp or self.mlp_bias):
            raise ValueError(
                "model.num_experts > 0 needs gated experts without biases (model.gated_mlp=True, "
                "model.mlp_bias=False), as Mixtral and Qwen3-MoE have")
        if self.remat not in ("none", "block", "dots"):
            raise ValueError(f"model.remat={self.remat!r}; choose 'none', 'block' or 'dots'")
        factors = self.rope_scaling.short_factor
        if factors is not None and len(factors) != self.rotary_dim // 2:
            raise ValueError(
                f"model.rope_scaling.short_factor has {len(factors)} entries; longrope needs one "
                f"per rotary pair, {self.rotary_dim // 2}")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """How many leading dims of each head RoPE rotates (transformers' int(head_dim * pct))."""
        return int(self.head_size * self.rope_fraction)

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends through the sliding window (and uses ``local_rope_theta``)."""
        if self.sliding_window is None:
            return False
        return True if self.sliding_layers is None else self.sliding_layers[layer]

    def window(self, layer: int) -> int | None:
        return self.sliding_window if self.is_sliding(layer) else None


def llama(**overrides) -> ModelConfig:
    """Llama 2/3: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head."""
    return ModelConfig(family=Family.LLAMA, **overrides)


def mistral(**overrides) -> ModelConfig:
    """Mistral 7B: Llama architecture with sliding-window attention."""
    overrides.setdefault("sliding_window", 4096)
    return ModelConfig(family=Family.MISTRAL, **overrides)


def qwen2(**overrides) -> ModelConfig:
    """Qwen2: Llama architecture with biases on the q/k/v projections."""
    overrides.setdefault("qkv_bias", True)
    overrides.setdefault("rope_theta", 1_000_000.0)
    return ModelConfig(family=Family.QWEN2, **overrides)


def gemma(**overrides) -> ModelConfig:
    """Gemma (v1): GeGLU (tanh GELU), scaled embeddings, (1 + w) RMSNorm, tied head."""
    defaults = dict(
        activation=Activation.GELU_TANH,
        norm_weight_offset=1.0,
        scale_embeddings=True,
        tie_embeddings=True,
    )
    return ModelConfig(family=Family.GEMMA, **{**defaults, **overrides})


def qwen3(**overrides) -> ModelConfig:
    """Qwen3: Llama architecture with per-head RMSNorm on queries and keys, no biases."""
    overrides.setdefault("qk_norm", QKNorm.HEAD)
    overrides.setdefault("rope_theta", 1_000_000.0)
    return ModelConfig(family=Family.QWEN3, **overrides)


def gemma2(**overrides) -> ModelConfig:
    """Gemma 2: Gemma plus pre+post norms, soft-capping, query_pre_attn_scalar and sliding
    attention on every other layer (even indices)."""
    defaults = dict(
        activation=Activation.GELU_TANH, norm_weight_offset=1.0, scale_embeddings=True,
        tie_embeddings=True, post_norms=True, attn_logit_softcap=50.0,
        final_logit_softcap=30.0, query_scale=256.0, sliding_window=4096,
    )
    merged = {**defaults, **overrides}
    if "sliding_layers" not in merged:
        merged["sliding_layers"] = tuple(i % 2 == 0 for i in range(merged.get("num_layers", 2)))
    return ModelConfig(family=Family.GEMMA2, **merged)


def gemma3(**overrides) -> ModelConfig:
    """Gemma 3 (text): Gemma 2's layout with q/k norms instead of soft-capping, five local
    (sliding, RoPE base 10k) layers to every global one (RoPE base 1M)."""
    defaults = dict(
        activation=Activation.GELU_TANH, norm_weight_offset=1.0, scale_embeddings=True,
        tie_embeddings=True, post_norms=True, qk_norm=QKNorm.HEAD, query_scale=256.0,
        sliding_window=4096, rope_theta=1_000_000.0, local_rope_theta=10_000.0,
    )
    merged = {**defaults, **overrides}
    if "sliding_layers" not in merged:
        merged["sliding_layers"] = tuple((i + 1) % 6 != 0 for i in range(merged.get("num_layers", 2)))
    return ModelConfig(family=Family.GEMMA3, **merged)


def gpt_neox(**overrides) -> ModelConfig:
    """GPT-NeoX / Pythia: LayerNorm, parallel residual, rotary on 25% of each head, exact-GELU
    MLP, biases everywhere, untied head."""
    defaults = dict(
        norm=Norm.LAYER, norm_eps=1e-5, activation=Activation.GELU, gated_mlp=False,
        qkv_bias=True, out_bias=True, mlp_bias=True, parallel_residual=True,
        rope_fraction=0.25,
    )
    overrides.setdefault("num_kv_heads", overrides.get("num_heads", 4))
    return ModelConfig(family=Family.GPT_NEOX, **{**defaults, **overrides})


def phi3(**overrides) -> ModelConfig:
    """Phi-3: Llama architecture (stored with fused qkv and gate_up projections)."""
    return ModelConfig(family=Family.PHI3, **overrides)


def olmo2(**overrides) -> ModelConfig:
    """OLMo 2: norms after attention and MLP only, RMSNorm over the whole q and k projections."""
    defaults = dict(pre_norms=False, post_norms=True, qk_norm=QKNorm.FULL, rope_theta=500_000.0)
    return ModelConfig(family=Family.OLMO2, **{**defaults, **overrides})


def mixtral(**overrides) -> ModelConfig:
    """Mixtral: Mistral's attention with a sparse MoE MLP, 8 experts, top-2, renormalised."""
    defaults = dict(num_experts=8, experts_per_token=2, norm_topk_prob=True,
                    rope_theta=1_000_000.0, norm_eps=1e-5)
    return ModelConfig(family=Family.MIXTRAL, **{**defaults, **overrides})


def qwen3_moe(**overrides) -> ModelConfig:
    """Qwen3-MoE: Qwen3's attention (per-head q/k norms) with a sparse MoE MLP in every layer;
    transformers' defaults are 128 experts, top-8, ``norm_topk_prob=False``."""
    defaults = dict(qk_norm=QKNorm.HEAD, rope_theta=10_000.0, num_experts=128,
                    experts_per_token=8, norm_topk_prob=False)
    return ModelConfig(family=Family.QWEN3_MOE, **{**defaults, **overrides})


def gpt2(**overrides) -> ModelConfig:
    """GPT-2: learned positions, LayerNorm, biased projections, tanh GELU MLP, tied head."""
    defaults = dict(
        norm=Norm.LAYER,
        norm_eps=1e-5,
        activation=Activation.GELU_TANH,
        gated_mlp=False,
        positions=Positions.LEARNED,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    )
    overrides.setdefault("num_kv_heads", overrides.get("num_heads", 4))
    return ModelConfig(family=Family.GPT2, **{**defaults, **overrides})


PRESETS = {
    Family.LLAMA: llama,
    Family.MISTRAL: mistral,
    Family.QWEN2: qwen2,
    Family.QWEN3: qwen3,
    Family.GEMMA: gemma,
    Family.GEMMA2: gemma2,
    Family.GEMMA3: gemma3,
    Family.GPT2: gpt2,
    Family.GPT_NEOX: gpt_neox,
    Family.PHI3: phi3,
    Family.OLMO2: olmo2,
    Family.MIXTRAL: mixtral,
    Family.QWEN3_MOE: qwen3_moe,
}


def preset(family: str | Family, **overrides) -> ModelConfig:
    """The family's architecture switches with the given sizes."""
    try:
        family = Family(family)
    except ValueError:
        raise ValueError(
            f"unknown model family {family!r}; supported: {[f.value for f in Family]}"
        ) from None
    return PRESETS[family](**overrides)
