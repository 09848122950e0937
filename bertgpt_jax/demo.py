"""`make demo`: the whole pipeline on the embedded corpus (Python standard-library docstrings,
so nothing is downloaded): train a SentencePiece tokenizer, prepare a store, then pretrain a
tiny BERT (masked LM + next-sentence prediction) and a tiny GPT (next-token prediction)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from bertgpt_jax.config import load_config
from bertgpt_jax.data.embedded import prepare_default

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    store = prepare_default(workdir / "data", vocab_size=1024)
    print(f"prepared store: {store}")

    from bertgpt_jax.train import train_and_evaluate

    results = {}
    for family, config_name in (("bert", "bert_tiny"), ("gpt", "gpt_tiny")):
        overrides = [f"data.path={store}", f"train.steps={args.steps}", "train.eval_every=100"]
        config = load_config(CONFIG_DIR / f"{config_name}.yaml", overrides)
        print(f"\n== {family}: {config_name} for {args.steps} steps in {workdir / family} ==")
        results[family] = train_and_evaluate(config, workdir / family)
    print(json.dumps(results, indent=1))
    print(
        f"\nDone. Metrics: {workdir}/{{bert,gpt}}/metrics.jsonl; TensorBoard: "
        f"tensorboard --logdir {workdir}; checkpoints: {workdir}/{{bert,gpt}}/checkpoints."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
