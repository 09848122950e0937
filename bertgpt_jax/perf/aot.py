"""`bertgpt compile`: will this config fit the chips? An ahead-of-time check without TPUs.

    bertgpt compile --config configs/bert_base.yaml --topology v5p:2x2x1 [key=value ...]

compiles the real sharded train step (`Trainer`'s jitted step: same shardings, donation and
microbatching as `bertgpt train`) for the devices of a TPU topology that is only described,
never attached (`jax.experimental.topologies` with the libtpu wheel: `pip install
'bertgpt-jax[tpu]'`), on any machine, and reports per-chip memory from XLA's own buffer
assignment (`memory_analysis()`), the model FLOPs per step, and whether the step fits the chip's
HBM. Exit code 0: fits; 1: does not fit; 2: bad input. The idea follows MaxText's
`train_compile.py`.

What is reported, per chip:
* arguments: the state shard plus the batch shard; outputs: the new state shard (aliased to the
  donated arguments, so counted once); temporaries: activations, gradients, XLA scratch;
* peak = arguments + outputs - aliased + temporaries + generated code. This is what XLA's buffer
  assignment needs at once. It is an upper bound for the live set rather than a trace;
* FLOPs: the model FLOPs of `metrics.flops_per_step` (the count MFU uses). XLA's
  `cost_analysis()["flops"]` counts the body of a loop once, so with scanned layers or
  microbatches it undercounts; it is shown only when neither loops. Its "optimal_seconds" is not
  meaningful for TPUs compiled here and is not shown.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any

from bertgpt_jax.core.config import Config
from bertgpt_jax.core.errors import ConfigError

GIB = 1024**3
# HBM per chip, from the Cloud TPU system-architecture pages.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
# v4 compiles for its default megacore mode (two TensorCores as one device) only when told.
CHIP_CONFIG = {"v4": "megacore"}
_TOPOLOGY = re.compile(r"^(?P<gen>v\w+):(?P<shape>\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
    generation: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.generation}:{self.shape}"

    @property
    def chips(self) -> int:
        return math.prod(int(n) for n in self.shape.split("x"))

    @property
    def hbm_bytes(self) -> int:
        return HBM_GIB[self.generation] * GIB


def parse_topology(text: str) -> Topology:
    """'v5p:2x2x1' -> Topology; anything else is a ConfigError naming the valid forms."""
    match = _TOPOLOGY.match(text.strip())
    known = ", ".join(HBM_GIB)
    if not match:
        raise ConfigError(
            f"--topology {text!r} is not of the form GENERATION:AxB[xC], e.g. v5p:2x2x1, "
            f"v4:2x2x2, v5e:4x4 or v6e:2x2 (generations: {known})."
        )
    if match["gen"] not in HBM_GIB:
        raise ConfigError(f"--topology {text!r}: unknown TPU generation; use one of {known}.")
    return Topology(match["gen"], match["shape"])


def _compile_only_environment(topology: Topology) -> None:
    """Lets libtpu describe a topology on a host without TPUs, quietly and beside other users."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no exclusive /tmp/libtpu_lockfile
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server here
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    accelerator = "v5litepod" if topology.generation == "v5e" else topology.generation
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{accelerator}-8")


def topology_devices(topology: Topology, chip_config: str | None = None) -> list[Any]:
    """The compile-only devices of a described TPU topology (no TPU needed)."""
    _compile_only_environment(topology)
    import jax
    from jax.experimental import topologies

    # Compiling needs no devices of this host; never grab a TPU that might be attached.
    jax.config.update("jax_platforms", "cpu")
    config_name = chip_config if chip_config is not None else CHIP_CONFIG.get(topology.generation)
    kwargs = {"chip_config_name": config_name} if config_name else {}
    try:
        return list(topologies.get_topology_desc(topology.name, "tpu", **kwargs).devices)
    except RuntimeError as err:  # JaxRuntimeError is a RuntimeError too
        if "TPU support not installed" in str(err):
            raise ConfigError(
                "the ahead-of-time check needs the libtpu wheel: pip install 'bertgpt-jax[tpu]' "
                "(or 'jax[tpu]==0.10.2')."
            ) from err
        raise ConfigError(f"libtpu cannot describe --topology {topology.name}: {err}.") from err


def _abstract_args(trainer: Any, config: Config) -> tuple[Any, dict[str, Any]]:
    """ShapeDtypeStructs with shardings for (state, batch): nothing is allocated."""
    import jax

    from bertgpt_jax.parallel.sharding import batch_sharding
    from bertgpt_jax.tasks import synthetic_batch

    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        trainer.abstract_state,
        trainer.state_shardings,
    )
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(trainer.mesh, v.ndim))
        for k, v in synthetic_batch(config).items()
    }
    return state, batch


def _check_batch(config: Config, mesh: Any) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    per_micro = config.train.batch_size // config.train.microbatches
    if per_micro % shards:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} over train.microbatches="
            f"{config.train.microbatches} gives {per_micro} rows per microbatch, which do not "
            f"divide over the {shards} data-parallel shards (mesh.data x mesh.fsdp)."
        )


def compile_report(config: Config, topology: Topology, chip_config: str | None = None) -> dict:
    """Compiles the train step for `topology` and returns the figures (sizes in bytes)."""
    devices = topology_devices(topology, chip_config)

    from bertgpt_jax.parallel.sharding import make_mesh
    from bertgpt_jax.training.metrics import device_peak_flops, flops_per_step
    from bertgpt_jax.training.step import Trainer

    mesh = make_mesh(config.mesh, devices)
    _check_batch(config, mesh)
    trainer = Trainer(config, mesh)
    state, batch = _abstract_args(trainer, config)
    flops = flops_per_step(config)
    peak_flops = device_peak_flops(devices[0])
    report: dict[str, Any] = {
        "topology": topology.name,
        "device_kind": devices[0].device_kind,
        "chips": len(devices),
        "mesh": dict(mesh.shape),
        "hbm_bytes": topology.hbm_bytes,
        "model_flops_per_step": flops,
        "model_flops_per_chip": flops / len(devices),
        "step_seconds_at_peak": None if not peak_flops else flops / len(devices) / peak_flops,
    }
    start = time.perf_counter()
    lowered = trainer.lower_train_step(state, batch)
    try:
        compiled = lowered.compile()
    except RuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        report.update(fits=False, compile_error=str(err).strip().splitlines()[0])
        return report
    report["compile_seconds"] = time.perf_counter() - start
    report.update(_memory(compiled.memory_analysis(), topology.hbm_bytes))
    if not config.model.scan_layers and config.train.microbatches == 1:
        cost = compiled.cost_analysis() or {}
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        report["xla_flops_per_chip"] = float(cost.get("flops", float("nan")))
    return report


def _memory(stats: Any, hbm_bytes: int) -> dict[str, Any]:
    figures = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "code_bytes": int(stats.generated_code_size_in_bytes),
    }
    peak = (
        figures["argument_bytes"]
        + figures["output_bytes"]
        - figures["alias_bytes"]
        + figures["temp_bytes"]
        + figures["code_bytes"]
    )
    return {**figures, "peak_bytes": peak, "fits": peak <= hbm_bytes}


def format_report(report: dict, config_path: str) -> str:
    """The human-readable table printed by `bertgpt compile`."""
    gib = lambda n: f"{n / GIB:8.2f} GiB"  # noqa: E731
    mesh = " ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [
        f"{config_path} on {report['topology']}: {report['chips']} chips "
        f"({report['device_kind']}), mesh {mesh}",
        f"  model FLOPs per step  {report['model_flops_per_step'] / 1e12:10.2f} TFLOP "
        f"({report['model_flops_per_chip'] / 1e12:.2f} per chip)",
    ]
    if report["step_seconds_at_peak"]:
        lines.append(f"  step time at 100% MFU {report['step_seconds_at_peak'] * 1e3:10.1f} ms")
    if "compile_error" in report:
        lines += [
            f"  HBM per chip          {gib(report['hbm_bytes'])}",
            f"  fits                  NO: XLA ran out of memory: {report['compile_error']}",
        ]
        return "\n".join(lines)
    lines += [
        f"  compile time          {report['compile_seconds']:10.1f} s",
        "  per chip:",
        f"    arguments           {gib(report['argument_bytes'])}  (state + batch shards)",
        f"    outputs             {gib(report['output_bytes'])}  "
        f"({report['alias_bytes'] / GIB:.2f} GiB aliased to donated arguments)",
        f"    temporaries         {gib(report['temp_bytes'])}",
        f"    generated code      {gib(report['code_bytes'])}",
        f"    peak                {gib(report['peak_bytes'])}",
        f"  HBM per chip          {gib(report['hbm_bytes'])}",
        f"  fits                  {'yes' if report['fits'] else 'NO'} "
        f"({100 * report['peak_bytes'] / report['hbm_bytes']:.1f}% of HBM)",
    ]
    if "xla_flops_per_chip" in report:
        lines.append(f"  XLA FLOPs per chip    {report['xla_flops_per_chip'] / 1e12:10.2f} TFLOP")
    return "\n".join(lines)
