"""Orbax checkpoints of the training state in WORKDIR/checkpoints: save, resume, fall-back,
parameter-only restore (the compatibility rules are in provenance.py).

A checkpoint step holds two Orbax items: `state`, the `TrainState` arrays (parameters, optimizer
state, step, RNG key data) saved by every process for its own shards, and `metadata`, a JSON
object written by process 0 (resolved config, tokenizer and data identity, mesh, versions,
metrics, the config changes made at earlier resumes). Saves are asynchronous: the loop waits only
while the arrays are copied off the devices; Orbax writes into a temporary directory and renames
it when every process has finished, so an uncommitted step is never listed or restored.

Restoring goes through an abstract target carrying this run's shardings, so a checkpoint saved
on one mesh, device count or process count restores onto another. A newest checkpoint that
cannot be read (a truncated or missing file) gives a warning and the previous one is used; the
unreadable steps, and any steps after the one resumed from, are moved to WORKDIR/set_aside/ so
that the resumed run can save those steps again. A checkpoint made with another model
architecture or tokenizer is refused with a `CheckpointError`; other changes (learning rate,
mesh, batch size, ...) are allowed, printed, and recorded in the metadata of later saves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, config_to_dict
from bertgpt_jax.core.errors import CheckpointError, NonFiniteError
from bertgpt_jax.pretrained.workdir import (
    CHECKPOINTS,
    candidates,
    open_manager,
    read_metadata,
    short_error,
    warn_unreadable,
)
from bertgpt_jax.training.provenance import check_compatible, data_identity, versions
from bertgpt_jax.training.step import Trainer, TrainState

SET_ASIDE = "set_aside"


def _agree(ok: bool) -> bool:
    """True only if `ok` holds on every process (a shard may be unreadable on one host only)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


class Checkpointer:
    """The run's checkpoint manager: periodic async saves, resume with fall-back, metadata."""

    def __init__(
        self, workdir: str | Path, config: Config, trainer: Trainer, read_only: bool = False
    ):
        """`read_only` (e.g. for `bertgpt eval`): restore only; nothing is saved or moved.
        `workdir` may be local or a gs:// URL."""
        self.workdir = fs.as_path(workdir)
        if read_only and not (self.workdir / CHECKPOINTS).is_dir():
            raise CheckpointError(f"{workdir} has no checkpoints/; run `bertgpt train` first.")
        self.read_only = read_only
        self.directory = self.workdir / CHECKPOINTS
        self.config, self.trainer = config, trainer
        self.tokenizer, self.data = data_identity(config)
        self.history: list[dict[str, Any]] = []  # config changes made at resumes
        self.restored_metrics: dict[str, float] = {}  # saved with the restored step
        self.blocked_s = 0.0  # how long the last save() held up the caller
        self.manager = open_manager(self.directory, None if read_only else config)

    def should_save(self, step: int) -> bool:
        return step % self.config.checkpoint.every_steps == 0

    def metadata(self, step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        return {
            "step": step,
            "config": config_to_dict(self.config),
            "tokenizer": self.tokenizer,
            "data": self.data,
            "mesh": dict(self.trainer.mesh.shape),
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "versions": versions(),
            "metrics": dict(metrics),
            "config_changes": self.history,
            "saved_at": time.time(),
        }

    def save(self, step: int, state: TrainState, metrics: Mapping[str, float], force: bool) -> None:
        """Starts an async save; returns once the arrays are off the devices (`blocked_s`).
        A state holding a non-finite value is never saved (the step guard should have kept it
        out; this is the last line before it would be committed)."""
        start = time.perf_counter()
        if not self.trainer.state_is_finite(state):
            raise NonFiniteError(
                f"the training state at step {step} holds non-finite values, so it was not saved; "
                "the newest checkpoint in the workdir is still good: resume from it with a lower "
                "train.learning_rate."
            )
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(self.trainer.saved(state)),
            metadata=ocp.args.JsonSave(self.metadata(step, metrics)),
        )
        with fs.disk_errors(self.directory):  # an earlier async save's, or this one's
            self.manager.save(step, args=args, force=force)
        self.blocked_s = time.perf_counter() - start

    def _target(self) -> tuple[TrainState, TrainState]:
        """The abstract saved state on this run's mesh, and matching Orbax restore args."""
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.trainer.saved(self.trainer.abstract_state),
            self.trainer.saved(self.trainer.state_shardings),
        )
        return target, jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), target)

    def _restore_state(self, step: int) -> TrainState:
        target, restore_args = self._target()
        # partial_restore: a saved state leaves out what `Trainer.restored` re-derives, which
        # Orbax would otherwise count as missing (the target holds None there).
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        saved = self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        # ...which also leaves placeholders where the checkpoint lacks an array this run needs
        # (one saved with another optimizer): as unusable as an unreadable step.
        missing = [
            jax.tree_util.keystr(path)
            for path, leaf in jax.tree_util.tree_leaves_with_path(saved)
            if isinstance(leaf, jax.ShapeDtypeStruct)
        ]
        if missing:
            raise ValueError(f"it has no {', '.join(missing[:3])}{' ...' * (len(missing) > 3)}")
        state = self.trainer.restored(saved)
        if not self.trainer.state_is_finite(state):
            # Saved by an older version without the guard: as unusable as an unreadable step.
            raise ValueError("it holds non-finite parameters or optimizer moments")
        return state

    def restore(self, step: int | None = None, fresh: bool = False) -> TrainState | None:
        """The state of the newest readable (or the given) checkpoint on this run's mesh; None
        when there is none or `fresh`. Later steps are set aside so they can be saved again."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if fresh:
            self._set_aside(steps, "fresh start")
            return None
        unreadable: list[int] = []
        for s in candidates(self.directory, steps, step):
            where = f"checkpoint step {s} in {self.directory}"
            meta = self._try(lambda s=s: read_metadata(self.manager, s), s, step)
            if meta is None:
                unreadable.append(s)
                continue
            changes = check_compatible(meta, self.config, self.tokenizer, where)
            state = self._try(lambda s=s: self._restore_state(s), s, step)
            if state is None:
                unreadable.append(s)
                continue
            self._record(s, meta, changes)
            self._set_aside([t for t in steps if t > s], "newer than the step resumed from")
            return state
        if steps:
            raise CheckpointError(
                f"none of the checkpoints in {self.directory} (steps {unreadable}) can be read; "
                "move them away, or pass --fresh to set them aside and start over."
            )
        return None

    def _try(self, read: Any, step: int, explicit: int | None) -> Any:
        error: BaseException = RuntimeError("it cannot be read on another process")
        try:
            value, ok = read(), True
        except Exception as err:  # Orbax/TensorStore raise many types for damaged files
            value, ok, error = None, False, err
        if _agree(ok):
            return value
        if explicit is not None:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be read "
                f"({short_error(error)}); choose another --step, or leave it out for the newest."
            ) from error
        warn_unreadable(self.directory, step, error)
        return None

    def _record(self, step: int, meta: Mapping[str, Any], changes: dict[str, list]) -> None:
        self.history = list(meta.get("config_changes") or [])
        self.restored_metrics = dict(meta.get("metrics") or {})
        if changes:
            self.history.append({"resumed_at_step": step, "changes": changes})
            if jax.process_index() == 0:
                shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
                print(f"Resuming from step {step} with config changes: {shown}", flush=True)

    def _set_aside(self, steps: list[int], reason: str) -> None:
        """Moves whole step directories to WORKDIR/set_aside/ (nothing is deleted)."""
        if not steps or self.read_only:
            return
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            target = self.workdir / SET_ASIDE / time.strftime("%Y%m%d-%H%M%S")
            target.mkdir(parents=True, exist_ok=True)
            for s in steps:
                fs.move_tree(self.directory / str(s), target / str(s))
            print(f"Set aside checkpoint steps {sorted(steps)} ({reason}) in {target}", flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("bertgpt_checkpoint_set_aside")
        self.manager.reload()

    def wait(self) -> None:
        with fs.disk_errors(self.directory):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with fs.disk_errors(self.directory):
            self.manager.wait_until_finished()
            self.manager.close()
