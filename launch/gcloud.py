"""The gcloud commands behind launch/tpu.py: accelerator types, TPU VMs and queued resources,
worker set-up, starting and stopping `bertgpt train` on every worker, logs.

Functions here only build argument lists; `launch.runner.Runner` runs or prints them. Workers run
launch/tpu_worker.sh (copied by `setup`), so `bertgpt train` is detached from the SSH session and
a dropped connection does not stop training.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from launch.runner import LaunchError, Runner

REPO = Path(__file__).resolve().parent.parent
REMOTE_DIR = "bertgpt"  # relative to the worker's home directory
WORKER_SCRIPT = f"{REMOTE_DIR}/tpu_worker.sh"


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """A Cloud TPU accelerator type such as v5p-64, v4-32, v5litepod-16 or v6e-8."""

    family: str
    size: int
    # (name units per chip: TensorCores for v4/v5p, chips for v5e/v6e; chips per VM in a
    #  multi-host slice; largest single-VM slice in chips; default runtime version)
    FAMILIES: ClassVar[dict[str, tuple[int, int, int, str]]] = {
        "v4": (2, 4, 4, "tpu-ubuntu2204-base"),
        "v5p": (2, 4, 4, "v2-alpha-tpuv5"),
        "v5litepod": (1, 4, 8, "v2-alpha-tpuv5-lite"),
        "v6e": (1, 4, 8, "v2-alpha-tpuv6e"),
    }

    @classmethod
    def parse(cls, text: str) -> Accelerator:
        match = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", text)
        if not match:
            raise LaunchError(
                f"--accelerator-type {text!r} is not one of v4-N, v5p-N, v5litepod-N, v6e-N "
                "(e.g. v5p-64, v4-32, v5litepod-16, v6e-8)."
            )
        acc = cls(match[1], int(match[2]))
        units = cls.FAMILIES[acc.family][0]
        if acc.size % units or acc.chips < 1:
            raise LaunchError(
                f"--accelerator-type {text!r}: the size must be a multiple of {units}."
            )
        if acc.workers > 1 and acc.chips % cls.FAMILIES[acc.family][1]:
            raise LaunchError(f"--accelerator-type {text!r} does not fill whole TPU VMs.")
        return acc

    @property
    def name(self) -> str:
        return f"{self.family}-{self.size}"

    @property
    def chips(self) -> int:
        return self.size // self.FAMILIES[self.family][0]

    @property
    def workers(self) -> int:
        _, per_vm, single_max, _ = self.FAMILIES[self.family]
        return 1 if self.chips <= single_max else self.chips // per_vm

    @property
    def runtime_version(self) -> str:
        return self.FAMILIES[self.family][3]


def wheel_name(repo: Path = REPO) -> str:
    """dist/bertgpt_jax-VERSION-py3-none-any.whl, the file `pip wheel` builds from setup.cfg."""
    meta = configparser.ConfigParser()
    meta.read(repo / "setup.cfg")
    version = meta.get("metadata", "version")
    return f"bertgpt_jax-{version}-py3-none-any.whl"


@dataclasses.dataclass
class Tpu:
    """Command builders for one TPU VM slice (and its queued resource, if it has one)."""

    name: str
    zone: str
    project: str | None = None
    queued: bool = False

    def _scope(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

    def vm(self, verb: str, *args: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "tpu-vm", verb, *args, *self._scope()]

    def qr(self, verb: str, *args: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources", verb, *args, *self._scope()]

    @property
    def qr_id(self) -> str:
        return f"{self.name}-qr"

    def create(self, acc: Accelerator, runtime: str, spot: bool, preemptible: bool) -> list[str]:
        tier = ["--spot"] if spot else ["--preemptible"] if preemptible else []
        if self.queued:
            if preemptible:
                raise LaunchError("a queued resource takes --spot, not --preemptible.")
            return self.qr(
                "create",
                self.qr_id,
                f"--node-id={self.name}",
                f"--accelerator-type={acc.name}",
                f"--runtime-version={runtime}",
                *tier,
            )
        return self.vm(
            "create", self.name, f"--accelerator-type={acc.name}", f"--version={runtime}", *tier
        )

    def describe(self) -> list[str]:
        if self.queued:
            return self.qr("describe", self.qr_id, "--format=value(state.state)")
        return self.vm("describe", self.name, "--format=value(state)")

    def delete(self) -> list[str]:
        if self.queued:  # --force deletes the TPU VM together with the request
            return self.qr("delete", self.qr_id, "--force", "--quiet")
        return self.vm("delete", self.name, "--quiet")

    def ssh(self, command: str, worker: str = "all") -> list[str]:
        return self.vm("ssh", self.name, f"--worker={worker}", f"--command={command}")

    def scp(self, sources: Sequence[str], dest: str, worker: str = "all") -> list[str]:
        return self.vm("scp", *sources, dest, f"--worker={worker}")

    def remote(self, path: str) -> str:
        return f"{self.name}:{path}"


def setup_commands(
    tpu: Tpu, wheel: str | None, python: str, bucket: str | None = None
) -> list[list[str]]:
    """Build (unless given) the wheel, copy it with the worker script, install everywhere, and
    mount gs://BUCKET at /gcs/BUCKET on every worker if a bucket is given."""
    cmds = []
    if wheel is None:
        cmds.append([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", "dist", "."])
        wheel = f"dist/{wheel_name()}"
    cmds.append(tpu.ssh(f"mkdir -p {REMOTE_DIR}/logs"))
    cmds.append(tpu.scp([wheel, "launch/tpu_worker.sh"], tpu.remote(f"{REMOTE_DIR}/")))
    remote_wheel = f"{REMOTE_DIR}/{Path(wheel).name}"
    cmds.append(tpu.ssh(shlex.join(["bash", WORKER_SCRIPT, "setup", remote_wheel, python])))
    if bucket:
        cmds.append(tpu.ssh(shlex.join(["bash", WORKER_SCRIPT, "mount", bucket])))
    return cmds


def versions_command(tpu: Tpu) -> list[str]:
    return tpu.ssh(f"bash {WORKER_SCRIPT} versions")


def bucket_url(path: str) -> str:
    """A /gcs/BUCKET/... path (the Cloud Storage FUSE mount of `setup --mount-bucket BUCKET`) as
    gs://BUCKET/...; any other path as it is."""
    return "gs://" + path.removeprefix("/gcs/") if path.startswith("/gcs/") else path


def start_commands(
    tpu: Tpu, config: str, workdir: str, overrides: Sequence[str], env: dict[str, str], workers: int
) -> list[list[str]]:
    """Copy the config to every worker, then start `bertgpt train` on all of them at once.

    A /gcs/BUCKET/... workdir is passed as gs://BUCKET/...: Orbax writes gs:// in place with a
    commit file, but on any other path into a temporary directory that it renames at every save,
    which the FUSE mount does object by object."""
    workdir = bucket_url(workdir)
    if workers > 1 and not workdir.startswith("gs://"):
        raise LaunchError(
            f"--workdir {workdir!r} must be shared by the {workers} workers of this slice: a "
            "/gcs/BUCKET/... path (setup --mount-bucket BUCKET) or gs://BUCKET/..."
        )
    env = ({"BERTGPT_DISTRIBUTED": "auto"} if workers > 1 else {}) | env
    train = ["--config", f"{REMOTE_DIR}/config.yaml", "--workdir", workdir, *overrides]
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return [
        tpu.scp([config], tpu.remote(f"{REMOTE_DIR}/config.yaml")),
        tpu.ssh(shlex.join([*prefix, "bash", WORKER_SCRIPT, "start", *train])),
    ]


def status_command(tpu: Tpu) -> list[str]:
    return tpu.ssh(f"bash {WORKER_SCRIPT} status")


def stop_command(tpu: Tpu) -> list[str]:
    return tpu.ssh(f"bash {WORKER_SCRIPT} stop")


def logs_command(tpu: Tpu, worker: str, lines: int) -> list[str]:
    return tpu.ssh(f"tail -n {lines} -F {REMOTE_DIR}/logs/train.log", worker=worker)


def collect_commands(tpu: Tpu, workers: int, output: str) -> list[list[str]]:
    log = tpu.remote(f"{REMOTE_DIR}/logs/train.log")
    return [tpu.scp([log], f"{output}/worker-{i}.log", worker=str(i)) for i in range(workers)]


def check_versions(output: str) -> None:
    """Every worker prints `HOST HASH`; they must all print the same hash."""
    hashes = {line.split()[-1] for line in output.splitlines() if len(line.split()) == 2}
    if len(hashes) > 1:
        raise LaunchError(
            f"the workers have different installed versions ({output.strip()}); run setup again."
        )


def exec_command(tpu: Tpu, args: Sequence[str], worker: str) -> list[str]:
    """Any `bertgpt` subcommand on a worker, e.g. prepare or export."""
    return tpu.ssh(shlex.join([f"{REMOTE_DIR}/venv/bin/bertgpt", *args]), worker=worker)


def run_setup(
    runner: Runner, tpu: Tpu, wheel: str | None, python: str, bucket: str | None = None
) -> None:
    for cmd in setup_commands(tpu, wheel, python, bucket):
        runner.run(cmd)
    code, output = runner.capture(versions_command(tpu))
    if code != 0:
        raise LaunchError("could not read the installed versions from the workers.")
    check_versions(output)
