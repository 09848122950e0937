"""Preemption: SIGTERM or SIGINT -> finish the current step, save, wait for the commit, exit 0.

Cloud schedulers (TPU VM maintenance, spot/preemptible VMs, SLURM's --signal) send SIGTERM some
seconds before killing a job. The training loop asks `Preemption.reached(step)` after every step;
when it says yes, the loop saves that step with `force=True`, waits until the checkpoint is
committed, prints a message and returns normally.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
    """SIGTERM/SIGINT ask the loop to finish the current step, save, and stop.

    One process: the signal sets a flag, read after each step. Several processes: they must
    stop at the same step, so SIGTERM is left to JAX's preemption notifier (started by
    `jax.distributed.initialize`), SIGINT is handed to it as a SIGTERM, and
    `reached_preemption_sync_point(step)`, called by every process after every step, turns true
    at one agreed step on all of them (max step seen + 1). Use as a context manager.
    """

    def __init__(self, start_step: int):
        self._flag = threading.Event()
        self._saved: dict[int, Any] = {}
        self._synced = False
        if jax.process_count() > 1:
            try:
                multihost_utils.reached_preemption_sync_point(start_step)
                self._synced = True
            except RuntimeError:  # preemption service disabled: agree by an all-gather instead
                self._synced = False

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT,) if self._synced else (signal.SIGTERM, signal.SIGINT)
            for sig in signals:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._synced:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._flag.set()

    def reached(self, step: int) -> bool:
        """Whether to save at `step` and stop; the same answer on every process."""
        if self._synced:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.int32(self._flag.is_set()))
            return bool(np.max(flags))
        return self._flag.is_set()
