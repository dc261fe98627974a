"""SIGTERM as a flag the training loop polls, agreed across processes."""

from __future__ import annotations

import signal
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionFlag:
    """``requested`` turns True when one of ``signals`` arrives (SIGTERM by default).

    The handler only sets the flag; the loop checks it after each step, saves with
    ``force=True``, and exits. :meth:`close` restores the previous handlers. Signal handlers can
    only be installed from the main thread.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
        self.requested = False
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.signal = signum

    def agreed(self) -> bool:
        """True if any process received the signal (a collective when multi-host: call it on
        every process at the same step, so that all of them save and stop together)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.any(flags))

    def close(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> PreemptionFlag:
        return self

    def __exit__(self, *exc):
        self.close()


def install_preemption_handler(signals: Sequence[int] = (signal.SIGTERM,)) -> PreemptionFlag:
    """Installs a handler that sets a flag instead of killing the process; see PreemptionFlag."""
    return PreemptionFlag(signals)
