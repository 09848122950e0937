"""The best checkpoint by a validation metric, in WORKDIR/best/, and early stopping.

The metric is `train.best_metric` or the task's own (`Task.best_metric`; pretraining has none,
so nothing happens there). After each evaluation whose metric beats the best so far (higher is
better; lower for a name containing "loss"), the parameters are saved, with the usual metadata
and the evaluation's metrics, as the one checkpoint of WORKDIR/best/checkpoints, which
`restore_params`, `load_pretrained` and `bertgpt export` read like a workdir's. With
`train.patience` > 0 the run stops after that many evaluations without a new best.

The best so far is read back from WORKDIR/best at start, so a resumed run keeps it; the count
of evaluations without improvement is (step - best step) / train.eval_every, a function of the
steps alone, so a resumed run stops where the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import orbax.checkpoint as ocp

from bertgpt_jax.core.config import Config
from bertgpt_jax.pretrained.workdir import BEST, CHECKPOINTS, open_manager, read_metadata
from bertgpt_jax.training.checkpoint import Checkpointer
from bertgpt_jax.training.step import TrainState


class BestCheckpoint:
    def __init__(self, config: Config, checkpointer: Checkpointer, metric: str):
        self.config, self.checkpointer, self.metric = config, checkpointer, metric
        self.step, self.value = 0, None
        self.manager = None
        if not metric:
            return
        keep_one = dataclasses.replace(config.checkpoint, keep=1, keep_every=0)
        directory = checkpointer.workdir / BEST / CHECKPOINTS
        self.manager = open_manager(directory, config.replace(checkpoint=keep_one))
        latest = self.manager.latest_step()
        if latest is not None:
            saved = read_metadata(self.manager, latest).get("metrics") or {}
            self.step, self.value = latest, saved.get(f"eval_{metric}")

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
            self.manager.wait_until_finished()
            self.manager.close()


def best_metric(config: Config, task_default: str) -> str:
    return config.train.best_metric or task_default


__all__ = ["BEST", "BestCheckpoint", "best_metric"]
