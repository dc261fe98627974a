"""Files a run keeps beside its checkpoints (samples, feedback, evaluations, logs)."""

from __future__ import annotations

import json
import os
from typing import Any


def write_whole(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all (a temporary file renamed into place), so a
    run killed while writing leaves the old file or none, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, value: Any, **dump_options) -> None:
    """``value`` as JSON, written whole or not at all (:func:`write_whole`)."""
    write_whole(path, json.dumps(value, **dump_options))
