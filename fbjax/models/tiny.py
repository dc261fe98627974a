"""Tiny random checkpoints in Hugging Face's layout, for trying a path end to end offline.

:func:`write_checkpoint` writes ``config.json`` + ``model.safetensors`` (fbjax's own exporter,
no torch) and a byte-level BPE ``tokenizer.json`` trained on the given texts, with the BOS/EOS
of Llama 3 in ``tokenizer_config.json``: what ``init_from`` reads from a real checkpoint. The
tests and the README's walkthrough use it; it is not a model anyone should train.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp

from fbjax.models import hf
from fbjax.models.config import ModelConfig, preset

# Mixture-of-experts families at tiny size: 4 experts, 2 per token (their presets carry the
# released models' 8 / 128 experts).
_TINY_EXPERTS = dict(num_experts=4, experts_per_token=2)

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def byte_level_tokenizer(texts: Iterable[str], vocab_size: int,
                         special_tokens: Sequence[str] = (BOS, EOS)) -> str:
    """A byte-level BPE ``tokenizer.json`` (GPT-2 / Llama-3 style) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok.to_str()


def tiny_config(family: str, **sizes) -> ModelConfig:
    """``family``'s preset at the given sizes; MoE families with 4 experts, top-2."""
    config = preset(family, **sizes)
    if config.num_experts:
        config = preset(family, **{**_TINY_EXPERTS, **sizes})
    return config


def write_checkpoint(out_dir: str, model: ModelConfig, texts: Iterable[str], *,
                     vocab_size: int = 512, seed: int = 0) -> ModelConfig:
    """Writes a random ``model`` (its vocabulary set to the tokenizer's) and a tokenizer trained
    on ``texts`` to ``out_dir``; returns the model config written."""
    import flax.linen as nn

    from fbjax.models.decoder import Decoder
    from fbjax.tokenizers import HFTokenizer

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        f.write(byte_level_tokenizer(texts, vocab_size))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS}, f)
    tokenizer = HFTokenizer.load(out_dir)
    model = dataclasses.replace(model, vocab_size=tokenizer.vocab_size)
    ids = jnp.ones((1, 4), jnp.int32)
    params = Decoder(model).init(jax.random.key(seed), ids, ids, ids)["params"]
    hf.save_hf(out_dir, model, jax.device_get(nn.unbox(params)),
               extra_config={"bos_token_id": tokenizer.bos_id,
                             "eos_token_id": tokenizer.eos_id})
    return model
