"""Model configuration: one frozen dataclass covers the decoder families fbjax supports.

The families differ in a handful of switches (norm type, MLP gating and activation, position
encoding, biases, embedding tying and scaling). Each family preset below sets them the way the
corresponding Hugging Face implementation does, so imported checkpoints reproduce its logits.
"""

from __future__ import annotations

import dataclasses
import enum


class Family(str, enum.Enum):
    LLAMA = "llama"
    MISTRAL = "mistral"
    QWEN2 = "qwen2"
    GEMMA = "gemma"
    GPT2 = "gpt2"


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


class AttentionImpl(str, enum.Enum):
    """How attention is computed (``fbjax.models.attention``); all give the same values."""

    AUTO = "auto"  # a kernel on TPU/GPU where it covers the mask, else blockwise (dense if short)
    DENSE = "dense"  # the reference: [B, H, T, S] scores, memory quadratic in the row length
    BLOCKWISE = "blockwise"  # online softmax over live key blocks, memory linear in the row


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
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    # Gemma multiplies token embeddings by sqrt(hidden_size) before the first layer.
    scale_embeddings: bool = False
    sliding_window: int | None = None
    attention_impl: AttentionImpl = AttentionImpl.AUTO
    # Query/key block of the blockwise path (and the kernels); rows up to this long use dense
    # attention under "auto".
    attention_block_size: int = 512
    dtype: str = "float32"
    param_dtype: str = "float32"
    # "none" | "block" (checkpoint each decoder block) | "dots" (save matmul outputs only).
    remat: str = "none"
    init_std: float = 0.02
    # A scalar reward head on the final hidden state (Hugging Face ``*ForSequenceClassification``
    # with one label, ``score.weight``). A reward model has no LM head unless its embeddings
    # are tied: it scores sequences, it does not predict tokens.
    reward_head: bool = False

    def __post_init__(self):
        if not isinstance(self.family, Family):
            try:
                object.__setattr__(self, "family", Family(self.family))
            except ValueError:
                raise ValueError(
                    f"model.family={self.family!r} is not a supported family; "
                    f"choose one of {[f.value for f in Family]}"
                ) from None
        for name, kind in (("norm", Norm), ("activation", Activation), ("positions", Positions),
                           ("attention_impl", AttentionImpl)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    raise ValueError(
                        f"model.{name}={value!r} is not valid; choose one of "
                        f"{[k.value for k in kind]}"
                    ) from None
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} must be a multiple of "
                f"model.num_kv_heads={self.num_kv_heads}"
            )
        if self.attention_block_size < 8 or self.attention_block_size % 8:
            raise ValueError(
                f"model.attention_block_size={self.attention_block_size} must be a positive "
                "multiple of 8"
            )
        if self.remat not in ("none", "block", "dots"):
            raise ValueError(f"model.remat={self.remat!r}; choose 'none', 'block' or 'dots'")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads


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
    Family.GEMMA: gemma,
    Family.GPT2: gpt2,
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
