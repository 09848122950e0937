"""Launchers: the exact commands for typical TPU and SLURM jobs (--dry-run), the supervisor's
decisions on a scripted slice, the TPU worker script, the GPU flags this jaxlib accepts, and a
real 2-process x 4-device run on loopback that matches 1 process x 8 devices."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launch import gpu, local  # noqa: E402
from launch.gcloud import Accelerator, Tpu, start_commands  # noqa: E402
from launch.runner import LaunchError, Runner  # noqa: E402
from launch.supervisor import COMMIT_FILE, Job, Supervisor  # noqa: E402


def _launch(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"launch.{module}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if not line.startswith("#")]


def _remote(cmd: list[str]) -> list[str]:
    """The words of an `ssh --command=...` remote command."""
    (arg,) = [a for a in cmd if a.startswith("--command=")]
    return shlex.split(arg.removeprefix("--command="))


TPU = ["--name", "bert", "--zone", "us-east5-a"]
TRAIN = ["--config", "configs/bert_base.yaml", "--workdir", "gs://bkt/runs/bert"]


def test_accelerator_types():
    assert (Accelerator.parse("v5p-64").chips, Accelerator.parse("v5p-64").workers) == (32, 8)
    assert (Accelerator.parse("v4-32").chips, Accelerator.parse("v4-32").workers) == (16, 4)
    assert Accelerator.parse("v4-8").workers == 1
    assert Accelerator.parse("v5litepod-16").workers == 4
    assert Accelerator.parse("v6e-8").workers == 1
    for bad in ("v5p", "v7-8", "v5p-7", "tpu-v4-32"):
        with pytest.raises(LaunchError):
            Accelerator.parse(bad)


def test_v5p_64_pod_supervisor_recovers_a_preempted_slice():
    done = _launch(
        "tpu", "supervise", "--dry-run", *TPU, "--accelerator-type", "v5p-64", *TRAIN,
        "train.steps=1000",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cmds = _commands(done.stdout)
    verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
    assert verbs[:4] == ["describe", "delete", "create", "describe"]
    create = cmds[2]
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "bert"]
    assert {"--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", "--zone=us-east5-a"} <= set(
        create
    )
    assert "--spot" not in create
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert all("--worker=all" in c for c in ssh)
    setup = _remote(ssh[1])
    assert setup[:3] == ["bash", "bertgpt/tpu_worker.sh", "setup"] and setup[-1] == "3.11"
    assert _remote(ssh[2]) == ["bash", "bertgpt/tpu_worker.sh", "versions"]
    start = _remote(ssh[-1])
    assert start[:5] == [
        "env",
        "BERTGPT_DISTRIBUTED=auto",
        "bash",
        "bertgpt/tpu_worker.sh",
        "start",
    ]
    assert start[5:] == [
        "--config", "bertgpt/config.yaml", "--workdir", "gs://bkt/runs/bert", "train.steps=1000",
    ]  # fmt: skip
    scp_config = cmds[-2]
    assert scp_config[5:8] == ["configs/bert_base.yaml", "bert:bertgpt/config.yaml", "--worker=all"]


def test_v5p_64_collects_the_logs_of_all_8_workers():
    done = _launch("tpu", "collect", "--dry-run", *TPU, "--accelerator-type", "v5p-64")
    scps = [
        c for c in _commands(done.stdout) if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    ]
    assert [c[-2] for c in scps] == [f"--worker={i}" for i in range(8)]
    assert [c[6] for c in scps] == [f"logs/bert/worker-{i}.log" for i in range(8)]


def test_spot_v4_32_and_queued():
    done = _launch("tpu", "create", "--dry-run", *TPU, "--accelerator-type", "v4-32", "--spot")
    (create,) = _commands(done.stdout)
    assert create == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "bert", "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base", "--spot", "--zone=us-east5-a",
    ]  # fmt: skip
    assert "16 chips on 4 TPU VM worker(s)" in done.stdout
    queued = _launch(
        "tpu", "create", "--dry-run", *TPU, "--accelerator-type", "v4-32", "--spot", "--queued",
        "--project", "proj",
    )  # fmt: skip
    (create,) = _commands(queued.stdout)
    assert create[:7] == ["gcloud", "compute", "tpus", "queued-resources", "create", "bert-qr",
                          "--node-id=bert"]  # fmt: skip
    assert {"--spot", "--runtime-version=tpu-ubuntu2204-base", "--project=proj"} <= set(create)
    delete = _commands(_launch("tpu", "delete", "--dry-run", *TPU, "--queued").stdout)
    assert delete == [["gcloud", "compute", "tpus", "queued-resources", "delete", "bert-qr",
                       "--force", "--quiet", "--zone=us-east5-a"]]  # fmt: skip


def test_bad_tpu_input_is_one_sentence():
    done = _launch("tpu", "create", "--dry-run", *TPU, "--accelerator-type", "v5p-63")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "v5p-63" in done.stderr
    local_dir = _launch("tpu", "start", "--dry-run", *TPU, "--accelerator-type", "v4-32",
                        "--config", "configs/bert_base.yaml", "--workdir", "runs/x")  # fmt: skip
    assert local_dir.returncode == 2 and "gs://" in local_dir.stderr
    bad_key = _launch("tpu", "start", "--dry-run", *TPU, "--accelerator-type", "v4-8", *TRAIN,
                      "train.stepz=3")  # fmt: skip
    assert bad_key.returncode == 2 and "train.stepz" in bad_key.stderr


def test_two_slurm_nodes_with_8_gpus():
    done = _launch(
        "gpu", "--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
        "--config", "configs/gpt2_small.yaml", "--workdir", "/shared/runs/gpt2", "train.steps=10",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (cmd,) = _commands(done.stdout)
    env = dict(w.split("=", 1) for w in cmd[:3])
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"
    assert cmd[3:] == [
        "sbatch", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--job-name=bertgpt",
        "--partition=gpu", "launch/slurm.sbatch", "configs/gpt2_small.yaml", "/shared/runs/gpt2",
        "train.steps=10",
    ]  # fmt: skip
    script = (REPO / "launch/slurm.sbatch").read_text()
    # The script's own defaults (for a plain `sbatch`) are the launcher's.
    assert f"XLA_PYTHON_CLIENT_MEM_FRACTION:-{gpu.MEM_FRACTION}" in script
    assert f"XLA_FLAGS:-{' '.join(gpu.XLA_FLAGS)}" in script
    assert (
        "#SBATCH --gpus-per-node=8" in script and "--gpus-per-task" not in script.split("set -")[1]
    )


def test_shell_scripts_parse():
    for script in ("launch/slurm.sbatch", "launch/tpu_worker.sh"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_gpu_xla_flags_exist_in_this_jaxlib():
    """XLA rejects unknown flags at start-up, so this catches a renamed or removed flag."""
    flags = " ".join([*gpu.XLA_FLAGS, *gpu.FSDP_XLA_FLAGS])
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    code = "import jax; jax.numpy.ones(1).block_until_ready()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


class ScriptedRunner(Runner):
    """Answers the supervisor's questions from a script and records what it runs."""

    def __init__(self, states: list[str], workers: list[str], finished: list[int]):
        super().__init__(dry_run=False)
        self.states, self.workers, self.finished = states, workers, finished
        self.ran: list[str] = []

    def note(self, text: str) -> None:
        pass

    def run(self, argv, env=None, check=True) -> int:
        words = " ".join(argv)
        if "storage ls" in words:
            self.ran.append("finished?")
            return self.finished.pop(0)
        labels = ("delete", "create", "mkdir", "setup", "start", "stop --kill", "scp")
        self.ran.append(next(w for w in labels if w in words))
        return 0

    def capture(self, argv, dry_value=""):
        words = " ".join(argv)
        if "describe" in words:
            return 0, self.states.pop(0)
        if "versions" in words:
            return 0, "w0 abc\nw1 abc\n"
        return 0, self.workers.pop(0)


def _job() -> Job:
    return Job(
        tpu=Tpu("bert", "us-east5-a"), accelerator=Accelerator.parse("v4-16"),
        runtime_version="tpu-ubuntu2204-base", spot=True, preemptible=False, wheel="dist/b.whl",
        python="3.11", config="configs/bert_base.yaml", workdir="gs://b/r", overrides=[], env={},
        final_step=100,
    )  # fmt: skip


def test_supervisor_recreates_resumes_and_stops_when_finished():
    runner = ScriptedRunner(
        states=["PREEMPTED", "CREATING", "READY", "READY", "READY", "READY", "READY", "READY"],
        workers=[
            "w0 running\nw1 running",
            "w0 exited 0\nw1 exited 0",  # SIGTERM'd without finishing: start again
            "w0 exited 1\nw1 running",  # one failed, the other would hang: kill it
            "w0 exited 1\nw1 exited 137",  # all ended with a failure: count it, start again
            "w0 exited 0\nw1 exited 0",
        ],
        finished=[1, 1, 0],
    )
    assert Supervisor(runner, _job(), poll=0, sleep=lambda s: None).run() == 0
    assert runner.ran[:2] == ["delete", "create"]
    assert runner.ran[2:] == [
        "mkdir", "scp", "setup",  # copy the wheel and the worker script, install
        "scp", "start",  # copy config, start
        "finished?", "scp", "start",
        "stop --kill",
        "finished?", "scp", "start",
        "finished?",
    ]  # fmt: skip


def test_supervisor_gives_up_after_max_failures():
    runner = ScriptedRunner(
        states=["READY", "READY"], workers=["w0 exited 1\nw1 exited 1"] * 2, finished=[1, 1]
    )
    with pytest.raises(LaunchError, match="failed 2 times"):
        Supervisor(runner, _job(), poll=0, max_failures=1, sleep=lambda s: None).run()


def test_finished_means_the_last_step_is_committed():
    from orbax.checkpoint._src.path.atomicity_types import COMMIT_SUCCESS_FILE

    assert COMMIT_FILE == COMMIT_SUCCESS_FILE  # the file Orbax writes last into a committed step
    gs = ["gcloud", "storage", "ls", "gs://b/r/checkpoints/100/commit_success.txt"]
    assert _job().finished_command() == gs
    fuse = _job()
    fuse.workdir = "/gcs/b/r/"
    assert fuse.finished_command() == gs
    local = _job()
    local.workdir = "/data/runs/x"
    assert _remote(local.finished_command()) == [
        "test", "-f", "/data/runs/x/checkpoints/100/commit_success.txt",
    ]  # fmt: skip


def test_a_fuse_workdir_is_trained_in_as_its_bucket_url():
    tpu = Tpu("bert", "us-east5-a")
    for workers in (1, 4):
        _, start = start_commands(tpu, "c.yaml", "/gcs/bkt/runs/x", ["train.steps=9"], {}, workers)
        words = _remote(start)
        assert words[words.index("--workdir") + 1] == "gs://bkt/runs/x"
    assert "/gcs/" not in " ".join(_remote(start))
    with pytest.raises(LaunchError, match="shared"):
        start_commands(tpu, "c.yaml", "/mnt/runs/x", [], {}, workers=4)


def test_tpu_worker_script_mounts_with_a_rename_limit(tmp_path):
    """`prepare --output /gcs/...` ends with a directory rename, which gcsfuse refuses without
    --rename-dir-limit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"sudo": "exit 0", "mountpoint": "exit 1",
             "gcsfuse": f'echo "$@" > {tmp_path}/gcsfuse.args'}  # fmt: skip
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BERTGPT_HOME": str(tmp_path)}
    script = str(REPO / "launch/tpu_worker.sh")
    done = subprocess.run(["bash", script, "mount", "bkt"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "gcsfuse.args").read_text().split()
    assert "--implicit-dirs" in args and args[-2:] == ["bkt", "/gcs/bkt"]
    (limit,) = [a for a in args if a.startswith("--rename-dir-limit=")]
    assert int(limit.split("=")[1]) >= 10_000


def test_tpu_worker_script_start_status_stop(tmp_path):
    home = tmp_path / "bertgpt"
    fake = home / "venv" / "bin" / "bertgpt"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/usr/bin/env bash\necho \"args: $*\"\ntrap 'echo saved; exit 0' TERM\n"
                    "sleep 30 & wait\n")  # fmt: skip
    fake.chmod(0o755)
    env = {**os.environ, "BERTGPT_HOME": str(home)}
    script = str(REPO / "launch/tpu_worker.sh")

    def worker(*args: str) -> str:
        done = subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True)
        return done.stdout.split(None, 1)[-1].strip() if done.stdout else done.stderr

    def wait_for(state: str) -> None:
        for _ in range(100):
            if worker("status") == state:
                return
            subprocess.run(["sleep", "0.1"])
        raise AssertionError(f"worker never reached {state!r}: {worker('status')}")

    assert worker("status") == "idle"
    worker("start", "--config", "bertgpt/config.yaml")
    wait_for("running")
    assert "already running" in worker("start")
    worker("stop")
    wait_for("exited 0")
    log = (home / "logs" / "train.log").read_text()
    assert "args: train --config bertgpt/config.yaml" in log and "saved" in log


def test_local_launcher_stops_the_others_when_one_fails():
    import time

    start = time.monotonic()
    argvs = [[sys.executable, "-c", "import sys; sys.exit(3)"],
             [sys.executable, "-c", "import time; time.sleep(60)"]]  # fmt: skip
    assert local.run_all(argvs, {}, grace=1.0) == 3
    assert time.monotonic() - start < 30
    bad = local.main(["--processes", "2", "--devices", "1", "--", "train", "--config", "nope.yaml",
                      "--workdir", "x"])  # fmt: skip
    assert bad == 2


@pytest.mark.slow
def test_two_processes_of_four_devices_match_one_of_eight(tmp_path):
    from test_data_shared import default_store

    store = default_store()

    def start(processes: int, devices: int) -> subprocess.Popen:
        args = ["--processes", str(processes), "--devices", str(devices), "--", "train",
                "--config", "configs/bert_tiny.yaml", "--workdir", str(tmp_path / str(processes)),
                f"data.path={store}", "train.steps=5", "train.log_every=1"]  # fmt: skip
        return subprocess.Popen([sys.executable, "-m", "launch.local", *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

    runs = {n: start(n, 8 // n) for n in (1, 2)}
    outputs = {n: proc.communicate(timeout=600)[0] for n, proc in runs.items()}
    for n, proc in runs.items():
        assert proc.returncode == 0, outputs[n][-3000:]
    assert "[1] " in outputs[2]

    def losses(n: int) -> list[float]:
        rows = (tmp_path / str(n) / "metrics.jsonl").read_text().splitlines()
        return [json.loads(row)["loss"] for row in rows]

    assert len(losses(1)) == 5
    import numpy as np

    np.testing.assert_allclose(losses(2), losses(1), rtol=1e-5)


def test_distributed_detection(monkeypatch):
    from bertgpt_jax.core.errors import ConfigError
    from bertgpt_jax.parallel import distributed

    for name in ("BERTGPT_DISTRIBUTED", "SLURM_NTASKS", "SLURM_STEP_NODELIST",
                 "TPU_WORKER_HOSTNAMES", "BERTGPT_COORDINATOR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert distributed.auto_detected() is None
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert distributed.auto_detected() is None  # the batch script itself, outside `srun`
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-002]")
    assert distributed.auto_detected() == "slurm"
    monkeypatch.setenv("BERTGPT_DISTRIBUTED", "off")
    assert distributed.auto_detected() is None
    monkeypatch.setenv("BERTGPT_DISTRIBUTED", "yes")
    with pytest.raises(ConfigError, match="BERTGPT_DISTRIBUTED"):
        distributed.auto_detected()
    for name in ("BERTGPT_DISTRIBUTED", "SLURM_NTASKS", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0,t1k-w-1")
    assert distributed.auto_detected() == "tpu"
    with pytest.raises(ConfigError, match="process count"):
        distributed.initialize("127.0.0.1:1234", num_processes=2)
    with pytest.raises(ConfigError, match="must lie in"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
