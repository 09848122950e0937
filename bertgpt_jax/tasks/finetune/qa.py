"""Extractive question answering (SQuAD v1.1 and v2.0), as `BertForQuestionAnswering`: start
and end logits over each window, cross-entropy of the answer's first and last token (each half
of the loss, as HF), answers chosen over all windows of a question and mapped back to the
context's characters. With unanswerable questions in the validation file (v2), the no-answer
threshold is tuned on it and stored with the model (`null_threshold` in the metrics, then in
the export's config.json)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax.core.config import Config, ModelConfig
from bertgpt_jax.data.finetune.files import read_squad
from bertgpt_jax.data.finetune.qa import encode_questions
from bertgpt_jax.data.tokenizers import Tokenizer
from bertgpt_jax.model.finetune import SpanClassifier
from bertgpt_jax.ops.cross_entropy import LossSums, cross_entropy
from bertgpt_jax.tasks.base import Batch
from bertgpt_jax.tasks.finetune.base import Dataset, FinetuneTask
from bertgpt_jax.tasks.finetune.squad import best_threshold, question_scores, select_answer

Array = jax.Array


class QuestionAnswering(FinetuneTask):
    name = "qa"
    description = "extractive question answering"
    batch_keys = ("input_ids", "token_type_ids", "segment_ids", "positions", "start_positions",
                  "end_positions", "example_weights")  # fmt: skip
    hf_architecture = "BertForQuestionAnswering"
    hf_pipeline = "question-answering"
    best_metric: ClassVar[str] = "f1"
    metric_names = ("exact_match", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact",
                    "NoAns_f1", "loss", "examples")  # fmt: skip
    term: ClassVar[str] = "span"

    @property
    def num_labels(self) -> int:
        return 2

    def build_model(self, config: ModelConfig, key: Array) -> SpanClassifier:
        return SpanClassifier(config, key)

    def loss_terms(
        self, model: SpanClassifier, batch: Batch, key: Array | None
    ) -> dict[str, LossSums]:
        start, end = model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
            key=key,
        )
        w = batch["example_weights"]
        a = cross_entropy(start, batch["start_positions"], w)
        b = cross_entropy(end, batch["end_positions"], w)
        # (start + end) / 2 per window, as HF's total_loss; correct: both ends right... counted
        # per end, so accuracy is the share of ends found.
        return {self.term: LossSums((a.loss_sum + b.loss_sum) / 2, a.weight_sum,
                                    (a.correct_sum + b.correct_sum) / 2)}  # fmt: skip

    def term_weights(self, batch: Batch) -> dict[str, Array]:
        return {self.term: batch["example_weights"].astype(jnp.float32).sum()}

    def predict(
        self,
        model: SpanClassifier,
        input_ids: Array,
        *,
        positions: Array,
        segment_ids: Array,
        token_type_ids: Array | None,
    ) -> dict[str, Array]:
        """start_logits, end_logits [B, L]."""
        start, end = model(
            input_ids, token_type_ids=token_type_ids, segment_ids=segment_ids, positions=positions
        )
        return {"start_logits": start, "end_logits": end}

    def tuned(self, metrics: Mapping[str, float]) -> QuestionAnswering:
        if "eval_null_threshold" not in metrics:
            return self
        options = dataclasses.replace(
            self.options, null_threshold=float(metrics["eval_null_threshold"])
        )
        return dataclasses.replace(self, options=options, version_2=True)

    def hf_config(self) -> dict[str, Any]:
        stored = self.stored_options()
        stored["bertgpt_task"]["version_2"] = self.version_2
        return {**stored, "architectures": [self.hf_architecture]}

    def discover_labels(self, path: Path) -> tuple[str, ...]:
        return ()

    def check_validation(self, data: Dataset) -> None:
        return None  # every answer was checked against its context when read

    def read_examples(self, path: Path, labelled: bool) -> list[Any]:
        return read_squad(path, labelled)

    def encode(self, examples: list[Any], tokenizer: Tokenizer, source: str) -> Dataset:
        questions = examples
        o = self.options
        windows = encode_questions(
            tokenizer, questions, self.seq_len, o.doc_stride, o.max_query_length
        )
        rows = dict(windows.rows, example_index=windows.example_index)
        return Dataset(rows, list(zip(questions, windows.contexts, strict=True)), source)

    def _answers(
        self, data: Dataset, outputs: dict[str, np.ndarray]
    ) -> list[tuple[str, float, float]]:
        """(best span text, its score, null score - its score) per question."""
        index = data.rows["example_index"]
        out = []
        for qi, (question, context) in enumerate(data.examples):
            rows = np.flatnonzero(index == qi)
            score, w, first, last, null = select_answer(
                outputs["start_logits"][rows], outputs["end_logits"][rows],
                data.rows["token_words"][rows], data.rows["max_context"][rows],
                self.options.n_best_size, self.options.max_answer_length,
            )  # fmt: skip
            text = question.context[context.starts[first] : context.ends[last]] if w >= 0 else ""
            out.append((text, score, null - score))
        return out

    def score(self, data: Dataset, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        answers = self._answers(data, outputs)
        golds = [[t for t, _ in q.answers] for q, _ in data.examples]
        has = np.asarray([bool(g) for g in golds])
        em, f1 = np.asarray(
            [question_scores(a[0], g) for a, g in zip(answers, golds, strict=True)]
        ).T
        out: dict[str, float] = {}
        if has.all():  # SQuAD v1.1: always answer
            return {"exact_match": 100 * float(em.mean()), "f1": 100 * float(f1.mean())}
        diffs = np.asarray([a[2] for a in answers])
        threshold, _ = best_threshold(f1, diffs, has)
        answered = diffs <= threshold
        em_t, f1_t = np.where(answered, em, ~has), np.where(answered, f1, ~has)
        out = {"exact_match": 100 * float(em_t.mean()), "f1": 100 * float(f1_t.mean()),
               "null_threshold": threshold}  # fmt: skip
        for name, mask in (("HasAns", has), ("NoAns", ~has)):
            if mask.any():
                out[f"{name}_exact"] = 100 * float(em_t[mask].mean())
                out[f"{name}_f1"] = 100 * float(f1_t[mask].mean())
                out[f"{name}_total"] = float(mask.sum())
        return out

    def decode(self, data: Dataset, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        out = []
        for (q, _), (text, score, diff) in zip(
            data.examples, self._answers(data, outputs), strict=True
        ):
            no_answer = self.version_2 and (not text or diff > self.options.null_threshold)
            out.append({"id": q.id, "answer": "" if no_answer else text, "score": score,
                        "null_score_diff": diff})  # fmt: skip
        return out

    def synthetic_batch(self, config: Config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        rows = self.synthetic_rows(config, batch_size, seed)
        rng = np.random.default_rng(seed + 1)
        rows["start_positions"] = rng.integers(0, config.data.seq_len // 2, batch_size).astype(
            np.int32
        )
        rows["end_positions"] = rows["start_positions"] + 1
        return rows
