"""Domain adaptation, measured: pretrain on the embedded corpus (standard-library docstrings),
then continue pretraining on another body of local text (the docstrings of an installed
third-party package, numpy's by default) from the exported HuggingFace directory, and report
held-out loss and perplexity on both bodies of text before and after, for GPT (causal LM) and
BERT (masked LM). Everything is local; the commands are the ones the README gives a user.

    .venv/bin/python benchmarks/domain_adaptation.py --workdir runs/domain [--steps 1000]

Prints one JSON line per model and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import sysconfig
from pathlib import Path

from bertgpt_jax.data.embedded import prepare_default, write_docstring_corpus
from bertgpt_jax.data.sources import TextOptions
from bertgpt_jax.data.store import prepare_store

ROOT = Path(__file__).resolve().parent.parent


def _bertgpt(*argv: object) -> str:
    """Runs `bertgpt ARGV` as a user would; returns its last stdout line."""
    command = [sys.executable, "-m", "bertgpt_jax.cli", *map(str, argv)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def _evaluate(workdir: Path, store: Path, eval_steps: int) -> dict[str, float]:
    return json.loads(
        _bertgpt(
            "eval", "--workdir", workdir, f"data.path={store}", f"train.eval_steps={eval_steps}"
        )
    )


def _domain_store(workdir: Path, package: str, tokenizer: Path) -> Path:
    root = Path(sysconfig.get_paths()["purelib"]) / package
    files = sorted(p for p in root.rglob("*.py") if "tests" not in p.parts)
    corpus = write_docstring_corpus(files, workdir / "corpus", name=package)
    return prepare_store(
        workdir / "store",
        tokenizer,
        inputs=corpus,
        text_options=TextOptions(format="bert"),
        validation_fraction=0.05,
        overwrite=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default="runs/domain")
    ap.add_argument("--steps", type=int, default=1000, help="pretraining steps on each corpus")
    ap.add_argument("--package", default="numpy", help="installed package whose docstrings are B")
    ap.add_argument("--eval-steps", type=int, default=20)
    args = ap.parse_args()
    work = Path(args.workdir)
    general = prepare_default(work / "general", vocab_size=1024)
    domain = _domain_store(work / args.package, args.package, work / "general" / "tokenizer")
    rows = []
    for family in ("gpt", "bert"):
        config = ROOT / "configs" / f"{family}_tiny.yaml"
        base, adapted = work / f"{family}_general", work / f"{family}_{args.package}"
        common = [f"train.steps={args.steps}", f"checkpoint.every_steps={args.steps}"]
        _bertgpt("train", "--config", config, "--workdir", base, f"data.path={general}", *common)
        _bertgpt("export", "--workdir", base, "--output", work / "hf" / family)
        _bertgpt("train", "--config", config, "--workdir", adapted, f"data.path={domain}",
                 f"checkpoint.init_from_hf={work / 'hf' / family}", *common)  # fmt: skip
        key = "lm_loss" if family == "gpt" else "mlm_loss"
        row = {"family": family, "metric": key}
        for name, run in (("before", base), ("after", adapted)):
            for corpus, store in (("domain", domain), ("general", general)):
                loss = _evaluate(run, store, args.eval_steps)[key]
                row[f"{corpus}_{name}"] = loss
                row[f"{corpus}_{name}_ppl"] = math.exp(loss)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n| model | metric | {args.package} before | after | stdlib before | after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.3f} (ppl {r[k + '_ppl']:.1f})" for k in
                 ("domain_before", "domain_after", "general_before", "general_after")]  # fmt: skip
        print(f"| {r['family']} | {r['metric']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
