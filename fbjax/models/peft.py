"""Export of a LoRA run: merged Hugging Face weights, and adapters in PEFT's format.

* :func:`save_merged_hf` folds the adapters into the base (``W0 + (alpha/r) A B``,
  :func:`fbjax.models.lora.merge`) and writes an ordinary ``transformers`` checkpoint through
  :func:`fbjax.models.hf.save_hf`.
* :func:`save_peft_adapters` writes what ``peft.PeftModel.from_pretrained(base, dir)`` reads:
  ``adapter_config.json`` and ``adapter_model.safetensors`` with PEFT's key names
  ``base_model.model.<hf module>.lora_A.weight`` ``[r, in]`` and ``.lora_B.weight`` ``[out, r]``.
  PEFT scales by ``lora_alpha / r`` as fbjax does, and applies dropout to the layer input as
  qwix does, so the two compute the same function.

Our adapters are the transposes of PEFT's: qwix stores ``A [in, r]`` and ``B [r, out]`` over
the kernel's flattened input and output dims, whose row-major order is the order of
``nn.Linear``'s features (the same reshape ``fbjax.models.hf`` uses for the kernels).
GPT-2 is refused: its q/k/v live in one fused ``Conv1D`` (``c_attn``), which separate q/k/v
adapters do not map onto one PEFT module.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from fbjax.models import hf
from fbjax.models import lora as loralib
from fbjax.models.config import Family, ModelConfig

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def save_merged_hf(out_dir: str, config: ModelConfig, base: Any, adapters: Any,
                   lora: loralib.LoraConfig, **save_kwargs) -> list[str]:
    """A ``transformers`` checkpoint of the adapted model (adapters merged); see ``hf.save_hf``."""
    merged = loralib.merge(base, adapters, lora)
    return hf.save_hf(out_dir, config, merged, **save_kwargs)


def _hf_linear_names(config: ModelConfig) -> dict[str, str]:
    """``'layer_0/attn/q/kernel' -> 'model.layers.0.self_attn.q_proj'`` for one-to-one kernels."""
    names = {}
    for rule in hf._rules(config):  # the one table of HF names, reused rather than copied
        if len(rule.paths) == 1 and rule.hf_name.endswith(".weight"):
            names[rule.paths[0]] = rule.hf_name[: -len(".weight")]
    return names


def peft_tensors(config: ModelConfig, adapters: Any) -> dict[str, np.ndarray]:
    """Our adapter tree -> ``{PEFT key: array}`` (float arrays, contiguous, dtype unchanged)."""
    if config.family is Family.GPT2:
        raise ValueError(
            "PEFT export: GPT-2's q/k/v are one fused Conv1D (c_attn) in Hugging Face, which "
            "fbjax's separate q/k/v adapters do not map onto; export merged weights instead")
    names = _hf_linear_names(config)
    flat = hf.to_numpy_flat(adapters)
    out = {}
    for path, a in flat.items():
        if not path.endswith("_lora_a"):
            continue
        kernel = path[: -len("_lora_a")]
        b = flat.get(kernel + "_lora_b")
        if b is None or kernel not in names:
            raise ValueError(f"PEFT export: adapter {path!r} has no matching lora_b or HF module")
        module = _PEFT_PREFIX + names[kernel]
        out[module + ".lora_A.weight"] = np.ascontiguousarray(np.asarray(a).T)
        out[module + ".lora_B.weight"] = np.ascontiguousarray(np.asarray(b).T)
    return out


def peft_config(config: ModelConfig, lora: loralib.LoraConfig,
                base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """PEFT's ``LoraConfig`` as JSON: the HF module names of our targets, alpha, rank, dropout."""
    modules = sorted({
        name.rsplit(".", 1)[-1]
        for path, name in _hf_linear_names(config).items()
        if path.endswith("/kernel") and path.split("/")[-2] in lora.target_modules
    })
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_peft_adapters(out_dir: str, config: ModelConfig, adapters: Any,
                       lora: loralib.LoraConfig, *,
                       base_model_name_or_path: str | None = None) -> list[str]:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors``; returns the files."""
    from safetensors.numpy import save_file

    tensors = peft_tensors(config, adapters)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ADAPTER_CONFIG_FILE), "w") as f:
        json.dump(peft_config(config, lora, base_model_name_or_path), f, indent=2,
                  sort_keys=True)
    save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    return [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]
