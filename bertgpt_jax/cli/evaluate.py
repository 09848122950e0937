"""`bertgpt eval --workdir W [--step N]`: a checkpoint's metrics on the validation split."""

from __future__ import annotations

import argparse
import json

from bertgpt_jax.cli.common import add_config_args, add_distributed_args, start
from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import ConfigError


def _run(args: argparse.Namespace) -> int:
    workdir = fs.as_path(args.workdir)
    if not workdir.is_dir():
        what = "is a file" if workdir.exists() else "does not exist"
        raise ConfigError(
            f"--workdir {workdir} {what}; pass the --workdir of a `bertgpt train` run."
        )
    if args.config is None:
        if not (workdir / "config.yaml").is_file():
            raise ConfigError(
                f"--workdir {workdir} has no config.yaml, so it is not a training workdir; pass "
                "the --workdir of a `bertgpt train` run (or --config)."
            )
        args.config = str(workdir / "config.yaml")
    config = start(args)
    import jax

    from bertgpt_jax.parallel.sharding import make_mesh
    from bertgpt_jax.training.checkpoint import Checkpointer
    from bertgpt_jax.training.loop import evaluate
    from bertgpt_jax.training.metrics import strict
    from bertgpt_jax.training.preflight import check_evaluation
    from bertgpt_jax.training.step import Trainer

    check_evaluation(config, workdir, args.step)
    trainer = Trainer(config, make_mesh(config.mesh))
    checkpointer = Checkpointer(workdir, config, trainer, read_only=True)
    state = checkpointer.restore(args.step)
    checkpointer.close()
    if state is None:
        raise ConfigError(f"no checkpoint in {workdir / 'checkpoints'}; run `bertgpt train` first.")
    metrics = evaluate(trainer, state, config)
    row = {"step": int(jax.device_get(state.step)), **metrics}
    print(json.dumps(strict(row), allow_nan=False))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a workdir's checkpoint on the validation split"
    )
    add_config_args(p, config_required=False)
    add_distributed_args(p)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int)
    p.set_defaults(func=_run)
