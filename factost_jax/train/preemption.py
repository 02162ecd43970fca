"""SIGTERM / SIGINT -> a stop request the loop honours at a step boundary (one or many processes)."""

from __future__ import annotations

import signal
import threading
from typing import Any


class PreemptionGuard:
    """SIGTERM / SIGINT -> a stop request the loop honours at the next step boundary.

    One process: our handlers record the signal; a second signal of the same kind reaches the
    handler that was there before (default SIGTERM: exit now; Ctrl-C twice: KeyboardInterrupt).
    Several processes must all stop at the same step, so there the decision is JAX's preemption
    sync point (its distributed runtime catches SIGTERM and agrees on a step across hosts) and no
    Python handler is installed. Handlers can only be set from the main thread; elsewhere the guard
    only does the multi-process check.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, process_count: int):
        self.multi_process = process_count > 1
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                previous = signal.signal(signum, self._handle)
                self._previous[signum] = signal.SIG_DFL if previous is None else previous
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def requested(self, step: int) -> bool:
        """Called once per step, with the step every process is at."""
        if not self.multi_process:
            return self.signal_name is not None
        from jax.experimental import multihost_utils

        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is disabled: there is no notice to act on
            return False
        if reached:
            self.signal_name = self.signal_name or "a preemption notice"
        return reached
