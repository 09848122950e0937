"""The training loop: build, jit once, iterate, log, evaluate, checkpoint.

`train_and_evaluate(config, workdir)` is the whole job. It resumes from the newest complete
checkpoint in WORKDIR/checkpoints by itself; the data pipeline is stateless (the batch at step s
is a function of the seed and s), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bertgpt_jax.checkpoint import Checkpointer
from bertgpt_jax.config import Config, dump_config
from bertgpt_jax.losses import LossSums
from bertgpt_jax.metrics import MetricsWriter, device_peak_flops, flops_per_step
from bertgpt_jax.objectives import summarize
from bertgpt_jax.sharding import make_mesh
from bertgpt_jax.train_step import Trainer, TrainState


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient with train.nan_policy=stop."""


def _host_batches(config: Config, split: str, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    from bertgpt_jax.data import host_batches

    return host_batches(
        config,
        split=split,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def evaluate(trainer: Trainer, state: TrainState, config: Config) -> dict[str, float]:
    """Mean metrics over `train.eval_steps` validation batches (the same batches every time)."""
    totals: dict[str, LossSums] | None = None
    batches = _host_batches(config, "validation", 0)
    for _, rows in zip(range(config.train.eval_steps), batches, strict=False):
        sums = jax.device_get(trainer.eval_step(state, trainer.device_batch(rows)))
        if totals is None:
            totals = sums
        else:
            totals = {k: LossSums(*np.add(totals[k], sums[k])) for k in totals}
    if totals is None:
        return {}
    return {k: float(v) for k, v in summarize(totals, trainer.coefficients).items()}


def _check_finite(history: list[tuple[int, dict[str, Any]]], policy: str) -> None:
    for step, metrics in history:
        if metrics["finite"] < 1.0 and policy == "stop":
            raise NonFiniteError(
                f"step {step} produced a non-finite loss ({metrics['loss']}) or gradient norm "
                f"({metrics['grad_norm']}); its update was not applied and nothing after the last "
                "checkpoint was saved. Lower train.learning_rate, or set train.nan_policy=skip."
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


def _profile(config: Config, step: int, workdir: Path) -> None:
    t = config.train
    if t.profile_steps <= 0 or t.profile_start < 0:
        return
    if step == t.profile_start:
        jax.profiler.start_trace(str(workdir / "profile"))
    elif step == t.profile_start + t.profile_steps:
        jax.profiler.stop_trace()


def train_and_evaluate(
    config: Config, workdir: str | Path, fresh: bool = False, restore_step: int | None = None
) -> dict[str, float]:
    """Runs (or resumes) training to `train.steps`; returns the last logged metrics."""
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(dump_config(config))
    mesh = make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    checkpointer = Checkpointer(workdir / "checkpoints", config, trainer)
    state = None if fresh else checkpointer.restore(restore_step)
    if state is None:
        state = trainer.init(config.train.seed)
    start = int(jax.device_get(state.step))
    writer = MetricsWriter(workdir, config.train.steps, start, enabled=primary)
    last: dict[str, float] = {}
    try:
        with checkpointer.preemption_guard() as preempted:
            last = _loop(config, workdir, trainer, checkpointer, state, start, writer, preempted)
    finally:
        writer.close()
        checkpointer.close()
    return last


def _loop(
    config: Config,
    workdir: Path,
    trainer: Trainer,
    checkpointer: Checkpointer,
    state: TrainState,
    start: int,
    writer: MetricsWriter,
    preempted: Any,
) -> dict[str, float]:
    t = config.train
    timer = _Timer(config, jax.device_count())
    history: list[tuple[int, dict[str, Any]]] = []
    last: dict[str, float] = {}
    batches = _host_batches(config, "train", start)
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
        must_save = checkpointer.should_save(step) or step == t.steps or preempted()
        if step % t.log_every == 0 or must_save:
            history = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in history]
            _check_finite(history, t.nan_policy)
            last = {k: v for k, v in history[-1][1].items() if k != "finite"}
            if timer.steps:
                last.update(timer.measure())
            writer.write(step, last)
            writer.advance(len(history))
            history = []
        if t.eval_every and (step % t.eval_every == 0 or step == t.steps):
            writer.write(step, evaluate(trainer, state, config), prefix="eval_")
        if must_save:
            checkpointer.save(step, state, last, force=step == t.steps or preempted())
        if preempted():
            checkpointer.wait()
            print(f"Preempted: saved a committed checkpoint at step {step}; exiting cleanly.")
            break
    if t.profile_steps > 0 and t.profile_start <= step < t.profile_start + t.profile_steps:
        jax.profiler.stop_trace()
    checkpointer.wait()
    return last
