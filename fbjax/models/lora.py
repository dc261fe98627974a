"""LoRA: low-rank adapters on the decoder's projections, through qwix.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685, Eq. (3):
a frozen kernel ``W0 [in, out]`` is used as ``h = x W0 + (alpha / r) * (dropout(x) A) B`` with
``A [in, r]`` and ``B [r, out]``; ``B`` starts at zero, so the adapted model starts equal to the
base. Only ``A`` and ``B`` are trained. Multi-dimensional kernels (``q: [embed, heads,
head_dim]``, ``o: [heads, head_dim, embed]``) get adapters over their flattened input and output
dimensions, i.e. exactly the ``nn.Linear`` that Hugging Face / PEFT adapt.

Why qwix (Google's JAX quantization library, which Tunix uses for LoRA and QLoRA): its
``LoraProvider`` intercepts the ``jax.lax.dot_general`` of each matching linen module, so the
decoder needs no LoRA code of its own. It was checked against this decoder, not assumed: it
works on Flax **linen** modules (``qwix.apply_lora_to_model`` returns a subclass of
:class:`~fbjax.models.decoder.Decoder`, the original class is untouched); it works under
``nn.remat``; the adapters ``<name>_lora_a`` / ``<name>_lora_b`` are created next to the kernel
in the same ``params`` collection and inherit its logical axis names (``q``'s ``lora_b`` is
``(None, 'heads')`` over ``heads*head_dim``), so ``fbjax.sharding``'s rules shard them with no
extra table; and with ``B = 0`` the adapted forward is bitwise the base forward (``y + 0``),
which is what makes the step-0 DPO loss exactly ``ln 2`` with the base as reference.

Defaults follow the paper and its released code (``loralib``): rank 8, ``alpha = rank`` (the
paper sets alpha to the first rank tried and does not tune it), no dropout, adapters on the
query and value projections (Sec. 7.1 adapts ``W_q`` and ``W_v``), ``A`` drawn from
kaiming-uniform with ``a = sqrt(5)`` (``U(-1/sqrt(in), 1/sqrt(in))``, as ``loralib`` and PEFT do;
the paper's text says "random Gaussian"), ``B = 0``.

This module is pure tree plumbing on top of qwix: build the adapted model, split a parameter
tree into base and adapters, join them, and fold adapters into the base (merge).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from fbjax.models.decoder import Decoder

# The decoder's projections by module name (fbjax.models.decoder: Attention and Mlp).
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
_ATTENTION = ("q", "k", "v", "o")
ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Rank, scale, dropout and targets of the adapters (``--set lora.rank=16``).

    ``target_modules`` names decoder projections: ``q k v o`` (attention) and ``gate up down``
    (MLP; GPT-2 has no ``gate``). The update is scaled by ``alpha / rank`` (Hu et al. Sec. 4.1).
    """

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q", "v")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty; name at least one of " f"{TARGETS}")
        unknown = [t for t in self.target_modules if t not in TARGETS]
        if unknown:
            raise ValueError(f"lora.target_modules: unknown {unknown}; choose from {TARGETS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def module_regex(self) -> str:
        """qwix matches module paths such as ``layer_3/attn/q`` with ``re.fullmatch``."""
        names = "|".join(
            f"{'attn' if t in _ATTENTION else 'mlp'}/{t}" for t in self.target_modules
        )
        return rf"layer_\d+/({names})"


def _kaiming_uniform_a_sqrt5():
    # kaiming_uniform(a=sqrt(5)) on a [in, r] matrix: bound = sqrt(6 / ((1 + 5) * in)) = 1/sqrt(in).
    return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def adapted(model: Decoder, config: LoraConfig) -> Decoder:
    """``model`` with adapters on ``config.target_modules``: a new module (qwix subclasses the
    class of a copy); its parameters are the base's plus ``*_lora_a`` / ``*_lora_b``.

    With ``config.dropout > 0`` its ``apply`` needs ``rngs={'dropout': key}``.
    """
    import qwix

    provider = qwix.LoraProvider(
        module_path=config.module_regex(),
        rank=config.rank,
        alpha=float(config.alpha),
        dropout=float(config.dropout),
        lora_a_initializer=_kaiming_uniform_a_sqrt5(),
        lora_b_initializer=jax.nn.initializers.zeros,
    )
    return qwix.apply_lora_to_model(model, provider)


# ----------------------------------------------------------------------------- parameter trees


def is_adapter_name(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


def split(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A parameter tree of the adapted model -> ``(base, adapters)``, both nested dicts.

    Works on boxed (``nn.LogicallyPartitioned``) and plain trees alike.
    """
    base, adapters = {}, {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            b, a = split(value)
            if b:
                base[name] = b
            if a:
                adapters[name] = a
        elif is_adapter_name(name):
            adapters[name] = value
        else:
            base[name] = value
    return base, adapters


def combine(base: Mapping[str, Any], adapters: Mapping[str, Any]) -> dict[str, Any]:
    """The adapted model's parameter tree: ``base`` with ``adapters`` added beside the kernels."""
    out = dict(base)
    for name, value in adapters.items():
        if isinstance(value, Mapping):
            out[name] = combine(base.get(name, {}), value)
        else:
            out[name] = value
    return out


def check_targets(adapters: Mapping[str, Any], config: LoraConfig, family: str) -> None:
    """Every target names a projection this model has (GPT-2 has no ``gate``)."""
    found = set()

    def walk(tree, name):
        for k, v in tree.items():
            if isinstance(v, Mapping):
                walk(v, k)
            elif is_adapter_name(k):
                found.add(name)

    walk(adapters, "")
    missing = [t for t in config.target_modules if t not in found]
    if missing:
        raise ValueError(
            f"lora.target_modules {missing} match no projection of this {family} model"
        )


def delta(a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...], scale: float) -> jax.Array:
    """``scale * A @ B`` in the kernel's shape (the flattened input/output dims unflattened),
    in float32."""
    prod = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))
    return (scale * prod).reshape(kernel_shape)


def merge(base: Mapping[str, Any], adapters: Mapping[str, Any], config: LoraConfig) -> dict[str, Any]:
    """Plain decoder parameters with the adapters folded in: ``W = W0 + (alpha/r) A B`` (Hu et
    al. Sec. 4.2, "no additional inference latency"). The sum is taken in float32 and stored in
    the kernel's dtype. The result has the base's tree and shardings follow the base's."""
    out = dict(base)
    names = {k[: -len(s)] for k in adapters for s in ADAPTER_SUFFIXES if k.endswith(s)}
    for name, value in adapters.items():
        if isinstance(value, Mapping):
            out[name] = merge(base[name], value, config)
    for name in names:
        kernel = base[name]
        d = delta(adapters[name + "_lora_a"], adapters[name + "_lora_b"], kernel.shape,
                  config.scale)
        out[name] = (kernel.astype(jnp.float32) + d).astype(kernel.dtype)
    return out
