"""`bertgpt train --config C --workdir W [--fresh | --step N] [key=value ...]`."""

from __future__ import annotations

import argparse
import json

from bertgpt_jax.cli.common import add_config_args, add_distributed_args, start


def _run(args: argparse.Namespace) -> int:
    config = start(args)
    from bertgpt_jax.training.hf_init import adopt_hf_architecture
    from bertgpt_jax.training.loop import train_and_evaluate
    from bertgpt_jax.training.metrics import strict

    if config.checkpoint.init_from_hf:
        config = adopt_hf_architecture(config, args.overrides)

    metrics = train_and_evaluate(config, args.workdir, fresh=args.fresh, restore_step=args.step)
    if metrics:
        print(json.dumps({"final": strict(metrics)}, allow_nan=False))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train (or resume) a model in WORKDIR")
    add_config_args(p)
    add_distributed_args(p)
    p.add_argument("--workdir", required=True)
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--step", type=int, help="resume from this checkpoint step, not the newest")
    p.set_defaults(func=_run)
