"""GPU launcher: one host with all its GPUs in one process, or several hosts under SLURM.

    python -m launch.gpu --config configs/gpt2_small.yaml --workdir runs/gpt2 [key=value ...]
    python -m launch.gpu --nodes 2 --gpus-per-node 8 --partition gpu --time 24:00:00 \\
        --config configs/gpt2_small.yaml --workdir /shared/runs/gpt2 [key=value ...]

One node: `bertgpt train` runs here, one process over every local GPU (the mesh spans them all).
Several nodes: `sbatch launch/slurm.sbatch ...` with one task per GPU; JAX reads the SLURM_*
variables. Both get the environment below (extend it with --env NAME=VALUE and --xla-flag);
--dry-run prints the exact command. See launch/README.md ("GPU environment") for what each
setting does and for the NCCL variables that depend on the cluster's network.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from launch.runner import LaunchError, Runner, split_env

MEM_FRACTION = "0.90"  # JAX preallocates 75% of each GPU by default; leave 10% for CUDA libraries
# Overlap collectives with compute (NVIDIA JAX-Toolbox default; JAX "GPU performance tips").
XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)
# For FSDP meshes (mesh.fsdp > 1): pipeline the per-layer all-gathers and reduce-scatters across
# the scanned layers and combine small collectives (JAX "GPU performance tips").
FSDP_XLA_FLAGS = (
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
)
SBATCH_SCRIPT = "launch/slurm.sbatch"


def environment(fsdp_flags: bool, extra_flags: Sequence[str], env: dict[str, str]) -> dict:
    flags = [*XLA_FLAGS, *(FSDP_XLA_FLAGS if fsdp_flags else ()), *extra_flags]
    base = {
        "XLA_PYTHON_CLIENT_MEM_FRACTION": MEM_FRACTION,
        "XLA_FLAGS": " ".join(flags),
        "NCCL_DEBUG": "WARN",
    }
    return base | env


def single_host_command(config: str, workdir: str, overrides: Sequence[str]) -> list[str]:
    train = ["train", "--config", config, "--workdir", workdir, *overrides]
    return [sys.executable, "-m", "bertgpt_jax.cli", *train]


def sbatch_command(args: argparse.Namespace) -> list[str]:
    cmd = [
        "sbatch",
        f"--nodes={args.nodes}",
        f"--ntasks-per-node={args.gpus_per_node}",
        f"--gpus-per-node={args.gpus_per_node}",
        f"--job-name={args.job_name}",
    ]
    cmd += [f"--partition={args.partition}"] if args.partition else []
    cmd += [f"--time={args.time}"] if args.time else []
    cmd += [f"--account={args.account}"] if args.account else []
    return cmd + [SBATCH_SCRIPT, args.config, args.workdir, *args.overrides]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launch.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True, help="shared by all nodes when --nodes > 1")
    parser.add_argument("--nodes", type=int, default=1, help="> 1: submit to SLURM")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--partition")
    parser.add_argument("--time", help="SLURM time limit, e.g. 24:00:00")
    parser.add_argument("--account")
    parser.add_argument("--job-name", default="bertgpt")
    parser.add_argument("--fsdp-flags", action="store_true", help="add FSDP_XLA_FLAGS")
    parser.add_argument("--xla-flag", action="append", default=[], help="another XLA flag")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="print the command only")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise LaunchError("--nodes and --gpus-per-node must be at least 1.")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if not os.path.isfile(args.config):
            raise LaunchError(f"config file {args.config!r} does not exist.")
        env = environment(args.fsdp_flags, args.xla_flag, split_env(args.env))
        runner = Runner(args.dry_run)
        if args.nodes == 1:
            runner.note(f"one process over all local GPUs ({args.gpus_per_node} expected)")
            command = single_host_command(args.config, args.workdir, args.overrides)
            return runner.run(command, env, check=False)
        runner.note(
            f"{args.nodes} nodes x {args.gpus_per_node} GPUs: "
            f"{args.nodes * args.gpus_per_node} processes, one per GPU"
        )
        return runner.run(sbatch_command(args), env, check=False)
    except LaunchError as err:
        print(f"launch.gpu: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
