"""SQuAD scoring and answer selection.

`exact_match` / `f1` are the official evaluation script's (v1.1 and v2.0 share them): answers
are normalised (lower case, punctuation and the articles a/an/the removed, whitespace
collapsed), F1 is over the normalised tokens, and a question scores its best gold answer; a
question without one (v2) scores 1 only for the empty answer. Scores are percentages, as the
script prints them. `best_threshold` tunes the no-answer threshold on the validation set, as
the v2 script's `find_best_thresh`. `select_answer` picks the best span of a question's windows
the way run_squad.py does (n-best starts x n-best ends, inside the context, in order, at most
max_answer_length tokens, the start at its window of maximal context).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np

_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def question_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_match(prediction, g) for g in golds), max(f1(prediction, g) for g in golds)


def best_threshold(
    scores: np.ndarray, diffs: np.ndarray, has_answer: np.ndarray
) -> tuple[float, float]:
    """(threshold, score): answering "" where diff > threshold maximises the summed score.
    scores [Q] of each question's best span; diffs [Q] = null score - best span score."""
    current = float((~has_answer).sum())  # nothing answered: every no-answer question right
    best, best_t = current, float(diffs.min()) - 1.0 if len(diffs) else 0.0
    for i in np.argsort(diffs, kind="mergesort"):  # answer the lowest diffs first
        current += scores[i] - (0.0 if has_answer[i] else 1.0)
        if current > best:
            best, best_t = current, float(diffs[i])
    return best_t, 100.0 * best / max(len(diffs), 1)


def select_answer(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    token_words: np.ndarray,
    max_context: np.ndarray,
    n_best: int,
    max_answer_length: int,
) -> tuple[float, int, int, int, float]:
    """Over one question's windows ([W, L] each): (best span score, window, first word, last
    word, null score); the span score is -inf when no span is valid."""
    best = (-np.inf, -1, -1, -1)
    null = float((start_logits[:, 0] + end_logits[:, 0]).min())
    for w in range(start_logits.shape[0]):
        starts = np.argsort(-start_logits[w], kind="stable")[:n_best]
        ends = np.argsort(-end_logits[w], kind="stable")[:n_best]
        for s in starts:
            if token_words[w, s] < 0 or not max_context[w, s]:
                continue
            for e in ends:
                if token_words[w, e] < 0 or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[w, s] + end_logits[w, e])
                if score > best[0]:
                    best = (score, w, int(token_words[w, s]), int(token_words[w, e]))
    return (*best, null)
