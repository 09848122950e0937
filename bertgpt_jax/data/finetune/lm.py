"""GPT fine-tuning data: a user's documents (`causal_lm`) or prompt -> completion examples
(`sft`), tokenized with the init model's tokenizer into a prepared store (data/store.py) that
the pretraining packer (data/pretrain/gpt_examples.py) reads.

Documents: a text file is one document, kept verbatim (newlines and all); a folder gives one
document per visible file; a `.jsonl` file gives one per line, its "text" field
(`task.text_column` renames it). Examples (`.jsonl`, one per line): `{"prompt": ...,
"completion": ...}`, the two concatenated, or `{"messages": [{"role", "content"}, ...]}`,
rendered by the chat template (chat.py). An example is a list of (text, counts-in-loss)
segments, tokenized segment by segment and concatenated, so the store's loss mask marks exactly
the completion's (or the assistant turns') tokens.

Everything a file can get wrong is one DataError naming the file and line: bytes that are not
UTF-8, a line that is not a JSON object or lacks the fields, an unknown role, an empty
document, and an example whose completion alone leaves no room in data.seq_len.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data import sources
from bertgpt_jax.data.finetune.chat import ChatTemplate, Segment
from bertgpt_jax.data.store import SPLITS, STORE_FORMAT, write_split, write_store
from bertgpt_jax.data.tokenizers import Tokenizer

Example = tuple[str, list[Segment]]  # (where: "file:line", segments)
_BATCH = 1024  # examples tokenized per call


def _decoded(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{where} is not valid UTF-8 (byte {err.start}); convert the file to UTF-8."
        ) from err


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            line = _decoded(raw, where).strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where} is not valid JSON ({err.msg}); fix the line.") from err
            if not isinstance(row, dict):
                raise DataError(f"{where} is not a JSON object; each line must be one.")
            yield where, row


def read_documents(paths: Sequence[Path], text_field: str) -> Iterator[Example]:
    """The documents of files (see the module docstring); blank ones are an error."""
    for path in paths:
        if path.suffix == ".jsonl":
            rows = _json_lines(path)
            found = False
            for where, row in rows:
                text = row.get(text_field)
                if not isinstance(text, str):
                    raise DataError(
                        f"{where} has no string {text_field!r} field; give each line one (or name "
                        "the field with task.text_column)."
                    )
                found = found or bool(text.strip())
                if text.strip():
                    yield where, [(text, True)]
            if not found:
                raise DataError(f"{path} holds no text; remove it from the inputs or add some.")
            continue
        text = _decoded(path.read_bytes(), str(path))
        if not text.strip():
            raise DataError(f"input file {path} is empty; remove it from the inputs or add text.")
        yield str(path), [(text, True)]


def read_examples(paths: Sequence[Path], template: ChatTemplate | None) -> Iterator[Example]:
    """The prompt -> completion examples of JSONL files (see the module docstring)."""
    for path in paths:
        found = False
        for where, row in _json_lines(path):
            found = True
            if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
                yield where, [(row["prompt"], False), (row["completion"], True)]
            elif "messages" in row and template is not None:
                yield where, template.segments(row["messages"], where)
            else:
                raise DataError(
                    f'{where} has neither string "prompt" and "completion" fields nor '
                    '"messages"; write each line as {"prompt": ..., "completion": ...} or '
                    '{"messages": [{"role": ..., "content": ...}, ...]}.'
                )
        if not found:
            raise DataError(f"{path} holds no examples; remove it from the inputs or add some.")


def is_chat(paths: Sequence[Path]) -> bool:
    """Whether any example of these JSONL files is a conversation ("messages")."""
    return any("messages" in row for path in paths for _, row in _json_lines(path))


def _tokenized(
    examples: Iterator[Example], tok: Tokenizer, seq_len: int | None, stats: dict[str, int]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of (tokens, segment lengths, segments per example, loss mask) for write_split;
    with `seq_len` (sft) each example's last completion must leave a prompt token in a window,
    and `stats` counts the examples and those longer than a window."""
    threads = os.cpu_count() or 1
    while chunk := list(itertools.islice(examples, _BATCH)):
        texts = [text for _, segments in chunk for text, _ in segments]
        marks = [mark for _, segments in chunk for _, mark in segments]
        ids = tok.encode(texts, num_threads=threads)
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        tokens = np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum()))
        sizes = np.array([len(segments) for _, segments in chunk], np.int64)
        if seq_len is not None:
            _check_lengths(chunk, lengths, marks, seq_len, stats)
        stats["examples"] = stats.get("examples", 0) + len(chunk)
        yield tokens, lengths, sizes, np.repeat(np.asarray(marks, np.uint8), lengths)


def _check_lengths(
    chunk: list[Example], lengths: np.ndarray, marks: list[bool], seq_len: int, stats: dict
) -> None:
    start = 0
    for where, segments in chunk:
        mine = lengths[start : start + len(segments)]
        mask = marks[start : start + len(segments)]
        start += len(segments)
        marked = [i for i, m in enumerate(mask) if m]
        last = int(mine[marked[-1] :].sum()) if marked else 0  # the last completion, to the end
        if last >= seq_len:
            raise DataError(
                f"{where}: its completion alone has {last} tokens, but data.seq_len={seq_len} "
                f"leaves room for at most {seq_len - 1} after a prompt token; shorten it or raise "
                "data.seq_len (up to model.max_len)."
            )
        if int(mine.sum()) > seq_len:
            stats["truncated"] = stats.get("truncated", 0) + 1


def _examples(
    files: list[Path], kind: str, text_field: str, template: ChatTemplate | None
) -> Iterator[Example]:
    if kind == "sft":
        return read_examples(files, template)
    return read_documents(files, text_field)


def example_lengths(
    files: dict[str, list[Path]],
    kind: str,
    tok: Tokenizer,
    text_field: str = "text",
    template: ChatTemplate | None = None,
    seq_len: int | None = None,
) -> dict[str, tuple[np.ndarray, dict[str, int]]]:
    """Reads and tokenizes every example, writing nothing (fine-tuning's up-front check): per
    split, the examples' token counts and the stats `prepare_lm_store` returns."""
    out = {}
    for name in SPLITS:
        stats: dict[str, int] = {}
        examples = _examples(files[name], kind, text_field, template)
        counts = []
        for _, lengths, sizes, _ in _tokenized(examples, tok, seq_len, stats):
            counts.append(np.add.reduceat(lengths, np.cumsum(sizes) - sizes))
        out[name] = (np.concatenate(counts), stats)
    return out


def _files_digest(groups: dict[str, list[Path]], options: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for name, files in groups.items():
        digest.update(name.encode() + b"\0")
        digest.update(sources.fingerprint_files(files, sources.TextOptions()).encode())
    return digest.hexdigest()


def prepare_lm_store(
    output: Path,
    tok: Tokenizer,
    files: dict[str, list[Path]],
    kind: str,
    text_field: str = "text",
    template: ChatTemplate | None = None,
    seq_len: int | None = None,
) -> dict[str, dict[str, int]]:
    """Writes (or finds current) the store of `files` ({"train": [...], "validation": [...]})
    for task `kind` ("causal_lm": documents; "sft": examples with a loss mask) at `output`;
    returns per split the counts of examples and of those longer than seq_len (sft)."""
    sft = kind == "sft"
    options = {"kind": kind, "text_field": text_field, "seq_len": seq_len if sft else None,
               "template": template.source if template else None}  # fmt: skip
    key = {"format": STORE_FORMAT, "inputs": _files_digest(files, options),
           "tokenizer": tok.identity.to_json(), "validation_fraction": 0.0}  # fmt: skip
    description = {"finetune": kind, **{n: [str(f) for f in fs] for n, fs in files.items()}}
    stats: dict[str, dict[str, int]] = {name: {} for name in SPLITS}

    def write(tmp: Path) -> dict[str, dict[str, int]]:
        counts = {}
        for name in SPLITS:
            examples = _examples(files[name], kind, text_field, template)
            batches = _tokenized(examples, tok, seq_len if sft else None, stats[name])
            counts[name] = write_split(tmp / name, tok, batches, loss_mask=sft)
        return counts

    write_store(output, tok, key, description, write, overwrite=True,
                extra={"loss_mask": True} if sft else None)  # fmt: skip
    return stats
