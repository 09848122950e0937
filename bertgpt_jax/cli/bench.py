"""`bertgpt bench --config C [--steps N] [key=value ...]`: train-step speed, one JSON line."""

from __future__ import annotations

import argparse
import json

from bertgpt_jax.cli.common import add_config_args, start


def _run(args: argparse.Namespace) -> int:
    config = start(args)
    from bertgpt_jax.perf.bench import run_bench
    from bertgpt_jax.training.preflight import check_mesh

    check_mesh(config)

    print(json.dumps(run_bench(config, steps=args.steps, warmup=args.warmup)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="time train steps on synthetic batches; one JSON line")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.set_defaults(func=_run)
