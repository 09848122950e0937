"""Labelled files as people have them, read into plain records with where each came from.

* `read_records`: CSV, TSV (a header row), JSON (a list of objects, or {"data": [...]}) and
  JSONL (one object a line) -> `Record(where, fields)`, `where` naming the file and line (or the
  list index) for error messages.
* `read_conll`: CoNLL (`token ... tag` per line, a blank line between sentences, `-DOCSTART-`
  lines skipped) or JSONL `{"tokens": [...], "tags": [...]}` -> sentences of (tokens, tags).
* `read_squad`: SQuAD v1.1 / v2.0 JSON, or JSONL `{id, question, context, answers: {text,
  answer_start}}` -> questions with their answers.

Every problem a user can cause is a `DataError` of one sentence naming the file, the line or
example id, and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from bertgpt_jax.core.errors import DataError

FORMATS = (".csv", ".tsv", ".json", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Record:
    where: str  # "FILE line N" (or "FILE item N")
    fields: dict[str, Any]


def _text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass an existing file.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path} is empty; pass a file with at least one example.")
    return text


def _json_lines(path: Path, text: str) -> list[Record]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} line {n} is not valid JSON ({err.msg}); fix that line."
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {n} is not a JSON object; write one object a line.")
        out.append(Record(f"{path} line {n}", row))
    return out


def read_records(path: str | Path) -> list[Record]:
    """The rows of a CSV / TSV / JSON / JSONL file as records (never empty)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"{path} is not a {', '.join(FORMATS)} file; convert it to one of those (the "
            "suffix decides how it is read)."
        )
    text = _text(path)
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        rows = [Record(f"{path} line {reader.line_num}", dict(row)) for row in reader]
    elif suffix == ".jsonl":
        rows = _json_lines(path, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}).") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path} must hold a list of JSON objects (or {{'data': [...]}}).")
        rows = [Record(f"{path} item {i}", row) for i, row in enumerate(data)]
    if not rows:
        raise DataError(f"{path} holds no examples; pass a file with at least one.")
    return rows


@dataclasses.dataclass(frozen=True)
class Sentence:
    where: str
    tokens: tuple[str, ...]
    tags: tuple[str, ...] | None  # None: unlabelled (prediction input)


def _conll_sentence(path: Path, start: int, lines: list[list[str]], labelled: bool) -> Sentence:
    where = f"{path} line {start}"
    if labelled and any(len(parts) < 2 for parts in lines):
        raise DataError(
            f"{where}: a token without a tag; write `token ... tag` on every line of a sentence."
        )
    tokens = tuple(parts[0] for parts in lines)
    tags = tuple(parts[-1] for parts in lines) if labelled else None
    return Sentence(where, tokens, tags)


def read_conll(path: str | Path, labelled: bool = True) -> list[Sentence]:
    """Sentences of a CoNLL file, or of JSONL {"tokens": [...], "tags": [...]} lines."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return [_jsonl_sentence(r, labelled) for r in _json_lines(path, _text(path))]
    sentences: list[Sentence] = []
    current: list[list[str]] = []
    start = 1
    for n, line in enumerate([*_text(path).splitlines(), ""], 1):
        parts = line.split()
        if parts and parts[0] == "-DOCSTART-":
            continue
        if parts:
            if not current:
                start = n
            current.append(parts)
        elif current:
            sentences.append(_conll_sentence(path, start, current, labelled))
            current = []
    if not sentences:
        raise DataError(f"{path} holds no sentences; pass a CoNLL file with `token tag` lines.")
    return sentences


def _jsonl_sentence(record: Record, labelled: bool) -> Sentence:
    tokens, tags = record.fields.get("tokens"), record.fields.get("tags")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f'{record.where} has no list of strings under "tokens"; add one.')
    if tags is None and not labelled:
        return Sentence(record.where, tuple(tokens), None)
    if not isinstance(tags, list) or len(tags) != len(tokens):
        got = len(tags) if isinstance(tags, list) else "no"
        raise DataError(
            f"{record.where} has {len(tokens)} tokens but {got} tags; give one tag per token."
        )
    return Sentence(record.where, tuple(tokens), tuple(str(t) for t in tags))


@dataclasses.dataclass(frozen=True)
class Question:
    where: str
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, answer_start); () = no answer (v2)
    labelled: bool


def _answers(raw: Any, where: str) -> tuple[tuple[str, int], ...]:
    if isinstance(raw, dict):  # {text: [...], answer_start: [...]} (HF datasets' JSONL)
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=False)]
    if not isinstance(raw, list):
        raise DataError(f"{where}: answers must be a list or {{text, answer_start}}.")
    out = []
    for a in raw:
        if not isinstance(a, dict) or not isinstance(a.get("text"), str):
            raise DataError(f"{where}: an answer without text; give {{text, answer_start}}.")
        if not isinstance(a.get("answer_start"), int):
            raise DataError(f"{where}: answer {a['text']!r} has no integer answer_start.")
        out.append((a["text"], a["answer_start"]))
    return tuple(out)


def _question(fields: dict[str, Any], context: Any, where: str, labelled: bool) -> Question:
    qid = str(fields.get("id", where))
    where = f"{where} (id {qid})"
    if not isinstance(fields.get("question"), str) or not isinstance(context, str):
        raise DataError(f"{where} needs a string question and context; add them.")
    raw = fields.get("answers")
    answers = () if raw is None and not labelled else _answers(raw, where)
    for text, start in answers:
        if context[start : start + len(text)] != text:
            raise DataError(
                f"{where}: answer {text!r} is not at answer_start {start} of the context "
                f"(found {context[start : start + len(text)]!r}); fix answer_start."
            )
    return Question(where, qid, fields["question"], context, answers, labelled and raw is not None)


def read_squad(path: str | Path, labelled: bool = True) -> list[Question]:
    """Questions of a SQuAD JSON file (v1.1 or v2.0) or of SQuAD-like JSONL."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return [
            _question(r.fields, r.fields.get("context"), r.where, labelled)
            for r in _json_lines(path, _text(path))
        ]
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path} is not SQuAD JSON ({{version, data: [...]}}); convert it.")
    out = []
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path} article {a} paragraph {p} question {q}"
                out.append(_question(qa, para.get("context"), where, labelled))
    if not out:
        raise DataError(f"{path} holds no questions; pass a file with at least one.")
    return out
