"""Multi-process start-up: `jax.distributed.initialize` before any other JAX call.

Auto-detected on TPU VM pods (the TPU metadata server) and under SLURM (SLURM_* variables);
or explicit from flags or the environment: BERTGPT_COORDINATOR (host:port),
BERTGPT_NUM_PROCESSES, BERTGPT_PROCESS_ID, and optionally BERTGPT_LOCAL_DEVICES (CPU devices
per process, for the local loopback launcher).
"""

from __future__ import annotations

import os

from bertgpt_jax.config import ConfigError


def _tpu_pod() -> bool:
    # TPU VMs set these for every worker of a slice; a single-host VM needs no initialisation.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Initialises jax.distributed when this is one process of several; a no-op otherwise."""
    coordinator = coordinator or os.environ.get("BERTGPT_COORDINATOR")
    env_n = os.environ.get("BERTGPT_NUM_PROCESSES")
    env_id = os.environ.get("BERTGPT_PROCESS_ID")
    num_processes = num_processes if num_processes is not None else (int(env_n) if env_n else None)
    process_id = process_id if process_id is not None else (int(env_id) if env_id else None)
    local_devices = os.environ.get("BERTGPT_LOCAL_DEVICES")

    import jax

    if coordinator:
        if num_processes is None or process_id is None:
            raise ConfigError(
                "a coordinator address needs the process count and this process's id too: pass "
                "--num-processes and --process-id (or BERTGPT_NUM_PROCESSES/BERTGPT_PROCESS_ID)."
            )
        if local_devices:
            jax.config.update("jax_num_cpu_devices", int(local_devices))
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif _tpu_pod() or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
