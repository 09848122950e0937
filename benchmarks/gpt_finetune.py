"""GPT fine-tuning, measured: a small GPT pretrained on the embedded corpus (stdlib
docstrings), exported, then fine-tuned with `bertgpt finetune` from the export: (a) causal-lm
on an installed package's docstrings (numpy's by default, one JSONL document per module, split
by module): held-out loss and perplexity before and after; (b) sft on stdlib pairs (prompt =
an instruction and a function's docstring first line, completion = its `def` line, split by
function): held-out completion loss before and after, greedy samples and how many parse, name
the function or match. Then the step's throughput: ours (`Trainer.train_step`, scanned and
unrolled) against transformers' GPT2LMHeadModel on PyTorch (eager, torch.compile; fp32, bf16
autocast) on the same export and packed batches (document_attention off: GPT-2 has none),
AdamW, clipping at 1, the same schedule; under 1.25x, also the matmul ceiling
(benchmarks/matmul_ceiling.py). "Before" scores the init with the same evaluator on the same
validation windows. Run it on an idle machine:

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/gpt_finetune.py --workdir runs/gptft
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_FLAGS = os.environ.get("XLA_FLAGS", "").split()  # one device: no forced host device count
os.environ["XLA_FLAGS"] = " ".join(f for f in _FLAGS if "force_host_platform" not in f)

from bertgpt_jax.perf import allocator  # noqa: E402  (no JAX import)

_LIB = allocator.find_tcmalloc(os.environ)
if __name__ == "__main__" and _LIB and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
    # the allocator the `bertgpt` command runs on, for JAX and torch alike
    env = dict(os.environ, LD_PRELOAD=_LIB, BERTGPT_ALLOCATOR_REEXECUTED="1")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import argparse  # noqa: E402
import ast  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_adaptation import _bertgpt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = "Write the signature of the function described as: "
SMALL = ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4",
         "model.mlp_dim=1024", "model.max_len=256", "data.seq_len=128"]  # fmt: skip


def pretrain(work: Path, steps: int, quick: bool) -> Path:
    """gpt_tiny (4 x 256 unless --quick) on the embedded corpus, exported; reused if there."""
    from bertgpt_jax.data.embedded import prepare_default

    hf = work / "hf"
    if not (hf / "model.safetensors").is_file():
        store = prepare_default(work / "general", vocab_size=1024)
        shape = [] if quick else [*SMALL, "train.warmup_steps=100"]
        _bertgpt("train", "--config", ROOT / "configs" / "gpt_tiny.yaml", "--workdir",
                 work / "pretrain", f"data.path={store}", f"train.steps={steps}",
                 f"checkpoint.every_steps={steps}", *shape)  # fmt: skip
        _bertgpt("export", "--workdir", work / "pretrain", "--output", hf)
    return hf


def _docstrings(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """One module's docstrings (blank-line separated) and its (docstring first line,
    `def name(arguments):`) pairs, read with `ast` (nothing imported)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return "", []
    texts, pairs = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc or not doc.strip():
            continue
        texts.append(inspect.cleandoc(doc))
        first = texts[-1].splitlines()[0].strip()
        if isinstance(node, ast.FunctionDef) and node.name[0] != "_" and len(first) > 15:
            signature = f"def {node.name}({ast.unparse(node.args)}):"
            if len(signature) <= 100:
                pairs.append((first, signature))
    return "\n\n".join(texts), pairs


def _sources(root: Path) -> list[Path]:
    skip = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def documents(work: Path, package: str, max_chars: int) -> tuple[Path, Path]:
    """(a): one {"text"} document per module of `package` with docstrings; 10% of the modules
    (at least 2) held out."""
    files = _sources(Path(sysconfig.get_paths()["purelib"]) / package)
    random.Random(0).shuffle(files)
    docs, total = [], 0
    for path in files:
        text = _docstrings(path)[0]
        if len(text) >= 200 and total < max_chars:
            docs.append({"text": text[:50_000]})
            total += len(docs[-1]["text"])
    held = max(2, len(docs) // 10)
    out = work / "data" / package
    return _jsonl(out / "train.jsonl", docs[held:]), _jsonl(out / "validation.jsonl", docs[:held])


def pairs(work: Path, held: int, limit: int) -> tuple[Path, Path, list[dict]]:
    """(b): prompt -> completion examples from the standard library, one per distinct
    docstring first line; `held` random functions held out."""
    seen: dict[str, str] = {}
    for path in _sources(Path(sysconfig.get_paths()["stdlib"])):
        for first, signature in _docstrings(path)[1]:
            seen.setdefault(first, signature)
    rows = [{"prompt": f"{INSTRUCTION}{first}\n", "completion": sig} for first, sig in seen.items()]
    random.Random(0).shuffle(rows)
    train, validation = rows[held : held + limit], rows[:held]
    out = work / "data" / "signatures"
    files = _jsonl(out / "train.jsonl", train), _jsonl(out / "validation.jsonl", validation)
    return *files, validation


def finetune(task: str, init: Path, train: Path, val: Path, run: Path, extra: list[str]) -> dict:
    """`bertgpt finetune` (from scratch each time); the held-out metrics of the init (before)
    and of the run's last step (after)."""
    line = _bertgpt("finetune", "--task", task, "--init", init, "--train", train, "--validation",
                    val, "--workdir", run, "--fresh", *extra)  # fmt: skip
    after = json.loads(line)["final"]
    return {"task": task, "before": before_metrics(run), "after": after}


def _trainer(config):  # noqa: ANN001, ANN202
    import jax

    from bertgpt_jax.core.config import MeshConfig
    from bertgpt_jax.parallel.sharding import make_mesh
    from bertgpt_jax.training.step import Trainer

    return Trainer(config, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))


def before_metrics(run: Path) -> dict[str, float]:
    """The run's own config and validation windows, scored with the init's weights."""
    from bertgpt_jax.core.config import load_config
    from bertgpt_jax.training.init_from import state_from_init
    from bertgpt_jax.training.loop import evaluate

    config = load_config(run / "config.yaml", ["mesh.data=1"])
    trainer = _trainer(config)
    return evaluate(trainer, state_from_init(trainer, config.checkpoint.init_from), config)


def samples(init: Path, run: Path, validation: list[dict], n_show: int, n_score: int) -> dict:
    """Greedy completions of held-out prompts before and after; exact-match rates."""
    from bertgpt_jax import load_pretrained

    rows = validation[:n_score]
    prompts, truth = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    got = {}
    for name, path in (("before", init), ("after", run)):
        done = load_pretrained(path).generate(prompts, max_new_tokens=48, temperature=0.0)
        got[name] = [(c.text or "").strip() for c in done]
    name_of = lambda s: s.split("(")[0]  # noqa: E731
    result: dict = {"scored": len(rows)}
    for name, texts in got.items():
        result[f"parses_{name}"] = sum(map(_is_def, texts)) / len(rows)
        result[f"exact_{name}"] = sum(t == w for t, w in zip(texts, truth, strict=True)) / len(rows)
        result[f"name_{name}"] = sum(
            name_of(t) == name_of(w) for t, w in zip(texts, truth, strict=True)
        ) / len(rows)  # fmt: skip
    result["samples"] = [
        {"prompt": p[len(INSTRUCTION) :].strip(), "truth": w, "before": b, "after": a}
        for p, w, b, a in list(zip(prompts, truth, got["before"], got["after"], strict=True))[
            :n_show
        ]
    ]
    return result


def _is_def(line: str) -> bool:
    try:
        return isinstance(ast.parse(line + "\n    pass").body[0], ast.FunctionDef)
    except SyntaxError:
        return False


def _batches(config, n: int) -> list[dict]:  # noqa: ANN001
    from bertgpt_jax.tasks import get_task

    it = get_task(config).host_batches(config, "train", 0, 0, 1)
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(n)]


def time_ours(config, init: Path, batches: list[dict], warmup: int) -> list[float]:  # noqa: ANN001
    """Per-step seconds of `Trainer.train_step` after `warmup` steps (batches prefetched)."""
    import jax

    from bertgpt_jax.training.init_from import state_from_init

    trainer = _trainer(config)
    state = state_from_init(trainer, init)
    times = []
    for batch in batches:
        start = time.perf_counter()
        state, _ = trainer.train_step(state, trainer.device_batch(batch))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def time_torch(config, init: Path, batches: list[dict], warmup: int, dtype: str, compiled: bool):  # noqa: ANN001, ANN201
    """The same for GPT2LMHeadModel: targets masked with -100 where loss_weights is 0, the
    loss in the (compiled) function, AdamW with the run's hyperparameters, grad clip 1."""
    import torch
    import transformers

    t = config.train
    torch.manual_seed(t.seed)
    model = transformers.GPT2LMHeadModel.from_pretrained(init, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, betas=(t.b1, t.b2),
                            eps=t.eps, weight_decay=t.weight_decay)  # fmt: skip
    schedule = transformers.get_linear_schedule_with_warmup(opt, t.warmup_steps, t.steps)

    def loss_fn(ids, positions, labels):  # noqa: ANN001, ANN202
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = model(input_ids=ids, position_ids=positions).logits
        return torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100
        )

    step_loss = torch.compile(loss_fn) if compiled else loss_fn
    tensors = [
        (torch.from_numpy(b["input_ids"].astype(np.int64)),
         torch.from_numpy(b["positions"].astype(np.int64)),
         torch.from_numpy(np.where(b["loss_weights"] > 0, b["targets"], -100).astype(np.int64)))
        for b in batches
    ]  # fmt: skip
    times = []
    for ids, positions, labels in tensors:
        start = time.perf_counter()
        step_loss(ids, positions, labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def ceiling(config_path: Path, dtype: str) -> dict:
    """benchmarks/matmul_ceiling.py on the timed config: the step's dots timed alone."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "matmul_ceiling.py"),
        "--config",
        str(config_path),
        "mesh.data=1",
        "data.document_attention=false",
        f"model.dtype={dtype}",
    ]  # fmt: skip  (it counts the dots on unrolled layers)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(run: Path, init: Path, steps: int, warmup: int, dtypes: list[str]) -> list[dict]:
    """Ours vs torch eager and torch.compile on run (a)'s config and batches, per dtype."""
    import torch

    from bertgpt_jax.core.config import load_config

    rows = []
    for dtype in dtypes:
        overrides = ["mesh.data=1", "data.document_attention=false", f"model.dtype={dtype}"]
        config = load_config(run / "config.yaml", overrides)
        batches = _batches(config, warmup + steps)
        tokens = config.train.batch_size * config.data.seq_len
        for impl in ("ours", "ours (scan_layers=false)", "torch", "torch.compile"):
            if impl.startswith("ours"):
                unrolled = load_config(run / "config.yaml", [*overrides, "model.scan_layers=false"])
                timed = time_ours(config if impl == "ours" else unrolled, init, batches, warmup)
            else:
                timed = time_torch(config, init, batches, warmup, dtype, impl == "torch.compile")
            step = statistics.median(timed)
            row = {"measurement": "throughput", "impl": impl, "dtype": dtype,
                   "batch": config.train.batch_size, "seq_len": config.data.seq_len,
                   "step_s": step, "tokens_per_s": tokens / step, "timed_steps": steps,
                   "torch_threads": torch.get_num_threads(), "allocator": allocator.loaded()}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
        compare(rows[-4:], run / "config.yaml")
    return rows


def compare(rows: list[dict], config_path: Path) -> None:
    """Ours against the faster peer; under 1.25x, also against the step's matmul ceiling."""
    ours, peer = rows[0], max(rows[2:], key=lambda r: r["tokens_per_s"])
    ours["vs_best_peer"] = ours["tokens_per_s"] / peer["tokens_per_s"]
    out = {"measurement": "comparison", "dtype": ours["dtype"], "best_peer": peer["impl"],
           "ours_vs_best_peer": ours["vs_best_peer"]}  # fmt: skip
    if ours["vs_best_peer"] < 1.25:
        c = ceiling(config_path, ours["dtype"])
        dots, floor = c["dots_alone_s"], c["optimizer_floor_s"]
        ours["of_ceiling"], ours["dots_alone_s"] = dots / ours["step_s"], dots
        ours["of_ceiling_with_optimizer"] = (dots + floor) / ours["step_s"]
        out.update(of_matmul_ceiling=ours["of_ceiling"], matmul_ceiling=c,
                   of_ceiling_with_optimizer=ours["of_ceiling_with_optimizer"])  # fmt: skip
    print(json.dumps(out), flush=True)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return "unknown CPU"


def report(quality: list[dict], sft: dict, speed: list[dict], args: argparse.Namespace) -> None:
    print(f"\nCPU: {_cpu()}; load average at start {args.load}; command: "
          f"`JAX_PLATFORMS=cpu .venv/bin/python benchmarks/gpt_finetune.py {' '.join(sys.argv[1:])}`")  # fmt: skip
    print("\n| fine-tuning | held-out data | metric | before | after |\n|---|---|---|---|---|")
    for q in quality:
        b, a = q["before"], q["after"]
        what = f"{args.package} docstrings" if q["task"] == "causal-lm" else "stdlib signatures"
        print(f"| {q['task']} | {what}, {int(a['windows'])} windows, {int(a['tokens'])} tokens | "
              f"loss (perplexity) | {b['loss']:.3f} ({b['perplexity']:.1f}) | "
              f"{a['loss']:.3f} ({a['perplexity']:.1f}) |")  # fmt: skip
    n = sft["scored"]
    for key, what in (("parses", "parses as a def line"), ("name", "function name right"),
                      ("exact", "signature exact")):  # fmt: skip
        print(f"| sft | {n} held-out prompts, greedy | {what} | {sft[key + '_before']:.1%} | "
              f"{sft[key + '_after']:.1%} |")  # fmt: skip
    print("\n| docstring first line (held out) | true signature | before | after |")
    print("|---|---|---|---|")
    for s in sft["samples"]:
        cells = [s[k].replace("|", "\\|") for k in ("prompt", "truth", "before", "after")]
        print("| " + " | ".join(f"`{c}`" if i else c for i, c in enumerate(cells)) + " |")
    print("\n| dtype | implementation | step (s) | tokens/s | ours vs it |\n|---|---|---|---|---|")
    for r in speed:
        ours = next(o for o in speed if o["impl"] == "ours" and o["dtype"] == r["dtype"])
        ratio = ours["tokens_per_s"] / r["tokens_per_s"]
        ratio = "" if r["impl"].startswith("ours") else f"{ratio:.2f}x"
        print(f"| {r['dtype']} | {r['impl']} | {r['step_s']:.4f} | {r['tokens_per_s']:,.0f} | "
              f"{ratio} |")  # fmt: skip
    for r in speed:
        if "of_ceiling" in r:
            print(f"\n{r['dtype']}: our step is {r['of_ceiling']:.0%} of the matmul ceiling "
                  f"(its dots alone take {r['dots_alone_s']:.4f} s; with the optimizer's memory "
                  f"floor {r['of_ceiling_with_optimizer']:.0%}).")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="runs/gptft")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=600, help="fine-tuning steps of each run")
    ap.add_argument("--package", default="numpy", help="installed package: (a)'s documents")
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    ap.add_argument("--timed-steps", type=int, default=30)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--quick", action="store_true", help="tiny everything: checks the script")
    args = ap.parse_args()
    args.load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    if args.quick:
        args.pretrain_steps, args.steps, args.timed_steps = 30, 20, 3
    work = Path(args.workdir)
    init = pretrain(work, args.pretrain_steps, args.quick)
    common = [f"train.steps={args.steps}", f"train.learning_rate={args.learning_rate}",
              "train.batch_size=8", "data.seq_len=128", "checkpoint.async_save=false"]  # fmt: skip
    quality = []
    train, val = documents(work, args.package, 40_000 if args.quick else 1_500_000)
    quality.append(finetune("causal-lm", init, train, val, work / "docs", common))
    train, val, held = pairs(work, 40 if args.quick else 400, 400 if args.quick else 100_000)
    quality.append(finetune("sft", init, train, val, work / "sft", common))
    for q in quality:
        print(json.dumps({"measurement": "held_out", **q}), flush=True)
    sft = samples(init, work / "sft", held, 3, 20 if args.quick else 200)
    print(json.dumps({"measurement": "sft_generation", **sft}), flush=True)
    speed = throughput(work / "docs", init, args.timed_steps, 3 if args.quick else 5,
                       args.dtypes.split(","))  # fmt: skip
    report(quality, sft, speed, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
