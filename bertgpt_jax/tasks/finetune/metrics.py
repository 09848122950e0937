"""Validation metrics of the fine-tuning tasks, as pure numpy functions of predictions and
gold labels, each computed the way the library people check it with does (the tests compare
against scikit-learn, scipy, seqeval and the official SQuAD script's worked examples):

* classification: accuracy, macro-F1, Matthews correlation (sklearn's multi-class R_K), and
  F1 per label;
* regression: Pearson and Spearman (average ranks for ties) correlation, mean squared error;
* multi-label: micro and macro F1 over the label indicator matrix;
* tagging: entity-level precision, recall and F1, overall (micro) and per type, counting
  entities exactly as seqeval's default (conlleval) mode does, for BIO, IOB1 and BIOES tags.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 per class; 0 where a class has neither predictions nor gold (sklearn's zero_division=0)."""
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def classification_metrics(
    predicted: np.ndarray, gold: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    """predicted, gold: int [N] label ids in [0, C)."""
    c = max(len(labels), int(max(predicted.max(initial=0), gold.max(initial=0))) + 1)
    confusion = np.zeros((c, c), np.float64)  # [gold, predicted]
    np.add.at(confusion, (gold, predicted), 1)
    tp = np.diag(confusion)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    f1 = _f1(tp, fp, fn)
    present = (confusion.sum(0) + confusion.sum(1)) > 0  # sklearn averages over seen labels
    n, correct = confusion.sum(), tp.sum()
    t, p = confusion.sum(1), confusion.sum(0)  # per-class gold and predicted counts
    cov_pt = correct * n - (t * p).sum()
    cov_pp, cov_tt = n * n - (p * p).sum(), n * n - (t * t).sum()
    mcc = cov_pt / np.sqrt(cov_pp * cov_tt) if cov_pp * cov_tt > 0 else 0.0
    out = {
        "accuracy": float(correct / max(n, 1)),
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "mcc": float(mcc),
    }
    out.update({f"f1/{name}": float(f1[i]) for i, name in enumerate(labels)})
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (scipy.stats.rankdata's default)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x), np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def regression_metrics(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    p, g = np.asarray(predicted, np.float64), np.asarray(gold, np.float64)
    return {
        "pearson": _pearson(p, g),
        "spearman": _pearson(_ranks(p), _ranks(g)),
        "mse": float(np.mean((p - g) ** 2)),
    }


def multilabel_metrics(
    predicted: np.ndarray, gold: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    """predicted, gold: {0, 1} [N, C] indicator matrices."""
    p, g = predicted.astype(bool), gold.astype(bool)
    tp, fp, fn = (p & g).sum(0), (p & ~g).sum(0), (~p & g).sum(0)
    f1 = _f1(tp, fp, fn)
    out = {
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(f1.mean()),
        "exact_match": float((p == g).all(1).mean()),
    }
    out.update({f"f1/{name}": float(f1[i]) for i, name in enumerate(labels)})
    return out


def _split(tag: str) -> tuple[str, str]:
    """(prefix, type) as seqeval reads a tag ("B-PER" -> B, PER; "O" -> O, _). A plain tag
    ("PER", no prefix) is read as I-PER, so a run of equal plain tags is one entity (IO)."""
    if tag != "O" and not (len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-"):
        tag = "I-" + tag
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


_ENDS = {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"), ("I", "S"), ("I", "O")}
_STARTS = {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"), ("O", "E"), ("O", "I")}


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) of each chunk of one sentence's tags: seqeval's `get_entities`
    (its default, conlleval-compatible mode), rule for rule."""
    out: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, kind = _split(chunk)
        if (
            prev_tag in ("E", "S")
            or (prev_tag, tag) in _ENDS
            or (prev_tag not in ("O", ".") and prev_type != kind)
        ):
            out.append((prev_type, begin, i - 1))
        if (
            tag in ("B", "S")
            or (prev_tag, tag) in _STARTS
            or (tag not in ("O", ".") and prev_type != kind)
        ):
            begin = i
        prev_tag, prev_type = tag, kind
    return out


def tagging_metrics(
    predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Entity precision / recall / F1 (micro over all entities) and per type."""
    found: set[tuple[int, str, int, int]] = set()
    true: set[tuple[int, str, int, int]] = set()
    for n, (p, g) in enumerate(zip(predicted, gold, strict=True)):
        found.update((n, *e) for e in entities(p))
        true.update((n, *e) for e in entities(g))
    types = sorted({e[1] for e in found | true})

    def prf(f: set, t: set) -> tuple[float, float, float]:
        hit = len(f & t)
        precision = hit / len(f) if f else 0.0
        recall = hit / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    precision, recall, f1 = prf(found, true)
    tokens = [
        (a == b) for p, g in zip(predicted, gold, strict=True) for a, b in zip(p, g, strict=True)
    ]
    out = {"precision": precision, "recall": recall, "f1": f1, "accuracy": float(np.mean(tokens))}
    for kind in types:
        of = lambda s, k=kind: {e for e in s if e[1] == k}  # noqa: E731
        p_, r_, f_ = prf(of(found), of(true))
        out.update({f"precision/{kind}": p_, f"recall/{kind}": r_, f"f1/{kind}": f_})
    return out
