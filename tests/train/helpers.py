"""Small shared builders for step tests (tiny model, hand-made groups)."""

from __future__ import annotations

import numpy as np

from fbjax.data import packing
from fbjax.models import config as mc


def tiny_llama(**overrides) -> mc.ModelConfig:
    sizes = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                 mlp_dim=64, init_std=0.2)
    return mc.llama(**{**sizes, **overrides})


def random_groups(n: int, *, completions: int, vocab: int, seed: int,
                  prompt_range=(2, 9), completion_range=(1, 8)) -> list[packing.Group]:
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n):
        prompt = rng.integers(1, vocab, rng.integers(*prompt_range)).astype(np.int32)
        comps = tuple(
            rng.integers(1, vocab, rng.integers(*completion_range)).astype(np.int32)
            for _ in range(completions)
        )
        groups.append(packing.Group(prompt, comps))
    return groups


def job(model, objective, train, *, optimizer=None, rules=None, name: str = "t", seed: int = 0):
    """A :class:`~fbjax.train.config.TrainJob` with the defaults an experiment would give."""
    from fbjax import sharding as fsh
    from fbjax.train.config import TrainJob
    from fbjax.train.optim import OptimizerConfig

    return TrainJob(name=name, model=model, objective=objective,
                    optimizer=optimizer or OptimizerConfig(), train=train,
                    rules=rules if rules is not None else fsh.MeshConfig().rules, seed=seed)
