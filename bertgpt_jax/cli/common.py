"""Arguments and start-up shared by the `bertgpt` commands."""

from __future__ import annotations

import argparse

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, load_config


def add_config_args(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument(
        "--config", required=config_required, help="YAML file, e.g. configs/bert_tiny.yaml"
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100")


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-process runs)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)


def start(args: argparse.Namespace) -> Config:
    """Validates the config first, then starts JAX's distributed runtime if needed."""
    config = load_config(args.config, args.overrides)
    from bertgpt_jax.parallel import distributed

    distributed.initialize(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )
    return config


def check_output(path: str, what: str, sibling: bool) -> None:
    """--output is a directory (or can be made one) on a writable file system; with `sibling`
    (the output is built beside it and renamed into place) its folder must be writable too."""
    local = fs.require_local(path, what)
    fs.require_writable_dir(local, what)
    if sibling:
        fs.require_writable_dir(local.absolute().parent, f"the folder of {what}")
