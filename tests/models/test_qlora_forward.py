"""QLoRA's forward (Dettmers et al. 2023, arXiv:2305.14314): the decoder runs a frozen base whose
adapted kernels qwix stores in NF4 (``LoraProvider(weight_qtype='nf4')`` + ``quantize_params``),
with LoRA adapters in float. Only the forward is wired here (the decoder's ``Dense`` leaves a
quantized kernel to qwix instead of casting it); the train step, reference and export paths are
not (docs/lora.md)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbjax.models import config as mc
from fbjax.models import lora as loralib
from fbjax.models.decoder import Decoder

qwix = pytest.importorskip("qwix")


def test_nf4_base_with_adapters_equals_its_dequantized_float_model():
    config = mc.llama(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_dim=128, init_std=0.2)
    model = Decoder(config)
    lora = loralib.LoraConfig(target_modules=("q", "v", "down"))
    provider = qwix.LoraProvider(
        module_path=lora.module_regex(), rank=lora.rank, alpha=lora.alpha, weight_qtype="nf4",
        tile_size=32, lora_a_initializer=loralib._kaiming_uniform_a_sqrt5(),
        lora_b_initializer=jax.nn.initializers.zeros)
    quantized = qwix.apply_lora_to_model(model, provider)
    ids = jnp.asarray([[5, 9, 11, 3, 60, 7, 2, 41]])
    positions, segments = jnp.arange(8)[None], jnp.ones((1, 8), jnp.int32)
    base = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, positions, segments)["params"])
    full = nn.unbox(jax.jit(quantized.init)(jax.random.key(1), ids, positions, segments)["params"])
    qbase = qwix.quantize_params(base, full)
    q_kernel = qbase["layer_0"]["attn"]["q"]["kernel"]
    assert not isinstance(q_kernel, jax.Array)  # NF4-stored
    assert isinstance(qbase["layer_0"]["attn"]["k"]["kernel"], jax.Array)  # not targeted

    adapters = loralib.split(full)[1]
    params = loralib.combine(qbase, adapters)

    @jax.jit
    def forward(params):
        return quantized.apply({"params": params}, ids, positions, segments)[0]

    # The reference: the plain decoder on the dequantized kernels (B = 0, so adapters add 0).
    dequantized = jax.tree.map(
        lambda leaf: qwix.dequantize(leaf.array) if not isinstance(leaf, jax.Array) else leaf,
        qbase, is_leaf=lambda leaf: not isinstance(leaf, (dict, jax.Array)))
    want = model.apply({"params": dequantized}, ids, positions, segments)[0]
    got = forward(params)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # ... and NF4 really rounded the weights (the float base gives other hidden states).
    float_hidden = model.apply({"params": base}, ids, positions, segments)[0]
    assert np.abs(np.asarray(float_hidden) - np.asarray(got)).max() > 1e-3

    # Adapters train: finite, non-zero gradients for every B (A's are zero while B = 0).
    def loss(adapters):
        return jnp.sum(forward(loralib.combine(qbase, adapters)) ** 2)

    grads = jax.grad(loss)(adapters)
    b_grads = [g for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
               if "lora_b" in jax.tree_util.keystr(path)]
    assert len(b_grads) == 2 * 2 + 2  # q, v (attention) and down, in 2 layers
    assert all(np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0
               for g in b_grads)
