"""The prepared store: text tokenized once into flat, random-access arrays plus a manifest.

Layout of a store directory (one store serves both BERT and GPT):

    manifest.json          written last: format, sources, tokenizer identity, counts, fingerprint
    tokenizer.model/.json  a copy of the tokenizer the tokens were made with
    train/, validation/    one directory per split, each with three raw little-endian arrays:
        tokens.bin             [T] uint16 (int32 if the vocabulary needs it): all sentences
        sentence_offsets.bin   [S+1] int64: sentence k is tokens[off[k]:off[k+1]]
        document_offsets.bin   [D+1] int64: document d is sentences doff[d]:doff[d+1]
        loss_mask.bin          [T] uint8, only in stores of fine-tuning examples (sft): 1 where
                               a token is a target that counts in the loss (a completion's)

Consecutive sentences of a document are contiguous in `tokens`, so any span of sentences is
one slice, which is what makes the example builders pure gathers. Documents are assigned to
the validation split at random (a fixed seed), a fraction given at preparation time.

Preparation is atomic: everything is written into a hidden sibling directory which is renamed
onto the output at the end, manifest last, so an interrupted run never leaves a directory that
looks like a store. Re-running with the same inputs (content hash), tokenizer and options
finds the same fingerprint and does nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data import corpus, sources
from bertgpt_jax.data.tokenizers import (
    Tokenizer,
    TokenizerIdentity,
    load_tokenizer,
    store_tokenizer,
    tokenizer_location,
)

STORE_FORMAT = "bertgpt-store/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
_ARRAYS = ("tokens", "sentence_offsets", "document_offsets")
# Documents tokenized per SentencePiece call: large enough to keep its threads busy.
_DOCS_PER_BATCH = 1024
_SPLIT_SEED = 0x5EED


@dataclasses.dataclass(frozen=True)
class StoreSplit:
    """One split's arrays (tokens memory-mapped, offsets in memory)."""

    tokens: np.ndarray  # [T]
    sentence_offsets: np.ndarray  # [S+1] int64
    document_offsets: np.ndarray  # [D+1] int64, into sentences
    loss_mask: np.ndarray | None = None  # [T] uint8 (sft stores), else every token counts

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def document_token_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """[D] token start and [D] token end of every document."""
        bounds = self.sentence_offsets[self.document_offsets]
        return bounds[:-1], bounds[1:]


@dataclasses.dataclass(frozen=True)
class Store:
    path: Path
    manifest: dict[str, Any]

    @property
    def identity(self) -> TokenizerIdentity:
        return TokenizerIdentity.from_json(self.manifest["tokenizer"])

    @property
    def tokenizer_path(self) -> Path:
        return tokenizer_location(self.path)

    def split(self, name: str) -> StoreSplit:
        counts = self.manifest["splits"].get(name)
        if counts is None:
            raise DataError(f"split {name!r} is not one of {', '.join(SPLITS)}.")
        if counts["documents"] == 0:
            raise DataError(
                f"store {self.path} has no {name} documents; prepare it again with more "
                "documents or a larger --validation-fraction."
            )
        shapes = {
            "tokens": counts["tokens"],
            "sentence_offsets": counts["sentences"] + 1,
            "document_offsets": counts["documents"] + 1,
        }
        dtypes = {"tokens": self.manifest["token_dtype"], "loss_mask": "uint8"}
        if self.manifest.get("loss_mask"):
            shapes["loss_mask"] = counts["tokens"]
        arrays = {}
        for key in shapes:
            file = self.path / name / f"{key}.bin"
            dtype = np.dtype(dtypes.get(key, "int64"))
            size = file.stat().st_size if file.exists() else -1
            if size != shapes[key] * dtype.itemsize:
                raise DataError(
                    f"store file {file} is missing or has the wrong size; prepare the store again."
                )
            arrays[key] = np.memmap(file, dtype=dtype, mode="r", shape=(shapes[key],))
        return StoreSplit(
            tokens=arrays["tokens"],
            sentence_offsets=np.array(arrays["sentence_offsets"]),
            document_offsets=np.array(arrays["document_offsets"]),
            loss_mask=arrays.get("loss_mask"),
        )


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def open_store(path: str | Path) -> Store:
    path = fs.require_local(path, "data store (data.path)")
    manifest = read_manifest(path)
    if manifest is None or manifest.get("format") != STORE_FORMAT:
        what = "does not exist" if not path.exists() else "is not a complete prepared store"
        raise DataError(
            f"data store {path} {what}; create it with `bertgpt prepare --output {path}` and "
            "pass that directory as data.path."
        )
    return Store(path, manifest)


class _SplitWriter:
    """Appends tokenized documents of one split to its raw array files (three, or four with a
    loss mask)."""

    def __init__(self, directory: Path, token_dtype: np.dtype, loss_mask: bool = False) -> None:
        directory.mkdir(parents=True)
        keys = (*_ARRAYS, "loss_mask") if loss_mask else _ARRAYS
        self.files = {key: (directory / f"{key}.bin").open("wb") for key in keys}
        self.token_dtype = token_dtype
        self.counts = {"documents": 0, "sentences": 0, "tokens": 0}
        for key in ("sentence_offsets", "document_offsets"):
            np.zeros(1, np.int64).tofile(self.files[key])

    def append(
        self,
        tokens: np.ndarray,
        sentence_lengths: np.ndarray,
        doc_sizes: np.ndarray,
        loss_mask: np.ndarray | None = None,
    ) -> None:
        tokens.astype(self.token_dtype).tofile(self.files["tokens"])
        if "loss_mask" in self.files:
            np.asarray(loss_mask, np.uint8).tofile(self.files["loss_mask"])
        (self.counts["tokens"] + np.cumsum(sentence_lengths)).tofile(self.files["sentence_offsets"])
        (self.counts["sentences"] + np.cumsum(doc_sizes)).tofile(self.files["document_offsets"])
        self.counts["tokens"] += int(tokens.size)
        self.counts["sentences"] += int(sentence_lengths.size)
        self.counts["documents"] += int(doc_sizes.size)

    def close(self) -> dict[str, int]:
        for f in self.files.values():
            f.close()
        return self.counts


def _validation_mask(num_documents: int, fraction: float) -> np.ndarray:
    """[D] bool: a fixed random subset of documents, at least one when there are two or more."""
    count = int(round(num_documents * fraction))
    if fraction > 0 and num_documents >= 2:
        count = min(max(count, 1), num_documents - 1)
    mask = np.zeros(num_documents, bool)
    rng = np.random.Generator(np.random.Philox(key=_SPLIT_SEED))
    mask[rng.permutation(num_documents)[:count]] = True
    return mask


def _tokenize_batch(tokenizer: Tokenizer, documents: list[list[str]], workers: int):
    """-> tokens [T] int32, sentence lengths [S], document id (within the batch) per sentence."""
    flat = [sentence for document in documents for sentence in document]
    ids = tokenizer.encode(flat, num_threads=workers)
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum()))
    # Special pieces spelled out in the raw text ("[SEP]", "<|endoftext|>") must not act as
    # structure tokens, so they become [UNK] (where the tokenizer has one).
    unk = tokenizer.specials.unk
    if unk is not None:
        tokens[tokenizer.special_table()[tokens] & (tokens != unk)] = unk
    doc_of_sentence = np.repeat(np.arange(len(documents)), [len(d) for d in documents])
    return tokens, lengths, doc_of_sentence


def _tokenize_all(
    source: corpus.DocumentSource, tokenizer: Tokenizer, out: Path, fraction: float, workers: int
) -> dict[str, dict[str, int]]:
    writers = {
        name: _SplitWriter(out / name, _token_dtype(tokenizer.vocab_size)) for name in SPLITS
    }
    in_validation = _validation_mask(len(source), fraction)
    for start in range(0, len(source), _DOCS_PER_BATCH):
        documents = source.documents(start, min(start + _DOCS_PER_BATCH, len(source)))
        tokens, lengths, doc_of_sentence = _tokenize_batch(tokenizer, documents, workers)
        sentence_validation = in_validation[start + doc_of_sentence]
        for name, writer in writers.items():
            keep = (sentence_validation == (name == "validation")) & (lengths > 0)
            doc_sizes = np.bincount(doc_of_sentence[keep], minlength=len(documents))
            writer.append(tokens[np.repeat(keep, lengths)], lengths[keep], doc_sizes[doc_sizes > 0])
    counts = {name: writer.close() for name, writer in writers.items()}
    if counts["train"]["documents"] == 0:
        raise DataError(f"{source.spec.name} yields no text to train on; check the inputs.")
    return counts


def _finish(tmp: Path, tok: Tokenizer, manifest: dict[str, Any]) -> None:
    """Copies the tokenizer in, then writes the manifest: the last file, marking completion."""
    store_tokenizer(tok, tmp)
    manifest = {**manifest, "token_dtype": str(_token_dtype(tok.vocab_size))}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _install(tmp: Path, output: Path) -> None:
    """Moves the finished store onto `output`, replacing what was there only at the last step."""
    old = fs.staging_path(output, "old")
    if output.exists():
        os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def _describe_inputs(
    files: list[Path], text_options: sources.TextOptions, source: corpus.DocumentSource | None
) -> tuple[dict[str, Any], str]:
    """(what the manifest records about the inputs, a digest that changes when they do)."""
    if source is None:
        description = {"files": [str(f) for f in files], **dataclasses.asdict(text_options)}
        return description, sources.fingerprint_files(files, text_options)
    description = {"tfds": dataclasses.asdict(source.spec), **source.describe()}
    return description, source.fingerprint()


def _is_current(output: Path, fingerprint: str, overwrite: bool) -> bool:
    """True if `output` already holds this very store; raises if it holds something else:
    `overwrite` replaces only a store (one with this tool's manifest), never other files."""
    existing = read_manifest(output)
    if existing and existing.get("fingerprint") == fingerprint:
        return True
    if not output.exists():
        return False
    if not output.is_dir():
        raise DataError(f"output {output} is a file; choose another --output.")
    if existing and existing.get("format") == STORE_FORMAT:
        if overwrite:
            return False
        raise DataError(
            f"output {output} already exists and holds something else (a store of other inputs, "
            "tokenizer or options); choose another --output or pass --overwrite to replace it."
        )
    entries = sorted(p.name for p in output.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (
            f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        )
        raise DataError(
            f"output {output} already exists and is not a prepared store: it holds {shown}; "
            "choose another --output "
            "(--overwrite replaces only a store made by `bertgpt prepare`)."
        )
    return False


def prepare_store(
    output: str | Path,
    tokenizer: str | Path,
    *,
    inputs: Sequence[str | Path] = (),
    text_options: sources.TextOptions | None = None,
    tfds_spec: corpus.TfdsSpec | None = None,
    validation_fraction: float = 0.01,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Tokenizes local files (`inputs`) or a TFDS split (`tfds_spec`) into a store at `output`.

    Returns `output`. A no-op when `output` already holds a store of the same inputs, tokenizer
    and options; refuses to replace a different store or a non-empty directory unless
    `overwrite`. Bad inputs raise DataError and leave `output` untouched.
    """
    output = fs.require_local(output, "prepare --output")
    text_options = text_options or sources.TextOptions()
    if bool(inputs) == (tfds_spec is not None):
        raise DataError("give either --input PATH [PATH ...] or --tfds NAME, not both or neither.")
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"--validation-fraction {validation_fraction} must lie in [0, 1).")
    tok = load_tokenizer(tokenizer)
    files = sources.expand_inputs(inputs) if inputs else []
    source = corpus.DocumentSource(tfds_spec) if tfds_spec else None
    description, inputs_digest = _describe_inputs(files, text_options, source)
    key = {
        "format": STORE_FORMAT,
        "inputs": inputs_digest,
        "tokenizer": tok.identity.to_json(),
        "validation_fraction": validation_fraction,
    }
    work_count = workers or os.cpu_count() or 1

    def write(tmp: Path) -> dict[str, dict[str, int]]:
        nonlocal source
        if source is None:  # local files go through the TFDS builder like any dataset
            source = corpus.DocumentSource(
                corpus.build_local_tfds(files, text_options, tmp / "tfds")
            )
        counts = _tokenize_all(source, tok, tmp, validation_fraction, work_count)
        shutil.rmtree(tmp / "tfds", ignore_errors=True)
        return counts

    return write_store(output, tok, key, description, write, overwrite)


Batches = Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]


def write_split(directory: Path, tok: Tokenizer, batches: Batches, loss_mask: bool):
    """Writes one split from batches of (tokens [T], sentence lengths [S], sentences per
    document [D], loss mask [T] or None); returns its counts."""
    writer = _SplitWriter(directory, _token_dtype(tok.vocab_size), loss_mask)
    try:
        for batch in batches:
            writer.append(*batch)
    finally:
        counts = writer.close()
    return counts


def write_store(
    output: Path,
    tok: Tokenizer,
    key: dict[str, Any],
    description: dict[str, Any],
    write: Callable[[Path], dict[str, dict[str, int]]],
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The store `key` describes at `output`: nothing to do when it is there already; else
    `write(tmp)` fills a hidden staging directory with the splits (returning their counts),
    the tokenizer and the manifest follow, and it is renamed onto `output`. Refuses to replace
    anything but a store (see `_is_current`); a failure leaves `output` untouched."""
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    if _is_current(output, fingerprint, overwrite):
        return output
    fs.remove_stale(output, ("partial", "old"))  # left by a killed run
    tmp = fs.staging_path(output, "partial")
    try:
        tmp.mkdir(parents=True)
        counts = write(tmp)
        manifest = {
            **key, **(extra or {}), "fingerprint": fingerprint, "sources": description,
            "splits": counts,
        }  # fmt: skip
        _finish(tmp, tok, manifest)
        _install(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
