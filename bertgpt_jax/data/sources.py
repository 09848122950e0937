"""Local text files -> documents (lists of sentences), with the checks users need.

Three input formats, one sentence rule:

* ``bert``: google-research/bert's pretraining format — one sentence per line, a blank line
  between documents. Lines are taken as they are (stripped of surrounding whitespace).
* ``documents``: each file is one document of free text.
* ``jsonl``: one JSON object per line; its ``text`` field (configurable) is one document.

Free text (``documents``, ``jsonl``, and named TFDS datasets) is split into sentences by one
simple, documented rule (`split_sentences`): blank lines separate paragraphs; the lines of a
paragraph are joined with spaces (undoing hard wrapping); a paragraph is cut after ``.``, ``!``
or ``?`` (with any closing quotes or brackets) when whitespace follows and the next character is
an upper-case letter, a digit, or an opening quote or bracket. Abbreviations such as "e.g. The"
are cut too; BERT's next-sentence task tolerates that.

Bad input is refused with one sentence naming the file: a missing path, an empty or blank-only
file, bytes that are not UTF-8 (unless ``encoding_errors="replace"``, which substitutes U+FFFD and
warns), a malformed JSONL line, and a sentence longer than ``max_sentence_chars`` characters (a
sign that the file is not split into sentences, e.g. a whole book on one line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from bertgpt_jax.core.errors import DataError

TextFormat = Literal["bert", "documents", "jsonl"]
FORMATS: tuple[str, ...] = ("bert", "documents", "jsonl")

# After a sentence end (. ! ? and closing quotes/brackets), the whitespace we cut at, when the
# next sentence visibly starts (capital letter, digit, opening quote or bracket).
_SENTENCE_END = re.compile(r"[.!?][\"')\]\u201d\u2019]*(\s+)(?=[\"'(\[\u201c\u2018]?[A-Z0-9])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclasses.dataclass(frozen=True)
class TextOptions:
    """How local files are read; part of a prepared store's fingerprint."""

    format: TextFormat = "bert"
    text_field: str = "text"
    encoding_errors: Literal["strict", "replace"] = "strict"
    max_sentence_chars: int = 100_000


def split_sentences(text: str) -> list[str]:
    """Free text -> sentences, by the rule in the module docstring."""
    sentences: list[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        joined = " ".join(line.strip() for line in paragraph.splitlines() if line.strip())
        start = 0
        for match in _SENTENCE_END.finditer(joined):
            sentences.append(joined[start : match.start(1)])
            start = match.end(1)
        if joined[start:]:
            sentences.append(joined[start:])
    return sentences


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, directories as their visible files (recursively, sorted)."""
    if not paths:
        raise DataError("no input given; pass --input PATH [PATH ...] or --tfds NAME.")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(f"input directory {path} holds no files; put text files in it.")
            files.extend(found)
        else:
            raise DataError(f"input path {path} does not exist; check the --input argument.")
    return files


def fingerprint_files(files: Sequence[Path], options: TextOptions) -> str:
    """sha256 over the files' contents and the reading options: equal inputs, equal digest."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(options), sort_keys=True).encode())
    for path in files:
        digest.update(str(path.resolve()).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _lines(path: Path, options: TextOptions) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its newline); decoding problems name the line."""
    replaced = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                if options.encoding_errors == "strict":
                    raise DataError(
                        f"{path}:{number} is not valid UTF-8 (byte {err.start} of the line); "
                        "convert the file to UTF-8 or pass --encoding-errors replace."
                    ) from err
                line = raw.decode("utf-8", errors="replace")
                replaced += 1
            yield number, line.rstrip("\r\n")
    if replaced:
        print(
            f"warning: {path}: replaced invalid UTF-8 bytes on {replaced} line(s) with U+FFFD.",
            file=sys.stderr,
        )


def _check_length(path: Path, number: int, sentence: str, limit: int) -> str:
    if len(sentence) > limit:
        where = f"{path}:{number}" if number else str(path)
        raise DataError(
            f"{where} holds a sentence of {len(sentence)} characters, over the "
            f"{limit}-character limit; split the text into sentences (one per line in bert "
            "format) or raise --max-sentence-chars."
        )
    return sentence


def _bert_documents(path: Path, options: TextOptions) -> Iterator[list[str]]:
    document: list[str] = []
    for number, line in _lines(path, options):
        sentence = line.strip()
        if sentence:
            document.append(_check_length(path, number, sentence, options.max_sentence_chars))
        elif document:
            yield document
            document = []
    if document:
        yield document


def _free_text_document(path: Path, number: int, text: str, options: TextOptions) -> list[str]:
    return [
        _check_length(path, number, s, options.max_sentence_chars) for s in split_sentences(text)
    ]


def _jsonl_documents(path: Path, options: TextOptions) -> Iterator[list[str]]:
    for number, line in _lines(path, options):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise DataError(
                f"{path}:{number} is not a JSON object ({err}); give one JSON object per line."
            ) from err
        text = record.get(options.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{number} has no string field {options.text_field!r}; name the text "
                "field with --text-field."
            )
        document = _free_text_document(path, number, text, options)
        if document:
            yield document


def read_documents(path: Path, options: TextOptions) -> Iterator[list[str]]:
    """The documents of one file; an empty or blank-only file is an error, not a no-op."""
    if path.stat().st_size == 0:
        raise DataError(f"input file {path} is empty; remove it from the inputs or add text.")
    count = 0
    if options.format == "bert":
        documents = _bert_documents(path, options)
    elif options.format == "jsonl":
        documents = _jsonl_documents(path, options)
    else:
        text = "\n".join(line for _, line in _lines(path, options))
        documents = iter([_free_text_document(path, 0, text, options)])
    for document in documents:
        if document:
            count += 1
            yield document
    if count == 0:
        raise DataError(
            f"input file {path} holds only blank lines; remove it from the inputs or add text."
        )


def iter_sentences(files: Sequence[Path], options: TextOptions) -> Iterator[str]:
    for path in files:
        for document in read_documents(path, options):
            yield from document
