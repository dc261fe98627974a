"""fbjax losses against the parity goldens of ``tools/make_goldens.py`` (reads JSON, no torch).

Each golden holds small fixed inputs and the loss, gradient and metrics that TRL's own loss code
(or a torch transcription of the reference formula, where TRL has none) computed for them. If a
golden fails after an intentional change of an objective, regenerate it with
``python tools/make_goldens.py`` and say in the change why the reference values moved.
"""

import importlib
import inspect
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.objectives import binary
from fbjax.train import catalog

GOLDENS = pathlib.Path(__file__).resolve().parents[1] / "goldens"
# Every objective whose catalog entry names a parity golden.
LOSS_GOLDENS = [e.golden for e in catalog.OBJECTIVES if e.golden]


def load(name):
    return json.loads((GOLDENS / f"{name}.json").read_text())


def resolve(path):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def close(actual, expected, tol, what):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol,
                               err_msg=what)


@pytest.mark.parametrize("name", LOSS_GOLDENS)
def test_loss_golden(name):
    record = load(name)
    fn = resolve(record["function"])
    tol = record["tolerance"]
    assert tol <= 1e-6
    names = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD]
    arrays = {k: jnp.asarray(v, jnp.float32) for k, v in record["inputs"].items()}
    wrt = list(record["grads"])

    @jax.jit
    def run(diff, rest):
        def mean_loss(diff):
            args = {**rest, **diff}
            loss, metrics = fn(*(args[n] for n in names), **record["kwargs"])
            return jnp.mean(loss), (loss, metrics)

        return jax.value_and_grad(mean_loss, has_aux=True)(diff)

    (mean, (loss, metrics)), grads = run(
        {k: arrays[k] for k in wrt}, {k: v for k, v in arrays.items() if k not in wrt}
    )
    if record["loss"] is not None:
        close(loss, record["loss"], tol, f"{name}: per-example loss")
    close(mean, record["loss_mean"], tol, f"{name}: mean loss")
    for key, expected in record["grads"].items():
        assert np.any(np.asarray(expected) != 0), f"{name}: degenerate golden gradient"
        close(grads[key], expected, tol, f"{name}: d loss / d {key}")
    for key, spec in record["metrics"].items():
        value = metrics[key]
        if spec["where"] is None:
            reduced = jnp.mean(value)
        else:
            weight = arrays[spec["where"].removeprefix("not ")]
            weight = 1.0 - weight if spec["where"].startswith("not ") else weight
            reduced = jnp.sum(value * weight) / jnp.sum(weight)
        close(reduced, spec["value"], tol, f"{name}: metric {key}")


def test_kto_reference_point_golden():
    spec = load("kto")["reference_point"]
    z0 = binary.kto_reference_point(*(jnp.asarray(v) for v in spec["inputs"].values()))
    close(z0, spec["expected"], 1e-6, "kto reference point")
    assert spec["expected"] > 0


def test_bco_reward_shift_golden():
    record = load("bco")
    state = binary.bco_init_shift()
    for step in record["shift_steps"]:
        state = binary.bco_update_shift(
            state, jnp.asarray(step["rewards"]), jnp.asarray(step["labels"]),
            jnp.asarray(step["valid"]),
        )
        for key, value in step["state_after"].items():
            close(getattr(state, key), value, 1e-6, f"bco state {key}")
    close(state.mean, record["inputs"]["reward_shift"], 1e-6, "bco delta")


def test_bco_udm_weights_golden():
    spec = load("bco_udm")["udm_weights"]
    weights = binary.udm_density_ratio_weights(
        {k: jnp.asarray(v) for k, v in spec["classifier"].items()},
        jnp.asarray(spec["prompt_embeddings"]), jnp.asarray(spec["labels"]),
    )
    close(weights, spec["expected"], 1e-6, "udm weights")


def test_udm_classifier_fit_golden():
    fit = load("udm_fit_classifier")["classifier_fit"]
    params = binary.udm_fit_classifier(
        jnp.asarray(fit["prompt_embeddings"]), jnp.asarray(fit["labels"]),
        jnp.asarray(fit["valid"]), **fit["kwargs"],
    )
    close(params["w"], fit["expected"]["w"], fit["tolerance"], "udm classifier w")
    close(params["b"], fit["expected"]["b"], fit["tolerance"], "udm classifier b")
