"""The `bertgpt` command: train | eval | bench | tokenizer | prepare | data-bench | ...

Every subcommand reads a YAML config plus `section.key=value` overrides; configuration and
data mistakes are reported in one sentence with a non-zero exit, before any device work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from bertgpt_jax import allocator, aot, fs
from bertgpt_jax.config import Config, ConfigError, load_config
from bertgpt_jax.data import cli as data_cli


def _add_config_args(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument(
        "--config", required=config_required, help="YAML file, e.g. configs/bert_tiny.yaml"
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100")


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-process runs)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)


def _start(args: argparse.Namespace) -> Config:
    """Validates the config first, then starts JAX's distributed runtime if needed."""
    config = load_config(args.config, args.overrides)
    from bertgpt_jax import distributed

    distributed.initialize(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )
    return config


def _train(args: argparse.Namespace) -> int:
    config = _start(args)
    from bertgpt_jax.train import train_and_evaluate

    metrics = train_and_evaluate(config, args.workdir, fresh=args.fresh, restore_step=args.step)
    if metrics:
        print(json.dumps({"final": metrics}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    workdir = fs.as_path(args.workdir)
    if args.config is None:
        args.config = str(workdir / "config.yaml")
    config = _start(args)
    import jax

    from bertgpt_jax.checkpoint import Checkpointer
    from bertgpt_jax.sharding import make_mesh
    from bertgpt_jax.train import evaluate
    from bertgpt_jax.train_step import Trainer

    trainer = Trainer(config, make_mesh(config.mesh))
    checkpointer = Checkpointer(workdir, config, trainer, read_only=True)
    state = checkpointer.restore(args.step)
    checkpointer.close()
    if state is None:
        raise ConfigError(f"no checkpoint in {workdir / 'checkpoints'}; run `bertgpt train` first.")
    metrics = evaluate(trainer, state, config)
    print(json.dumps({"step": int(jax.device_get(state.step)), **metrics}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    config = _start(args)
    from bertgpt_jax.bench import run_bench

    print(json.dumps(run_bench(config, steps=args.steps, warmup=args.warmup)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertgpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) a model in WORKDIR")
    _add_config_args(p)
    _add_distributed_args(p)
    p.add_argument("--workdir", required=True)
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--step", type=int, help="resume from this checkpoint step, not the newest")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a workdir's checkpoint on the validation split")
    _add_config_args(p, config_required=False)
    _add_distributed_args(p)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int)
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", help="time train steps on synthetic batches; one JSON line")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.set_defaults(func=_bench)

    from bertgpt_jax import export  # imports JAX: after `entry` has chosen the allocator

    for register in (data_cli.register, export.register, aot.register):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, FileNotFoundError) as err:
        print(f"bertgpt {args.command}: error: {err}", file=sys.stderr)
        return 2


def entry() -> int:
    """The `bertgpt` command: re-executes once with tcmalloc preloaded where it is installed
    (see allocator.py), then runs `main`. Tests call `main` directly and keep their process."""
    allocator.reexec_with_tcmalloc("bertgpt_jax.cli", sys.argv[1:])
    return main()


if __name__ == "__main__":
    sys.exit(entry())
