"""Side-by-side training speed: `bertgpt bench` against the HuggingFace peers (PyTorch eager,
torch.compile, the last HF Flax models) on the same config, interleaved round by round in one
run so that a noisy neighbour hits every implementation alike. Prints a Markdown table.

    bash ../shared/bench/setup_peers.sh      # once: the peers' venvs
    .venv/bin/python benchmarks/compare_peers.py --configs small,medium --rounds 3

Each implementation runs as its own process per round; the table gives the median over rounds
of each run's median step time. Peers use their scripts in --peers-bench (../shared/bench).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bertgpt_jax.perf import allocator

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "small": dict(layers=4, hidden=256, heads=4, seq=128, batch=16),
    "medium": dict(layers=6, hidden=512, heads=8, seq=128, batch=8),
}
VOCAB = 8192


def preset_config(config: str, family: str, dtype: str) -> tuple[str, list[str]]:
    """A benchmark shape as `bertgpt` sees it: the base config file and its overrides."""
    c = CONFIGS[config]
    base = ROOT / "configs" / ("bert_tiny.yaml" if family == "bert" else "gpt_tiny.yaml")
    overrides = [
        f"model.num_layers={c['layers']}",
        f"model.hidden_size={c['hidden']}",
        f"model.num_heads={c['heads']}",
        f"model.mlp_dim={4 * c['hidden']}",
        f"model.vocab_size={VOCAB}",
        "model.max_len=512",
        f"model.dtype={dtype}",
        f"data.seq_len={c['seq']}",
        "data.max_predictions_per_seq=20",
        f"train.batch_size={c['batch']}",
        "mesh.data=1",
    ]
    return str(base), overrides


def ours_cmd(config: str, family: str, dtype: str, steps: int, extra: list[str]) -> list[str]:
    base, overrides = preset_config(config, family, dtype)
    bench = [sys.executable, "-m", "bertgpt_jax.cli", "bench", "--config", base]
    return bench + ["--steps", str(steps), *overrides, *extra]


def peer_cmd(
    impl: str, config: str, family: str, dtype: str, steps: int, args: argparse.Namespace
) -> list[str]:
    flags = [f"--{k}={v}" for k, v in CONFIGS[config].items()]
    flags += [f"--family={family}", f"--steps={steps}", f"--dtype={dtype}", f"--vocab={VOCAB}"]
    bench = Path(args.peers_bench)
    if impl == "hf-flax":
        return [args.flax_python, str(bench / "peer_hf_flax.py"), *flags]
    cmd = [args.torch_python, str(bench / "peer_hf_torch.py"), *flags]
    return cmd + (["--compile"] if impl == "torch-compile" else [])


def run(cmd: list[str], preload: str | None = None) -> dict | None:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    if preload:
        env["LD_PRELOAD"] = preload
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        print(
            f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-1500:]}", file=sys.stderr
        )
        return None
    return json.loads(lines[-1])


def step_time(result: dict) -> float:
    return result.get("step_time_median") or result["step_s_median"]


def main() -> int:
    peers = os.path.expanduser("~/.cache/bertgpt-peers")
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configs", default="small,medium")
    p.add_argument("--families", default="bert,gpt")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--impls", default="ours,torch,torch-compile,hf-flax")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--ours-extra", default="", help="extra overrides for bertgpt bench")
    p.add_argument(
        "--peers-tcmalloc",
        action="store_true",
        help="run the peers with tcmalloc preloaded too (`bertgpt` preloads it itself where "
        "installed; BERTGPT_ALLOCATOR=system turns that off)",
    )
    p.add_argument("--peers-bench", default=str(ROOT.parent / "shared" / "bench"))
    p.add_argument("--torch-python", default=os.path.join(peers, "torch/bin/python"))
    p.add_argument("--flax-python", default=os.path.join(peers, "flax/bin/python"))
    args = p.parse_args()
    if args.peers_tcmalloc and allocator.find_tcmalloc({}) is None:
        p.error(
            "--peers-tcmalloc: no tcmalloc found; install it (apt-get install libtcmalloc-minimal4)"
        )
    times: dict[tuple, list[float]] = {}
    for config in args.configs.split(","):
        for family in args.families.split(","):
            for dtype in args.dtypes.split(","):
                impls = args.impls.split(",")
                for r in range(args.rounds):
                    for impl in impls[r % len(impls) :] + impls[: r % len(impls)]:
                        preload = None
                        if impl == "ours":
                            cmd = ours_cmd(
                                config, family, dtype, args.steps, args.ours_extra.split()
                            )
                        else:
                            cmd = peer_cmd(impl, config, family, dtype, args.steps, args)
                            if args.peers_tcmalloc:
                                preload = allocator.find_tcmalloc({})
                        result = run(cmd, preload)
                        if result is not None:
                            times.setdefault((config, family, dtype, impl), []).append(
                                step_time(result)
                            )
                            print(
                                f"{config} {family} {dtype} {impl}: {step_time(result):.4f} s",
                                file=sys.stderr,
                            )
    print("| config | family | dtype | impl | step s (median of rounds) | tokens/s |")
    print("|---|---|---|---|---|---|")
    for (config, family, dtype, impl), ts in times.items():
        tokens = CONFIGS[config]["seq"] * CONFIGS[config]["batch"]
        med = statistics.median(ts)
        print(f"| {config} | {family} | {dtype} | {impl} | {med:.3f} | {tokens / med:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
