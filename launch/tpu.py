"""TPU VM launcher: create a slice, set up every worker, train, follow logs, stop, delete, and
supervise a run through preemptions. Run from the repository root; every subcommand takes
--dry-run, which prints the exact gcloud commands and runs nothing.

    python -m launch.tpu create    --name bert --zone us-east5-a --accelerator-type v5p-64 [--spot]
    python -m launch.tpu setup     --name bert --zone us-east5-a
    python -m launch.tpu start     --name bert --zone us-east5-a --accelerator-type v5p-64 \\
                                   --config configs/bert_base.yaml --workdir gs://B/runs/bert \\
                                   [key=value ...]
    python -m launch.tpu logs | status | stop | delete      --name bert --zone us-east5-a
    python -m launch.tpu collect   --name bert --zone us-east5-a --accelerator-type v5p-64
    python -m launch.tpu exec      --name bert --zone us-east5-a --worker 0 -- prepare ...
    python -m launch.tpu supervise (the arguments of create, setup and start together)

--queued requests the slice as a queued resource (`gcloud compute tpus queued-resources`); pass
it to every subcommand that creates, deletes or supervises that slice. See launch/README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from launch.gcloud import (
    Accelerator,
    Tpu,
    collect_commands,
    exec_command,
    logs_command,
    run_setup,
    start_commands,
    status_command,
    stop_command,
)
from launch.runner import LaunchError, Runner, split_env
from launch.supervisor import Job, Supervisor


def _final_step(config: str, overrides: Sequence[str]) -> int:
    """Validates the config here, before renting anything; returns train.steps."""
    try:
        from bertgpt_jax.core.config import load_config
        from bertgpt_jax.core.errors import ConfigError
    except ImportError as err:
        raise LaunchError(
            "install this package here too (pip install -e .): the launcher checks the config."
        ) from err
    try:
        return load_config(config, overrides).train.steps
    except ConfigError as err:
        raise LaunchError(str(err)) from err


def _add(parser: argparse.ArgumentParser, *groups: str) -> None:
    if "create" in groups:
        parser.add_argument("--accelerator-type", required=True, help="v5p-64, v4-32, v6e-8, ...")
        parser.add_argument("--runtime-version", help="TPU VM image (default: per generation)")
        kind = parser.add_mutually_exclusive_group()
        kind.add_argument("--spot", action="store_true", help="Spot VMs (preemptible, cheaper)")
        kind.add_argument("--preemptible", action="store_true", help="legacy preemptible VMs")
    if "accelerator" in groups:
        parser.add_argument("--accelerator-type", required=True, help="v5p-64, v4-32, v6e-8, ...")
    if "setup" in groups:
        parser.add_argument("--wheel", help="install this wheel (default: build one from here)")
        parser.add_argument("--python", default="3.11", help="Python on the workers (via uv)")
        parser.add_argument("--mount-bucket", help="mount gs://BUCKET at /gcs/BUCKET everywhere")
    if "start" in groups:
        parser.add_argument("--config", required=True, help="YAML config, copied to workers")
        parser.add_argument("--workdir", required=True, help="gs://BUCKET/runs/NAME")
        parser.add_argument("--env", action="append", default=[], help="NAME=VALUE on workers")
        parser.add_argument("overrides", nargs="*", help="section.key=value")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM name")
    common.add_argument("--zone", required=True, help="e.g. us-east5-a")
    common.add_argument("--project", help="Google Cloud project (default: gcloud's)")
    common.add_argument("--queued", action="store_true", help="a queued resource, NAME-qr")
    common.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser = argparse.ArgumentParser(
        prog="python -m launch.tpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    groups = {
        "create": ("create",),
        "setup": ("setup",),
        "start": ("accelerator", "start"),
        "logs": (),
        "status": (),
        "stop": (),
        "collect": ("accelerator",),
        "delete": (),
        "exec": (),
        "supervise": ("create", "setup", "start"),
    }
    for name, wanted in groups.items():
        p = sub.add_parser(name, parents=[common])
        _add(p, *wanted)
    sub.choices["logs"].add_argument("--worker", default="0", help="worker number, or all")
    sub.choices["logs"].add_argument("--lines", type=int, default=100)
    sub.choices["collect"].add_argument("--output", help="local folder (default: logs/NAME)")
    sub.choices["exec"].add_argument("--worker", default="0", help="worker number, or all")
    sub.choices["exec"].add_argument("args", nargs=argparse.REMAINDER, help="-- SUBCOMMAND ...")
    supervise = sub.choices["supervise"]
    supervise.add_argument("--poll", type=float, default=300.0, help="seconds between checks")
    supervise.add_argument("--max-failures", type=int, default=3, help="non-preemption failures")
    return parser


def _job(args: argparse.Namespace, tpu: Tpu) -> Job:
    acc = Accelerator.parse(args.accelerator_type)
    return Job(
        tpu=tpu,
        accelerator=acc,
        runtime_version=args.runtime_version or acc.runtime_version,
        spot=args.spot,
        preemptible=args.preemptible,
        wheel=args.wheel,
        python=args.python,
        config=args.config,
        workdir=args.workdir,
        overrides=args.overrides,
        env=split_env(args.env),
        final_step=_final_step(args.config, args.overrides),
        bucket=args.mount_bucket,
    )


def dispatch(args: argparse.Namespace, runner: Runner) -> int:
    tpu = Tpu(args.name, args.zone, args.project, args.queued)
    command = args.command
    if command == "create":
        acc = Accelerator.parse(args.accelerator_type)
        runtime = args.runtime_version or acc.runtime_version
        runner.note(f"{acc.name}: {acc.chips} chips on {acc.workers} TPU VM worker(s)")
        runner.run(tpu.create(acc, runtime, args.spot, args.preemptible))
    elif command == "setup":
        run_setup(runner, tpu, args.wheel, args.python, args.mount_bucket)
    elif command == "start":
        _final_step(args.config, args.overrides)
        workers = Accelerator.parse(args.accelerator_type).workers
        for cmd in start_commands(
            tpu, args.config, args.workdir, args.overrides, split_env(args.env), workers
        ):
            runner.run(cmd)
    elif command == "logs":
        return runner.run(logs_command(tpu, args.worker, args.lines), check=False)
    elif command == "status":
        runner.run(tpu.describe())
        runner.run(status_command(tpu))
    elif command == "stop":
        runner.run(stop_command(tpu))
    elif command == "collect":
        workers = Accelerator.parse(args.accelerator_type).workers
        output = args.output or f"logs/{args.name}"
        runner.run(["mkdir", "-p", output])
        for cmd in collect_commands(tpu, workers, output):
            runner.run(cmd, check=False)
    elif command == "delete":
        runner.run(tpu.delete())
    elif command == "exec":
        words = args.args[1:] if args.args[:1] == ["--"] else args.args
        if not words:
            raise LaunchError("give the bertgpt subcommand after `--`, e.g. `-- prepare ...`.")
        return runner.run(exec_command(tpu, words, args.worker), check=False)
    elif command == "supervise":
        return Supervisor(runner, _job(args, tpu), args.poll, args.max_failures).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args, Runner(args.dry_run))
    except LaunchError as err:
        print(f"launch.tpu {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
