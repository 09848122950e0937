"""`bertgpt predict`: a fine-tuned model's predictions for a file, one JSON object a line.

The model is a fine-tuned workdir (its best checkpoint) or an export; the input any file of
the task's training formats, labels optional. Rows are run in fixed-size batches (the last
padded and masked, so one shape compiles once) with a progress bar, and each example's record
(label names and scores, tags per word, or answer text and score) is written in input order.
The file is encoded and predicted `CHUNK` examples at a time, so its length is not bounded by
memory (its records, a few strings each, are read first).
The output is written to a temporary file and renamed, so a failed run leaves none behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.finetune.batches import eval_batches
from bertgpt_jax.data.tokenizers import TOKENIZER_DIR, Tokenizer, load_tokenizer
from bertgpt_jax.pretrained.load import PretrainedModel, load_pretrained
from bertgpt_jax.tasks import FinetuneTask

CHUNK = 4096  # examples encoded and predicted at a time


def model_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer kept with a workdir or export (a `tokenizer/` copy, or the files)."""
    inside = path / TOKENIZER_DIR
    return load_tokenizer(inside if inside.is_dir() else path)


def run_model(
    model: PretrainedModel, rows: dict[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
    """The model's outputs for every row, in order (fixed-size batches: one compile)."""
    n = len(rows["input_ids"])
    outputs: list[dict[str, np.ndarray]] = []
    for batch in eval_batches(rows, batch_size):
        out = model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            attention_mask=batch["segment_ids"],
        )
        outputs.append({k: np.asarray(v) for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outputs])[:n] for k in outputs[0]}


def predict_file(
    model_dir: str | Path, input_file: str | Path, output: str | Path, batch_size: int = 32
) -> int:
    """Writes the predictions of `input_file` to `output` (JSONL); returns how many."""
    path = fs.require_local(model_dir, "--model")
    model = load_pretrained(path)
    task = model.task
    if not isinstance(task, FinetuneTask):
        raise ConfigError(
            f"--model {path} is a {task.name} model, not a fine-tuned one; pass the workdir of "
            "`bertgpt finetune` or its export."
        )
    examples = task.read_examples(Path(input_file), labelled=False)
    tokenizer = model_tokenizer(path)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as f, tqdm(total=len(examples), unit="example") as bar:
            # Slices of the file are encoded, run and written in turn: memory stays bounded.
            for start in range(0, len(examples), CHUNK):
                data = task.encode(examples[start : start + CHUNK], tokenizer, str(input_file))
                for record in task.decode(data, run_model(model, data.rows, batch_size)):
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(len(data.examples))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return len(examples)
