"""Local multi-process launcher: N `bertgpt` processes on 127.0.0.1 with K CPU devices each.

It runs multi-host code paths (jax.distributed over loopback, gloo CPU collectives, each process
feeding only its own rows of the global batch) on one machine:

    python -m launch.local --processes 2 --devices 4 -- \\
        train --config configs/bert_tiny.yaml --workdir runs/mp train.steps=20

Process k gets `--coordinator 127.0.0.1:PORT --num-processes N --process-id k` after the
subcommand name, and the environment `JAX_PLATFORMS=cpu`, `BERTGPT_LOCAL_DEVICES=K` and
`XLA_FLAGS=--xla_force_host_platform_device_count=K`. Output lines are prefixed with `[k]`.
If any process fails, the others are stopped (SIGTERM, then SIGKILL after --grace seconds) and
the launcher exits with that process's code; an interrupt stops them all.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from launch.runner import LaunchError, Runner, shell_line

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a child needs: CPU only, K devices, gloo (via BERTGPT_LOCAL_DEVICES)."""
    base = dict(os.environ if base is None else base)
    flags = [f for f in base.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    return {
        "JAX_PLATFORMS": "cpu",
        "BERTGPT_LOCAL_DEVICES": str(devices),
        "XLA_FLAGS": " ".join([*flags, f"{DEVICE_FLAG}={devices}"]),
    }


def commands(
    args: Sequence[str], processes: int, port: int, python: str = sys.executable
) -> list[list[str]]:
    """One `python -m bertgpt_jax.cli SUBCOMMAND ...` argument list per process."""
    if not args:
        raise LaunchError("give the bertgpt command after `--`, e.g. `-- train --config ...`.")
    base = [python, "-m", "bertgpt_jax.cli", args[0]]
    if processes == 1:
        return [base + list(args[1:])]
    dist = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)]
    return [base + dist + ["--process-id", str(k)] + list(args[1:]) for k in range(processes)]


def _pump(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{prefix}{line if line.endswith(chr(10)) else line + chr(10)}")
            out.flush()


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_all(
    argvs: list[list[str]], env: dict[str, str], grace: float = 10.0, out: TextIO | None = None
) -> int:
    """Starts every process, streams prefixed output, and returns the first failure's code."""
    out = out or sys.stdout
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps = []
    try:
        for k, argv in enumerate(argvs):
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            procs.append(proc)
            pump = threading.Thread(target=_pump, args=(proc.stdout, f"[{k}] ", out, lock))
            pump.start()
            pumps.append(pump)
        return _wait(procs, grace)
    finally:
        _stop(procs, grace)
        for pump in pumps:
            pump.join()


def _wait(procs: list[subprocess.Popen], grace: float) -> int:
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [(k, c) for k, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            k, code = failed[0]
            print(f"launch.local: process {k} exited with code {code}; stopping the others.")
            _stop(procs, grace)
            return code if code and code > 0 else 1
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launch.local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--processes", type=int, default=2, help="number of processes (N)")
    parser.add_argument("--devices", type=int, default=4, help="CPU devices per process (K)")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds from SIGTERM to KILL")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- SUBCOMMAND [ARGS ...]")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if args.processes < 1 or args.devices < 1:
        raise LaunchError("--processes and --devices must be at least 1.")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        port = args.port or (12355 if args.dry_run else free_port())
        argvs = commands(args.command, args.processes, port)
        env = child_env(args.devices)
        if args.dry_run:
            runner = Runner(dry_run=True)
            for argv_k in argvs:
                runner.out.write(shell_line(argv_k, env) + " &\n")
            runner.out.write("wait\n")
            return 0
        return run_all(argvs, env, args.grace)
    except LaunchError as err:
        print(f"launch.local: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
