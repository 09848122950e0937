"""Side-by-side generation speed: our KV-cache decode loop against transformers' PyTorch
`generate` (eager with its dynamic cache, and with its static cache + torch.compile) on the
same weights, greedy, prompts of 64 tokens, 128 new tokens, batch 1 and 8.

    .venv/bin/python benchmarks/generate_peers.py --shapes small --batches 1,8

For each implementation it reports the compile time (first call less a warm one), the prefill
time (a warm call that makes one token), and the decode rate (the other 127 tokens of each row
per second: batch * 127 / (time for 128 tokens - time for 1)), best of --repeats. The floor is
the memory-bandwidth time of one decode step: the weights plus the full cache (prompt + new
tokens, all layers, keys and values) read once per step, over a measured copy bandwidth; its
tokens/s is the most any implementation can decode on this machine. The bandwidth is measured
on a copy of the step's own size, so where weights and cache fit in the CPU caches (the small
shape) the floor uses the caches' bandwidth. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from bertgpt_jax import load_pretrained
from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.generation import decode
from bertgpt_jax.hf import files as hf_files

SHAPES = {
    "small": dict(num_layers=4, hidden_size=256, num_heads=4, vocab_size=8192),
    "medium": dict(num_layers=6, hidden_size=512, num_heads=8, vocab_size=8192),
    "gpt2_small": dict(num_layers=12, hidden_size=768, num_heads=12, vocab_size=50257),
}
PROMPT, NEW = 64, 128


def _config(shape: str, dtype: str) -> ModelConfig:
    s = SHAPES[shape]
    return ModelConfig(
        family="gpt", mlp_dim=4 * s["hidden_size"], max_len=1024, type_vocab_size=0,
        activation="gelu_tanh", norm_position="pre", layer_norm_eps=1e-5, dropout_rate=0.0,
        attention_dropout_rate=0.0, dtype=dtype, **s,  # type: ignore[arg-type]
    )  # fmt: skip


def _random_params(config: ModelConfig) -> dict:
    from flax import nnx

    from bertgpt_jax.tasks import build_model

    model = nnx.eval_shape(lambda: build_model(config, jax.random.key(0)))
    shapes = nnx.state(model, nnx.Param).to_pure_dict()
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: (0.02 * rng.standard_normal(x.shape)).astype(np.float32), shapes)


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _ours(path: Path, prompts: np.ndarray, dtype: str, repeats: int) -> dict[str, float]:
    model = load_pretrained(path, dtype=dtype)  # type: ignore[arg-type]
    gen = model.generator()
    ids = prompts.tolist()
    start = time.perf_counter()
    out = gen.generate(ids, NEW, temperature=0.0)
    first = time.perf_counter() - start
    assert all(len(o[0]) == NEW for o in out)
    # Prefill: the same compiled program (same buckets) asked for a single token.
    rule, values = decode.sampling.make_params(0.0)
    program = gen._program_for(len(ids), PROMPT, NEW, rule, False)
    one = gen._request(program, ids, 1, [0] * len(ids), (), values)
    full = gen._request(program, ids, NEW, [0] * len(ids), (), values)

    def run(request: decode.Request) -> None:
        jax.block_until_ready(gen._run(program, gen._state, request))

    prefill = _best(lambda: run(one), repeats)
    total = _best(lambda: run(full), repeats)
    return {"compile": max(first - total, 0.0), "prefill": prefill, "total": total}


def _torch(path: Path, prompts: np.ndarray, compiled: bool, repeats: int) -> dict[str, float]:
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="sdpa").eval()
    ids = torch.tensor(prompts)
    kwargs: dict = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if compiled:
        # transformers' own recipe: a static cache, and generate compiles the decode step
        # (fullgraph, static shapes); "reduce-overhead" means CUDA graphs, so "default" on CPU.
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
        config._compile_all_devices = True  # generate compiles only on accelerators otherwise
        kwargs.update(cache_implementation="static", compile_config=config)

    def run(n: int) -> None:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, **kwargs)  # fmt: skip
        assert out.shape[1] == PROMPT + n

    start = time.perf_counter()
    run(NEW)
    first = time.perf_counter() - start
    prefill = _best(lambda: run(1), repeats)
    total = _best(lambda: run(NEW), repeats)
    return {"compile": max(first - total, 0.0), "prefill": prefill, "total": total}


def _bandwidth(nbytes: int) -> float:
    """Bytes per second moved by a copy of `nbytes` in all (half read, half written), best of
    20: measured at the step's own size, so a working set that fits in the caches gets the
    caches' bandwidth (a fixed large copy would put the floor below what is achieved)."""
    a = np.ones(max(nbytes // 8, 1024), np.float32)
    b = np.empty_like(a)
    return 2 * a.nbytes / _best(lambda: np.copyto(b, a), 20)


def _floor(config: ModelConfig, batch: int) -> tuple[float, float]:
    """(decode tokens/s if a step only had to read the weights and the whole cache once, the
    bandwidth in bytes/s it assumes)."""
    h, f, v = config.hidden_size, config.mlp_dim, config.vocab_size
    params = config.num_layers * (4 * h * h + 2 * h * f) + v * h
    width = 2 if config.dtype == "bfloat16" else 4
    cache = 2 * config.num_layers * batch * (PROMPT + NEW) * h * width
    step_bytes = 4 * params + cache  # parameters are float32 in every implementation here
    bandwidth = _bandwidth(step_bytes)
    return batch / (step_bytes / bandwidth), bandwidth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="small,medium,gpt2_small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument(
        "--impls", default="ours,torch-eager,torch-static-compile", help="also: ours-bf16"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| shape | batch | impl | compile s | prefill s | decode tok/s | floor tok/s (GB/s) |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        config = _config(shape, "float32")
        with tempfile.TemporaryDirectory() as tmp:
            hf_files.save_hf(tmp, _random_params(config), config)
            for batch in (int(b) for b in args.batches.split(",")):
                rng = np.random.default_rng(batch)
                prompts = rng.integers(10, config.vocab_size, (batch, PROMPT))
                for impl in args.impls.split(","):
                    if impl.startswith("ours"):
                        dtype = "bfloat16" if impl.endswith("bf16") else "float32"
                        r = _ours(Path(tmp), prompts, dtype, args.repeats)
                    else:
                        dtype = "float32"
                        r = _torch(Path(tmp), prompts, "compile" in impl, args.repeats)
                    rate = batch * (NEW - 1) / (r["total"] - r["prefill"])
                    floor, bandwidth = _floor(dataclasses.replace(config, dtype=dtype), batch)
                    print(f"| {shape} | {batch} | {impl} | {r['compile']:.2f} | "
                          f"{r['prefill']:.4f} | {rate:.0f} | {floor:.0f} "
                          f"({bandwidth / 1e9:.0f}) |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
