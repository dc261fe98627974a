"""The objective catalog (``fbjax.train.catalog``): every entry binds to its loss, every paired
preference loss passes the shared properties with inputs built from its argument names, and the
README lists every objective.

Other families keep hand-made cases in their own test files (their inputs have structure: lists,
tokens, labels); a paired-preference loss added to the catalog is tested here with no new case.
"""

from __future__ import annotations

import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.train import catalog
from fbjax.train.objective import Objective

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
PAIRED = [e for e in catalog.OBJECTIVES if e.family == catalog.PAIRED]

P = 4
_rng = np.random.default_rng(0)
# Summed log-probs of P pairs, lengths, margins: what the paired layout gives a loss, by name.
_BY_NAME = {
    "policy_chosen_logps": _rng.uniform(-30, -5, P),
    "policy_rejected_logps": _rng.uniform(-30, -5, P),
    "ref_chosen_logps": _rng.uniform(-30, -5, P),
    "ref_rejected_logps": _rng.uniform(-30, -5, P),
    "chosen_lengths": np.array([3.0, 7.0, 1.0, 12.0]),
    "rejected_lengths": np.array([5.0, 2.0, 4.0, 9.0]),
    "chosen_rewards": _rng.normal(size=P),
    "rejected_rewards": _rng.normal(size=P),
    "margins": np.ones(P),
}
_GRADIENTS = ("policy_chosen_logps", "policy_rejected_logps", "chosen_rewards",
              "rejected_rewards")


def _args(loss) -> tuple[list[str], dict[str, jax.Array]]:
    names = [p.name for p in inspect.signature(loss).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD]
    unknown = [n for n in names if n not in _BY_NAME]
    assert not unknown, f"add example inputs for {unknown} to tests/objectives/test_catalog.py"
    return names, {n: jnp.asarray(_BY_NAME[n], jnp.float32) for n in names}


@pytest.mark.parametrize("entry", catalog.OBJECTIVES, ids=lambda e: e.name)
def test_entry_binds_its_loss(entry):
    params = inspect.signature(entry.bind).parameters
    objective = entry.bind(4) if "size" in params or "group_size" in params \
        or "num_samples" in params or "num_constitutions" in params else entry.bind()
    assert isinstance(objective, Objective) and objective.loss is entry.loss
    assert entry.family in (catalog.SUPERVISED, catalog.PAIRED, catalog.LISTWISE,
                            catalog.BINARY, catalog.NEGATIVE, catalog.LANGUAGE)


@pytest.mark.parametrize("entry", PAIRED, ids=lambda e: e.name)
def test_paired_losses_jit_with_finite_gradients_and_stop_gradient_metrics(entry):
    names, arrays = _args(entry.loss)
    wrt = [n for n in names if n in _GRADIENTS]

    @jax.jit
    def run(diff):
        def total(diff):
            return jnp.sum(entry.loss(*({**arrays, **diff}[n] for n in names))[0])

        def metric_total(diff):
            metrics = entry.loss(*({**arrays, **diff}[n] for n in names))[1]
            return sum(jnp.sum(v) for v in metrics.values())

        return entry.loss(*({**arrays, **diff}[n] for n in names)), jax.grad(total)(diff), \
            jax.grad(metric_total)(diff)

    (loss, metrics), grads, metric_grads = run({n: arrays[n] for n in wrt})
    assert loss.shape == (P,) and bool(jnp.all(jnp.isfinite(loss)))
    assert all(v.shape in ((P,), ()) for v in metrics.values())
    for n in wrt:
        assert bool(jnp.all(jnp.isfinite(grads[n]))) and float(jnp.abs(grads[n]).sum()) > 0, n
        # Metrics are reported, never trained on: no gradient flows through them.
        assert float(jnp.abs(metric_grads[n]).sum()) == 0.0, n
    assert any(k.startswith("rewards/") for k in metrics), "name metrics like rewards/chosen"


def test_readme_lists_every_objective():
    text = README.read_text()
    missing = [e.name for e in catalog.OBJECTIVES
               if f"`{e.loss.__module__.rsplit('.', 1)[-1]}.{e.loss.__name__}`" not in text]
    assert not missing, f"README's objective table lacks {missing}"


def test_names_are_unique_and_looked_up():
    assert catalog.get("dpo").loss.__name__ == "dpo"
    with pytest.raises(KeyError, match="no objective 'dpoo'"):
        catalog.get("dpoo")
