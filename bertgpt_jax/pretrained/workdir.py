"""Reading what training saved, without the training stack: the Orbax checkpoint format
shared with the `Checkpointer` (handlers, manager, metadata) and the parameter-only restore
that export and inference use (the optimizer state is never read).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, config_from_dict
from bertgpt_jax.core.errors import CheckpointError
from bertgpt_jax.tasks import get_task

CHECKPOINTS = "checkpoints"
# A fine-tuning run keeps the parameters of its best evaluation here, as a workdir of one
# checkpoint (training/best.py); export and inference prefer it.
BEST = "best"
TOKENIZER_FILE = "tokenizer.model"
# Orbax's replica-parallel save writes a replicated shard in slices, one per replica, so that
# every host writes a part; the slices are cut on the devices by small jitted programs (compiled
# at the first save: 5 s blocked for the tiny model on 8 CPU devices; then ~1 ms dispatch each).
# With one process there is no other host to share with, so it is off; with several it is kept
# for slices of at least this size.
_MIN_SLICE_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's PyTree handler, with replica-parallel saves only where they help (see above)."""
    from orbax.checkpoint._src.metadata import array_metadata_store  # as Orbax's default registry

    th = ocp.type_handlers
    # type(...): the placeholders of a partial restore.
    types: list[Any] = [int, float, bytes, np.number, np.ndarray, str, type(...)]
    standard = [(t, th.get_type_handler(t)) for t in types]
    array = th.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        use_replica_parallel=jax.process_count() > 1,
        min_slice_bytes_for_replica_parallel=_MIN_SLICE_BYTES,
    )
    registry = th.create_type_handler_registry(*standard, (jax.Array, array))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class _ReadOnlyNotice(logging.Filter):
    """Drops Orbax's "Given directory is read only" warning: a read-only manager is what eval
    and export ask for, not a condition to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


_ABSL_FILTER = _ReadOnlyNotice()


def open_manager(directory: epath.Path, config: Config | None) -> ocp.CheckpointManager:
    """A manager that saves per `config.checkpoint`, or (config None) a read-only one."""
    if config is None:
        logging.getLogger("absl").addFilter(_ABSL_FILTER)  # adding one filter twice is a no-op
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    else:
        c = config.checkpoint
        options = ocp.CheckpointManagerOptions(
            max_to_keep=c.keep,
            keep_period=c.keep_every or None,
            enable_async_checkpointing=c.async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
    handlers = {"state": _state_handler(), "metadata": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def read_metadata(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    meta = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    meta = meta["metadata"]
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError("its metadata has no config")
    return meta


def short_error(err: BaseException) -> str:
    """An exception as one short line (Orbax and TensorStore errors span many)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def warn_unreadable(directory: epath.Path, step: int, err: BaseException) -> None:
    warnings.warn(
        f"checkpoint step {step} in {directory} cannot be read ({short_error(err)}); "
        "falling back to the previous checkpoint.",
        stacklevel=3,
    )


def candidates(directory: epath.Path, steps: list[int], step: int | None) -> list[int]:
    if step is None:
        return steps
    if step not in steps:
        shown = ", ".join(map(str, sorted(steps))) or "none"
        raise CheckpointError(
            f"there is no committed checkpoint at step {step} in {directory} (steps: {shown}); "
            "pass one of those to --step, or leave --step out for the newest."
        )
    return [step]


def _read_params(manager: ocp.CheckpointManager, step: int) -> tuple[Config, Any, dict]:
    meta = read_metadata(manager, step)
    config = config_from_dict(meta["config"])
    shapes = get_task(config).abstract_params(config.model)
    item = {"params": jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)}
    as_numpy = {"params": jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), shapes)}
    # partial_restore: only the params subtree is read; the optimizer state stays on disk.
    args = ocp.args.PyTreeRestore(item=item, restore_args=as_numpy, partial_restore=True)
    restored = manager.restore(step, args=ocp.args.Composite(state=args))
    return config, restored["state"]["params"], meta


def _check_finite(params: Any, directory: epath.Path, step: int, steps: list[int]) -> None:
    """Refuses weights holding NaN or inf (saved by a version without the step guard)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    bad = [jax.tree_util.keystr(path) for path, x in flat if not np.isfinite(x).all()]
    if bad:
        others = ", ".join(str(t) for t in sorted(steps) if t != step) or "none"
        raise CheckpointError(
            f"checkpoint step {step} in {directory} holds non-finite weights ({len(bad)} "
            f"tensors, e.g. {bad[0]}); pass an earlier --step (steps: {others})."
        )


def restore_params(
    where: str | Path, step: int | None = None
) -> tuple[Config, int, dict[str, Any], dict[str, Any]]:
    """(config, step, float32 numpy params, metadata) of a workdir's checkpoint, reading only the
    parameters: the optimizer state is never loaded. For export and inference; one process."""
    workdir = fs.as_path(where)
    directory = workdir / CHECKPOINTS
    if not workdir.is_dir():
        raise CheckpointError(f"workdir {workdir} does not exist; pass the --workdir of a run.")
    if not directory.is_dir():
        raise CheckpointError(f"{workdir} has no checkpoints/; run `bertgpt train` there first.")
    manager = open_manager(directory, None)
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"{directory} holds no committed checkpoint; train longer.")
        for s in candidates(directory, steps, step):
            try:
                config, params, meta = _read_params(manager, s)
            except Exception as err:
                if step is not None:
                    raise CheckpointError(
                        f"checkpoint step {s} in {directory} cannot be read ({short_error(err)}); pass "
                        "another --step, or leave it out for the newest readable one."
                    ) from err
                warn_unreadable(directory, s, err)
                continue
            _check_finite(params, directory, s, steps)
            return config, s, params, meta
    finally:
        manager.close()
    raise CheckpointError(f"none of the checkpoints in {directory} can be read.")


def is_workdir(path: str | Path) -> bool:
    """A training workdir has a checkpoints/ directory (HF directories have config.json)."""
    return (fs.as_path(path) / CHECKPOINTS).is_dir()


def model_source(workdir: str | Path, step: int | None = None) -> Any:
    """Where a workdir's model is read from: its best checkpoint (WORKDIR/best) when it has one
    and no `step` is asked for, else the workdir itself."""
    path = fs.as_path(workdir)
    return path / BEST if step is None and (path / BEST / CHECKPOINTS).is_dir() else path


def load_workdir(path: str | Path) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """The best (else the newest readable) checkpoint's config, parameters (no optimizer
    state) and saved metrics."""
    config, _, params, meta = restore_params(model_source(path))
    return config, params, dict(meta.get("metrics") or {})
