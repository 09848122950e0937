"""Fine-tuning, ours against HuggingFace transformers on PyTorch (eager and torch.compile, fp32
and bf16): the same initial weights, the same tokenized data in the same order, the same
hyperparameters (AdamW, linear warmup and decay, weight decay on matrices and embeddings, grad
clipping at 1, dropout 0.1); reports each one's validation accuracy (mean and spread over
seeds) and training examples/s. Prints a Markdown table.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/finetune_peers.py --shapes small,medium \\
        --seeds 0,1,2 --impls ours,torch,torch-compile --dtypes float32,bfloat16

The initial weights are a random BertForPreTraining of the pretraining benchmark's shapes
(benchmarks/compare_peers.py: small 4 x 256, medium 6 x 512; vocabulary 8192) saved as an HF
directory with a WordPiece tokenizer trained on the embedded corpus; the task is to name the
marker word hidden in a text of 20-90 filler words (3 classes), sequence length 128, batch 32;
it saturates (accuracy 1.0), so `--task hard` asks instead which of the 3 markers, each
occurring 1-4 times among the filler words, occurs most often. Validation metrics: accuracy,
macro F1, MCC and mean cross-entropy.
Ours runs `Trainer.train_step` (the jitted step `bertgpt finetune` uses) on one device; the
peers run `BertForSequenceClassification` with torch's AdamW and
`get_linear_schedule_with_warmup`. Throughput is measured after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from bertgpt_jax.cli import main as bertgpt
from bertgpt_jax.core.config import MeshConfig, config_from_dict, config_to_dict
from bertgpt_jax.data.embedded import write_default_corpus
from bertgpt_jax.data.finetune.batches import train_rows
from bertgpt_jax.data.tokenizers import load_tokenizer
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.tasks import get_task
from bertgpt_jax.training.finetune import finetune_config
from bertgpt_jax.training.init_from import state_from_init
from bertgpt_jax.training.loop import evaluate
from bertgpt_jax.training.step import Trainer

SHAPES = {
    "small": dict(layers=4, hidden=256, heads=4),
    "medium": dict(layers=6, hidden=512, heads=8),
}
VOCAB, SEQ, BATCH = 8192, 128, 32


def make_init(root: Path, shape: str) -> Path:
    """A random BertForPreTraining of `shape` with a WordPiece tokenizer, as an HF directory."""
    import torch
    import transformers

    out = root / shape
    if not (root / "corpus").is_dir():
        write_default_corpus(root / "corpus")
    argv = ["tokenizer", "--input", root / "corpus", "--vocab-size", 4000,
            "--model-type", "wordpiece", "--output", out]  # fmt: skip
    assert bertgpt([str(a) for a in argv]) == 0
    s = SHAPES[shape]
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], intermediate_size=4 * s["hidden"],
        max_position_embeddings=512, pad_token_id=0,
    )  # fmt: skip
    transformers.BertForPreTraining(config).save_pretrained(out, safe_serialization=True)
    return out


def marker_row(rng: random.Random, markers: list[str], filler: list[str]) -> dict:
    """`--task marker`: one of the 3 markers hidden among 20-90 filler words; name it."""
    text = [rng.choice(filler) for _ in range(rng.randint(20, 90))]
    label = rng.choice(markers)
    text.insert(rng.randrange(len(text) + 1), label)
    return {"text": " ".join(text), "label": label}


def majority_row(rng: random.Random, markers: list[str], filler: list[str]) -> dict:
    """`--task hard`: each of the 3 markers occurs 1-4 times among 20-90 filler words (one
    count strictly largest); name the most frequent. Counting, not spotting, and a margin of
    one occurrence keeps it short of 100% in the usual step budget."""
    while True:
        counts = [rng.randint(1, 4) for _ in markers]
        if counts.count(max(counts)) == 1:
            break
    text = [rng.choice(filler) for _ in range(rng.randint(20, 90))]
    text += [m for m, c in zip(markers, counts, strict=True) for _ in range(c)]
    rng.shuffle(text)
    return {"text": " ".join(text), "label": markers[counts.index(max(counts))]}


TASKS = {"marker": marker_row, "hard": majority_row}


def make_data(root: Path, init: Path, task: str, n_train: int, n_val: int) -> tuple[Path, Path]:
    """Train and validation JSONL files of `task` over single-token words of the tokenizer."""
    tokenizer = load_tokenizer(init)
    pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
    words = [
        p for p in pieces if p.isalpha() and len(p) >= 3 and len(tokenizer.encode([p])[0]) == 1
    ]
    markers, filler = words[:3], words[3:300]
    rng, row = random.Random(0), TASKS[task]
    files = []
    for name, n in (("train", n_train), ("validation", n_val)):
        path = root / f"{name}-{task}.jsonl"
        path.write_text("".join(json.dumps(row(rng, markers, filler)) + "\n" for _ in range(n)))
        files.append(path)
    return files[0], files[1]


def run_ours(config, init: Path, dtype: str, warmup: int, extra: list[str]) -> tuple[dict, float]:
    config = config_from_dict(config_to_dict(config), [f"model.dtype={dtype}", *extra])
    trainer = Trainer(config, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    state = state_from_init(trainer, init)
    batches = trainer.task.host_batches(config, "train", 0, 0, 1)
    start = None
    for step in range(config.train.steps):
        if step == warmup:
            jax.block_until_ready(state)
            start = time.perf_counter()
        state, _ = trainer.train_step(state, trainer.device_batch(next(batches)))
    jax.block_until_ready(state)
    rate = (config.train.steps - warmup) * BATCH / (time.perf_counter() - start)
    return evaluate(trainer, state, config), rate


def run_torch(config, init: Path, dtype: str, compiled: bool, warmup: int) -> tuple[dict, float]:
    import torch
    import transformers

    t, seed = config.train, config.train.seed
    task = get_task(config)
    train, val = task.dataset(config, "train"), task.dataset(config, "validation")
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        init, num_labels=task.num_labels, attn_implementation="sdpa"
    )
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=t.learning_rate, betas=(t.b1, t.b2), eps=t.eps)
    schedule = transformers.get_linear_schedule_with_warmup(opt, t.warmup_steps, t.steps)
    forward = torch.compile(model) if compiled else model

    def tensors(rows: dict, ids: np.ndarray) -> dict:
        return {
            "input_ids": torch.from_numpy(rows["input_ids"][ids].astype(np.int64)),
            "token_type_ids": torch.from_numpy(rows["token_type_ids"][ids].astype(np.int64)),
            "attention_mask": torch.from_numpy(rows["segment_ids"][ids].astype(np.int64)),
        }

    model.train()
    start = None
    for step in range(t.steps):
        if step == warmup:
            start = time.perf_counter()
        ids = train_rows(train.rows, step, t.batch_size, config.data.seed)
        labels = torch.from_numpy(train.rows["labels"][ids].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = forward(**tensors(train.rows, ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
    rate = (t.steps - warmup) * BATCH / (time.perf_counter() - start)
    model.eval()
    logits = []
    with torch.no_grad():
        for i in range(0, len(val), 64):
            ids = np.arange(i, min(i + 64, len(val)))
            logits.append(model(**tensors(val.rows, ids)).logits.float())
    logits = torch.cat(logits)
    labels = torch.from_numpy(val.rows["labels"].astype(np.int64))
    metrics = task.score(val, {"logits": logits.numpy()})
    metrics["loss"] = float(torch.nn.functional.cross_entropy(logits, labels))
    return metrics, rate


METRICS = ("accuracy", "f1", "mcc", "loss")


def summary(shape: str, impl: str, dtype: str, got: list[tuple[dict, float]]) -> str:
    """One Markdown row: each metric's mean ± sd over seeds, accuracy's min-max, examples/s."""
    cells = []
    for name in METRICS:
        values = [g[0][name] for g in got]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
    accuracy = [g[0]["accuracy"] for g in got]
    rate = statistics.median(g[1] for g in got)
    return (f"| {shape} | {impl} | {dtype} | {' | '.join(cells)} | "
            f"{min(accuracy):.3f}-{max(accuracy):.3f} | {rate:.1f} |")  # fmt: skip


def run_shape(root: Path, shape: str, args: argparse.Namespace) -> list[str]:
    init = make_init(root, shape)
    train, val = make_data(root / shape, init, args.task, args.train_size, args.val_size)
    results: dict[tuple[str, str], list[tuple[dict, float]]] = {}
    for seed in map(int, args.seeds.split(",")):
        overrides = [f"train.seed={seed}", f"data.seed={seed}", f"train.epochs={args.epochs}",
                     f"train.learning_rate={args.learning_rate}", f"train.batch_size={BATCH}",
                     f"data.seq_len={SEQ}", "mesh.data=1"]  # fmt: skip
        config = finetune_config("classification", str(init), str(train), str(val), None, overrides)
        for impl in args.impls.split(","):
            for dtype in args.dtypes.split(","):
                if impl == "ours":
                    extra = [e for e in args.ours_extra.split(",") if e]
                    got = run_ours(config, init, dtype, args.warmup, extra)
                else:
                    got = run_torch(config, init, dtype, impl == "torch-compile", args.warmup)
                results.setdefault((impl, dtype), []).append(got)
                metrics = {k: got[0][k] for k in METRICS}
                print(json.dumps({"shape": shape, "task": args.task, "impl": impl, "dtype": dtype,
                                  "seed": seed, **metrics, "examples_per_s": got[1]}), flush=True)  # fmt: skip
    return [summary(shape, impl, dtype, got) for (impl, dtype), got in results.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="small")
    p.add_argument("--task", choices=sorted(TASKS), default="marker",
                   help="marker: name the one marker (saturates); hard: the most frequent of 3")  # fmt: skip
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--impls", default="ours,torch,torch-compile")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--train-size", type=int, default=2048)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput")
    p.add_argument("--ours-extra", default="", help="comma-separated overrides for ours only")
    args = p.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    root = Path(tempfile.mkdtemp(prefix="finetune-peers-"))
    rows = [row for shape in args.shapes.split(",") for row in run_shape(root, shape, args)]
    print(f"\nValidation metrics, mean ± sd over seeds {args.seeds} (task {args.task}):\n")
    print(f"| shape | implementation | dtype | {' | '.join(METRICS)} | accuracy min-max | "
          "examples/s |")  # fmt: skip
    print("|---|---|---|" + "---|" * len(METRICS) + "---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
