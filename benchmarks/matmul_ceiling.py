"""How close to the matmul peak a config's train step could get on this machine, at best.

Compiles the train step of a config (the same one `bertgpt bench` times), reads every dot of
the optimised HLO (shapes, dimension numbers, operand dtypes), times each dot alone at exactly
that shape with XLA's own kernels, and sums the times: the step time if every non-matmul op
(layer norms, softmax, GELU, dropout, the loss, the optimizer update) were free. Divided into
the dots' FLOPs, that is the ceiling on the fraction of the measured matmul peak that the step
can reach; the optimizer's memory traffic (read params, grads and both moments, write three)
is a second floor, measured here as a fused elementwise pass over arrays of the model's size.

    .venv/bin/python benchmarks/matmul_ceiling.py --preset small --family bert
    .venv/bin/python benchmarks/matmul_ceiling.py --config configs/gpt_tiny.yaml model.dtype=bfloat16

Prints one JSON line. Run it on an idle machine: every dot is timed by its best of --repeats.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_peers  # noqa: E402

from bertgpt_jax.core.config import load_config  # noqa: E402
from bertgpt_jax.parallel.sharding import make_mesh  # noqa: E402
from bertgpt_jax.perf import hlo  # noqa: E402
from bertgpt_jax.perf.bench import best_time, matmul_peak_flops  # noqa: E402
from bertgpt_jax.tasks import synthetic_batch  # noqa: E402
from bertgpt_jax.training.metrics import flops_per_step  # noqa: E402
from bertgpt_jax.training.step import Trainer  # noqa: E402

DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32, "f16": jnp.float16}


def time_dot(spec: hlo.DotSpec, repeats: int) -> float:
    ka, kb = jax.random.split(jax.random.key(0))  # random, like the peak's operands
    a = jax.random.normal(ka, spec[1], jnp.float32).astype(DTYPES[spec[0]])
    b = jax.random.normal(kb, spec[3], jnp.float32).astype(DTYPES[spec[2]])
    dims, out = hlo.dimension_numbers(spec), DTYPES[spec[4]]
    f = jax.jit(lambda x, y: lax.dot_general(x, y, dims, preferred_element_type=out))
    return best_time(lambda: f(a, b), repeats)


def optimizer_floor(num_params: int, repeats: int) -> float:
    """Seconds of one fused elementwise pass reading four float32 arrays of the model's size and
    writing three: the least memory traffic an Adam-style update needs."""
    p, g, m, v = (jnp.full((num_params,), 1.0 + i, jnp.float32) for i in range(4))

    def update(p, g, m, v):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        return p - 1e-3 * (m / (jnp.sqrt(v) + 1e-8) + 0.01 * p), m, v

    f = jax.jit(update)
    return best_time(lambda: f(p, g, m, v), repeats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=sorted(compare_peers.CONFIGS), help="a benchmark shape")
    ap.add_argument("--family", choices=["bert", "gpt"], default="bert")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--config", help="a config YAML instead of --preset")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    if args.preset:
        path, overrides = compare_peers.preset_config(args.preset, args.family, args.dtype)
    elif args.config:
        path, overrides = args.config, []
    else:
        ap.error("give --preset or --config")
    # The HLO of a scan holds each layer's dots once: count them on the unrolled program.
    config = load_config(path, [*overrides, *args.overrides, "model.scan_layers=false"])
    trainer = Trainer(config, make_mesh(config.mesh, jax.devices()[:1]))
    state = trainer.init(config.train.seed)
    batch = trainer.device_batch(synthetic_batch(config))
    specs = hlo.dot_specs(trainer.lower_train_step(state, batch).compile().as_text())
    flops = sum(hlo.dot_flops(s) * n for s, n in specs.items())
    seconds = sum(time_dot(s, args.repeats) * n for s, n in specs.items())
    params = sum(x.size for x in jax.tree.leaves(state.params))
    opt_floor = optimizer_floor(params, args.repeats)
    peak = matmul_peak_flops(config.model.dtype, repeats=50)  # best of 50: this VM is noisy
    print(
        json.dumps(
            {
                "family": config.model.family,
                "dtype": config.model.dtype,
                "dots": sum(specs.values()),
                "dot_flops": flops,
                "model_flops": flops_per_step(config),
                "non_bf16_dots": sum(
                    n for s, n in specs.items() if (s[0], s[2]) != ("bf16", "bf16")
                ),
                "dots_alone_s": seconds,
                "dots_alone_tflops": flops / seconds / 1e12,
                "peak_tflops": peak / 1e12,
                "ceiling_fraction_of_peak": flops / seconds / peak,
                "params": params,
                "optimizer_floor_s": opt_floor,
                "ceiling_with_optimizer": flops / (seconds + opt_floor) / peak,
                "step_time_for_60pct_s": flops_per_step(config) / (0.6 * peak),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
