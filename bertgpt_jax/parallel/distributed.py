"""Multi-process start-up: `jax.distributed.initialize` before any other JAX call.

Three ways in, first match wins:

* explicit: a coordinator address (`--coordinator host:port` or BERTGPT_COORDINATOR) with the
  process count and this process's id (`--num-processes`/`--process-id` or
  BERTGPT_NUM_PROCESSES/BERTGPT_PROCESS_ID). BERTGPT_LOCAL_DEVICES=K additionally gives each
  process K CPU devices with gloo collectives (the local loopback launcher, launch/local.py);
* SLURM: inside an `srun` step with more than one task (SLURM_NTASKS > 1 and
  SLURM_STEP_NODELIST set), JAX reads everything from SLURM_* and gives each task the GPU
  numbered SLURM_LOCALID (one task per GPU; see launch/slurm.sbatch);
* TPU pods: BERTGPT_DISTRIBUTED=auto (set by launch/tpu.py on every worker), or a GKE pod's
  TPU_WORKER_HOSTNAMES listing several hosts; JAX then asks the TPU metadata for the rest.

BERTGPT_DISTRIBUTED=off disables the automatic cases. A single process needs nothing.
"""

from __future__ import annotations

import os

from bertgpt_jax.core.errors import ConfigError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be a whole number.") from None


def auto_detected() -> str | None:
    """The multi-process environment JAX can configure by itself ("slurm", "tpu"), or None."""
    mode = os.environ.get("BERTGPT_DISTRIBUTED", "").lower()
    if mode == "off":
        return None
    if mode == "auto":
        return "tpu" if "SLURM_STEP_NODELIST" not in os.environ else "slurm"
    if mode:
        raise ConfigError(f"BERTGPT_DISTRIBUTED={mode!r} is not valid: use 'auto' or 'off'.")
    if (_env_int("SLURM_NTASKS") or 1) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        return "slurm"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu"
    return None


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Initialises jax.distributed when this is one process of several; a no-op otherwise."""
    coordinator = coordinator or os.environ.get("BERTGPT_COORDINATOR")
    num_processes = (
        num_processes if num_processes is not None else _env_int("BERTGPT_NUM_PROCESSES")
    )
    process_id = process_id if process_id is not None else _env_int("BERTGPT_PROCESS_ID")
    local_devices = _env_int("BERTGPT_LOCAL_DEVICES")

    if coordinator:
        if num_processes is None or process_id is None:
            raise ConfigError(
                "a coordinator address needs the process count and this process's id too: pass "
                "--num-processes and --process-id (or BERTGPT_NUM_PROCESSES/BERTGPT_PROCESS_ID)."
            )
        if not 0 <= process_id < num_processes:
            raise ConfigError(
                f"--process-id {process_id} must lie in [0, {num_processes}) for "
                f"--num-processes {num_processes}."
            )
        import jax

        if local_devices:
            jax.config.update("jax_num_cpu_devices", local_devices)
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif auto_detected():
        import jax

        jax.distributed.initialize()
