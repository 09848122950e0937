"""Resume end to end, in real `bertgpt train` subprocesses: kill -9 and SIGTERM at random steps
give bitwise the losses and weights of an uninterrupted run; two processes agree on the step to
save at when one is preempted, and their checkpoint resumes in one process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_data_shared import default_store

from bertgpt_jax.pretrained.export import export
from bertgpt_jax.pretrained.workdir import CHECKPOINTS

ROOT = Path(__file__).resolve().parent.parent
STEPS = 24
# Dropout stays on: the resumed run must also reproduce the per-step dropout keys.
TINY = [
    f"train.steps={STEPS}",
    "train.batch_size=8",
    "train.warmup_steps=4",
    "train.log_every=1",
    "data.seq_len=32",
    "mesh.data=-1",
]
# Everything in a metrics row that is a function of the computation (not of the clock).
EXACT = ("loss", "lm_loss", "perplexity", "grad_norm", "learning_rate")


def _command(workdir: Path, *extra: str, every: int = 4) -> list[str]:
    return [
        sys.executable, "-m", "bertgpt_jax.cli", "train", "--config",
        str(ROOT / "configs/gpt_tiny.yaml"), "--workdir", str(workdir),
        f"data.path={default_store()}", f"checkpoint.every_steps={every}", *TINY, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A persistent XLA compilation cache shared by the subprocesses: a process that finds its
    programs there starts in a few seconds instead of 20 (the executables are the same)."""
    return tmp_path_factory.mktemp("xla_cache")


def _env(devices: int, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTGPT_")}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    return env


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("w")
    return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def _rows(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):  # a line being written
            rows.append(json.loads(line))
    return rows


def _inode(workdir: Path) -> int | None:
    path = workdir / "metrics.jsonl"
    return path.stat().st_ino if path.exists() else None


def _wait_for_step(
    proc: subprocess.Popen, workdir: Path, step: int, log: Path, old: int | None = None
) -> None:
    """Until this process has logged `step`. A restarted run first rewrites metrics.jsonl (a
    new file, not inode `old`), so rows left by the run before it do not count."""
    deadline = time.monotonic() + 120
    while _inode(workdir) in (None, old) or not any(r["step"] >= step for r in _rows(workdir)):
        assert proc.poll() is None, f"training ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no step {step} in time:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    proc.wait(timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def _train_rows(workdir: Path) -> list[dict]:
    return [r for r in _rows(workdir) if "loss" in r]


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / CHECKPOINTS).iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Iterator[Callable[[], Path]]:
    """The uninterrupted run (2 devices), started at once; call the result to wait for it."""
    workdir = tmp_path_factory.mktemp("reference")
    log = workdir.parent / f"{workdir.name}.log"
    proc = _start(_command(workdir / "run"), _env(2, cache), log)

    def done() -> Path:
        if proc.returncode is None:
            _finish(proc, log)
        return workdir / "run"

    yield done
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_killed_and_preempted_runs_resume_bitwise(tmp_path, cache, reference):
    resumed = tmp_path / "resumed"
    rng = np.random.default_rng(5)
    first = int(rng.integers(2, 8))  # mid-interval: the run must go back to a checkpoint
    second = int(rng.integers(first + 3, 14))
    plan = [(first, signal.SIGKILL), (second, signal.SIGKILL)]
    plan.append((int(rng.integers(second + 3, 20)), signal.SIGTERM))
    starts = []
    for number, (at, sig) in enumerate(plan):
        starts.append(max([r["step"] for r in _train_rows(resumed)], default=0))
        log, old = tmp_path / f"segment{number}.log", _inode(resumed)
        proc = _start(_command(resumed, "checkpoint.async_save=true"), _env(2, cache), log)
        _wait_for_step(proc, resumed, at, log, old)
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=60)
            continue
        text = _finish(proc, log, timeout=60)
        stopped = max(r["step"] for r in _train_rows(resumed))
        assert f"Preempted: saved a committed checkpoint at step {stopped}" in text
        assert stopped < STEPS and _steps(resumed)[-1] == stopped  # committed, at that step
    log = tmp_path / "final.log"
    _finish(_start(_command(resumed), _env(2, cache), log), log)

    rows, expected = _train_rows(resumed), _train_rows(reference())
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})  # no step twice
    assert set(range(1, STEPS + 1)) <= {r["step"] for r in expected}
    by_step = {r["step"]: r for r in rows}
    for row in expected:
        got = {k: by_step[row["step"]][k] for k in EXACT}
        assert got == {k: row[k] for k in EXACT}, (row["step"], starts, _steps(resumed), got, row)
    weights = [load_file(export(w, tmp_path / f"{w.name}_hf") / "model.safetensors") for w in
               (reference(), resumed)]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_array_equal(weights[1][name], weights[0][name], err_msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_on_preemption_and_resume_in_one(tmp_path, cache, reference):
    workdir = tmp_path / "run"
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {**_env(2, cache), "BERTGPT_LOCAL_DEVICES": "2"}
    procs, logs = [], []
    for i in range(2):
        logs.append(tmp_path / f"process{i}.log")
        flags = ["--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)]
        command = _command(workdir, every=100) + flags
        procs.append(_start(command, env, logs[-1]))
    _wait_for_step(procs[0], workdir, 3, logs[0])
    procs[1].send_signal(signal.SIGTERM)  # only one process is told
    texts = [_finish(p, log, timeout=120) for p, log in zip(procs, logs, strict=True)]
    stopped = max(r["step"] for r in _train_rows(workdir))
    assert stopped < STEPS
    assert f"Preempted: saved a committed checkpoint at step {stopped}" in texts[0]
    assert _steps(workdir) == [stopped]
    meta = json.loads((workdir / CHECKPOINTS / str(stopped) / "metadata" / "metadata").read_text())
    assert meta["process_count"] == 2 and meta["device_count"] == 4

    log = tmp_path / "single.log"
    _finish(_start(_command(workdir), _env(4, cache), log), log)  # 1 process, 4 devices
    rows = _train_rows(workdir)
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    assert _steps(workdir)[-1] == STEPS
    # Another process and device count sums in another order: equal to float32 rounding.
    expected = {r["step"]: r["loss"] for r in _train_rows(reference())}
    np.testing.assert_allclose([r["loss"] for r in rows], [expected[r["step"]] for r in rows],
                               rtol=1e-5)  # fmt: skip
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
