"""`make demo`: the whole pipeline on the embedded corpus (Python standard-library docstrings,
so nothing is downloaded): train a SentencePiece tokenizer, prepare a store, pretrain a tiny
BERT (masked LM + next-sentence prediction) and a tiny GPT (next-token prediction), and export
both as HuggingFace directories, then show a few GPT continuations and BERT fill-mask
guesses from the exports."""

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


PROMPTS = ("Return the", "If the file", "This module provides")
MASKED = ("Return a [MASK] of the elements.", "If the [MASK] does not exist, raise an error.")


def _show_samples(hf_dir: Path) -> None:
    """Greedy continuations from the exported GPT and the exported BERT's fill-mask guesses."""
    from bertgpt_jax.pretrained.load import load_pretrained

    print("\n== gpt: greedy continuations ==")
    gpt = load_pretrained(hf_dir / "gpt")
    for prompt, completion in zip(PROMPTS, gpt.generate(PROMPTS, 24, temperature=0.0), strict=True):
        print(f"{prompt!r} -> {completion.text!r}")
    print("\n== bert: fill-mask, top 3 at each [MASK] ==")
    bert = load_pretrained(hf_dir / "bert")
    for text, masks in zip(MASKED, bert.fill_mask(MASKED, top_k=3), strict=True):
        guesses = ["/".join(f"{g['token']}:{g['score']:.2f}" for g in mask) for mask in masks]
        print(f"{text!r} -> {', '.join(guesses)}")


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
    _show_samples(workdir / "hf")
    print(
        f"\nDone. Metrics: {workdir}/{{bert,gpt}}/metrics.jsonl; TensorBoard: "
        f"tensorboard --logdir {workdir}; checkpoints: {workdir}/{{bert,gpt}}/checkpoints."
    )
    return 0


if __name__ == "__main__":
    allocator.reexec_with_tcmalloc("bertgpt_jax.demo", sys.argv[1:])
    raise SystemExit(main())
