"""The `bertgpt` command: train | eval | export | bench | compile | tokenizer | prepare |
generate | fill-mask | finetune | predict | ...

One module per command (`COMMANDS`), each with `register(subparsers)` that adds its parser and
a handler `func(args) -> int`. Every command reads a YAML config plus `section.key=value`
overrides where it trains or measures; configuration and data mistakes (`ConfigError` and its
subclasses) are reported in one sentence with exit status 2, before any device work, and runtime
faults in one sentence with status 1 (cli/failures.py).
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Sequence

from bertgpt_jax.cli import (
    aot,
    bench,
    data,
    evaluate,
    export,
    failures,
    fill_mask,
    finetune,
    generate,
    predict,
    train,
)
from bertgpt_jax.perf import allocator

COMMANDS = (train, finetune, evaluate, export, predict, bench, aot, data, generate, fill_mask)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertgpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; exit statuses and error reporting as in cli/failures.py."""
    args = build_parser().parse_args(argv)
    return failures.run(args, args.func)


def _no_absent_tpu() -> None:
    """libtpu (the [tpu] extra) prints a screen of warnings about TPU metadata it cannot find
    on a host without TPU chips, on every command; there, unless JAX_PLATFORMS or an installed
    CUDA/ROCm plugin says otherwise, JAX runs on the CPU without asking libtpu."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):  # TPU chips are here
        return
    names = {
        d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()
    }
    if any(n.startswith(("jax-cuda", "jax-rocm")) for n in names):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported already: its config read the environment then
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def entry() -> int:
    """The `bertgpt` command: re-executes once with tcmalloc preloaded where it is installed
    (see perf/allocator.py), then runs `main`. Tests call `main` directly and keep their
    process."""
    allocator.reexec_with_tcmalloc("bertgpt_jax.cli", sys.argv[1:])
    _no_absent_tpu()
    status = main()
    # Event loops finalised at exit still print their noise: keep it dropped to the end.
    sys.unraisablehook = failures.drop_event_loop_noise
    return status
