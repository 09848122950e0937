"""`bertgpt finetune` / `predict` / `export` for the sequence tasks (classification of one text
or a pair, regression, multi-label) from a HuggingFace BERT directory: each learns a small task
built here to near-perfect validation metrics, transformers' pipeline loads the export and
gives our predictions (logits within 1e-4), bad input fails in one sentence leaving nothing
behind, a preempted run resumes bitwise, and a (2,2,2) mesh gives the single-device losses."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from finetune_shared import FAST, fast, hf_bert_dir, run, sentence_examples, write
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bertgpt_jax import load_pretrained
from bertgpt_jax.cli import main
from bertgpt_jax.core.config import MeshConfig
from bertgpt_jax.data.finetune.encode import encode_texts
from bertgpt_jax.data.tokenizers import load_tokenizer
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.pretrained import predict
from bertgpt_jax.tasks import get_task
from bertgpt_jax.training import loop
from bertgpt_jax.training.finetune import finetune_config
from bertgpt_jax.training.init_from import state_from_init
from bertgpt_jax.training.step import Trainer

TOL = 1e-4
# The pair and multi-label tasks learn in fewer epochs with more, smaller steps.
SMALL_BATCH = ("train.batch_size=8", "train.learning_rate=2e-3")
SUFFIX = {"classification": ".csv", "pair": ".tsv", "regression": ".jsonl", "multilabel": ".json"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return hf_bert_dir(tmp_path_factory.mktemp("init"))


def _files(root: Path, kind: str, n_train: int = 400) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    train = write(root / f"train{SUFFIX[kind]}", sentence_examples(kind, n_train, 0))
    return train, write(root / f"validation{SUFFIX[kind]}", sentence_examples(kind, 50, 1))


def _finetune(bert: Path, root: Path, kind: str, *overrides: str) -> dict:
    """Runs `bertgpt finetune`; returns the JSON object of its last line."""
    task = "classification" if kind == "pair" else kind
    train, validation = _files(root, kind)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([str(a) for a in ["finetune", "--task", task, "--init", bert, "--train", train,
                     "--validation", validation, "--workdir", root / "run", *fast(*overrides)]])  # fmt: skip
    assert code == 0
    return json.loads(printed.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(bert, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each sequence task fine-tuned once (module scope: shared by the tests below)."""
    out = {}
    for kind in ("classification", "pair", "regression", "multilabel"):
        root = tmp_path_factory.mktemp(kind)
        batch = [] if kind in ("classification", "regression") else SMALL_BATCH
        out[kind] = (root, _finetune(bert, root, kind, "train.epochs=6", *batch))
    return out


def test_each_head_learns_its_task(runs):
    (_, cls), (_, pair) = runs["classification"], runs["pair"]
    reg, multi = runs["regression"][1], runs["multilabel"][1]
    assert cls["best"]["accuracy"] >= 0.96 and cls["final"]["examples"] == 50
    assert pair["best"]["accuracy"] >= 0.96 and pair["best"]["mcc"] >= 0.9
    assert reg["best"]["pearson"] >= 0.9 and reg["best"]["spearman"] >= 0.9
    assert multi["best"]["micro_f1"] >= 0.95
    assert set(cls["final"]) >= {"accuracy", "f1", "mcc", "f1/file", "f1/list", "f1/string"}


def test_every_validation_example_is_scored_once(runs):
    """50 examples in batches of 16: the last batch is padded and masked, never dropped."""
    root, _ = runs["classification"]
    rows = [json.loads(line) for line in (root / "run/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    assert evals and all(r["eval_examples"] == 50 for r in evals)
    assert [r["step"] for r in evals] == [25 * (i + 1) for i in range(len(evals))]  # each epoch


def _hf_logits(out: Path, texts: list[str], pairs: list[str] | None):
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(texts, pairs, padding=True, return_tensors="np")
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    return enc, theirs


@pytest.mark.parametrize("kind", ["classification", "pair", "regression", "multilabel"])
def test_export_gives_transformers_our_logits_and_labels(runs, kind, capsys):
    root, result = runs[kind]
    out = root / "export"
    code, _, err = run(capsys, "export", "--workdir", root / "run", "--output", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    examples = sentence_examples(kind, 8, 1)
    texts = [e.get("text", e.get("sentence1")) for e in examples]
    pairs = [e["sentence2"] for e in examples] if kind == "pair" else None
    enc, theirs = _hf_logits(out, texts, pairs)
    for source in (out, root / "run"):  # the export and the workdir's best checkpoint
        ours = load_pretrained(source)(
            enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
        )["logits"]
        assert np.abs(np.asarray(ours) - theirs).max() < TOL
    assert np.abs(theirs).max() > 0.5
    if kind == "classification":
        assert config["id2label"] == {"0": "file", "1": "list", "2": "string"}
        assert config["label2id"] == {"file": 0, "list": 1, "string": 2}
        assert config["problem_type"] == "single_label_classification"


def test_pipeline_and_predict_agree(runs, capsys, monkeypatch):
    """transformers' text-classification pipeline on the export and `bertgpt predict` on the
    workdir give the same label names and scores; predict needs no labels, and a file longer
    than its chunk is predicted a chunk at a time, in order."""
    monkeypatch.setattr(predict, "CHUNK", 16)
    root, _ = runs["classification"]
    out = root / "export_pipe"
    assert run(capsys, "export", "--workdir", root / "run", "--output", out)[0] == 0
    examples = sentence_examples("classification", 40, 7)
    unlabelled = write(root / "unlabelled.jsonl", [{"text": e["text"]} for e in examples])
    code, _, err = run(capsys, "predict", "--model", root / "run", "--input", unlabelled,
                       "--output", root / "predictions.jsonl", "--batch-size", 16)  # fmt: skip
    assert code == 0, err
    ours = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    theirs = pipeline("text-classification", model=str(out))([e["text"] for e in examples])
    assert len(ours) == 40
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine["label"] == ref["label"]
        assert abs(mine["score"] - ref["score"]) < TOL
    right = sum(m["label"] == e["label"] for m, e in zip(ours, examples, strict=True))
    assert right >= 38


def test_pair_inputs_use_token_types_as_bert(bert):
    """[CLS] A [SEP] B [SEP] with token types 0 then 1, exactly as the HF tokenizer makes them
    (truncation longest-first), and padding masked."""
    tokenizer, theirs = load_tokenizer(bert), AutoTokenizer.from_pretrained(bert)
    a = ["the red city of music", "one two three four five six seven eight nine ten eleven"]
    b = ["blue film", "a year and a school and the world of people and time"]
    ours = encode_texts(tokenizer, a, b, 16)
    ref = theirs(a, b, padding="max_length", truncation="longest_first", max_length=16)
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(ours["token_type_ids"], ref["token_type_ids"])
    np.testing.assert_array_equal(ours["segment_ids"], ref["attention_mask"])


def _bad(root: Path, bert: Path, gpt: Path) -> dict[str, tuple[list, str]]:
    train, validation = _files(root, "classification", 40)
    rows = sentence_examples("classification", 10, 3)
    no_label = write(root / "nolabel.csv", [{"text": r["text"]} for r in rows])
    unseen = write(root / "unseen.jsonl", [*rows[:3], {"text": "odd", "label": "purple"}])
    empty = root / "empty.csv"
    empty.write_text("")
    common = ["--init", bert, "--validation", validation]
    return {
        "missing column": (["--task", "classification", "--train", no_label, *common],
                           "nolabel.csv line 2 has no column 'label'"),
        "unseen label": (["--task", "classification", "--train", train, "--init", bert,
                          "--validation", unseen], "unseen.jsonl line 4 has label 'purple'"),
        "empty file": (["--task", "classification", "--train", empty, *common], "empty.csv is empty"),
        "gpt init": (["--task", "classification", "--train", train, "--init", gpt,
                      "--validation", validation], "is a gpt model"),
        "unknown task": (["--task", "summarise", "--train", train, *common],
                         "--task 'summarise' is not a fine-tuning task"),
        "unknown metric": (["--task", "classification", "--train", train, *common,
                            "train.best_metric=bleu"], "train.best_metric='bleu' is not"),
    }  # fmt: skip


def test_bad_input_fails_in_one_sentence(bert, tmp_path, capsys):
    import transformers

    gpt = tmp_path / "gpt"
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(gpt, safe_serialization=True)
    capsys.readouterr()
    for name, (argv, expected) in _bad(tmp_path, bert, gpt).items():
        workdir = tmp_path / name.replace(" ", "_")
        flags = [a for a in argv if "=" not in str(a)]
        overrides = [a for a in argv if "=" in str(a)]
        code, _, err = run(capsys, "finetune", *flags, "--workdir", workdir, *FAST, *overrides)
        assert code == 2, name
        assert expected in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not workdir.exists(), name


def test_preempted_finetuning_resumes_bitwise(bert, tmp_path, capsys, monkeypatch):
    """A run stopped (SIGTERM-style, after a committed save) at step 7 and resumed logs bitwise
    the losses, gradient norms and eval metrics of an uninterrupted run, and keeps its best."""
    train, validation = _files(tmp_path, "classification", 96)
    argv = ["finetune", "--task", "classification", "--init", bert, "--train", train,
            "--validation", validation, *fast("train.steps=14", "train.log_every=1",
            "train.eval_every=7", "checkpoint.every_steps=7", "model.dropout_rate=0.1")]  # fmt: skip
    assert run(capsys, *argv, "--workdir", tmp_path / "whole")[0] == 0

    class StopAt7(loop.Preemption):
        def reached(self, step: int) -> bool:
            return step == 7

    monkeypatch.setattr(loop, "Preemption", StopAt7)
    assert run(capsys, *argv, "--workdir", tmp_path / "cut")[0] == 0
    monkeypatch.undo()
    assert run(capsys, *argv, "--workdir", tmp_path / "cut")[0] == 0

    def rows(name: str) -> list[dict]:
        text = (tmp_path / name / "metrics.jsonl").read_text()
        keep = ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy")
        return [{k: r[k] for k in keep if k in r} | {"step": r["step"]}
                for r in map(json.loads, text.splitlines())]  # fmt: skip

    assert rows("cut") == rows("whole") and len(rows("whole")) == 16


def test_mesh_2_2_2_gives_single_device_losses(bert, tmp_path):
    train, validation = _files(tmp_path, "pair", 64)
    config = finetune_config("classification", str(bert), str(train), str(validation),
                             overrides=fast("model.dropout_rate=0.1"))  # fmt: skip
    task = get_task(config)
    losses = []
    for mesh, count in (((1, 1, 1), 1), ((2, 2, 2), 8)):
        trainer = Trainer(config, make_mesh(MeshConfig(*mesh), jax.devices()[:count]))
        state = state_from_init(trainer, bert)
        batches = task.host_batches(config, "train", 0, 0, 1)
        run_losses = []
        for _ in range(4):
            state, metrics = trainer.train_step(state, trainer.device_batch(next(batches)))
            run_losses.append(float(metrics["loss"]))
        losses.append(run_losses)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_finetunes_from_our_pretraining_workdir(tmp_path, capsys):
    """--init a `bertgpt train` workdir (SentencePiece tokenizer): the encoder and pooler come
    from its checkpoint exactly, the head is new, and the export loads in transformers."""
    from test_data_shared import default_store

    from bertgpt_jax.pretrained.workdir import restore_params

    pretrained = tmp_path / "pretrained"
    argv = ["train", "--config", "configs/bert_tiny.yaml", "--workdir", pretrained,
            f"data.path={default_store()}", "train.steps=2", "train.batch_size=8",
            "data.seq_len=32", "checkpoint.async_save=false"]  # fmt: skip
    assert run(capsys, *argv)[0] == 0
    train, validation = _files(tmp_path, "classification", 64)
    config = finetune_config("classification", str(pretrained), str(train), str(validation),
                             overrides=fast("train.steps=4"))  # fmt: skip
    trainer = Trainer(config, make_mesh(config.mesh))
    params = jax.device_get(state_from_init(trainer, pretrained).params)
    _, _, ours, _ = restore_params(pretrained)
    for part in ("core", "pooler"):
        jax.tree.map(np.testing.assert_array_equal, params[part], ours[part])
    assert params["classifier"]["kernel"].shape == (64, 3)
    code, _, err = run(capsys, "finetune", "--task", "classification", "--init", pretrained,
                       "--train", train, "--validation", validation, "--workdir",
                       tmp_path / "run", *fast("train.steps=4"))  # fmt: skip
    assert code == 0, err
    assert run(capsys, "export", "--workdir", tmp_path / "run", "--output", tmp_path / "hf")[0] == 0
    texts = [e["text"] for e in sentence_examples("classification", 4, 2)]
    enc, theirs = _hf_logits(tmp_path / "hf", texts, None)
    mine = load_pretrained(tmp_path / "hf")(enc["input_ids"], enc["token_type_ids"],
                                            enc["attention_mask"])["logits"]  # fmt: skip
    assert np.abs(np.asarray(mine) - theirs).max() < TOL


def test_patience_stops_when_the_metric_stops_improving(bert, tmp_path, capsys):
    """With nothing learned (learning rate 1e-12) the first evaluation stays the best; patience 1
    stops at the next one, after a committed save, and the best checkpoint is the first."""
    train, validation = _files(tmp_path, "classification", 64)
    code, out, err = run(capsys, "finetune", "--task", "classification", "--init", bert,
                         "--train", train, "--validation", validation, "--workdir",
                         tmp_path / "run", *fast("train.learning_rate=1e-12", "train.steps=12",
                         "train.eval_every=2", "train.patience=1"))  # fmt: skip
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert "Early stopping at step 4" in out and result["best"]["step"] == 2
    steps = [
        json.loads(r)["step"] for r in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 4
