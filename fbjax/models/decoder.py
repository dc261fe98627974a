"""A decoder-only transformer (Flax linen) covering every family of ``fbjax.models.config``.

One module, switched by ModelConfig fields: RoPE (with scaling and partial rotation) or learned
positions; pre- and/or post-norms; sequential or parallel (GPT-NeoX) residual; q/k norms per head
or over the whole projection; soft-capped attention scores; per-layer sliding windows; a dense
MLP or a sparse mixture of experts (``MoeMlp``, ``fbjax.models.moe``).

Every weight and activation carries logical axis names (``embed``, ``heads``, ``mlp``, ...);
``fbjax.sharding`` maps them to mesh axes through one rules table, so the model never names a
mesh axis itself.

The model returns final hidden states, not logits: log-probs are computed from the hidden states
and the output embedding in vocabulary chunks (``fbjax.objectives.logprobs``) so that a
128k-vocabulary model never materialises ``[B, L, V]`` at once.

Attention masking follows ``docs/batch_layout.md``: a query sees keys of its own segment, at or
before it in the row, whose branch is 0 (shared prompt) or its own. This one rule gives plain
causal attention, packing (several examples per row) and prefix sharing (chosen and rejected
completions reading one copy of the prompt).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fbjax.models.attention import attend, attention_mask, dense_attention
from fbjax.models import moe
from fbjax.models.config import Activation, ModelConfig, Norm, Positions, QKNorm, RopeType
from fbjax.models.rope import (
    apply_rope,
    default_inv_freq,
    dynamic_inv_freq,
    longrope_frequencies,
    segment_lengths,
    static_frequencies,
)

Array = jax.Array


class LayerCache(NamedTuple):
    """Keys and values of one layer for incremental decoding, ``[B, S, kv_heads, head_dim]``."""

    k: Array
    v: Array


class DecodeCache(NamedTuple):
    """Everything decoding needs besides the parameters; a pytree of fixed shapes.

    ``segment_ids``/``positions`` describe the cached slots (0 = empty slot) so the same mask
    rule as training applies; ``index`` is the next slot to write.
    """

    layers: tuple[LayerCache, ...]
    segment_ids: Array  # [B, S] int32
    positions: Array  # [B, S] int32
    index: Array  # [] int32


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> DecodeCache:
    dtype = jnp.dtype(config.dtype)
    shape = (batch_size, max_len, config.num_kv_heads, config.head_size)
    layers = tuple(
        LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
        for _ in range(config.num_layers)
    )
    zeros = jnp.zeros((batch_size, max_len), jnp.int32)
    return DecodeCache(layers, zeros, zeros, jnp.zeros((), jnp.int32))


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Plain rotary embedding over all of x's head dims (see ``fbjax.models.rope``).

    x: ``[B, T, H, D]``; positions: ``[B, T]``.
    """
    return apply_rope(x, positions, default_inv_freq(theta, x.shape[-1]))


class RMSNorm(nn.Module):
    eps: float
    weight_offset: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.initializers.zeros if self.weight_offset else nn.initializers.ones
        scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * (scale.astype(jnp.float32) + self.weight_offset)).astype(self.dtype)


class LayerNorm(nn.Module):
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def make_norm(config: ModelConfig, name: str) -> nn.Module:
    dtype = jnp.dtype(config.dtype)
    if config.norm is Norm.RMS:
        return RMSNorm(config.norm_eps, config.norm_weight_offset, dtype, name=name)
    return LayerNorm(config.norm_eps, dtype, name=name)


def activation_fn(kind: Activation):
    if kind is Activation.SILU:
        return jax.nn.silu
    if kind is Activation.GELU:
        return lambda x: jax.nn.gelu(x, approximate=False)
    return lambda x: jax.nn.gelu(x, approximate=True)


# jax.lax.dot_general as imported, before any qwix interception replaces it or its code
# (see Dense).
_PLAIN_DOT_GENERAL = jax.lax.dot_general
_PLAIN_DOT_GENERAL_CODE = jax.lax.dot_general.__code__


def _dot_general_intercepted() -> bool:
    fn = jax.lax.dot_general
    return fn is not _PLAIN_DOT_GENERAL or fn.__code__ is not _PLAIN_DOT_GENERAL_CODE


class Dense(nn.Module):
    """``y = x @ W (+ b)`` contracting the last ``len(in_axes)`` dims of x, with logical axes.

    Written out (rather than ``nn.DenseGeneral``) so that multi-dimensional kernels are created
    in their final shape and their logical partitioning applies to that shape.
    """

    config: ModelConfig
    in_features: tuple[int, ...]
    features: tuple[int, ...]
    axes: tuple[str, ...]
    use_bias: bool

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), self.axes),
            self.in_features + self.features,
            jnp.dtype(cfg.param_dtype),
        )
        dtype = jnp.dtype(cfg.dtype)
        n_in = len(self.in_features)
        if isinstance(kernel, (jax.Array, np.ndarray)):
            # A qwix-quantized kernel (QLoRA's frozen base) is no array: qwix's dot_general
            # dequantizes it itself, and it cannot be cast.
            kernel = kernel.astype(dtype)
        # The leading (batch, length) dims are merged into one: with two of them, the weight
        # gradient contracts over both, and XLA's CPU compiler then copies the incoming gradient
        # into a transposed layout before a slower matmul (twice the time of the MLP's backward
        # pass, measured with jax 0.10.2). On accelerators the merge is a free bitcast.
        lead = x.shape[: x.ndim - n_in]
        # A kernel of several input or output dims ([embed, heads, head_dim]) is used as the
        # matrix it is in memory. Kept 3-D, the weight gradient contracts a [tokens, heads,
        # head_dim] cotangent, and XLA's CPU compiler first copies it (with the RoPE backward
        # fused in) into a [heads * head_dim, tokens] layout, a strided write that took 90-180
        # ms per projection on a 64 x 358 batch (jax 0.10.2); flat, the projections' backward
        # went 1.36 s -> 0.25 s a step. Not while qwix intercepts the matmul (LoRA): it reads
        # the kernel's logical axes, which name the 3-D shape.
        if (isinstance(kernel, (jax.Array, np.ndarray)) and (n_in > 1 or len(self.features) > 1)
                and not _dot_general_intercepted()):
            x = x.reshape(-1, math.prod(self.in_features))
            y = jax.lax.dot_general(
                x.astype(dtype), kernel.reshape(x.shape[1], -1), (((1,), (0,)), ((), ())))
            y = y.reshape(lead + self.features)
        else:
            x = x.reshape((-1,) + x.shape[x.ndim - n_in:])
            y = jax.lax.dot_general(
                x.astype(dtype),
                kernel,
                ((tuple(range(1, n_in + 1)), tuple(range(n_in))), ((), ())),
            )
            y = y.reshape(lead + y.shape[1:])
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[n_in:]),
                self.features,
                jnp.dtype(cfg.param_dtype),
            )
            y = y + bias.astype(dtype)
        return y


def _dense(config, in_features, features, axes, use_bias, name):
    in_features = in_features if isinstance(in_features, tuple) else (in_features,)
    features = features if isinstance(features, tuple) else (features,)
    return Dense(config, in_features, features, axes, use_bias, name=name)


def _softcap(x: Array, cap: float | None) -> Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def _qk_norm(cfg: ModelConfig, x: Array, name: str) -> Array:
    """RMSNorm of ``[B, T, H, hd]`` queries or keys, per head or over all heads (OLMo 2)."""
    if cfg.qk_norm is QKNorm.NONE:
        return x
    norm = RMSNorm(cfg.norm_eps, cfg.norm_weight_offset, jnp.dtype(cfg.dtype), name=name)
    if cfg.qk_norm is QKNorm.HEAD:
        return norm(x)
    return norm(x.reshape(*x.shape[:2], -1)).reshape(x.shape)


class Attention(nn.Module):
    config: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, segment_ids, branch_ids, cache: LayerCache | None, meta):
        cfg = self.config
        hd = cfg.head_size
        sliding = cfg.is_sliding(self.layer)
        q = _dense(cfg, cfg.hidden_size, (cfg.num_heads, hd), ("embed", "heads", "head_dim"), cfg.qkv_bias, "q")(x)
        k = _dense(cfg, cfg.hidden_size, (cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias, "k")(x)
        v = _dense(cfg, cfg.hidden_size, (cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), cfg.qkv_bias, "v")(x)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
        q, k = _qk_norm(cfg, q, "q_norm"), _qk_norm(cfg, k, "k_norm")
        if cfg.positions is Positions.ROPE:
            inv_freq, factor = _layer_frequencies(cfg, sliding, positions, meta)
            q = apply_rope(q, positions, inv_freq, factor)
            k = apply_rope(k, positions, inv_freq, factor)

        kind = "local" if sliding else "global"
        scale = (cfg.query_scale if cfg.query_scale is not None else hd) ** -0.5
        if cache is None and f"mask_{kind}" in meta:
            # Keys hidden per example (Forgetful Causal Masking): the explicit mask.
            out = dense_attention(q, k, v, mask=meta[f"mask_{kind}"], scale=scale,
                                  softcap=cfg.attn_logit_softcap)
            new_cache = None
        elif cache is None:
            out = attend(
                q, k, v, segment_ids=segment_ids, branch_ids=branch_ids, positions=positions,
                scale=scale, sliding_window=cfg.sliding_window if sliding else None,
                softcap=cfg.attn_logit_softcap, implementation=cfg.attention_impl,
                block_size=cfg.attention_block_size,
                sparse_block_size=cfg.attention_sparse_block_size,
            )
            new_cache = None
        else:
            index = meta["cache_index"]
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), index, 1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), index, 1)
            new_cache = LayerCache(k_all, v_all)
            out = dense_attention(
                q, k_all.astype(q.dtype), v_all.astype(q.dtype),
                mask=meta[f"cache_mask_{kind}"], scale=scale, softcap=cfg.attn_logit_softcap,
            )
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        y = _dense(cfg, (cfg.num_heads, hd), cfg.hidden_size, ("heads", "head_dim", "embed"),
                   cfg.out_bias, "o")(out)
        return y, new_cache


def _layer_frequencies(cfg: ModelConfig, sliding: bool, positions: Array, meta):
    """RoPE inverse frequencies (static ``[R/2]`` or per token) and cos/sin factor of a layer.

    Sliding layers with ``local_rope_theta`` (Gemma 3) use that base, unscaled.
    """
    dim = cfg.rotary_dim
    if sliding and cfg.local_rope_theta is not None:
        return default_inv_freq(cfg.local_rope_theta, dim), 1.0
    scaling = cfg.rope_scaling
    if scaling.kind is RopeType.DYNAMIC:
        return dynamic_inv_freq(cfg.rope_theta, dim, scaling.factor, cfg.max_seq_len,
                                meta["seq_lengths"]), 1.0
    if scaling.kind is RopeType.LONGROPE:
        short, long, factor, original = longrope_frequencies(cfg.rope_theta, dim, scaling,
                                                             cfg.max_seq_len)
        # Per token, from the length of its own sequence: transformers decides once for the
        # whole batch (max(position_ids) + 1), which is the same for a sequence run alone.
        is_long = (meta["seq_lengths"] > original)[..., None]
        return jnp.where(is_long, jnp.asarray(long), jnp.asarray(short)), factor
    return static_frequencies(cfg.rope_theta, dim, scaling, cfg.max_seq_len)


class Mlp(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        act = activation_fn(cfg.activation)
        if cfg.gated_mlp:
            gate = _dense(cfg, cfg.hidden_size, cfg.mlp_dim, ("embed", "mlp"), cfg.mlp_bias, "gate")(x)
            up = _dense(cfg, cfg.hidden_size, cfg.mlp_dim, ("embed", "mlp"), cfg.mlp_bias, "up")(x)
            h = act(gate) * up
        else:
            h = act(_dense(cfg, cfg.hidden_size, cfg.mlp_dim, ("embed", "mlp"), cfg.mlp_bias, "up")(x))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return _dense(cfg, cfg.mlp_dim, cfg.hidden_size, ("mlp", "embed"), cfg.mlp_bias, "down")(h)


class MoeMlp(nn.Module):
    """Sparse mixture of SwiGLU experts (Mixtral / Qwen3-MoE), dropless (``fbjax.models.moe``).

    Parameters: ``router [D, E]`` and expert kernels ``gate``/``up`` ``[E, D, F]``, ``down``
    ``[E, F, D]``, whose leading logical axis ``expert`` the sharding rules place on a mesh
    axis (expert parallelism; ``fbjax.sharding``). Sows the layer's router statistics over the
    real tokens (``token_mask``) into ``intermediates`` for the load-balancing loss; a caller
    that does not make that collection mutable pays nothing for it.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, token_mask: Array) -> Array:
        cfg = self.config
        e, d, f = cfg.num_experts, cfg.hidden_size, cfg.mlp_dim
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

        def weight(name, axes, shape):
            init = nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), axes)
            return self.param(name, init, shape, pdtype).astype(dtype)

        router = weight("router", ("embed", None), (d, e))
        gate = weight("gate", ("expert", "embed", "mlp"), (e, d, f))
        up = weight("up", ("expert", "embed", "mlp"), (e, d, f))
        down = weight("down", ("expert", "mlp", "embed"), (e, f, d))
        flat = x.reshape(-1, d).astype(dtype)
        weights, experts, probs = moe.route(flat @ router, cfg.experts_per_token,
                                            cfg.norm_topk_prob)
        self.sow("intermediates", moe.ROUTER_STATS,
                 moe.router_stats(probs, experts, token_mask.reshape(-1)))
        out = moe.expert_outputs(flat, experts, gate, up, down, activation_fn(cfg.activation))
        y = jnp.einsum("tk,tkd->td", weights.astype(dtype), out)
        return y.reshape(x.shape)


class Block(nn.Module):
    config: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, segment_ids, branch_ids, cache, meta):
        cfg = self.config

        def pre(name, h):
            return make_norm(cfg, name)(h) if cfg.pre_norms else h

        def post(name, h):
            return make_norm(cfg, name)(h) if cfg.post_norms else h

        attn_in = pre("attn_norm", x)
        h, new_cache = Attention(cfg, self.layer, name="attn")(
            attn_in, positions, segment_ids, branch_ids, cache, meta
        )
        h = post("attn_post_norm", h)
        if cfg.num_experts:
            experts = MoeMlp(cfg, name="moe")

            def mlp(h):
                return experts(h, segment_ids != 0)
        else:
            mlp = Mlp(cfg, name="mlp")
        if cfg.parallel_residual:
            # GPT-NeoX: both branches read the block input.
            x = x + h + mlp(pre("mlp_norm", x))
        else:
            x = x + h
            x = x + post("mlp_post_norm", mlp(pre("mlp_norm", x)))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, new_cache


_REMAT_POLICIES = {
    "block": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Decoder(nn.Module):
    """Decoder-only transformer returning final (normed) hidden states ``[B, T, D]``.

    Call with the token-level arrays of ``docs/batch_layout.md``. With ``cache`` (decoding), the
    new tokens are written at ``cache.index`` and attend to the cached slots; the updated cache
    is returned as the second output.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        positions: Array,
        segment_ids: Array,
        branch_ids: Array | None = None,
        cache: DecodeCache | None = None,
        key_visible: Array | None = None,
    ) -> tuple[Array, DecodeCache | None]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if branch_ids is None:
            branch_ids = jnp.zeros_like(segment_ids)
        embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
            (cfg.vocab_size, cfg.hidden_size),
            jnp.dtype(cfg.param_dtype),
        )
        x = jnp.take(embedding, tokens, axis=0).astype(dtype)
        if cfg.scale_embeddings:
            # Gemma rounds the normaliser to the compute dtype before multiplying.
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
        if cfg.positions is Positions.LEARNED:
            pos_table = self.param(
                "position_embedding",
                nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("pos", "embed")),
                (cfg.max_seq_len, cfg.hidden_size),
                jnp.dtype(cfg.param_dtype),
            )
            x = x + jnp.take(pos_table, positions, axis=0).astype(dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        batch, length = tokens.shape
        meta: dict[str, Array] = {}
        kinds = {"local" if cfg.is_sliding(i) else "global" for i in range(cfg.num_layers)}
        windows = {"local": cfg.sliding_window, "global": None}
        if cfg.rope_scaling.kind in (RopeType.DYNAMIC, RopeType.LONGROPE):
            meta["seq_lengths"] = segment_lengths(positions, segment_ids)
        if cache is None:
            if key_visible is not None:  # otherwise attention builds its mask itself, blockwise
                q_index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
                for kind in kinds:
                    meta[f"mask_{kind}"] = attention_mask(
                        q_index, q_index, segment_ids, segment_ids, branch_ids, branch_ids,
                        positions, positions, windows[kind], key_visible,
                    )
        else:
            q_index = cache.index + jnp.arange(length, dtype=jnp.int32)
            seg_all = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids, segment_ids, cache.index, 1)
            pos_all = jax.lax.dynamic_update_slice_in_dim(cache.positions, positions, cache.index, 1)
            slots = jnp.arange(cache.segment_ids.shape[1], dtype=jnp.int32)
            zeros_q = jnp.zeros_like(segment_ids)
            meta["cache_index"] = cache.index
            for kind in kinds:
                meta[f"cache_mask_{kind}"] = attention_mask(
                    jnp.broadcast_to(q_index, (batch, length)),
                    jnp.broadcast_to(slots, (batch, slots.shape[0])),
                    segment_ids, seg_all, zeros_q, jnp.zeros_like(seg_all),
                    positions, pos_all, windows[kind],
                ) & (seg_all != 0)[:, None, None, :]

        block_cls = Block
        if cfg.remat != "none":
            block_cls = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], static_argnums=())
        new_layers = []
        for i in range(cfg.num_layers):
            layer_cache = None if cache is None else cache.layers[i]
            x, new_layer = block_cls(cfg, i, name=f"layer_{i}")(
                x, positions, segment_ids, branch_ids, layer_cache, meta
            )
            new_layers.append(new_layer)
        x = make_norm(cfg, "final_norm")(x)

        if cfg.reward_head:
            # Declared like the LM head: applied outside (``token_rewards``) to the hidden states.
            self.param(
                "reward_head",
                nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", None)),
                (cfg.hidden_size, 1),
                jnp.dtype(cfg.param_dtype),
            )
        if has_lm_head(cfg) and not cfg.tie_embeddings:
            # Declared here so the parameter exists; the projection itself happens in
            # ``output_projection`` (chunked over the vocabulary by the log-prob code).
            self.param(
                "lm_head",
                nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
                (cfg.hidden_size, cfg.vocab_size),
                jnp.dtype(cfg.param_dtype),
            )
        new_cache = None
        if cache is not None:
            new_cache = DecodeCache(
                tuple(new_layers), seg_all, pos_all, cache.index + length
            )
        return x, new_cache


def has_lm_head(config: ModelConfig) -> bool:
    """Whether the model predicts tokens: every model but an untied reward model."""
    return config.tie_embeddings or not config.reward_head


def output_projection(params: Any, config: ModelConfig) -> Array:
    """The ``[D, V]`` matrix mapping hidden states to logits (the tied embedding if tied)."""
    if not has_lm_head(config):
        raise ValueError(
            "this model config has reward_head=True and untied embeddings, so it has no LM head: "
            "it scores sequences (reward layouts such as fbjax.train.inputs.reward_pairs) and "
            "cannot give token log-probs or samples"
        )
    params = params.get("params", params)
    if config.tie_embeddings:
        return params["embedding"].T
    return params["lm_head"]


def logits(params: Any, config: ModelConfig, hidden: Array) -> Array:
    """Full ``[..., V]`` float32 logits; for sampling and tests (training uses chunked log-probs)."""
    w = output_projection(params, config)
    out = jnp.einsum("...d,dv->...v", hidden.astype(jnp.float32), w.astype(jnp.float32))
    return _softcap(out, config.final_logit_softcap)


def token_rewards(params: Any, config: ModelConfig, hidden: Array) -> Array:
    """``[B, T]`` float32 scalar-head outputs at every position (a sequence's reward is the one
    at its last token, as Hugging Face's sequence classifiers pool)."""
    if not config.reward_head:
        raise ValueError("this model config has no reward head (ModelConfig.reward_head=False)")
    params = params.get("params", params)
    w = params["reward_head"][:, 0]
    return jnp.einsum("...d,d->...", hidden.astype(jnp.float32), w.astype(jnp.float32))


def init_reward_head(config: ModelConfig, rng: Array) -> Array:
    """A fresh ``[D, 1]`` reward head, as :class:`Decoder` initialises it, for turning a policy's
    parameters into a reward model's (Stiennon et al. 2020 start the reward model from the SFT
    policy with a new head)."""
    return (config.init_std * jax.random.normal(rng, (config.hidden_size, 1))).astype(
        jnp.dtype(config.param_dtype))
