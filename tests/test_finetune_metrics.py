"""The fine-tuning metrics against the libraries people check them with (scikit-learn, scipy,
seqeval) on random and adversarial inputs, and SQuAD scoring against the official script's
rules on worked examples."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import seqeval.metrics
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bertgpt_jax.tasks.finetune.metrics import (
    classification_metrics,
    entities,
    multilabel_metrics,
    regression_metrics,
    tagging_metrics,
)
from bertgpt_jax.tasks.finetune.squad import (
    best_threshold,
    normalize_answer,
    question_scores,
    select_answer,
)


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 6))
    gold = rng.integers(0, c, 50)
    # Mostly right, sometimes one class never predicted or never gold (zero-division cases).
    predicted = np.where(rng.random(50) < 0.6, gold, rng.integers(0, c - (seed % 2), 50))
    ours = classification_metrics(predicted, gold, [f"l{i}" for i in range(c)])
    assert ours["accuracy"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1_score(gold, predicted, average="macro"), abs=1e-12)
    assert ours["mcc"] == pytest.approx(matthews_corrcoef(gold, predicted), abs=1e-12)
    per_label = f1_score(gold, predicted, average=None, labels=list(range(c)), zero_division=0)
    np.testing.assert_allclose([ours[f"f1/l{i}"] for i in range(c)], per_label, atol=1e-12)


def test_constant_predictions_have_zero_mcc():
    gold = np.array([0, 1, 0, 1])
    assert classification_metrics(np.zeros(4, int), gold, ["a", "b"])["mcc"] == 0.0
    assert matthews_corrcoef(gold, np.zeros(4, int)) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_regression_metrics_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 5, 40) / 4.0  # many ties: the rank averaging matters
    predicted = gold + 0.3 * rng.standard_normal(40)
    predicted[:5] = predicted[5]  # ties in the predictions too
    ours = regression_metrics(predicted, gold)
    assert ours["pearson"] == pytest.approx(scipy.stats.pearsonr(predicted, gold)[0], abs=1e-12)
    assert ours["spearman"] == pytest.approx(scipy.stats.spearmanr(predicted, gold)[0], abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_multilabel_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    gold = rng.random((30, 4)) < 0.4
    predicted = np.where(rng.random((30, 4)) < 0.7, gold, rng.random((30, 4)) < 0.3)
    predicted[:, 3] = False  # a label never predicted
    ours = multilabel_metrics(predicted, gold, list("abcd"))
    assert ours["micro_f1"] == pytest.approx(f1_score(gold, predicted, average="micro"), abs=1e-12)
    macro = f1_score(gold, predicted, average="macro", zero_division=0)
    assert ours["macro_f1"] == pytest.approx(macro, abs=1e-12)


def _random_tags(rng: np.random.Generator, n: int, scheme: str) -> list[str]:
    kinds = ["PER", "LOC", "ORG"]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            out.append("O")
        else:
            prefix = "B" if (scheme == "bio" and r < 0.7) or rng.random() < 0.15 else "I"
            out.append(f"{prefix}-{kinds[int(rng.integers(0, 3))]}")
    return out


@pytest.mark.parametrize("scheme", ["bio", "iob1"])
def test_tagging_metrics_equal_seqeval(scheme):
    """Random (often ill-formed) BIO and IOB1 sequences: seqeval's default mode, entity for
    entity, overall and per type."""
    rng = np.random.default_rng(0 if scheme == "bio" else 1)
    gold = [_random_tags(rng, int(rng.integers(1, 12)), scheme) for _ in range(60)]
    predicted = [[g if rng.random() < 0.7 else t for g, t in zip(s, _random_tags(rng, len(s), scheme), strict=True)]
                 for s in gold]  # fmt: skip
    for sentence in gold + predicted:
        ours = sorted(entities(sentence))
        theirs = sorted(seqeval.metrics.sequence_labeling.get_entities(sentence))
        assert ours == theirs, sentence
    ours = tagging_metrics(predicted, gold)
    assert ours["precision"] == pytest.approx(seqeval.metrics.precision_score(gold, predicted))
    assert ours["recall"] == pytest.approx(seqeval.metrics.recall_score(gold, predicted))
    assert ours["f1"] == pytest.approx(seqeval.metrics.f1_score(gold, predicted))
    report = seqeval.metrics.classification_report(gold, predicted, output_dict=True)
    for kind in ("PER", "LOC", "ORG"):
        assert ours[f"f1/{kind}"] == pytest.approx(report[kind]["f1-score"])
        assert ours[f"precision/{kind}"] == pytest.approx(report[kind]["precision"])


def test_plain_tags_are_io_chunks():
    assert entities(["PER", "PER", "O", "LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]


def test_squad_normalisation_and_scores_follow_the_official_script():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    # Worked examples: EM and token F1 against the best of several golds.
    assert question_scores("the Denver Broncos", ["Denver Broncos", "Broncos"]) == (1.0, 1.0)
    em, f1 = question_scores("Denver", ["Denver Broncos"])
    assert (em, f1) == (0.0, pytest.approx(2 * 1.0 * 0.5 / 1.5))
    # v2: a question without an answer scores 1 only for the empty prediction.
    assert question_scores("", []) == (1.0, 1.0)
    assert question_scores("something", []) == (0.0, 0.0)


def test_best_threshold_maximises_the_score():
    scores = np.array([1.0, 1.0, 0.0, 0.0])
    diffs = np.array([-2.0, -1.0, 0.5, 3.0])  # null score - best span score
    has = np.array([True, True, False, False])
    threshold, best = best_threshold(scores, diffs, has)
    assert -1.0 <= threshold < 0.5 and best == 100.0
    answered = diffs <= threshold
    assert (answered == has).all()


def test_span_selection_respects_context_order_and_length():
    start = np.array([[9.0, 1.0, 5.0, 0.0, 4.0]])  # [W=1, L=5]; position 0 is [CLS]
    end = np.array([[9.0, 0.0, 1.0, 6.0, 0.0]])
    words = np.array([[-1, -1, 0, 1, 2]])  # question token at 1, context words 0..2
    best = np.ones_like(words)
    score, window, first, last, null = select_answer(start, end, words, best, 20, 30)
    assert (window, first, last) == (0, 0, 1) and score == 11.0 and null == 18.0
    _, _, first, last, _ = select_answer(start, end, words, best, 20, 1)  # one token at most
    assert first == last
