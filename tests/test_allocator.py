"""The `bertgpt` command re-executes itself with tcmalloc preloaded (allocator.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertgpt_jax.perf import allocator

ROOT = Path(__file__).resolve().parent.parent


def test_preload_command_sets_ld_preload_and_keeps_the_command(tmp_path: Path) -> None:
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    env = {"BERTGPT_ALLOCATOR": str(library), "LD_PRELOAD": "/opt/other.so", "X": "1"}
    command, new_env = allocator.preload_command("bertgpt_jax.cli", ["bench", "--steps", "2"], env)
    assert command == [sys.executable, "-m", "bertgpt_jax.cli", "bench", "--steps", "2"]
    assert new_env["LD_PRELOAD"] == f"{library}:/opt/other.so"
    assert new_env["X"] == "1"
    # The re-executed process sees tcmalloc in LD_PRELOAD and goes on: no loop.
    assert allocator.preload_command("bertgpt_jax.cli", ["bench"], new_env) is None


def test_no_reexec_when_switched_off_or_missing(tmp_path: Path) -> None:
    assert allocator.preload_command("m", [], {"BERTGPT_ALLOCATOR": "system"}) is None
    missing = {"BERTGPT_ALLOCATOR": str(tmp_path / "nope.so")}
    assert allocator.preload_command("m", [], missing) is None


@pytest.mark.skipif(allocator.find_tcmalloc({}) is None, reason="no tcmalloc installed")
def test_cli_runs_on_tcmalloc_and_can_be_told_not_to() -> None:
    def bench_allocator(extra_env: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "XLA_FLAGS")}
        env.update(JAX_PLATFORMS="cpu", **extra_env)
        args = ["bench", "--config", "configs/gpt_tiny.yaml", "--steps", "1", "--warmup", "1"]
        out = subprocess.run(
            [sys.executable, "-m", "bertgpt_jax.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["allocator"]

    assert bench_allocator({}) == "tcmalloc"
    assert bench_allocator({"BERTGPT_ALLOCATOR": "system"}) == "system"
