"""The training loop: build, jit once, iterate, log, evaluate, checkpoint.

`train_and_evaluate(config, workdir)` is the whole job. It resumes from the newest complete
checkpoint in WORKDIR/checkpoints by itself; the data pipeline is stateless (the batch at step s
is a function of the seed and s), so a resumed run sees exactly the batches it would have seen,
and on the same mesh computes bitwise the same states. Rows of metrics.jsonl after the step
resumed from (logged by a run killed before its next checkpoint) are dropped, so every step is
logged once. A fresh run starts from random weights, or from an HF model's
(`checkpoint.init_from_hf`). SIGTERM/SIGINT end the run cleanly after a committed save.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, dump_config
from bertgpt_jax.core.errors import NonFiniteError
from bertgpt_jax.data.tokenizers import load_tokenizer, store_tokenizer, tokenizer_location
from bertgpt_jax.ops.cross_entropy import LossSums
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.training.best import BestCheckpoint, best_metric
from bertgpt_jax.training.checkpoint import Checkpointer
from bertgpt_jax.training.hf_init import state_from_hf
from bertgpt_jax.training.init_from import state_from_init
from bertgpt_jax.training.metrics import SAMPLES, MetricsWriter, device_peak_flops, flops_per_step
from bertgpt_jax.training.preemption import Preemption
from bertgpt_jax.training.preflight import check_training
from bertgpt_jax.training.samples import Samples
from bertgpt_jax.training.step import Trainer, TrainState


def _host_batches(
    trainer: Trainer, config: Config, split: str, start_step: int
) -> Iterator[dict[str, np.ndarray]]:
    return trainer.task.host_batches(
        config, split, start_step, jax.process_index(), jax.process_count()
    )


class _Evaluator:
    """The state's jitted forward passes, lent to the task's evaluation (tasks.Evaluator)."""

    def __init__(self, trainer: Trainer, state: TrainState):
        self.trainer, self.state = trainer, state

    def loss_sums(self, rows: Mapping[str, np.ndarray]) -> dict[str, LossSums]:
        return jax.device_get(self.trainer.eval_step(self.state, self.trainer.device_batch(rows)))

    def outputs(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.trainer.device_batch(rows)
        return jax.device_get(self.trainer.outputs_step(self.state, batch))


def evaluate(trainer: Trainer, state: TrainState, config: Config) -> dict[str, float]:
    """The task's validation metrics (pretraining: mean loss terms over `train.eval_steps`
    batches, the same batches every time)."""
    return trainer.task.evaluate(
        config, _Evaluator(trainer, state), jax.process_index(), jax.process_count()
    )


# nan_policy=skip warns once when more than this fraction of the steps run were skipped.
SKIP_WARN_FRACTION = 0.1


def _check_finite(history: list[tuple[int, dict[str, Any]]], policy: str) -> int:
    """The number of skipped (non-finite) steps in `history`; with nan_policy=stop, raises
    NonFiniteError at the first."""
    skipped = 0
    for step, metrics in history:
        if metrics["finite"] >= 1.0:
            continue
        skipped += 1
        if policy == "stop":
            loss, norm = metrics["loss"], metrics["grad_norm"]
            cause = (
                f"a non-finite loss ({loss}) or gradient norm ({norm})"
                if not (np.isfinite(loss) and np.isfinite(norm))
                else f"an update that made the weights non-finite (loss {loss:.4g})"
            )
            raise NonFiniteError(
                f"step {step} produced {cause}, so it was not applied and nothing after the "
                "newest checkpoint was saved; lower train.learning_rate (or set "
                "train.nan_policy=skip) and run the same command again to resume."
            )
    return skipped


class _Skips:
    """nan_policy=skip: counts skipped steps (across resumes) and warns once past the threshold."""

    def __init__(self, restored: dict[str, float], start: int):
        self.total = int(restored.get("skipped_steps", 0) or 0)
        self.here, self.start, self.warned = 0, start, False

    def add(self, count: int, step: int, writer: MetricsWriter) -> None:
        self.total += count
        self.here += count
        ran = step - self.start
        if not self.warned and self.here >= 2 and self.here > SKIP_WARN_FRACTION * ran:
            self.warned = True
            writer.note(
                f"warning: train.nan_policy=skip has skipped {self.here} of the {ran} steps run "
                "(non-finite loss, gradient or update); lower train.learning_rate if this goes on."
            )


class _Timer:
    """Throughput between two log points, excluding the first (compiling) step."""

    def __init__(self, config: Config, num_devices: int):
        self.tokens_per_step = config.train.batch_size * config.data.seq_len
        self.flops_per_step = flops_per_step(config)
        peak = device_peak_flops()
        self.peak = None if peak is None else peak * num_devices
        self.reset()

    def reset(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def measure(self) -> dict[str, float]:
        """Call after the device has finished the counted steps (e.g. after device_get)."""
        step_time = (time.perf_counter() - self.start) / self.steps
        self.reset()
        out = {
            "step_time": step_time,
            "tokens_per_sec": self.tokens_per_step / step_time,
            "model_tflops": self.flops_per_step / step_time / 1e12,
        }
        if self.peak:
            out["mfu"] = self.flops_per_step / step_time / self.peak
        return out


def _profile(config: Config, step: int, workdir: epath.Path) -> None:
    t = config.train
    if t.profile_steps <= 0 or t.profile_start < 0:
        return
    if step == t.profile_start:
        jax.profiler.start_trace(str(workdir / "profile"))
    elif step == t.profile_start + t.profile_steps:
        jax.profiler.stop_trace()


def train_and_evaluate(
    config: Config, where: str | Path, fresh: bool = False, restore_step: int | None = None
) -> dict[str, float]:
    """Runs (or resumes) training to `train.steps` in the workdir `where` (a local path or a
    gs:// URL, see fs.py); returns the metrics saved with the last checkpoint: the last logged
    train metrics and, where evaluation ran, eval_-prefixed validation metrics."""
    workdir = fs.as_path(where)
    check_training(config, workdir, fresh=fresh, restore_step=restore_step)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    checkpointer = Checkpointer(workdir, config, trainer)
    try:
        # Compatibility is checked before anything in the workdir is rewritten.
        state = checkpointer.restore(restore_step, fresh=fresh)
        if state is None:
            state = _initial_state(config, trainer, checkpointer.tokenizer)
        start = int(jax.device_get(state.step))
        if primary:
            fs.write_text(workdir / "config.yaml", dump_config(config))
            _trim_metrics(workdir / "metrics.jsonl", start)
            _trim_metrics(workdir / SAMPLES, start)
            _copy_tokenizer(config, workdir)
        writer = MetricsWriter(workdir, config.train.steps, start, enabled=primary)
        metric = best_metric(config, trainer.task.best_metric)
        best = BestCheckpoint(config, checkpointer, metric, start)
        try:
            with Preemption(start) as preemption:
                return _loop(
                    config, workdir, trainer, checkpointer, state, start, writer, preemption,
                    best, Samples(config, trainer),
                )  # fmt: skip
        finally:
            best.close()
            writer.close()
    finally:
        checkpointer.close()


def _initial_state(config: Config, trainer: Trainer, tokenizer: dict | None) -> TrainState:
    if config.checkpoint.init_from:
        return state_from_init(trainer, config.checkpoint.init_from)
    if config.checkpoint.init_from_hf:
        return state_from_hf(trainer, config.checkpoint.init_from_hf, tokenizer)
    return trainer.init(config.train.seed)


def _trim_metrics(path: epath.Path, last_step: int) -> None:
    """Keeps only rows up to `last_step` (and drops a line cut short by a kill)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            kept.append(line + "\n")
    fs.write_text(path, "".join(kept))


def _copy_tokenizer(config: Config, workdir: epath.Path) -> None:
    """Keeps the store's tokenizer files (or, without a store, data.tokenizer's: fine-tuning)
    in the workdir, for `bertgpt export`."""
    if not config.data.path:
        if config.data.tokenizer:
            store_tokenizer(load_tokenizer(config.data.tokenizer), workdir)
        return
    source = tokenizer_location(Path(config.data.path))
    if source.exists():
        store_tokenizer(load_tokenizer(source), workdir)


def _preempted(step: int) -> str:
    return f"Preempted: saved a committed checkpoint at step {step}; exiting."


def _stopped(step: int, best: BestCheckpoint, patience: int) -> str:
    return (
        f"Early stopping at step {step}: {patience} evaluations without a new best {best.metric}."
    )


def _loop(
    config: Config,
    workdir: epath.Path,
    trainer: Trainer,
    checkpointer: Checkpointer,
    state: TrainState,
    start: int,
    writer: MetricsWriter,
    preemption: Preemption,
    best: BestCheckpoint,
    samples: Samples,
) -> dict[str, float]:
    t = config.train
    timer = _Timer(config, jax.device_count())
    history: list[tuple[int, dict[str, Any]]] = []
    last: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    saved = dict(checkpointer.restored_metrics)  # a run already at train.steps reports these
    skips = _Skips(saved, start)
    batches = _host_batches(trainer, config, "train", start)
    step = start
    while step < t.steps:
        _profile(config, step, workdir)
        state, metrics = trainer.train_step(state, trainer.device_batch(next(batches)))
        step += 1
        history.append((step, metrics))
        if step == start + 1:
            jax.block_until_ready(metrics)
            timer.reset()  # throughput excludes compilation
        else:
            timer.steps += 1
        stop = preemption.reached(step)  # asked once per step: the same answer on every process
        must_save = checkpointer.should_save(step) or step == t.steps or stop
        if step % t.log_every == 0 or must_save:
            history = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in history]
            skips.add(_check_finite(history, t.nan_policy), step, writer)
            last = {k: v for k, v in history[-1][1].items() if k != "finite"}
            last["skipped_steps"] = float(skips.total)
            if timer.steps:
                last.update(timer.measure())
            writer.write(step, last)
            writer.advance(len(history))
            history = []
        early = False
        if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
            last_eval = evaluate(trainer, state, config)
            writer.write(step, last_eval, prefix="eval_")
            samples.write(step, state, writer)
            timer.reset()  # evaluation waited for the train steps; its time is not theirs
            early = best.update(step, last_eval, state)  # train.patience ran out: stop here
        if must_save or early:
            saved = {**last, **{f"eval_{k}": v for k, v in last_eval.items()}}
            checkpointer.save(step, state, saved, force=step == t.steps or stop or early)
            writer.sync(force=True)  # a remote workdir's metrics reach it with each checkpoint
        if stop or early:
            checkpointer.wait()
            if jax.process_index() == 0:
                print(_stopped(step, best, t.patience) if early else _preempted(step), flush=True)
            break
    if t.profile_steps > 0 and t.profile_start <= step < t.profile_start + t.profile_steps:
        jax.profiler.stop_trace()
    checkpointer.wait()
    if skips.here:
        writer.note(f"train.nan_policy=skip skipped {skips.here} of {step - start} steps.")
    return saved
