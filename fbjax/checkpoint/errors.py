"""The one checkpoint error of the project (fbjax checkpoints and Hugging Face directories)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be used or written: corrupt, incomplete, of another model or config,
    or holding non-finite values. The message is one line naming the directory or file, the step
    and the reason (whitespace, including newlines from Orbax or TensorStore messages, is folded
    into single spaces, so the CLI can print it as one line)."""

    def __init__(self, message: object):
        super().__init__(" ".join(str(message).split()))
