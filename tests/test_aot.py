"""`bertgpt compile`: topology parsing, and a real ahead-of-time compile of the sharded train step
for a TPU topology on this CPU-only machine (libtpu describes the chips; nothing runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from bertgpt_jax.core.config import load_config
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.perf.aot import format_report, parse_topology
from bertgpt_jax.training.step import Trainer

REPO = Path(__file__).resolve().parent.parent


def _compile(*args: str) -> subprocess.CompletedProcess:
    # A fresh process: libtpu is loaded there only, and its first-use environment is its own.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "bertgpt_jax.cli", "compile", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_parse_topology():
    topo = parse_topology("v5p:2x2x1")
    assert (topo.generation, topo.chips, topo.hbm_bytes) == ("v5p", 4, 95 * 2**30)
    assert parse_topology("v6e:2x2").chips == 4 and parse_topology("v4:2x2x2").chips == 8
    for bad in ("v5p-8", "v5p", "v5p:2", "tpu:2x2", "v9:2x2", "v5p:2x2x"):
        with pytest.raises(ConfigError):
            parse_topology(bad)


def test_bad_topology_is_one_sentence():
    done = _compile("--config", "configs/bert_tiny.yaml", "--topology", "v5p-8")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "GENERATION:AxB" in done.stderr


@pytest.mark.slow
def test_compiles_the_sharded_train_step_for_a_tpu_topology():
    config = "configs/bert_tiny.yaml"
    done = _compile("--config", config, "--topology", "v5p:2x2x1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["device_kind"].startswith("TPU v5") and report["chips"] == 4
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and report["fits"] is True
    # Data parallelism replicates the state on every chip: the arguments hold all of it.
    trainer = Trainer(load_config(config), make_mesh(load_config(config).mesh, jax.devices()[:1]))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state))
    assert report["argument_bytes"] >= state_bytes
    assert report["alias_bytes"] >= 0.9 * state_bytes  # the donated state is updated in place
    assert report["peak_bytes"] >= report["argument_bytes"] + report["temp_bytes"]
    assert report["peak_bytes"] < report["hbm_bytes"]
    assert report["model_flops_per_chip"] * 4 == pytest.approx(report["model_flops_per_step"])
    assert "xla_flops_per_chip" not in report  # scanned layers: XLA's count would be wrong
    text = format_report(report, config)
    assert "fits" in text and "yes" in text and "v5p:2x2x1" in text


@pytest.mark.slow
def test_a_step_that_does_not_fit_exits_1_and_says_why():
    # 131072 rows of 64 tokens on 4 chips of 16 GiB: XLA's buffer assignment needs ~46 GiB.
    done = _compile(
        "--config", "configs/bert_tiny.yaml", "--topology", "v5e:2x2", "train.batch_size=131072"
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "fits                  NO: XLA ran out of memory" in done.stdout
    assert "RESOURCE_EXHAUSTED" in done.stdout
