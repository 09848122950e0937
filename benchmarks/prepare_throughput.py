"""`bertgpt prepare` throughput per tokenizer kind: SentencePiece unigram (what the project had),
BERT's WordPiece and GPT-2's byte-level BPE (HuggingFace `tokenizers`, batch-encoded in Rust),
each trained here on the embedded corpus with the same vocabulary size. Tokenizes the corpus
into a store `--repeat` times per kind (interleaved) and reports the best tokens/s and
characters/s, with the thread count used.

    .venv/bin/python benchmarks/prepare_throughput.py [--vocab 8000] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bertgpt_jax.data.embedded import write_default_corpus
from bertgpt_jax.data.sources import TextOptions, iter_sentences
from bertgpt_jax.data.store import open_store, prepare_store
from bertgpt_jax.data.tokenizers.huggingface import train_hf_tokenizer
from bertgpt_jax.data.tokenizers.sentencepiece import train_tokenizer

KINDS = ("unigram", "wordpiece", "byte-bpe")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1, help="encoder threads (RAYON too)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    # The Rust encoder sizes its pool from this; SentencePiece takes `workers` directly.
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    work = Path(tempfile.mkdtemp(prefix="bertgpt-prepare-bench-"))
    files = write_default_corpus(work / "corpus")
    chars = sum(len(f.read_text(encoding="utf-8")) for f in files)
    options = TextOptions(format="bert")
    for kind in KINDS:
        sentences = iter_sentences(files, options)
        if kind == "unigram":
            train_tokenizer(sentences, work / kind, args.vocab)
        else:
            train_hf_tokenizer(sentences, work / kind, args.vocab, kind)  # type: ignore[arg-type]
    best: dict[str, float] = {}
    tokens: dict[str, int] = {}
    for _ in range(args.repeat):
        for kind in KINDS:
            out = work / f"store_{kind}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            prepare_store(out, work / kind, inputs=files, text_options=options,
                          workers=args.workers)  # fmt: skip
            seconds = time.perf_counter() - start
            best[kind] = min(best.get(kind, float("inf")), seconds)
            splits = open_store(out).manifest["splits"]
            tokens[kind] = sum(s["tokens"] for s in splits.values())
    for kind in KINDS:
        print(json.dumps({
            "kind": kind, "workers": args.workers, "vocab": args.vocab, "seconds": best[kind],
            "tokens": tokens[kind], "tokens_per_sec": tokens[kind] / best[kind],
            "chars_per_sec": chars / best[kind],
        }))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
