"""The best checkpoint by a validation metric, in WORKDIR/best/, and early stopping.

The metric is `train.best_metric` or the task's own (`Task.best_metric`; pretraining has none,
so nothing happens there). After each evaluation whose metric beats the best so far (higher is
better; lower for a name containing "loss"), the parameters are saved, with the usual metadata
and the evaluation's metrics, as the one checkpoint of WORKDIR/best/checkpoints, which
`restore_params`, `load_pretrained` and `bertgpt export` read like a workdir's. With
`train.patience` > 0 the run stops after that many evaluations without a new best.

The best so far is read back from WORKDIR/best at start, so a resumed run keeps it (one saved
after the step resumed from is set aside in WORKDIR/set_aside/, as later checkpoints are); the
count
of evaluations without improvement is (step - best step) / train.eval_every, a function of the
steps alone, so a resumed run stops where the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config
from bertgpt_jax.pretrained.workdir import BEST, CHECKPOINTS, open_manager, read_metadata
from bertgpt_jax.training.checkpoint import SET_ASIDE, Checkpointer
from bertgpt_jax.training.step import TrainState


class BestCheckpoint:
    def __init__(self, config: Config, checkpointer: Checkpointer, metric: str, start: int):
        """`start`: the step the run starts from; a best saved after it (by a fresh start's
        predecessor, or a run killed before its next checkpoint) is set aside."""
        self.config, self.checkpointer, self.metric = config, checkpointer, metric
        self.step, self.value = 0, None
        self.manager = None
        if not metric:
            return
        directory = checkpointer.workdir / BEST / CHECKPOINTS
        self.manager = self._open(directory)
        latest = self.manager.latest_step()
        if latest is not None and latest > start:
            self.manager.close()
            if jax.process_index() == 0:
                target = checkpointer.workdir / SET_ASIDE / time.strftime("%Y%m%d-%H%M%S") / BEST
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.move_tree(directory, target)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("bertgpt_best_set_aside")
            self.manager, latest = self._open(directory), None
        if latest is not None:
            saved = read_metadata(self.manager, latest).get("metrics") or {}
            self.step, self.value = latest, saved.get(f"eval_{metric}")

    def _open(self, directory: epath.Path) -> ocp.CheckpointManager:
        keep_one = dataclasses.replace(self.config.checkpoint, keep=1, keep_every=0)
        return open_manager(directory, self.config.replace(checkpoint=keep_one))

    def _better(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if "loss" in self.metric else value > self.value

    def update(self, step: int, metrics: Mapping[str, float], state: TrainState) -> bool:
        """Saves the parameters if `metrics` hold a new best; True when patience ran out."""
        if self.manager is None:
            return False
        if self.metric not in metrics:
            known = ", ".join(sorted(metrics))
            raise KeyError(f"train.best_metric={self.metric} is not an eval metric ({known}).")
        value = metrics[self.metric]
        if self._better(value):
            self.step, self.value = step, value
            saved = {f"eval_{k}": v for k, v in metrics.items()}
            args = ocp.args.Composite(
                state=ocp.args.PyTreeSave({"params": state.params}),
                metadata=ocp.args.JsonSave(self.checkpointer.metadata(step, saved)),
            )
            with fs.disk_errors(self.checkpointer.workdir / BEST):
                self.manager.save(step, args=args, force=True)
            return False
        patience, every = self.config.train.patience, self.config.train.eval_every
        return patience > 0 and every > 0 and (step - self.step) // every >= patience

    def summary(self) -> dict[str, float]:
        if self.value is None:
            return {}
        return {"step": float(self.step), self.metric: float(self.value)}

    def close(self) -> None:
        if self.manager is not None:
            with fs.disk_errors(self.checkpointer.workdir / BEST):
                self.manager.wait_until_finished()
                self.manager.close()


def best_metric(config: Config, task_default: str) -> str:
    return config.train.best_metric or task_default


__all__ = ["BEST", "BestCheckpoint", "best_metric"]
