"""Orbax checkpoints of the training state in WORKDIR/checkpoints, resume, and preemption.

A checkpoint holds the `TrainState` arrays (parameters, optimizer state, step, RNG) and a JSON
metadata item (resolved config, package and library versions, mesh, final metrics). Saves are
asynchronous; Orbax writes each step to a temporary directory and renames it on commit, so an
uncommitted step is never seen by `latest_step`. Restoring goes through an abstract target with
this run's shardings, so a checkpoint saved on one mesh restores onto another.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from bertgpt_jax.config import Config, config_to_dict
from bertgpt_jax.train_step import Trainer, TrainState


def _versions() -> dict[str, str]:
    import flax
    import optax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


class Checkpointer:
    def __init__(self, directory: Path, config: Config, trainer: Trainer):
        self.config = config
        self.trainer = trainer
        c = config.checkpoint
        options = ocp.CheckpointManagerOptions(
            max_to_keep=c.keep,
            keep_period=c.keep_every or None,
            enable_async_checkpointing=c.async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def should_save(self, step: int) -> bool:
        return step % self.config.checkpoint.every_steps == 0

    def metadata(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "step": step,
            "config": config_to_dict(self.config),
            "mesh": dict(self.trainer.mesh.shape),
            "versions": _versions(),
            "metrics": metrics,
        }

    def save(self, step: int, state: TrainState, metrics: dict[str, float], force: bool) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            metadata=ocp.args.JsonSave(self.metadata(step, metrics)),
        )
        self.manager.save(step, args=args, force=force)

    def restore(self, step: int | None = None) -> TrainState | None:
        """The newest (or the given) committed checkpoint, on this run's mesh; None if none."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.trainer.abstract_state,
            self.trainer.state_shardings,
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return restored["state"]

    @contextlib.contextmanager
    def preemption_guard(self) -> Iterator[Callable[[], bool]]:
        """While active, SIGTERM/SIGINT ask the loop to save and stop after the current step."""
        flag = threading.Event()
        installed = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed[sig] = signal.signal(sig, lambda *_: flag.set())
        try:
            yield flag.is_set
        finally:
            for sig, handler in installed.items():
                signal.signal(sig, handler)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
