"""`bertgpt bench`: step time, tokens/s, model TFLOP/s and the fraction of this machine's
measured matmul peak, for any config, on synthetic batches of the real batch contract."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from bertgpt_jax.core.config import Config
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.perf import allocator
from bertgpt_jax.tasks import synthetic_batch
from bertgpt_jax.training.metrics import device_peak_flops, flops_per_step
from bertgpt_jax.training.step import Trainer


def matmul_peak_flops(dtype: str, size: int = 2048, repeats: int = 20) -> float:
    """Best FLOP/s of one device on a square matmul in the compute dtype (bf16 inputs
    accumulate in f32, as the model's matmuls do)."""
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dt)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return 2.0 * size**3 / best_time(lambda: mm(a, a), repeats)


def best_time(run: Callable[[], Any], repeats: int) -> float:
    """Least wall time in seconds of `run()` (its result waited for) over `repeats` calls,
    after one untimed call that compiles."""
    jax.block_until_ready(run())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - start)
    return best


def run_bench(config: Config, steps: int = 10, warmup: int = 3) -> dict:
    mesh = make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    state = trainer.init(config.train.seed)
    batch = trainer.device_batch(synthetic_batch(config))
    for _ in range(warmup):
        state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    flops = flops_per_step(config)
    peak = device_peak_flops()
    measured_peak = None
    if peak is None:  # CPU or an unknown chip: measure it here
        measured_peak = matmul_peak_flops(config.model.dtype)
        peak = measured_peak
    tokens = config.train.batch_size * config.data.seq_len
    return {
        "bench": "bertgpt_jax",
        "family": config.model.family,
        "dtype": config.model.dtype,
        "backend": jax.default_backend(),
        "allocator": allocator.loaded(),
        "devices": jax.device_count(),
        "layers": config.model.num_layers,
        "hidden": config.model.hidden_size,
        "seq": config.data.seq_len,
        "batch": config.train.batch_size,
        "step_time_median": step_time,
        "step_time_min": min(times),
        "tokens_per_sec": tokens / step_time,
        "model_tflops": flops / step_time / 1e12,
        "peak_tflops": peak * jax.device_count() / 1e12,
        "peak_measured": measured_peak is not None,
        "fraction_of_peak": flops / step_time / (peak * jax.device_count()),
        "loss": float(metrics["loss"]),
    }
