"""`tokenizer`, `prepare` and `data-bench` through the command-line handlers."""

from __future__ import annotations

import argparse
import json

from test_data_shared import default_store, write_bert_file

from bertgpt_jax import cli
from bertgpt_jax.cli import data as data_commands
from bertgpt_jax.data.store import open_store
from bertgpt_jax.data.tokenizers import load_tokenizer


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_register_adds_three_subcommands_with_handlers():
    parser = argparse.ArgumentParser()
    data_commands.register(parser.add_subparsers(dest="command"))
    for argv in (
        ["tokenizer", "--input", "x", "--vocab-size", "8", "--output", "o"],
        ["prepare", "--input", "x", "--tokenizer", "t", "--output", "o"],
        ["data-bench"],
    ):
        assert callable(parser.parse_args(argv).func)


def test_tokenizer_then_prepare_then_errors(tmp_path, capsys):
    sentences = [f"Sentence {i} talks about topic {i % 11} at length." for i in range(300)]
    documents = [sentences[i : i + 3] for i in range(0, 300, 3)]
    corpus = write_bert_file(tmp_path / "corpus.txt", documents)
    code, out, _ = _run(
        capsys, "tokenizer", "--input", corpus, "--vocab-size", 60, "--output", tmp_path / "tok"
    )
    assert code == 0 and json.loads(out)["vocab_size"] == 60
    assert load_tokenizer(tmp_path / "tok").vocab_size == 60

    argv = ["prepare", "--input", corpus, "--tokenizer", tmp_path / "tok", "--output"]
    code, out, _ = _run(capsys, *argv, tmp_path / "store", "--validation-fraction", 0.1)
    assert code == 0 and json.loads(out)["splits"]["validation"]["documents"] == 10
    assert open_store(tmp_path / "store").identity == load_tokenizer(tmp_path / "tok").identity

    (tmp_path / "empty.txt").write_text("")
    code, out, err = _run(
        capsys, "prepare", "--input", corpus, tmp_path / "empty.txt", "--tokenizer",
        tmp_path / "tok", "--output", tmp_path / "store2",
    )  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1 and "empty.txt is empty" in err
    assert not (tmp_path / "store2").exists()


def test_tokenizer_from_tfds_and_from_model(tmp_path, capsys):
    code, out, _ = _run(
        capsys, "tokenizer", "--from-model", default_store(), "--output", tmp_path / "imported"
    )
    assert code == 0 and (tmp_path / "imported" / "tokenizer.model").exists()
    code, _, err = _run(capsys, "tokenizer", "--tfds", "nope", "--data-dir", tmp_path,
                        "--vocab-size", 64, "--output", tmp_path / "t")  # fmt: skip
    assert code == 2 and "TFDS dataset 'nope' was not found" in err


def test_data_bench_prints_one_json_line(capsys):
    code, out, _ = _run(capsys, "data-bench", "--store", default_store(), "--seconds", 0.2)
    assert code == 0 and out.count("\n") == 1
    result = json.loads(out)
    assert result["bert"]["seq_len"] == 128 and result["gpt"]["seq_len"] == 1024
    for family in ("bert", "gpt"):
        assert result[family]["examples_per_s"] > 0 and result[family]["tokens_per_s"] > 0
    # The acceptance target, with a wide margin for a loaded test machine.
    assert result["bert"]["tokens_per_s"] > 100_000
