"""A run's starting point: the model it trains and the parameters it starts from, placed on the
mesh with their target shardings.

``init_from`` names a local directory or ``hf:org/name`` (:mod:`fbjax.models.checkpoints`;
never downloaded). With ``model=None`` the architecture is the checkpoint's; with both, they must
match field by field (a mismatch names every differing field).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import jax
import numpy as np

from fbjax.models import checkpoints, hf
from fbjax.models import io as model_io
from fbjax.models.config import ModelConfig
from fbjax.models.decoder import Decoder
from fbjax.run.config import ExperimentConfig
from fbjax.train import step as steplib

log = logging.getLogger("fbjax")


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run's weights come from: ``path`` (None: random), its ``kind`` (``hf``,
    ``fbjax`` or ``run``) and the architecture it holds."""

    path: str | None
    kind: str | None
    found: ModelConfig | None


def locate(config: ExperimentConfig) -> Start:
    """Resolves ``config.init_from`` and reads its architecture, without loading weights: a
    missing checkpoint or a wrong architecture fails in seconds, before any data is read."""
    if not config.init_from:
        return Start(None, None, None)
    path = checkpoints.resolve_checkpoint(config.init_from)
    kind, found, _ = checkpoints.checkpoint_model_config(path)
    return Start(path, kind, found)


def resolve_model(config: ExperimentConfig, start: Start) -> ModelConfig:
    """The architecture the run trains: ``config.model``, or the checkpoint's, with
    ``config.model_settings`` applied."""
    model = config.model
    if start.found is not None:
        if model is None:
            model = start.found
        else:
            wrong = checkpoints.model_mismatches(model, start.found)
            if wrong:
                raise ValueError(
                    f"experiment {config.name!r}: config.model does not match the checkpoint "
                    f"{start.path}: " + "; ".join(wrong)
                    + " (leave model unset to take the checkpoint's architecture)")
    return config.model_settings.apply(model)


def random_params(model: ModelConfig, mesh, rules, seed: int) -> Any:
    return steplib.init_params(Decoder(model), jax.random.key(seed), mesh, rules)


def _place(params: Mapping[str, Any], shardings: Any, dtype: str, source: str) -> Any:
    """Flat params -> global arrays with ``shardings``; host arrays are read shard by shard (so
    every process places only its own), arrays already on the mesh are kept."""
    want = hf.flatten(shardings)
    if set(want) != set(params):
        missing, extra = sorted(set(want) - set(params)), sorted(set(params) - set(want))
        raise ValueError(f"{source}: parameters do not match the model: missing {missing[:8]}, "
                         f"unexpected {extra[:8]}")
    placed = {}
    for key, sharding in want.items():
        value = params[key]
        if isinstance(value, jax.Array):
            placed[key] = value
            continue
        array = np.asarray(value).astype(dtype, copy=False)
        placed[key] = jax.make_array_from_callback(array.shape, sharding,
                                                   lambda idx, a=array: a[idx])
    return hf.unflatten(placed)


def load_params(model: ModelConfig, start: Start, mesh, rules, seed: int) -> Any:
    """The parameters of ``start`` placed with the mesh's parameter shardings in
    ``model.param_dtype``.

    A reward model (``model.reward_head``) may start from a language model: the backbone is
    loaded, the LM head dropped, and the scalar head drawn from ``N(0, init_std)`` (seeded by
    ``seed``), as Stiennon et al. start theirs from the SFT policy.
    """
    if start.path is None:
        return random_params(model, mesh, rules, seed)
    new_head = checkpoints.adds_reward_head(model, start.found)
    stored = dataclasses.replace(model, reward_head=False) if new_head else model
    dtype = model.param_dtype
    if start.kind == "run":
        import flax.linen as nn

        from fbjax import checkpoint

        decoder = Decoder(stored)
        abstract = jax.eval_shape(
            lambda r: nn.unbox(steplib.init_params_boxed(decoder, r)), jax.random.key(0))
        root = checkpoints.run_checkpoint_root(start.path)
        params, _, step = checkpoint.restore_params(
            root, None, abstract, steplib.param_shardings(decoder, mesh, rules))
        log.info("starting from step %d of %s", step, root)
    elif start.kind == "hf":
        # Streamed tensor by tensor onto the mesh: host memory holds about one shard, not the
        # whole checkpoint.
        params = hf.load_hf_sharded(start.path, mesh=mesh, rules=rules, dtype=dtype)[1]
    else:
        params = model_io.load_params(start.path)[1]
    params = hf.flatten(params)
    if new_head:
        params.pop("lm_head", None)  # an untied reward model predicts no tokens
        rng = np.random.default_rng(seed)
        params["reward_head"] = model.init_std * rng.standard_normal((model.hidden_size, 1))
    shardings = steplib.param_shardings(Decoder(model), mesh, rules)
    return _place(params, shardings, dtype, start.path)
