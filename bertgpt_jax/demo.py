"""`make demo`: the whole pipeline on the embedded corpus (Python standard-library docstrings,
so nothing is downloaded): train a SentencePiece tokenizer, prepare a store, pretrain a tiny
BERT (masked LM + next-sentence prediction) and a tiny GPT (next-token prediction), and export
both as HuggingFace directories."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from bertgpt_jax.core.config import SHIPPED_CONFIGS, load_config
from bertgpt_jax.data.embedded import prepare_default
from bertgpt_jax.perf import allocator

CONFIG_DIR = SHIPPED_CONFIGS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    store = prepare_default(workdir / "data", vocab_size=1024)
    print(f"prepared store: {store}")

    from bertgpt_jax.pretrained.export import export
    from bertgpt_jax.training.loop import train_and_evaluate

    results = {}
    for family, config_name in (("bert", "bert_tiny"), ("gpt", "gpt_tiny")):
        overrides = [
            f"data.path={store}",
            f"train.steps={args.steps}",
            "train.eval_every=250",
            f"checkpoint.every_steps={args.steps}",
        ]
        config = load_config(CONFIG_DIR / f"{config_name}.yaml", overrides)
        print(f"\n== {family}: {config_name} for {args.steps} steps in {workdir / family} ==")
        results[family] = train_and_evaluate(config, workdir / family)
        hf_dir = workdir / "hf" / family
        if hf_dir.exists():
            shutil.rmtree(hf_dir)
        export(workdir / family, hf_dir)
        print(f"exported {family} to {hf_dir} (loads with transformers' from_pretrained)")
    print(json.dumps(results, indent=1))
    print(
        f"\nDone. Metrics: {workdir}/{{bert,gpt}}/metrics.jsonl; TensorBoard: "
        f"tensorboard --logdir {workdir}; checkpoints: {workdir}/{{bert,gpt}}/checkpoints."
    )
    return 0


if __name__ == "__main__":
    allocator.reexec_with_tcmalloc("bertgpt_jax.demo", sys.argv[1:])
    raise SystemExit(main())
