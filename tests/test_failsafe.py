"""Fail safe: every row of tests/failsafe_table.py (bad inputs and faults as a new user meets
them) runs the real command in-process (`bertgpt_jax.cli.main`) and must exit with its status,
end stderr with the tool's one sentence naming the thing at fault, print no traceback, and change
nothing on disk: neither the user's files nor the shared store and workdirs, and no half-made
output. Runs that do train or write (non-finite stop, skip, disk full, fall-back, stale partial
outputs, --overwrite, a disk that fills during an async checkpoint) have their own tests below,
saying what they may write and what not; some run through a subprocess for the interpreter's own
exit status.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from failsafe_table import (
    BERT,
    ROWS,
    SMALL,
    WORDS,
    Env,
    damage,
    existing_tokenizer,
)
from test_data_shared import default_store, default_tokenizer

from bertgpt_jax.cli import main
from bertgpt_jax.core.config import MeshConfig, load_config
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.pretrained.workdir import restore_params
from bertgpt_jax.tasks import synthetic_batch
from bertgpt_jax.training.checkpoint import Checkpointer
from bertgpt_jax.training.step import Trainer


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots` with its kind, size and modification time."""
    out = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            if path.exists():
                stat = path.lstat()
                out[str(path)] = (path.is_dir(), 0 if path.is_dir() else stat.st_size,
                                  0 if path.is_dir() else stat.st_mtime_ns)  # fmt: skip
    return out


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as err:  # argparse's usage errors
        code = int(err.code or 0)
    return code, capsys.readouterr().err


def _last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """The shared store, a trained 2-step workdir, and a copy with a NaN step 3 appended."""
    root = tmp_path_factory.mktemp("failsafe")
    store, tokenizer = default_store(), default_tokenizer()
    trained = root / "trained"
    argv = ["train", "--config", BERT, "--workdir", str(trained), *SMALL, f"data.path={store}",
            "train.steps=2"]  # fmt: skip
    assert main(argv) == 0
    poisoned = Path(shutil.copytree(trained, root / "poisoned"))
    config = load_config(trained / "config.yaml", ["train.steps=3"])
    trainer = Trainer(config, make_mesh(config.mesh))
    checkpointer = Checkpointer(poisoned, config, trainer)
    state = checkpointer.restore()
    nan = jax.tree.map(lambda x: x * np.nan, state.params)
    trainer.state_is_finite = lambda _: True  # type: ignore[method-assign]  # as before the guard
    checkpointer.save(3, state.replace(params=nan), {}, force=True)
    checkpointer.close()
    return {"store": store, "tokenizer": tokenizer, "trained": trained, "poisoned": poisoned}


@pytest.mark.parametrize("group,name,setup,code,says", ROWS, ids=[f"{r[0]}: {r[1]}" for r in ROWS])
def test_bad_input_or_fault(group, name, setup, code, says, shared, tmp_path, capsys):
    env = Env(tmp_path / "case", **shared)
    env.tmp.mkdir()
    argv = setup(env)
    watched = [env.tmp, *shared.values()]
    before = _snapshot(*watched)
    status, err = _run(argv, capsys)
    assert status == code, err
    assert "Traceback" not in err and "Event loop is closed" not in err, err
    last = _last_line(err)
    assert last.startswith("bertgpt") and " error: " in last, err
    assert re.search(says, last), last
    assert _snapshot(*watched) == before  # nothing made, changed or deleted


def test_table_covers_every_group():
    groups = {row[0] for row in ROWS}
    assert len(ROWS) >= 40
    assert groups >= {"config", "mesh", "workdir", "data", "store", "tokenizer", "prepare",
                      "checkpoints", "cli"}  # fmt: skip


def _strict_json(line: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_stop_saves_nothing_non_finite(shared, tmp_path, capsys):
    """The issue's poisoned run: a learning rate so large that step 1 leaves weights near the
    float32 limit and step 2 overflows. Exit 1 in one sentence; every saved step is finite."""
    env = Env(tmp_path, **shared)
    before = _snapshot(*shared.values())
    argv = env.train("train.learning_rate=1e38", "train.steps=3")
    status, err = _run(argv, capsys)
    assert status == 1 and "Traceback" not in err, err
    assert re.search(r"^bertgpt train: error: step 2 produced a non-finite loss .* lower "
                     r"train.learning_rate", _last_line(err))  # fmt: skip
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == [1]  # step 2 never reached the state, so it was never saved
    for step in steps:
        _, _, params, _ = restore_params(tmp_path / "run", step)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [_strict_json(r)["step"] for r in rows] == [1]
    assert _snapshot(*shared.values()) == before


def test_skip_policy_counts_warns_and_writes_strict_json(shared, tmp_path, capsys):
    env = Env(tmp_path, **shared)
    argv = env.train("train.learning_rate=1e38", "train.steps=6", "train.nan_policy=skip")
    status, err = _run(argv, capsys)
    assert status == 0 and "Traceback" not in err, err
    rows = [_strict_json(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[-1]["loss"] is None  # NaN, written as JSON null
    assert "warning: train.nan_policy=skip has skipped 2 of the 3 steps run" in err
    assert "skipped=5" in err  # the progress bar
    assert "train.nan_policy=skip skipped 5 of 6 steps." in err
    # The skipped steps never reached the weights: the checkpoint at step 6 is finite.
    _, step, params, meta = restore_params(tmp_path / "run")
    assert step == 6 and meta["metrics"]["skipped_steps"] == 5
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_an_update_that_overflows_is_not_applied():
    """Finite loss and gradients, but moments that make the update overflow: the step guard
    keeps parameters and moments as they were and reports the step as not finite."""
    config = load_config(BERT, ["model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"])
    trainer = Trainer(config, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    state = trainer.init(0)
    opt = state.opt_state
    huge = jax.tree.map(lambda m: m + np.float32(1e38), opt.mu)
    edited = state.replace(opt_state=opt._replace(mu=huge, updates=opt.updates + 5))
    state = trainer.restored(trainer.saved(edited))  # as a checkpoint holding it would be
    before = jax.device_get((state.params, state.opt_state))
    state, metrics = trainer.train_step(state, trainer.device_batch(synthetic_batch(config)))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["finite"]) == 0.0
    after = jax.device_get((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    poisoned = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
    assert not trainer.state_is_finite(poisoned)


def test_disk_full_is_one_sentence_with_status_1(shared, tmp_path, capsys, monkeypatch):
    from bertgpt_jax.core import fs

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fs, "write_text", full)
    status, err = _run(Env(tmp_path, **shared).train(), capsys)
    assert status == 1 and "Traceback" not in err, err
    assert re.search(r"^bertgpt train: error: the disk is full \(writing .*config.yaml\); free "
                     r"space", _last_line(err))  # fmt: skip


def test_fall_back_from_a_damaged_newest_step_is_one_warning(shared, tmp_path, capsys):
    work = Path(shutil.copytree(shared["trained"], tmp_path / "w"))
    damage(work / "checkpoints" / "2")
    status, err = _run(["export", "--workdir", str(work), "--output", str(tmp_path / "hf")], capsys)
    assert status == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"warning: checkpoint step 2 .* cannot be read .* falling "
                                        r"back", lines[0]), err  # fmt: skip
    assert "README.md" in os.listdir(tmp_path / "hf")


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid += 1


def test_partial_outputs_of_a_killed_run_are_cleaned_and_nothing_else(shared, tmp_path, capsys):
    env = Env(tmp_path, **shared)
    stale = tmp_path / f".store.partial-{_dead_pid()}-0123abcd"
    live = tmp_path / f".store.partial-{os.getppid()}-0123abcd"  # a running process's
    foreign = tmp_path / ".store.partial-mine"
    for path in (stale, live, foreign):
        (path / "train").mkdir(parents=True)
    status, err = _run(env.prepare(tmp_path / "store"), capsys)
    assert status == 0, err
    assert not stale.exists() and live.exists() and foreign.exists()
    assert (tmp_path / "store" / "manifest.json").is_file()


def test_tokenizer_overwrite_replaces_only_its_own(shared, tmp_path, capsys):
    env = Env(tmp_path, **shared)
    argv = existing_tokenizer(env)
    old = (tmp_path / "tok" / "tokenizer.model").read_bytes()
    assert _run([*argv, "--overwrite"], capsys)[0] == 0
    assert (tmp_path / "tok" / "tokenizer.model").read_bytes() != old
    assert _run(argv, capsys)[0] == 0  # the same tokenizer again: a no-op, no --overwrite needed


@pytest.mark.parametrize(
    "args,says",
    [
        (["train", "--config", "{tmp}/list.yaml", "--workdir", "{tmp}/run"], "not a list"),
        (["train", "--config", BERT, "--workdir", "/proc/bertgpt-run"], "cannot be written"),
    ],
)
def test_the_real_command_exits_without_a_traceback(args, says, tmp_path):
    (tmp_path / "list.yaml").write_text("- model\n")
    argv = [a.format(tmp=tmp_path) for a in args]
    run = subprocess.run([sys.executable, "-m", "bertgpt_jax.cli", *argv], capture_output=True,
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                         timeout=120)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert says in _last_line(run.stderr) and _last_line(run.stderr).startswith("bertgpt train")
    assert sorted(os.listdir(tmp_path)) == ["list.yaml"]


def test_a_host_without_tpu_chips_hears_nothing_from_libtpu(tmp_path):
    """With the [tpu] extra installed (as the test extra has it) and JAX_PLATFORMS unset, a
    command that starts JAX on this CPU host prints its one sentence and no libtpu warnings."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    argv = ["bench", "--config", BERT, "--steps", "1", "mesh.data=2"]
    run = subprocess.run([sys.executable, "-m", "bertgpt_jax.cli", *argv], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert [line for line in run.stderr.splitlines() if line.strip()] == [_last_line(run.stderr)], (
        run.stderr
    )
    assert "uses 2 devices but 1 are present" in run.stderr


def test_a_killed_tokenizer_write_does_not_block_the_next_run(tmp_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    (out / f".tokenizer.model.tmp-{_dead_pid()}").write_bytes(b"half a model")
    corpus = tmp_path / "c.txt"
    corpus.write_text(WORDS)
    argv = ["tokenizer", "--input", str(corpus), "--vocab-size", "80", "--output", str(out)]
    status, err = _run(argv, capsys)
    assert status == 0, err
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer.model"]


def test_event_loop_noise_is_dropped_and_other_errors_are_not(caplog, capsys):
    from bertgpt_jax.cli import failures

    class Unraisable:
        exc_value = RuntimeError("Event loop is closed")
        exc_type, exc_traceback, err_msg, object = RuntimeError, None, None, None

    failures.drop_event_loop_noise(Unraisable())
    assert capsys.readouterr().err == ""
    log = logging.getLogger("asyncio")
    try:
        raise RuntimeError("Event loop is closed")
    except RuntimeError:
        log.error("Task exception was never retrieved", exc_info=True)
    log.error("a real asyncio error")
    assert [r.getMessage() for r in caplog.records] == ["a real asyncio error"]


def test_damaged_checkpoints_through_the_real_command_are_quiet(shared, tmp_path):
    """TensorStore's event loops, collected after a failed read, used to print 'Event loop is
    closed' tracebacks by the dozen; the command prints one warning per step and its sentence."""
    work = Path(shutil.copytree(shared["trained"], tmp_path / "w"))
    for step in (1, 2):
        damage(work / "checkpoints" / str(step))
    argv = ["export", "--workdir", str(work), "--output", str(tmp_path / "hf")]
    run = subprocess.run([sys.executable, "-m", "bertgpt_jax.cli", *argv], capture_output=True,
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                         timeout=120)  # fmt: skip
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert [line.split(" in ")[0] for line in lines[:-1]] == [
        "warning: checkpoint step 2",
        "warning: checkpoint step 1",
    ], run.stderr
    assert re.match(r"bertgpt export: error: none of the checkpoints in .* can be read", lines[-1])


# TensorStore's error when an async checkpoint write meets a full disk (seen on a 2 MiB tmpfs).
_TENSORSTORE_FULL = (
    'RESOURCE_EXHAUSTED: Error writing "opt_state.mu.core.embeddings.position/0.0" in OCDBT '
    'database at local file "/w/checkpoints/2.orbax-checkpoint-tmp/state/": Failed to write '
    "232337 bytes to file 9: No space left on device [os_error_code='28']"
)


def test_disk_errors_are_found_inside_other_libraries_errors(caplog):
    from bertgpt_jax.cli import failures  # noqa: F401  (installs the log filters)
    from bertgpt_jax.core import fs

    found = fs.disk_error(ValueError(_TENSORSTORE_FULL), "/w/checkpoints")
    assert found is not None and (found.errno, found.filename) == (errno.ENOSPC, "/w/checkpoints")
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/w/x")
    try:
        raise RuntimeError("commit failed") from read_only
    except RuntimeError as err:
        assert fs.disk_error(err, "/w") is read_only
    assert fs.disk_error(ValueError("Error reading: truncated stream"), "/w") is None
    log = logging.getLogger("absl")  # where Orbax logs a failed async save, traceback and all
    for error in (ValueError(_TENSORSTORE_FULL), ValueError("another failure")):
        try:
            raise error
        except ValueError:
            log.exception("Save Finalize thread failed.")
    assert [r.exc_info[1] for r in caplog.records] == [error]


def test_a_disk_that_fills_during_an_async_checkpoint_is_one_sentence(shared, tmp_path):
    """The real thing, where this host lets us mount a 2 MiB tmpfs: the first checkpoint does
    not fit. One sentence and status 1 (Orbax logged three tracebacks, ~1,000 lines); after space
    is freed the same command runs to the end, and Orbax removes the uncommitted step."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        argv = [*Env(tmp_path, **shared).train("train.steps=4", "checkpoint.every_steps=2",
                                               workdir=disk / "run")]  # fmt: skip
        command = [sys.executable, "-m", "bertgpt_jax.cli", *argv]
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert _last_line(run.stderr).startswith(
            f"bertgpt train: error: the disk is full (writing {disk / 'run' / 'checkpoints'});"
        ), run.stderr
        assert [ln for ln in run.stderr.splitlines() if ln.strip() and "%|" not in ln] == [
            _last_line(run.stderr)
        ], run.stderr
        subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr
        assert sorted(os.listdir(disk / "run" / "checkpoints")) == ["2", "4"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
