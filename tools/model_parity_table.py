"""Print the supported-models parity table from the committed goldens (no torch needed).

    python tools/model_parity_table.py

For each golden under tests/goldens/hf: max abs logit difference from transformers (each
sequence run alone) in four layouts (full / right-padded / left-padded / packed), whether
export reproduces the safetensors bitwise, and whether greedy KV-cache sampling equals full
recomputation (tokens equal and chosen log-probs within 1e-4).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fbjax.models import hf
from fbjax.parity import layout_diffs, sampler_matches_recompute

GOLDENS = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "hf"


def main() -> None:
    from safetensors.numpy import load_file

    print("| golden | max abs logit diff (full / right-pad / left-pad / packed) "
          "| export bitwise | sampler equal |")
    print("|---|---|---|---|")
    for golden in sorted(p for p in GOLDENS.iterdir() if p.is_dir()):
        config, params = hf.load_hf(golden)
        diffs = layout_diffs(config, params, np.load(golden / "input_ids.npy"),
                             np.load(golden / "attention_mask.npy"), np.load(golden / "logits.npy"))
        with tempfile.TemporaryDirectory() as out:
            hf.save_hf(out, config, params)
            a, b = load_file(golden / "model.safetensors"), load_file(
                os.path.join(out, "model.safetensors"))
            bitwise = sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
        same, logp = sampler_matches_recompute(config, params, [[5, 9, 11], [7, 3, 8, 21, 4]], 6)
        cells = " / ".join(f"{diffs[k]:.1e}" for k in ("full", "right_pad", "left_pad", "packed"))
        print(f"| {golden.name} | {cells} | {'yes' if bitwise else 'NO'} | "
              f"{'yes' if same and logp <= 1e-4 else 'NO'} ({logp:.0e}) |", flush=True)


if __name__ == "__main__":
    main()
