"""The preemption supervisor: keeps a TPU slice alive and training until the run has finished.

Every `poll` seconds it reads the slice's state and acts:

* gone (deleted, PREEMPTED, TERMINATED, or a queued resource SUSPENDED or FAILED): delete what is
  left, create the slice again (a queued request waits in the queue until ACTIVE), set up every
  worker and start training. `bertgpt train` resumes from the newest committed checkpoint in
  the gs:// workdir by itself, and the data pipeline is stateless, so nothing else is needed;
* being created, repaired or queued: wait;
* ready: read every worker's job status. Workers not set up -> set up and start; all running ->
  wait; all ended -> finished if the checkpoint of the last step exists, otherwise start again
  (after a failure this counts towards --max-failures); some ended with an error while others
  still run (they would wait in a collective forever) -> kill all, count a failure, start again.

Finished means `WORKDIR/checkpoints/STEPS/commit_success.txt` exists, STEPS being train.steps
of the config with its overrides: a run stopped by SIGTERM also exits 0, so an exit code alone
cannot tell. The directory alone is not enough: on gs:// Orbax writes a step in place, so it exists
from the first file on, and commit_success.txt is written last. A /gcs/BUCKET/... workdir (the
FUSE mount of `setup --mount-bucket`) is checked, and trained in, as gs://BUCKET/...
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable, Sequence

from launch.gcloud import (
    WORKER_SCRIPT,
    Accelerator,
    Tpu,
    bucket_url,
    run_setup,
    start_commands,
    status_command,
)
from launch.runner import LaunchError, Runner

# The last file of a committed Orbax step, with either of its atomicity modes (orbax-checkpoint
# 0.12: orbax/checkpoint/_src/path/atomicity_types.py COMMIT_SUCCESS_FILE).
COMMIT_FILE = "commit_success.txt"
READY = {"READY", "ACTIVE"}
WAITING = {
    "CREATING", "STARTING", "RESTARTING", "REPAIRING", "PROVISIONING", "ACCEPTED",
    "WAITING_FOR_RESOURCES", "DELETING", "STOPPING", "SUSPENDING",
}  # fmt: skip


@dataclasses.dataclass
class Job:
    """Everything needed to (re)create the slice and (re)start the run."""

    tpu: Tpu
    accelerator: Accelerator
    runtime_version: str
    spot: bool
    preemptible: bool
    wheel: str | None
    python: str
    config: str
    workdir: str
    overrides: Sequence[str]
    env: dict[str, str]
    final_step: int
    bucket: str | None = None

    def finished_command(self) -> list[str]:
        workdir = bucket_url(self.workdir).rstrip("/")
        path = f"{workdir}/checkpoints/{self.final_step}/{COMMIT_FILE}"
        if path.startswith("gs://"):
            return ["gcloud", "storage", "ls", path]
        return self.tpu.ssh(f"test -f {shlex.quote(path)}", worker="0")


def worker_states(output: str) -> list[str]:
    """`HOST absent|idle|running|exited N` lines -> ["absent", "exited 1", ...]."""
    return [line.split(None, 1)[1] for line in output.splitlines() if len(line.split()) >= 2]


class Supervisor:
    def __init__(
        self,
        runner: Runner,
        job: Job,
        poll: float = 300.0,
        max_failures: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.runner, self.job, self.poll, self.max_failures = runner, job, poll, max_failures
        self.sleep = sleep
        self.failures = 0

    def state(self, dry_value: str) -> str:
        code, out = self.runner.capture(self.job.tpu.describe(), dry_value=dry_value)
        return out.strip() if code == 0 else ""

    def start(self) -> None:
        j = self.job
        for cmd in start_commands(
            j.tpu, j.config, j.workdir, j.overrides, j.env, j.accelerator.workers
        ):
            self.runner.run(cmd)

    def recreate(self, state: str) -> bool:
        """Deletes what is left, creates the slice again, waits for it; False if not (yet)."""
        j = self.job
        self.runner.note(f"slice state {state or 'absent'}: recreating it")
        if state:
            self.runner.run(j.tpu.delete(), check=False)
        create = j.tpu.create(j.accelerator, j.runtime_version, j.spot, j.preemptible)
        if self.runner.run(create, check=False) != 0:
            return False  # e.g. no capacity right now: try again at the next poll
        while (state := self.state(dry_value="ACTIVE")) not in READY:
            if state not in WAITING:
                return False
            self.sleep(self.poll)
        run_setup(self.runner, j.tpu, j.wheel, j.python, j.bucket)
        self.start()
        return True

    def check_job(self) -> bool:
        """One look at a ready slice's workers; True when the run has finished."""
        code, out = self.runner.capture(status_command(self.job.tpu), dry_value="")
        states = worker_states(out)
        if code != 0 or not states:
            return False  # unreachable right now (often the first sign of a preemption)
        if "absent" in states:
            j = self.job
            run_setup(self.runner, j.tpu, j.wheel, j.python, j.bucket)
            self.start()
            return False
        failed = [s for s in states if s.startswith("exited") and s != "exited 0"]
        if "running" in states:
            if failed:
                # The failure is counted at the next poll, when all have ended.
                self.runner.note(f"a worker failed ({failed[0]}); stopping the others")
                self.runner.run(self.job.tpu.ssh(f"bash {WORKER_SCRIPT} stop --kill"))
            return False
        if self.runner.run(self.job.finished_command(), check=False) == 0 and not failed:
            return True
        if failed:
            self._count_failure()
        self.start()
        return False

    def _count_failure(self) -> None:
        self.failures += 1
        if self.failures > self.max_failures:
            raise LaunchError(
                f"training failed {self.failures} times on a ready slice; see "
                "`python -m launch.tpu logs` and fix the cause before supervising again."
            )

    def run(self) -> int:
        """Loops until the run has finished (returns 0); a dry run shows one recovery."""
        while True:
            state = self.state(dry_value="PREEMPTED")
            if state in READY:
                if self.check_job():
                    print("launch.tpu: training has finished; the slice is left as it is.")
                    return 0
            elif state not in WAITING:
                self.recreate(state)
            if self.runner.dry_run:
                return 0
            self.sleep(self.poll)
