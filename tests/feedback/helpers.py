"""Hand-set tiny models for provider tests: a character tokenizer and a "bigram" decoder whose
greedy continuation of a text depends only on its last character, by construction."""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np

from fbjax.models.decoder import Decoder
from fbjax.train import step as steplib
from tests.train.helpers import tiny_llama

CHARS = "?xyzqYesNoAB:\n 0123"


class CharTokenizer:
    """One token per character of :data:`CHARS`; ids 0-2 are pad, BOS and EOS."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self):
        self.vocab_size = 3 + len(CHARS)

    def encode(self, text: str) -> list[int]:
        return [3 + CHARS.index(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(CHARS[i - 3] if i - 3 < len(CHARS) else "~" for i in ids if i >= 3)


def init_params(config, seed: int = 0):
    init = jax.jit(lambda key: nn.unbox(steplib.init_params_boxed(Decoder(config), key)))
    return init(jax.random.key(seed))


def bigram_judge(transitions: Mapping[str, str], tok: CharTokenizer):
    """A 2-layer Llama whose greedy next token after character ``a`` is ``transitions[a]``
    (a character, or "" for EOS); every other character is followed by EOS.

    Attention and MLP outputs are zeroed, so the residual stream is the current token's
    embedding; embeddings are one-hot, so the final RMSNorm gives ``sqrt(D) * e_token`` and the
    LM head row of the token is its next-token logits."""
    config = tiny_llama(vocab_size=32, hidden_size=32)
    # Attention and MLP weights do not matter once their output projections are zero.
    shapes = jax.eval_shape(lambda: nn.unbox(steplib.init_params_boxed(
        Decoder(config), jax.random.key(0))))
    params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), shapes)
    for name in ("layer_0", "layer_1"):
        params[name]["attn"]["o"]["kernel"][:] = 0.0
        params[name]["mlp"]["down"]["kernel"][:] = 0.0
    params["embedding"][:] = np.eye(32, dtype=np.float32)
    params["final_norm"]["scale"][:] = 1.0
    head = np.zeros((32, 32), np.float32)
    for t in range(32):
        head[t, tok.eos_id] = 1.0
    for a, b in transitions.items():
        row = tok.encode(a)[0]
        head[row, :] = 0.0
        head[row, tok.encode(b)[0] if b else tok.eos_id] = 1.0
    params["lm_head"][:] = head
    return config, jax.tree.map(jax.numpy.asarray, params)
