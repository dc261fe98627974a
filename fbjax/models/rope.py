"""Rotary position embeddings and their context-extension variants.

The inverse frequencies follow transformers' ``modeling_rope_utils`` (the functions named in
each docstring) in float32, so imported checkpoints reproduce its logits:

* default: ``theta ** (-2i / d)`` (Su et al. 2021, arXiv:2104.09864);
* linear: default divided by ``factor`` (position interpolation, Chen et al. 2023,
  arXiv:2306.15595);
* dynamic: NTK-aware base growth, ``theta * (factor * L / M - (factor - 1)) ** (d / (d - 2))``
  for a sequence of ``L > M`` tokens (``_compute_dynamic_ntk_parameters``);
* llama3: low frequencies divided by ``factor``, high ones kept, a linear blend between
  (``_compute_llama3_parameters``, Llama 3.1's released code);
* yarn: a ramp between interpolated and extrapolated frequencies over the correction range of
  Peng et al. 2023 (arXiv:2309.00071, Eq. 17-18) and cos/sin multiplied by ``0.1 ln s + 1``
  (Eq. 21) (``_compute_yarn_parameters``);
* longrope: default divided by a searched factor per frequency, ``short_factor`` for sequences
  of at most ``original_max_len`` tokens and ``long_factor`` beyond (Ding et al. 2024,
  arXiv:2402.13753, section 3; Phi-3's 128k checkpoints), cos/sin multiplied by
  ``sqrt(1 + ln s / ln original)`` (``_compute_longrope_parameters``).

Only the first ``rotary_dim`` dims of a head are rotated (GPT-NeoX's partial rotary); within
them the layout is the half-split one Hugging Face checkpoints use.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fbjax.models.config import RopeScaling, RopeType

Array = jax.Array


def default_inv_freq(theta: float, dim: int) -> np.ndarray:
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def _llama3_inv_freq(inv_freq: np.ndarray, s: RopeScaling, original: int) -> np.ndarray:
    old_len = float(original)
    low_wavelen = old_len / s.low_freq_factor
    high_wavelen = old_len / s.high_freq_factor
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(s.factor), inv_freq)
    smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / np.float32(s.factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(theta: float, dim: int, s: RopeScaling, original: int) -> tuple[np.ndarray, float]:
    factor = s.factor
    attention = s.attention_factor
    if attention is None:
        attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers does, to avoid dividing by zero
    pos_freqs = np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = (1 - ramp).astype(np.float32)
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq.astype(np.float32), float(attention)


def static_frequencies(theta: float, dim: int, scaling: RopeScaling,
                       max_len: int | None = None) -> tuple[np.ndarray, float]:
    """``(inv_freq [dim/2] float32, cos/sin multiplier)`` for every type but dynamic.

    ``max_len``: the model's context, standing in for ``scaling.original_max_len`` when that is
    None (llama3 and yarn need one of them).
    """
    inv_freq = default_inv_freq(theta, dim)
    original = scaling.original_max_len or max_len
    if scaling.kind in (RopeType.LLAMA3, RopeType.YARN) and not original:
        raise ValueError(f"rope_scaling.kind={scaling.kind.value} needs original_max_len")
    kind = scaling.kind
    if kind is RopeType.DEFAULT or kind is RopeType.DYNAMIC:
        return inv_freq, 1.0
    if kind is RopeType.LINEAR:
        return (inv_freq / np.float32(scaling.factor)).astype(np.float32), 1.0
    if kind is RopeType.LLAMA3:
        return _llama3_inv_freq(inv_freq, scaling, original), 1.0
    if kind is RopeType.YARN:
        return _yarn(theta, dim, scaling, original)
    raise ValueError(f"rope type {kind!r} has no static frequencies")


def longrope_frequencies(theta: float, dim: int, scaling: RopeScaling,
                         max_len: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """``(short inv_freq, long inv_freq, cos/sin multiplier, original context)`` of longrope.

    The multiplier defaults from ``factor``, which a Phi-3 config leaves out: transformers then
    takes ``max_position_embeddings / original_max_position_embeddings`` (fbjax's importer
    stores that ratio as ``factor``).
    """
    original = scaling.original_max_len or max_len
    base = default_inv_freq(theta, dim)
    short = (base / np.asarray(scaling.short_factor, np.float32)).astype(np.float32)
    long = (base / np.asarray(scaling.long_factor, np.float32)).astype(np.float32)
    attention = scaling.attention_factor
    if attention is None:
        factor = scaling.factor
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
    return short, long, float(attention), original


def dynamic_inv_freq(theta: float, dim: int, factor: float, max_len: int, seq_len: Array) -> Array:
    """Per-token ``[..., dim/2]`` inverse frequencies of dynamic NTK scaling.

    ``seq_len``: the length of the sequence each token belongs to (any shape); lengths up to
    ``max_len`` (the pre-training context) give the default frequencies.
    """
    length = jnp.maximum(seq_len.astype(jnp.float32), float(max_len))
    base = theta * ((factor * length / max_len) - (factor - 1)) ** (dim / (dim - 2))
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    return 1.0 / (base[..., None] ** exponents)


def apply_rope(x: Array, positions: Array, inv_freq: Array | np.ndarray,
               attention_factor: float = 1.0) -> Array:
    """Rotate the first ``2 * inv_freq.shape[-1]`` dims of each head of ``x``.

    x: ``[B, T, H, D]``; positions: ``[B, T]``; inv_freq: ``[R/2]`` or per-token ``[B, T, R/2]``.
    """
    rot = 2 * inv_freq.shape[-1]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, R]
    cos, sin = jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor
    x32 = x.astype(jnp.float32)
    x_rot, x_pass = x32[..., :rot], x32[..., rot:]
    half = rot // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    out = x_rot * cos + rotated * sin
    if x_pass.shape[-1]:
        out = jnp.concatenate([out, x_pass], axis=-1)
    return out.astype(x.dtype)


def segment_lengths(positions: Array, segment_ids: Array) -> Array:
    """``[B, T]`` length (max position + 1) of the sequence each token belongs to, for dynamic
    scaling: what transformers computes for a sequence run alone (``max(position_ids) + 1``)."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return jnp.max(jnp.where(same, positions[:, None, :], 0), axis=-1) + 1
