"""Sentence (pair) examples with a label: classification, regression and multi-label files.

Columns: `task.text_column` / `task.text_pair_column` / `task.label_column` when given, else
`text` (or `sentence`), or `sentence1` + `sentence2`, else the first one or two string columns;
the label is `label`. A label is a class name (string or int: classification), a number
(regression) or a list of names (multi-label; in CSV/TSV written as a JSON list).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bertgpt_jax.core.config import TaskConfig
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.finetune.files import Record, read_records

KINDS = ("classification", "regression", "multilabel")


@dataclasses.dataclass(frozen=True)
class TextExample:
    where: str
    text: str
    pair: str | None
    label: Any  # str (class), float (regression), tuple[str, ...] (multi-label), None


def _columns(
    first: Record, options: TaskConfig, path: Path, label: str | None
) -> tuple[str, str | None]:
    """The text and pair column names of a file (from its first record)."""
    names = list(first.fields)
    for given in (options.text_column, options.text_pair_column):
        if given and given not in names:
            raise DataError(
                f"{path} has no column {given!r} (it has {', '.join(names)}); fix "
                "task.text_column / task.text_pair_column."
            )
    if options.text_column:
        return options.text_column, options.text_pair_column or None
    if "sentence1" in names and "sentence2" in names:
        return "sentence1", "sentence2"
    for name in ("text", "sentence"):
        if name in names:
            return name, None
    strings = [n for n in names if n != label and isinstance(first.fields[n], str)]
    strings = [n for n in strings if n.lower() not in ("id", "idx", "guid")]
    if not strings:
        raise DataError(
            f"{path} has no text column (columns: {', '.join(names)}); name one with "
            "task.text_column=NAME."
        )
    return strings[0], strings[1] if len(strings) > 1 else None


def _label(value: Any, kind: str, where: str) -> Any:
    if kind == "regression":
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: label {value!r} is not a number; regression needs one."
            ) from None
    if kind == "multilabel":
        if isinstance(value, str) and value.strip().startswith("["):
            value = json.loads(value)
        if not isinstance(value, list):
            raise DataError(
                f"{where}: label {value!r} is not a list of names, which multilabel needs "
                '(in CSV/TSV write it as a JSON list, e.g. ["a", "b"]).'
            )
        return tuple(sorted({str(v) for v in value}))
    if isinstance(value, list):
        raise DataError(f"{where}: label {value!r} is a list; use --task multilabel.")
    if isinstance(value, float) and not value.is_integer():
        raise DataError(f"{where}: label {value!r} is a number; use --task regression.")
    if isinstance(value, float):
        value = int(value)
    if value is None or value == "":
        raise DataError(f"{where} has an empty label; give every example one.")
    return str(value)


def read_text_examples(
    path: str | Path, options: TaskConfig, kind: str, labelled: bool = True
) -> list[TextExample]:
    """The examples of a CSV / TSV / JSON / JSONL file; `labelled` False: labels optional."""
    path = Path(path)
    records = read_records(path)
    label_column = options.label_column or "label"
    if labelled and label_column not in records[0].fields:
        raise DataError(
            f"{records[0].where} has no column {label_column!r} (it has "
            f"{', '.join(records[0].fields)}); name the label column with task.label_column=NAME."
        )
    text, pair = _columns(records[0], options, path, label_column)
    out = []
    for r in records:
        for column in (text, pair, label_column if labelled else None):
            if column is not None and column not in r.fields:
                raise DataError(f"{r.where} has no {column!r}; give every example that column.")
        a, b = r.fields[text], r.fields[pair] if pair else None
        if not isinstance(a, str) or (pair and not isinstance(b, str)):
            raise DataError(f"{r.where}: column {text!r} (or {pair!r}) is not a string.")
        raw = r.fields.get(label_column)
        label = _label(raw, kind, r.where) if labelled or raw not in (None, "") else None
        out.append(TextExample(r.where, a, b, label))
    return out


def _sort_key(name: str) -> tuple[int, Any]:
    """Integer-like names in numeric order (2 before 10), then the rest alphabetically."""
    try:
        return (0, int(name))
    except ValueError:
        return (1, name)


def label_names(examples: Sequence[TextExample], kind: str) -> tuple[str, ...]:
    """The sorted label names of a training set (() for regression)."""
    if kind == "regression":
        return ()
    names: set[str] = set()
    for e in examples:
        names.update(e.label if kind == "multilabel" else [e.label])
    return tuple(sorted(names, key=_sort_key))


def check_labels(examples: Sequence[TextExample], kind: str, labels: Sequence[str]) -> None:
    """Every label of `examples` (e.g. the validation file) is one the model knows."""
    known = set(labels)
    for e in examples:
        if kind == "regression" or e.label is None:
            continue
        for name in e.label if kind == "multilabel" else [e.label]:
            if name not in known:
                raise DataError(
                    f"{e.where} has label {name!r}, which the training data never has (labels: "
                    f"{', '.join(labels)}); remove that example or list it in task.labels."
                )
