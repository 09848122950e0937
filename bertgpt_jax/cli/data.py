"""Command-line side of the data pipeline: `bertgpt tokenizer | prepare | data-bench`.

`register(subparsers)` adds the three subcommands to the `bertgpt` parser; each sets `func`,
a handler `func(args) -> int`. Handlers raise `DataError` for bad input, which the `bertgpt`
command prints as one line, exiting with status 2.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bertgpt_jax.cli.common import check_output
from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data import bench, corpus, embedded, sources, store
from bertgpt_jax.data.tokenizers import sentencepiece as tokenizer
from bertgpt_jax.data.tokenizers.huggingface import train_hf_tokenizer


def _add_source_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--input", nargs="+", metavar="PATH", help="text files or directories")
    where.add_argument(
        "--tfds", metavar="NAME", help="a TFDS split, NAME[/CONFIG][:VERSION][:SPLIT]"
    )
    parser.add_argument("--data-dir", help="TFDS data_dir holding --tfds (local or gs://)")
    parser.add_argument("--text-feature", default="text", help="TFDS feature with the text")
    parser.add_argument(
        "--format",
        choices=sources.FORMATS,
        default="bert",
        help="bert: one sentence per line, blank line between documents; documents: one "
        "document per file; jsonl: one JSON object per line (default: bert)",
    )
    parser.add_argument("--text-field", default="text", help="JSONL field with the text")
    parser.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict")
    parser.add_argument("--max-sentence-chars", type=int, default=100_000)
    return where


def _text_options(args: argparse.Namespace) -> sources.TextOptions:
    return sources.TextOptions(
        format=args.format,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        max_sentence_chars=args.max_sentence_chars,
    )


def _tfds_spec(args: argparse.Namespace) -> corpus.TfdsSpec:
    return corpus.parse_tfds_spec(args.tfds, args.data_dir, args.text_feature)


def _tfds_sentences(source: corpus.DocumentSource) -> Iterator[str]:
    for start in range(0, len(source), 256):
        for document in source.documents(start, min(start + 256, len(source))):
            yield from document


# What `train_hf_tokenizer` writes: a folder holding only these is a tokenizer it wrote.
_HF_TOKENIZER_FILES = frozenset({
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt",
    "tokenizer_config.json", "special_tokens_map.json",
})  # fmt: skip


def _check_hf_output(output: Path, overwrite: bool) -> None:
    """A HuggingFace tokenizer is trained only into a new or empty folder, or with --overwrite
    into one holding nothing but the files such a training writes."""
    if output.exists() and not output.is_dir():
        raise DataError(f"tokenizer --output {output} is a file; choose a directory.")
    entries = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    foreign = [name for name in entries if name not in _HF_TOKENIZER_FILES]
    if foreign:
        raise DataError(
            f"tokenizer --output {output} holds {', '.join(foreign[:3])}, not a tokenizer written "
            "by `bertgpt tokenizer`; choose another --output."
        )
    if entries and not overwrite:
        raise DataError(
            f"tokenizer --output {output} already holds a tokenizer; pass --overwrite to replace "
            "it, or choose another --output."
        )


def run_tokenizer(args: argparse.Namespace) -> int:
    # A file or foreign files at --output are refused before any text is read; whether an
    # existing SentencePiece tokenizer is the same one (a no-op) or needs --overwrite is decided
    # when its inputs' fingerprint is known.
    check_output(args.output, "tokenizer --output", sibling=False)
    output = fs.require_local(args.output, "tokenizer --output")
    if args.model_type in ("wordpiece", "byte-bpe") and not args.from_model:
        _check_hf_output(output, args.overwrite)
    else:
        tokenizer.check_output(output, overwrite=True)
    if args.from_model:
        tok = tokenizer.import_tokenizer(args.from_model, args.output, args.overwrite)
    else:
        if args.vocab_size is None:
            raise DataError("--vocab-size is required to train a tokenizer (or pass --from-model).")
        if args.input:
            files = sources.expand_inputs(args.input)
            options = _text_options(args)
            sentences: Iterator[str] = sources.iter_sentences(files, options)
            fingerprint = sources.fingerprint_files(files, options)
            description = ", ".join(args.input)
        else:
            source = corpus.DocumentSource(_tfds_spec(args))
            sentences, fingerprint = _tfds_sentences(source), source.fingerprint()
            description = args.tfds
        if args.model_type in ("wordpiece", "byte-bpe"):
            output = fs.require_local(args.output, "tokenizer --output")
            hf_tok = train_hf_tokenizer(
                sentences,
                output,
                args.vocab_size,
                args.model_type,
                max_sentences=args.max_sentences,
                description=description,
            )
            print(json.dumps({"tokenizer": str(args.output), **hf_tok.identity.to_json()}))
            return 0
        tok = tokenizer.train_tokenizer(
            sentences,
            args.output,
            args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            byte_fallback=args.byte_fallback,
            max_sentences=args.max_sentences,
            inputs_fingerprint=fingerprint,
            description=description,
            overwrite=args.overwrite,
        )
    print(json.dumps({"tokenizer": str(args.output), **tok.identity.to_json()}))
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    check_output(args.output, "prepare --output", sibling=True)
    path = store.prepare_store(
        args.output,
        args.tokenizer,
        inputs=args.input or (),
        text_options=_text_options(args),
        tfds_spec=_tfds_spec(args) if args.tfds else None,
        validation_fraction=args.validation_fraction,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    manifest = store.open_store(path).manifest
    print(json.dumps({"store": str(path), "splits": manifest["splits"]}))
    return 0


def run_data_bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or embedded.prepare_default(args.workdir or tmp, vocab_size=1024)
        result = bench.run_benchmark(
            path,
            batch_size=args.batch_size,
            seconds=args.seconds,
            whole_word_masking=args.whole_word_masking,
        )
    print(json.dumps(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `tokenizer`, `prepare` and `data-bench` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "tokenizer", help="train a SentencePiece, WordPiece or byte-level BPE tokenizer"
    )
    where = _add_source_arguments(p)
    where.add_argument("--from-model", help="import this SentencePiece .model instead of training")
    p.add_argument("--vocab-size", type=int)
    p.add_argument(
        "--model-type",
        choices=("unigram", "bpe", "wordpiece", "byte-bpe"),
        default="unigram",
        help="SentencePiece unigram or BPE (ours: [PAD]=0 .. <|endoftext|>=5), BERT's WordPiece "
        "([UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103) or GPT-2's byte-level BPE (<|endoftext|> "
        "last), the last two in HuggingFace's format",
    )
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--byte-fallback", action="store_true", help="unknown characters as bytes")
    p.add_argument("--max-sentences", type=int, default=2_000_000, help="train on the first N")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer in --output")
    p.set_defaults(func=run_tokenizer)

    p = subparsers.add_parser("prepare", help="tokenize text once into a random-access store")
    _add_source_arguments(p)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer dir or .model")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--validation-fraction", type=float, default=0.01)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--workers", type=int, help="tokenizer threads (default: all cores)")
    p.set_defaults(func=run_prepare)

    p = subparsers.add_parser("data-bench", help="example throughput on one CPU core")
    p.add_argument("--store", help="a prepared store (default: the embedded corpus)")
    p.add_argument("--workdir", help="where to prepare the embedded corpus (default: temp)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0, help="per family")
    p.add_argument("--whole-word-masking", action="store_true")
    p.set_defaults(func=run_data_bench)
