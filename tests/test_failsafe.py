"""Fail safe: bad inputs and faults as a new user meets them, one table row each.

Every row runs the real command (`bertgpt_jax.cli.main`, in-process; two rows through a
subprocess, for the interpreter's own exit status and traceback) and asserts the exit status,
that the last line on stderr is the tool's one sentence naming the thing at fault, that no
traceback is printed, and that nothing changed on disk: neither the user's files nor the shared
store and workdirs, and no half-made output. Runs that do train (non-finite stop, skip, disk
full) have their own tests below: what they may write, and what they must not.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
from test_data_shared import default_store, default_tokenizer, store_of

from bertgpt_jax.cli import main
from bertgpt_jax.core.config import load_config
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.pretrained.workdir import restore_params
from bertgpt_jax.training.checkpoint import Checkpointer
from bertgpt_jax.training.step import Trainer

ROOT = Path(__file__).resolve().parent.parent
BERT = str(ROOT / "configs/bert_tiny.yaml")
SMALL = [
    "train.batch_size=8",
    "data.seq_len=32",
    "train.log_every=1",
    "checkpoint.every_steps=1",
    "checkpoint.async_save=false",
    "train.warmup_steps=0",
]
TEXT = "A first sentence of prose.\nAnd a second one, which follows it.\n\nA new document here.\n"


@dataclasses.dataclass
class Env:
    """What a row can point at: its own empty directory, and the shared, watched fixtures."""

    tmp: Path
    store: Path
    tokenizer: Path
    trained: Path  # a 2-step BERT workdir, checkpoints 1 and 2
    poisoned: Path  # the same plus a step 3 of NaN weights, as an unguarded version saved it

    def train(self, *overrides: str, workdir: str | Path | None = None) -> list[str]:
        run = str(workdir or self.tmp / "run")
        given = dict(o.split("=", 1) for o in [*SMALL, f"data.path={self.store}"])
        given.update(o.split("=", 1) for o in overrides if "=" in o)  # a row's own value wins
        bare = [o for o in overrides if "=" not in o]
        return ["train", "--config", BERT, "--workdir", run, *map("=".join, given.items()), *bare]

    def file(self, name: str, text: str = TEXT) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, self.tmp / name))


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
        code = main(argv)
    except SystemExit as err:  # argparse's usage errors
        code = int(err.code or 0)
    return code, capsys.readouterr().err


def _last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


# Rows build their inputs under env.tmp and return the command line.
Setup = Callable[[Env], list[str]]


def _yaml(text: str) -> Setup:
    return lambda env: ["train", "--config", str(env.file("c.yaml", text)), "--workdir",
                        str(env.tmp / "run")]  # fmt: skip


def _truncated_store(env: Env) -> list[str]:
    store = env.copy(env.store, "store")
    tokens = store / "train" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:100])
    return env.train(f"data.path={store}")


def _store_with_other_tokenizer_copy(env: Env) -> list[str]:
    store = env.copy(env.store, "store")
    (store / "tokenizer.model").write_bytes(_other_tokenizer(env) .joinpath("tokenizer.model")
                                            .read_bytes())  # fmt: skip
    return env.train(f"data.path={store}")


def _other_tokenizer(env: Env) -> Path:
    out = env.tmp / "other_tok"
    corpus = env.file("other.txt", "".join(f"word{i} and more text {i}\n" for i in range(300)))
    assert (
        main(["tokenizer", "--input", str(corpus), "--vocab-size", "80", "--output", str(out)]) == 0
    )
    return out


def _no_validation_store(env: Env) -> list[str]:
    store = store_of((("One sentence here.", "Another sentence."),) * 4, 0.0)
    return env.train(f"data.path={store}", "train.eval_every=1")


def _existing_tokenizer(env: Env) -> list[str]:
    out = env.copy(env.tokenizer, "tok")
    corpus = env.file("c.txt", "".join(f"word{i} and more text {i}\n" for i in range(300)))
    return ["tokenizer", "--input", str(corpus), "--vocab-size", "80", "--output", str(out)]


def _user_dir(env: Env, name: str = "mine") -> Path:
    env.file(f"{name}/notes.txt", "my own notes")
    return env.tmp / name


def _prepare(env: Env, output: Path, *extra: str) -> list[str]:
    corpus = env.file("corpus.txt")
    return ["prepare", "--input", str(corpus), "--tokenizer", str(env.tokenizer), "--output",
            str(output), *extra]  # fmt: skip


def _damaged_everywhere(env: Env) -> list[str]:
    work = env.copy(env.trained, "w")
    for step in (1, 2):
        victim = max((p for p in (work / "checkpoints" / str(step) / "state").rglob("*")
                      if p.is_file()), key=lambda p: p.stat().st_size)  # fmt: skip
        victim.write_bytes(b"garbage")
    return ["export", "--workdir", str(work), "--output", str(env.tmp / "hf")]


ROWS: list[tuple[str, str, Setup, int, str]] = [
    # group, name, setup, exit status, what the last line must say (a regular expression)
    (
        "config",
        "missing file",
        lambda e: ["train", "--config", str(e.tmp / "no.yaml"), "--workdir", str(e.tmp / "r")],
        2,
        "no.yaml' does not exist",
    ),  # fmt: skip
    ("config", "YAML is a list", _yaml("- model\n- train\n"), 2, "must be a mapping .* not a list"),
    ("config", "empty YAML", _yaml(""), 2, "c.yaml' is empty"),
    ("config", "invalid YAML", _yaml("model: [1,\n"), 2, "c.yaml' is not valid YAML"),
    (
        "config",
        "key given twice",
        _yaml("train:\n  steps: 1\n  steps: 2\n"),
        2,
        "'steps' is given twice",
    ),
    (
        "config",
        "config is a directory",
        lambda e: ["train", "--config", str(e.tmp), "--workdir", str(e.tmp / "r")],
        2,
        "is a directory",
    ),  # fmt: skip
    (
        "config",
        "unknown key",
        lambda e: e.train("train.stpes=3"),
        2,
        "unknown config key 'train.stpes'",
    ),
    (
        "config",
        "wrong type",
        lambda e: e.train("train.steps=abc"),
        2,
        "train.steps='abc' is not valid",
    ),
    (
        "config",
        "override without =",
        lambda e: e.train("train.steps"),
        2,
        "'train.steps' must look like",
    ),
    (
        "config",
        "negative learning rate",
        lambda e: e.train("train.learning_rate=-1e-3"),
        2,
        "train.learning_rate=-0.001 must be",
    ),
    (
        "config",
        "NaN learning rate",
        lambda e: e.train("train.learning_rate=.nan"),
        2,
        "train.learning_rate=nan must be",
    ),
    (
        "config",
        "learning rate beyond float32",
        lambda e: e.train("train.learning_rate=1e39"),
        2,
        "train.learning_rate=1e\\+39 must be",
    ),
    ("config", "b2 of 1", lambda e: e.train("train.b2=1.0"), 2, "train.b2=1.0 must lie in"),
    (
        "config",
        "heads do not divide width",
        lambda e: e.train("model.num_heads=5"),
        2,
        "model.hidden_size must be divisible",
    ),
    (
        "config",
        "seq_len beyond max_len",
        lambda e: e.train("data.seq_len=4096"),
        2,
        "data.seq_len must not exceed",
    ),
    (
        "mesh",
        "batch does not divide over 8 devices",
        lambda e: e.train("train.batch_size=12"),
        2,
        "train.batch_size=12 does not divide over the 8 batch shards",
    ),
    ("mesh", "mesh does not fit the devices", lambda e: e.train("mesh.data=3"), 2, "mesh"),
    ("mesh", "two -1 mesh axes", lambda e: e.train("mesh.fsdp=-1"), 2, "at most one of mesh"),
    (
        "mesh",
        "bench batch does not divide",
        lambda e: ["bench", "--config", BERT, "train.batch_size=4"],
        2,
        "train.batch_size=4",
    ),  # fmt: skip
    (
        "workdir",
        "workdir is a file",
        lambda e: e.train(workdir=e.file("run")),
        2,
        "--workdir .*run is a file",
    ),
    (
        "workdir",
        "workdir under a file",
        lambda e: e.train(workdir=e.file("f") / "run"),
        2,
        "cannot be created: .*f is a file",
    ),
    (
        "workdir",
        "read-only file system",
        lambda e: e.train(workdir="/proc/bertgpt-run"),
        2,
        "--workdir /proc/bertgpt-run cannot be written",
    ),
    (
        "workdir",
        "checkpoints is a file",
        lambda e: (e.file("run/checkpoints"), e.train())[1],
        2,
        "checkpoints is a file",
    ),
    (
        "workdir",
        "--step that was never saved",
        lambda e: [*e.train(workdir=e.trained), "--step", "9"],
        2,
        "no committed checkpoint at step 9",
    ),
    ("data", "data.path empty", lambda e: e.train("data.path="), 2, "data.path is empty"),
    (
        "data",
        "data.path missing",
        lambda e: e.train(f"data.path={e.tmp / 'nope'}"),
        2,
        "data.path=.*nope does not exist",
    ),
    (
        "data",
        "data.path is raw text",
        lambda e: e.train(f"data.path={e.file('t.txt')}"),
        2,
        "t.txt is a file, not a prepared store; .*--input .*t.txt",
    ),
    (
        "data",
        "data.path is a text folder",
        lambda e: (e.file("texts/a.txt"), e.train(f"data.path={e.tmp / 'texts'}"))[1],
        2,
        "texts is a directory but not a prepared store.*--output .*texts-store",
    ),
    (
        "store",
        "truncated store array",
        _truncated_store,
        2,
        "tokens.bin is missing or has the wrong size",
    ),
    (
        "store",
        "vocabulary larger than the model",
        lambda e: e.train("model.vocab_size=512"),
        2,
        "1024 pieces but model.vocab_size=512",
    ),
    (
        "store",
        "data.tokenizer is another",
        lambda e: e.train(f"data.tokenizer={_other_tokenizer(e)}"),
        2,
        "another tokenizer than data.tokenizer=",
    ),
    (
        "store",
        "store tokenizer copy replaced",
        _store_with_other_tokenizer_copy,
        2,
        "does not match its manifest",
    ),
    (
        "store",
        "no validation split for eval_every",
        _no_validation_store,
        2,
        "has no validation documents",
    ),
    (
        "tokenizer",
        "--output is a file",
        lambda e: [
            "tokenizer",
            "--input",
            str(e.file("c.txt")),
            "--vocab-size",
            "64",
            "--output",
            str(e.file("out")),
        ],
        2,
        "tokenizer --output .*out is a file",
    ),
    (
        "tokenizer",
        "existing tokenizer without --overwrite",
        _existing_tokenizer,
        2,
        "already holds a tokenizer; pass --overwrite",
    ),
    (
        "tokenizer",
        "foreign files even with --overwrite",
        lambda e: [
            "tokenizer",
            "--input",
            str(e.file("c.txt")),
            "--vocab-size",
            "64",
            "--overwrite",
            "--output",
            str(_user_dir(e)),
        ],
        2,
        "holds notes.txt, not a tokenizer written by",
    ),
    (
        "tokenizer",
        "vocabulary too small for the characters",
        lambda e: [
            "tokenizer",
            "--input",
            str(e.file("c.txt", TEXT * 3)),
            "--vocab-size",
            "20",
            "--output",
            str(e.tmp / "t"),
        ],
        2,
        "raise --vocab-size or lower --character-coverage",
    ),
    (
        "tokenizer",
        "vocabulary too large for the text",
        lambda e: [
            "tokenizer",
            "--input",
            str(e.file("c.txt")),
            "--vocab-size",
            "5000",
            "--output",
            str(e.tmp / "t"),
        ],
        2,
        "lower --vocab-size or give more text",
    ),
    (
        "tokenizer",
        "--from-model missing",
        lambda e: [
            "tokenizer",
            "--from-model",
            str(e.tmp / "x.model"),
            "--output",
            str(e.tmp / "t"),
        ],
        2,
        "x.model does not exist",
    ),
    (
        "prepare",
        "--overwrite over a folder that is not a store",
        lambda e: _prepare(e, _user_dir(e), "--overwrite"),
        2,
        "is not a prepared store: it holds notes.txt",
    ),
    (
        "prepare",
        "--output is a file",
        lambda e: _prepare(e, e.file("out")),
        2,
        "output .*out is a file",
    ),
    (
        "prepare",
        "another store without --overwrite",
        lambda e: _prepare(e, e.copy(e.store, "s")),
        2,
        "holds something else .*--overwrite",
    ),
    (
        "prepare",
        "--input missing",
        lambda e: [
            "prepare",
            "--input",
            str(e.tmp / "none.txt"),
            "--tokenizer",
            str(e.tokenizer),
            "--output",
            str(e.tmp / "s"),
        ],
        2,
        "none.txt",
    ),
    (
        "checkpoints",
        "export of non-finite weights",
        lambda e: ["export", "--workdir", str(e.poisoned), "--output", str(e.tmp / "hf")],
        2,
        "checkpoint step 3 .* holds non-finite weights .*--step",
    ),
    (
        "checkpoints",
        "resume from a non-finite step",
        lambda e: [*e.train("train.steps=4", workdir=e.poisoned), "--step", "3"],
        2,
        "checkpoint step 3 .* cannot be read .*non-finite",
    ),
    (
        "checkpoints",
        "all checkpoints damaged",
        _damaged_everywhere,
        2,
        "none of the checkpoints in .* can be read",
    ),
    (
        "checkpoints",
        "resume with another architecture",
        lambda e: e.train("model.hidden_size=128", workdir=e.trained),
        2,
        "different model: model.hidden_size",
    ),
    (
        "checkpoints",
        "export into a non-empty folder",
        lambda e: ["export", "--workdir", str(e.trained), "--output", str(_user_dir(e))],
        2,
        "mine already exists and is not empty",
    ),
    (
        "checkpoints",
        "export --step never saved",
        lambda e: [
            "export",
            "--workdir",
            str(e.trained),
            "--step",
            "99",
            "--output",
            str(e.tmp / "hf"),
        ],
        2,
        "no committed checkpoint at step 99",
    ),
    (
        "cli",
        "eval of a missing workdir",
        lambda e: ["eval", "--workdir", str(e.tmp / "gone")],
        2,
        "--workdir .*gone does not exist; pass the --workdir of a `bertgpt train` run",
    ),
    (
        "cli",
        "eval of a folder that is no workdir",
        lambda e: ["eval", "--workdir", str(_user_dir(e))],
        2,
        "mine has no config.yaml",
    ),
    (
        "cli",
        "export of a missing workdir",
        lambda e: ["export", "--workdir", str(e.tmp / "gone"), "--output", str(e.tmp / "hf")],
        2,
        "workdir .*gone does not exist",
    ),
    ("cli", "unknown command", lambda e: ["trian"], 2, "invalid choice: 'trian'"),
    (
        "prepare",
        "--output on a read-only file system",
        lambda e: _prepare(e, Path("/proc/bertgpt-store")),
        2,
        "prepare --output /proc/bertgpt-store cannot be written",
    ),
    (
        "tokenizer",
        "--output on a read-only file system",
        lambda e: [
            "tokenizer",
            "--input",
            str(e.file("c.txt")),
            "--vocab-size",
            "64",
            "--output",
            "/proc/bertgpt-tok",
        ],  # fmt: skip
        2,
        "tokenizer --output /proc/bertgpt-tok cannot be written",
    ),
    (
        "checkpoints",
        "export --output under a file",
        lambda e: ["export", "--workdir", str(e.trained), "--output", str(e.file("f") / "hf")],
        2,
        "export --output .*hf cannot be created: .*f is a file",
    ),
]


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
    status, err = _run([str(a) for a in argv], capsys)
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
    trainer = Trainer(config, make_mesh(config.mesh.__class__(1, 1, 1), jax.devices()[:1]))
    state = trainer.init(0)
    opt = state.opt_state
    huge = jax.tree.map(lambda m: m + np.float32(1e38), opt.mu)
    state = state.replace(opt_state=opt._replace(mu=huge, updates=opt.updates + 5))
    before = jax.device_get((state.params, state.opt_state))
    from bertgpt_jax.tasks import synthetic_batch

    state, metrics = trainer.train_step(state, trainer.device_batch(synthetic_batch(config)))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["finite"]) == 0.0
    after = jax.device_get((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not trainer.state_is_finite(state.replace(params=jax.tree.map(lambda p: p * np.nan,
                                                                         state.params)))  # fmt: skip


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
    victim = max((p for p in (work / "checkpoints" / "2" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)  # fmt: skip
    victim.write_bytes(victim.read_bytes()[:64])
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
    status, err = _run(_prepare(env, tmp_path / "store"), capsys)
    assert status == 0, err
    assert not stale.exists() and live.exists() and foreign.exists()
    assert (tmp_path / "store" / "manifest.json").is_file()


def test_tokenizer_overwrite_replaces_only_its_own(shared, tmp_path, capsys):
    env = Env(tmp_path, **shared)
    argv = _existing_tokenizer(env)
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
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert says in _last_line(run.stderr) and _last_line(run.stderr).startswith("bertgpt train")
    assert sorted(os.listdir(tmp_path)) == ["list.yaml"]


def test_a_killed_tokenizer_write_does_not_block_the_next_run(tmp_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    (out / f".tokenizer.model.tmp-{_dead_pid()}").write_bytes(b"half a model")
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"word{i} and more text {i}\n" for i in range(300)))
    argv = ["tokenizer", "--input", str(corpus), "--vocab-size", "80", "--output", str(out)]
    status, err = _run(argv, capsys)
    assert status == 0, err
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer.model"]
