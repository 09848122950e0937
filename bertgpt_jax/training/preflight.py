"""Every mistake a run can be checked for before any device work, in one phase that writes
nothing: the mesh against the device count that will run it and the batch against the mesh,
the workdir (a directory, or creatable, on a writable file system with room for a checkpoint),
an explicit --step, and the data (data.path is a prepared store whose tokenizer matches
data.tokenizer and fits model.vocab_size, with the splits the run reads).

`train_and_evaluate` calls `check_training` first, `bertgpt eval` calls `check_evaluation` and
`bertgpt bench` `check_mesh`; each raises a `ConfigError` (or subclass) whose message names the
key, file or directory at fault and the fix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
from etils import epath

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config
from bertgpt_jax.core.errors import CheckpointError, ConfigError, DataError, FsError
from bertgpt_jax.data.pipeline import check_store
from bertgpt_jax.data.pretrain import EXAMPLE_BUILDERS
from bertgpt_jax.data.store import read_manifest
from bertgpt_jax.parallel.sharding import mesh_shape
from bertgpt_jax.pretrained.workdir import CHECKPOINTS
from bertgpt_jax.training.metrics import non_embedding_params
from bertgpt_jax.training.samples import prompt_ids

# Bytes per parameter in a checkpoint: float32 weights plus two Adam moments.
_CHECKPOINT_BYTES_PER_PARAM = 12


def check_mesh(
    config: Config, num_devices: int | None = None, processes: int | None = None
) -> None:
    """The mesh fits the devices, and the global batch (and each microbatch) divides over the
    mesh's batch shards (data x fsdp) and over the processes that feed it."""
    n = jax.device_count() if num_devices is None else num_devices
    count = jax.process_count() if processes is None else processes
    data, fsdp, _ = mesh_shape(config.mesh, n)
    t = config.train
    shards = data * fsdp
    if t.batch_size % shards:
        larger = -(-t.batch_size // shards) * shards
        raise ConfigError(
            f"train.batch_size={t.batch_size} does not divide over the {shards} batch shards of "
            f"the mesh (data={data} x fsdp={fsdp} on {n} devices); use a multiple of {shards}, "
            f"e.g. train.batch_size={larger}, or change mesh.data/mesh.fsdp."
        )
    if t.batch_size % count:
        raise ConfigError(
            f"train.batch_size={t.batch_size} does not divide over the {count} processes; use a "
            f"multiple of {count}."
        )


def check_workdir(workdir: epath.Path, config: Config) -> None:
    """A local workdir is a directory, or can be made one, on a writable file system with room
    for at least one checkpoint; its own entries have the kinds the trainer gives them."""
    if fs.is_remote(workdir):
        return  # object stores: writability shows at the first upload
    fs.require_writable_dir(workdir, "--workdir")
    path = Path(os.fspath(workdir))
    for name in (CHECKPOINTS, "tb"):
        if (path / name).exists() and not (path / name).is_dir():
            raise FsError(f"{path / name} is a file; move it away, --workdir needs that name.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    need = _checkpoint_bytes(config)
    free = shutil.disk_usage(existing).free
    if free < need:
        raise FsError(
            f"--workdir {path} has {free / 2**30:.2f} GiB free but one checkpoint needs about "
            f"{need / 2**30:.2f} GiB; free space or choose a --workdir on a larger disk."
        )


def _checkpoint_bytes(config: Config) -> int:
    m = config.model
    embeddings = (m.vocab_size + m.max_len + m.type_vocab_size) * m.hidden_size
    return (non_embedding_params(config) + embeddings) * _CHECKPOINT_BYTES_PER_PARAM


def check_step(workdir: epath.Path, step: int) -> None:
    """An explicit --step names a committed checkpoint (Orbax commits a step by renaming its
    directory to the bare number)."""
    directory = workdir / CHECKPOINTS
    steps = (
        sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        if (directory.is_dir())
        else []
    )
    if step not in steps:
        shown = ", ".join(map(str, steps)) or "none"
        raise CheckpointError(
            f"there is no committed checkpoint at step {step} in {directory} (steps: {shown}); "
            "pass one of those to --step, or leave --step out for the newest."
        )


def check_data(config: Config, splits: tuple[str, ...]) -> None:
    """data.path is a prepared store with these splits, made with a tokenizer that fits; the
    advice for a path that holds something else says what to prepare from it."""
    if config.task.name not in EXAMPLE_BUILDERS:
        return
    text = config.data.path
    if not text:
        raise DataError(
            "data.path is empty; prepare a store with `bertgpt prepare --input TEXT --tokenizer "
            "TOKENIZER --output STORE` and pass data.path=STORE."
        )
    path = fs.require_local(text, "data store (data.path)")
    prepare = f"`bertgpt prepare --input {path} --tokenizer TOKENIZER --output {path}-store`"
    if not path.exists():
        raise DataError(
            f"data.path={text} does not exist; fix the path, or prepare a store there with "
            f"`bertgpt prepare --input TEXT --tokenizer TOKENIZER --output {path}`."
        )
    if path.is_file():
        raise DataError(
            f"data.path={text} is a file, not a prepared store; if it is text, prepare a store "
            f"from it with {prepare} and pass data.path={path}-store."
        )
    if read_manifest(path) is None:
        raise DataError(
            f"data.path={text} is a directory but not a prepared store (it has no manifest.json); "
            f"if it holds text, prepare a store from it with {prepare} and pass "
            f"data.path={path}-store."
        )
    check_store(config, splits)


def check_training(
    config: Config, workdir: epath.Path, fresh: bool = False, restore_step: int | None = None
) -> None:
    """Everything `train_and_evaluate` can check before it builds the model or writes a file."""
    check_mesh(config)
    check_workdir(workdir, config)
    if restore_step is not None and not fresh:
        check_step(workdir, restore_step)
    init = config.checkpoint.init_from_hf
    if init and not fs.is_remote(init) and not Path(init).is_dir():
        raise CheckpointError(
            f"checkpoint.init_from_hf={init} is not a directory; pass a HuggingFace model "
            "directory (one written by `bertgpt export`, or with config.json and model.safetensors)."
        )
    check_data(config, ("train", "validation") if config.train.eval_every else ("train",))
    prompt_ids(config)  # eval.prompts fit the model's positions


def check_evaluation(config: Config, workdir: epath.Path, step: int | None) -> None:
    """What `bertgpt eval` can check before it builds the model."""
    check_mesh(config)
    if step is not None:
        check_step(workdir, step)
    check_data(config, ("validation",))
