"""Checkpoints in-process: exact round trips across meshes and device counts, then training
on; fall-back from a corrupt newest step; uncommitted steps ignored; refused architecture and
tokenizer changes; recorded deliberate changes; retention; metrics.jsonl de-duplication."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bertgpt_jax.core.config import MeshConfig, load_config
from bertgpt_jax.core.errors import CheckpointError
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.pretrained.workdir import CHECKPOINTS
from bertgpt_jax.tasks import synthetic_batch
from bertgpt_jax.training.checkpoint import SET_ASIDE, Checkpointer
from bertgpt_jax.training.loop import _trim_metrics
from bertgpt_jax.training.step import Trainer

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["train.batch_size=8", "data.seq_len=32", "checkpoint.async_save=false"]


def _config(*overrides: str, name: str = "gpt_tiny"):
    return load_config(ROOT / f"configs/{name}.yaml", [*SMALL, *overrides])


def _trainer(config, mesh: tuple[int, int, int], devices: int = 8) -> Trainer:
    return Trainer(config, make_mesh(MeshConfig(*mesh), jax.devices()[:devices]))


def _train(trainer: Trainer, state, steps: int, seed: int = 0):
    losses = []
    for i in range(steps):
        batch = synthetic_batch(trainer.config, seed=seed + i)
        state, metrics = trainer.train_step(state, trainer.device_batch(batch))
        losses.append(float(metrics["loss"]))
    return state, losses


def _assert_equal(restored, original) -> None:
    """Every array a checkpoint holds, bit for bit; AdamW's carried bounds, which it does not
    hold, are measured from the restored arrays."""
    arrays = (restored.params, restored.opt_state.mu, restored.opt_state.nu)
    peak = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(arrays))
    np.testing.assert_array_equal(np.asarray(restored.opt_state.bounds), [peak] * 3)
    a, b = (s.replace(opt_state=s.opt_state._replace(bounds=None)) for s in (restored, original))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workdir with a (4, 2)-mesh checkpoint at step 3, the state, and 2 more steps' losses."""
    workdir = tmp_path_factory.mktemp("saved")
    config = _config("mesh.data=4", "mesh.fsdp=2")
    trainer = _trainer(config, (4, 2, 1))
    state, _ = _train(trainer, trainer.init(0), 3)
    checkpointer = Checkpointer(workdir, config, trainer)
    checkpointer.save(3, state, {"loss": 1.0}, force=True)
    checkpointer.close()
    host = jax.device_get(state)
    _, losses = _train(trainer, state, 2, seed=3)
    return workdir, host, losses


@pytest.mark.parametrize("mesh,devices", [((2, 2, 1), 4), ((2, 4, 1), 8)])
def test_restore_on_another_mesh_and_train_on(saved, mesh, devices):
    workdir, host, losses = saved
    config = _config(f"mesh.data={mesh[0]}", f"mesh.fsdp={mesh[1]}")
    trainer = _trainer(config, mesh, devices)
    checkpointer = Checkpointer(workdir, config, trainer)
    state = checkpointer.restore()
    checkpointer.close()
    _assert_equal(state, host)  # every array, bit for bit
    kernel = state.params["core"]["layers"]["mlp"]["wi"]["kernel"]
    assert kernel.sharding == trainer.param_shardings["core"]["layers"]["mlp"]["wi"]["kernel"]
    assert len(kernel.sharding.device_set) == devices
    _, resumed = _train(trainer, state, 2, seed=3)
    np.testing.assert_allclose(resumed, losses, rtol=2e-6)


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    """One trainer (one compiled init, one compiled step) for the tests below."""
    trainer = _trainer(_config("mesh.data=8"), (8, 1, 1))
    initial = jax.device_get(trainer.init(0))
    trainer.init = lambda seed: jax.device_put(initial, trainer.state_shardings)  # type: ignore
    return trainer


def _workdir_with_steps(tmp_path: Path, steps: int, trainer: Trainer):
    config = trainer.config
    checkpointer = Checkpointer(tmp_path, config, trainer)
    state, states = trainer.init(0), {}
    for step in range(1, steps + 1):
        state, _ = _train(trainer, state, 1, seed=step)
        checkpointer.save(step, state, {"loss": float(step)}, force=True)
        states[step] = jax.device_get(state)
    checkpointer.close()
    return config, trainer, states


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_newest_falls_back_with_a_warning(tmp_path, damage, trainer):
    config, _, states = _workdir_with_steps(tmp_path, 2, trainer)
    victim = _largest_file(tmp_path / CHECKPOINTS / "2" / "state")
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim.unlink()
    checkpointer = Checkpointer(tmp_path, config, trainer)
    with pytest.warns(UserWarning, match="checkpoint step 2 .* cannot be read"):
        state = checkpointer.restore()
    _assert_equal(state, states[1])
    # The damaged step is moved away, so the resumed run can save step 2 again.
    assert checkpointer.manager.all_steps() == [1]
    assert [p.name for p in (tmp_path / SET_ASIDE).glob("*/*")] == ["2"]
    checkpointer.save(2, state, {}, force=True)
    checkpointer.close()
    with pytest.raises(CheckpointError, match="no committed checkpoint at step 7"):
        Checkpointer(tmp_path, config, trainer).restore(7)


def test_uncommitted_step_is_never_restored(tmp_path, trainer):
    config, _, states = _workdir_with_steps(tmp_path, 2, trainer)
    directory = tmp_path / CHECKPOINTS
    # What a save killed before its commit leaves: a temporary directory, not renamed.
    shutil.copytree(directory / "2", directory / "3.orbax-checkpoint-tmp-1700000000")
    checkpointer = Checkpointer(tmp_path, config, trainer)
    assert checkpointer.manager.all_steps() == [1, 2]
    _assert_equal(checkpointer.restore(), states[2])
    checkpointer.close()


def test_architecture_change_is_refused_and_train_changes_recorded(tmp_path, trainer):
    config, _, _ = _workdir_with_steps(tmp_path, 1, trainer)
    other = _config("mesh.data=8", "model.num_heads=2", "model.mlp_dim=128")
    with pytest.raises(CheckpointError) as err:
        Checkpointer(tmp_path, other, _trainer(other, (8, 1, 1))).restore()
    message = str(err.value)
    assert "model.mlp_dim (256 there, 128 here), model.num_heads (4 there, 2 here)" in message
    assert "\n" not in message
    changed = _config("mesh.data=8", "train.learning_rate=5e-4", "model.dropout_rate=0.0")
    checkpointer = Checkpointer(tmp_path, changed, _trainer(changed, (8, 1, 1)))
    state = checkpointer.restore()
    checkpointer.save(2, state, {}, force=True)
    checkpointer.close()
    meta = json.loads((tmp_path / CHECKPOINTS / "2" / "metadata" / "metadata").read_text())
    assert meta["config_changes"] == [
        {
            "resumed_at_step": 1,
            "changes": {"model.dropout_rate": [0.1, 0.0], "train.learning_rate": [1e-3, 5e-4]},
        }
    ]
    assert meta["config"]["train"]["learning_rate"] == 5e-4


class _NoSecondMoment(NamedTuple):
    updates: Any
    mu: Any


def test_a_checkpoint_lacking_arrays_is_not_restored(tmp_path, trainer):
    """Restores read only what this run's state needs (partial_restore: a checkpoint leaves
    AdamW's bounds out); one that lacks some of it is as unusable as an unreadable one, not
    restored with Orbax's placeholders where the arrays should be."""
    checkpointer = Checkpointer(tmp_path, trainer.config, trainer)
    saved = trainer.saved(trainer.init(0))
    lacking = saved.replace(opt_state=_NoSecondMoment(saved.opt_state.updates, saved.opt_state.mu))
    args = ocp.args.Composite(
        state=ocp.args.PyTreeSave(lacking),
        metadata=ocp.args.JsonSave(checkpointer.metadata(1, {})),
    )
    checkpointer.manager.save(1, args=args, force=True)
    checkpointer.close()
    checkpointer = Checkpointer(tmp_path, trainer.config, trainer)
    with (
        pytest.warns(UserWarning, match=r"cannot be read \(ValueError: it has no \.opt_state\.nu"),
        pytest.raises(CheckpointError, match=r"none of the checkpoints .* \(steps \[1\]\)"),
    ):
        checkpointer.restore()
    checkpointer.close()


def test_tokenizer_change_is_refused(tmp_path, trainer):
    config = trainer.config
    checkpointer = Checkpointer(tmp_path, config, trainer)
    checkpointer.tokenizer = {"model_sha256": "a" * 64, "vocab_size": 1024}
    checkpointer.save(1, trainer.init(0), {}, force=True)
    checkpointer.close()
    checkpointer = Checkpointer(tmp_path, config, trainer)
    checkpointer.tokenizer = {"model_sha256": "b" * 64, "vocab_size": 1024}
    with pytest.raises(CheckpointError, match=r"another tokenizer \(sha256 aaaaaaaaaaaa there"):
        checkpointer.restore()
    checkpointer.close()


def test_keeps_newest_and_every_kth(tmp_path, trainer):
    config = _config("mesh.data=8", "checkpoint.keep=2", "checkpoint.keep_every=3")
    checkpointer = Checkpointer(tmp_path, config, trainer)
    state = trainer.init(0)
    for step in range(1, 8):
        checkpointer.save(step, state, {}, force=True)
    checkpointer.close()
    assert sorted(int(p.name) for p in (tmp_path / CHECKPOINTS).iterdir()) == [3, 6, 7]


def test_fresh_and_explicit_step_set_later_steps_aside(tmp_path, trainer):
    config, _, states = _workdir_with_steps(tmp_path, 3, trainer)
    reader = Checkpointer(tmp_path, config, trainer, read_only=True)  # as `bertgpt eval`
    _assert_equal(reader.restore(step=1), states[1])
    assert reader.manager.all_steps() == [1, 2, 3]  # a reader moves nothing
    reader.close()
    checkpointer = Checkpointer(tmp_path, config, trainer)
    _assert_equal(checkpointer.restore(step=2), states[2])
    assert checkpointer.manager.all_steps() == [1, 2]
    assert checkpointer.restore(fresh=True) is None
    assert checkpointer.manager.all_steps() == []
    checkpointer.close()
    assert sorted(p.name for p in (tmp_path / SET_ASIDE).glob("*/*")) == ["1", "2", "3"]


def test_metrics_rows_after_the_restored_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 9)] + [{"step": 4, "eval_loss": 2.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')
    _trim_metrics(path, 4)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept == [r for r in rows if r["step"] <= 4]
