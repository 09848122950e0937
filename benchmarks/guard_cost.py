"""What the train step's finiteness guard costs: the same step with and without it, compiled in
one process and timed in alternating rounds, so drift and a noisy neighbour hit both alike
(separate `bertgpt bench` processes differ from run to run by more than the effect).

"Without" is the guard as it was before issue 16: the update is applied when the loss and the
gradient norm are finite, whatever it does to the parameters and moments. "With" is the default
AdamW (`FusedAdamW`): that, and a proof from the bounds it carries that every new parameter and
moment is finite (the probe behind it does not run on these steps). "Measured" is the control:
the same proof from bounds measured afresh each step, one fused pass over the parameters and
both moments (main's guard before the bounds were carried), a cost the method should resolve.

    .venv/bin/python benchmarks/guard_cost.py --preset medium --family gpt --rounds 12

Prints one JSON line: the median step time of each, and the quartiles over rounds of the
per-round ratios to "without". Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_peers  # noqa: E402

from bertgpt_jax.core.config import load_config  # noqa: E402
from bertgpt_jax.parallel.sharding import make_mesh  # noqa: E402
from bertgpt_jax.perf import allocator  # noqa: E402
from bertgpt_jax.tasks import synthetic_batch  # noqa: E402
from bertgpt_jax.training.optim import FusedAdamW  # noqa: E402
from bertgpt_jax.training.step import Trainer  # noqa: E402


class Unguarded(FusedAdamW):
    """FusedAdamW deciding from the loss and gradient norm alone (the guard before issue 16)."""

    def _decide(self, grads: Any, state: Any, params: Any, decayed: Any, finite: Any, k: Any):
        return finite, state.bounds


class Measured(FusedAdamW):
    """FusedAdamW measuring its bounds from the state at every step (one pass over the state)."""

    def _decide(self, grads: Any, state: Any, params: Any, decayed: Any, finite: Any, k: Any):
        state = self.restored(state, params)
        return super()._decide(grads, state, params, decayed, finite, k)


def _time_steps(trainer: Trainer, state: Any, batch: Any, steps: int) -> tuple[Any, list[float]]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return state, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=sorted(compare_peers.CONFIGS), default="medium")
    ap.add_argument("--family", choices=["bert", "gpt"], default="gpt")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (the report gives quartiles over rounds)")
    path, overrides = compare_peers.preset_config(args.preset, args.family, args.dtype)
    config = load_config(path, [*overrides, *args.overrides])
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    guarded = Trainer(config, mesh)
    if not isinstance(guarded.optimizer, FusedAdamW):
        ap.error("the guard compared here is AdamW's: leave train.optimizer at adamw")
    variants = {"with": guarded}
    for name, kind in (("without", Unguarded), ("measured", Measured)):
        variants[name] = Trainer(config, mesh)
        # Swapped in before the first call, which is when the step is traced and compiled.
        fields = dataclasses.fields(FusedAdamW)
        variants[name].optimizer = kind(**{f.name: getattr(guarded.optimizer, f.name)
                                           for f in fields})  # fmt: skip
    batch = guarded.device_batch(synthetic_batch(config))
    states = {name: t.init(config.train.seed) for name, t in variants.items()}
    for name, t in variants.items():  # compile and warm up
        states[name], _ = _time_steps(t, states[name], batch, 3)
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {"with": [], "measured": []}
    for r in range(args.rounds):
        medians = {}
        for name in names[r % 3 :] + names[: r % 3]:  # rotate which goes first
            states[name], t = _time_steps(variants[name], states[name], batch, args.steps)
            times[name] += t
            medians[name] = statistics.median(t)
        for name in ratios:
            ratios[name].append(medians[name] / medians["without"])
    report = {
        "bench": "guard_cost",
        "family": args.family,
        "shape": args.preset,
        "dtype": args.dtype,
        "allocator": allocator.loaded(),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        **{f"step_ms_{name}": 1e3 * statistics.median(t) for name, t in times.items()},
        **{f"ratio_{name}_quartiles": statistics.quantiles(r, n=4) for name, r in ratios.items()},
        "applied": all(
            int(jax.device_get(s.opt_state.updates)) == int(jax.device_get(s.step))
            for s in states.values()
        ),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
