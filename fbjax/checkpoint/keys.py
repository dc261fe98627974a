"""Tree paths, and typed PRNG keys <-> the uint32 key data Orbax stores."""

from __future__ import annotations

import functools
from typing import Any

import jax


def is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def path_str(path) -> str:
    """``params/layer_0/attn/q/kernel``: the leaf names used in commit markers and messages."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def to_storage(state: Any) -> tuple[Any, dict[str, str]]:
    """Typed PRNG keys -> their uint32 key data (Orbax stores plain arrays); returns the impls."""
    impls = {}

    def convert(path, x):
        if is_key(x):
            impls[path_str(path)] = str(jax.random.key_impl(x))
            return jax.random.key_data(x)
        return x

    return jax.tree_util.tree_map_with_path(convert, state), impls


def rewrap_keys(restored: Any, abstract_state: Any, targets: Any, impls: dict[str, str]) -> Any:
    """The inverse of :func:`to_storage` for a restored tree, on the targets' shardings."""

    def rewrap(path, data, abstract, target):
        if not is_key(abstract):
            return data
        impl = impls.get(path_str(path))
        if impl is None:
            raise ValueError(f"{path_str(path)} is a PRNG key but was not saved as one")
        wrap = functools.partial(jax.random.wrap_key_data, impl=impl)
        key = jax.jit(wrap, out_shardings=target.sharding)(data)
        if key.dtype != abstract.dtype:
            raise ValueError(
                f"{path_str(path)}: saved key type {key.dtype}, want {abstract.dtype}"
            )
        return key

    return jax.tree_util.tree_map_with_path(rewrap, restored, abstract_state, targets)
