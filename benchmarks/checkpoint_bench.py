"""Checkpoint cost of a real training state: save (async and sync) and restore times, size on
disk, and how long an async save blocks the training loop compared with copying the same
arrays off the devices. One JSON line. Example (GPT-2 124M, CPU, 8 host devices as (4, 2)):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
    python benchmarks/checkpoint_bench.py --config configs/gpt2_small.yaml --workdir /tmp/ckb \\
        model.dtype=float32 data.seq_len=128 train.batch_size=8 mesh.data=4 mesh.fsdp=2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import jax
import numpy as np

from bertgpt_jax.core.config import load_config
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.pretrained.workdir import restore_params
from bertgpt_jax.tasks import synthetic_batch
from bertgpt_jax.training.checkpoint import Checkpointer
from bertgpt_jax.training.step import Trainer


def _timed(fn, repeats: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _copy_shards(state) -> list[np.ndarray]:
    """What a save must copy off the devices: each distinct shard once (replica 0)."""
    shards = [s for a in jax.tree.leaves(state) for s in a.addressable_shards if s.replica_id == 0]
    for s in shards:
        s.data.copy_to_host_async()
    return [np.array(s.data) for s in shards]


def _saves(config, trainer: Trainer, state, workdir: Path) -> dict:
    out: dict = {"state_bytes": sum(a.nbytes for a in jax.tree.leaves(state))}
    out["copy_shards_s"], _ = _timed(lambda: _copy_shards(state))
    out["device_get_s"], _ = _timed(lambda: jax.device_get(state), repeats=1)  # then cached
    checkpointer = Checkpointer(workdir, config, trainer)
    blocked, committed = [], []
    for step in (1, 2, 3, 4):
        start = time.perf_counter()
        checkpointer.save(step, state, {}, force=True)
        blocked.append(checkpointer.blocked_s)  # the first includes one-time setup
        checkpointer.wait()
        committed.append(time.perf_counter() - start)
    checkpointer.close()
    out.update(async_save_blocked_s=blocked, async_save_committed_s=committed)
    size = subprocess.run(["du", "-sb", str(workdir / "checkpoints" / "4")], capture_output=True)
    out["checkpoint_bytes"] = int(size.stdout.split()[0])
    sync = config.replace(checkpoint=dataclasses.replace(config.checkpoint, async_save=False))
    checkpointer = Checkpointer(workdir, sync, trainer)
    start = time.perf_counter()
    checkpointer.save(5, state, {}, force=True)
    out["sync_save_s"] = time.perf_counter() - start
    checkpointer.close()
    return out


def _restores(config, trainer: Trainer, workdir: Path) -> dict:
    checkpointer = Checkpointer(workdir, config, trainer, read_only=True)
    out: dict = {}
    out["restore_s"], _ = _timed(lambda: jax.block_until_ready(checkpointer._restore_state(5)))
    checkpointer.close()
    out["restore_params_only_s"], _ = _timed(lambda: restore_params(workdir, 5))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    config = load_config(args.config, [*args.overrides, "checkpoint.keep=100"])
    trainer = Trainer(config, make_mesh(config.mesh))
    state = trainer.init(0)
    state, _ = trainer.train_step(state, trainer.device_batch(synthetic_batch(config)))
    jax.block_until_ready(state)  # moments are non-zero, as in a real run
    out: dict = {"devices": jax.device_count(), "mesh": dict(trainer.mesh.shape)}
    out.update(_saves(config, trainer, state, workdir))
    del state
    out.update(_restores(config, trainer, workdir))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
