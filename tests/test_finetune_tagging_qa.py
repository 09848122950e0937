"""Token classification and question answering end to end from a HuggingFace BERT directory:
each learns a small task built here to near-perfect entity F1 / exact match (SQuAD v2, with
unanswerable questions and a tuned threshold), the export is the HF task class that
transformers loads and agrees with (logits within 1e-4; its token-classification pipeline
gives our tags, and our answers are the spans its former question-answering pipeline picked), predictions carry tag names
and answer text, and bad input fails in one sentence."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_shared import (
    fast,
    hf_bert_dir,
    run,
    squad_examples,
    tagged_sentences,
    write,
    write_conll,
)
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

from bertgpt_jax import load_pretrained
from bertgpt_jax.cli import main

TOL = 1e-4


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return hf_bert_dir(tmp_path_factory.mktemp("init"))


def _finetune(task: str, bert: Path, root: Path, train: Path, validation: Path, *extra: str):
    printed = io.StringIO()
    argv = ["finetune", "--task", task, "--init", bert, "--train", train, "--validation",
            validation, "--workdir", root / "run", *fast(*extra)]  # fmt: skip
    with contextlib.redirect_stdout(printed):
        assert main([str(a) for a in argv]) == 0
    assert main(["export", "--workdir", str(root / "run"), "--output", str(root / "export")]) == 0
    return json.loads(printed.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tagging(bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("tagging")
    train = write_conll(root / "train.conll", tagged_sentences(300, 0))
    validation = write(root / "validation.jsonl", [{"tokens": t, "tags": g}
                                                   for t, g in tagged_sentences(40, 1)])  # fmt: skip
    return root, _finetune("tagging", bert, root, train, validation, "train.epochs=4")


@pytest.fixture(scope="module")
def qa(bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    train = write(root / "train.jsonl", squad_examples(300, 0, unanswerable=0.3))
    validation = write(root / "validation.jsonl", squad_examples(40, 1, unanswerable=0.3))
    extra = ("train.epochs=4", "task.doc_stride=8")  # 40-word contexts: several windows
    return root, _finetune("qa", bert, root, train, validation, *extra)


def test_tagging_learns_entities(tagging):
    _, result = tagging
    best = result["best"]
    assert best["f1"] >= 0.95 and best["f1/PER"] >= 0.95 and best["f1/LOC"] >= 0.9
    assert result["final"]["examples"] == 40


def test_tagging_export_matches_transformers_and_its_pipeline(tagging, capsys):
    root, _ = tagging
    out = root / "export"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {"0": "B-LOC", "1": "B-PER", "2": "I-LOC", "3": "O"}
    sentences = tagged_sentences(12, 5)
    texts = [" ".join(t) for t, _ in sentences]
    enc = AutoTokenizer.from_pretrained(out)(texts, padding=True, return_tensors="np")
    model = AutoModelForTokenClassification.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    ours = np.asarray(load_pretrained(out)(enc["input_ids"], enc["token_type_ids"],
                                           enc["attention_mask"])["logits"])  # fmt: skip
    real = enc["attention_mask"].astype(bool)
    assert np.abs(ours - theirs)[real].max() < TOL
    unlabelled = write(root / "input.jsonl", [{"tokens": t} for t, _ in sentences])
    code, _, err = run(capsys, "predict", "--model", out, "--input", unlabelled, "--output",
                       root / "tags.jsonl")  # fmt: skip
    assert code == 0, err
    predicted = [json.loads(x) for x in (root / "tags.jsonl").read_text().splitlines()]
    found = pipeline("token-classification", model=str(out))(texts)
    for mine, entities, (tokens, gold) in zip(predicted, found, sentences, strict=True):
        assert mine["tokens"] == tokens and len(mine["tags"]) == len(tokens)
        # Every word is one token here: the pipeline's token i + 1 is our word i.
        assert {e["index"] - 1: e["entity"] for e in entities} == {
            i: t for i, t in enumerate(mine["tags"]) if t != "O"
        }
        assert sum(a == b for a, b in zip(mine["tags"], gold, strict=True)) >= len(gold) - 1


def test_qa_learns_answers_and_when_there_is_none(qa):
    _, result = qa
    best = result["best"]
    assert best["exact_match"] >= 95.0 and best["f1"] >= 95.0
    assert best["HasAns_total"] + best["NoAns_total"] == 40 and best["NoAns_exact"] >= 90.0
    assert "null_threshold" in best


def test_qa_export_matches_transformers_and_its_pipeline(qa, capsys):
    root, result = qa
    out = root / "export"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
    stored = config["bertgpt_task"]
    assert stored["version_2"] and stored["options"]["null_threshold"] == pytest.approx(
        result["best"]["null_threshold"]
    )
    examples = [e for e in squad_examples(30, 9) if len(e["context"].split()) < 20]
    enc = AutoTokenizer.from_pretrained(out)([e["question"] for e in examples],
                                             [e["context"] for e in examples],
                                             padding=True, return_tensors="np")  # fmt: skip
    model = AutoModelForQuestionAnswering.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(v) for k, v in enc.items()})
    ours = load_pretrained(root / "run")(enc["input_ids"], enc["token_type_ids"],
                                         enc["attention_mask"])  # fmt: skip
    real = enc["attention_mask"].astype(bool)
    for name, ref in (("start_logits", theirs.start_logits), ("end_logits", theirs.end_logits)):
        assert np.abs(np.asarray(ours[name]) - ref.numpy())[real].max() < TOL
    questions = write(root / "questions.jsonl", [{k: e[k] for k in ("id", "question", "context")}
                                                 for e in examples])  # fmt: skip
    code, _, err = run(capsys, "predict", "--model", out, "--input", questions, "--output",
                       root / "answers.jsonl")  # fmt: skip
    assert code == 0, err
    answers = [json.loads(x) for x in (root / "answers.jsonl").read_text().splitlines()]
    for i, (mine, e) in enumerate(zip(answers, examples, strict=True)):
        ref = _hf_answer(AutoTokenizer.from_pretrained(out), theirs, enc, i, e["context"])
        assert mine["id"] == e["id"] and mine["answer"] == ref == e["answers"]["text"][0]


def _hf_answer(tokenizer, outputs, enc, row: int, context: str) -> str:
    """The answer transformers' question-answering pipeline gave (transformers 5 removed that
    pipeline): the best start + end logit over context tokens, start <= end, at most 15 tokens,
    cut from the context by the fast tokenizer's character offsets."""
    offsets = tokenizer("which one is it", context, return_offsets_mapping=True)["offset_mapping"]
    context_tokens = np.flatnonzero(enc["token_type_ids"][row] * enc["attention_mask"][row])[:-1]
    start, end = outputs.start_logits[row].numpy(), outputs.end_logits[row].numpy()
    best = max(
        ((start[s] + end[t], s, t) for s in context_tokens for t in context_tokens
         if s <= t < s + 15),
    )  # fmt: skip
    return context[offsets[best[1]][0] : offsets[best[2]][1]]


def test_bad_tagging_and_qa_input_fails_in_one_sentence(bert, tmp_path, capsys):
    conll = tmp_path / "bad.conll"
    conll.write_text("the O\npython\n\n")
    bad = squad_examples(3, 0)
    bad[1]["answers"]["answer_start"] = [1]
    squad = write(tmp_path / "bad.jsonl", bad)
    for task, train, expected in (
        ("tagging", conll, "bad.conll line 1: a token without a tag"),
        ("qa", squad, "bad.jsonl line 2 (id q1): answer"),
    ):
        workdir = tmp_path / task
        code, _, err = run(capsys, "finetune", "--task", task, "--init", bert, "--train", train,
                           "--validation", train, "--workdir", workdir)  # fmt: skip
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
        assert not workdir.exists()
    counts = tmp_path / "counts.jsonl"
    counts.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    code, _, err = run(capsys, "finetune", "--task", "tagging", "--init", bert, "--train", counts,
                       "--validation", counts, "--workdir", tmp_path / "w")  # fmt: skip
    assert code == 2 and "counts.jsonl line 1 has 2 tokens but 1 tags" in err
