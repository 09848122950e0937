"""Reading text: the three local formats, the sentence rule, and TFDS without TensorFlow."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_data_shared import default_tokenizer, workdir, write_bert_file

from bertgpt_jax import cli
from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.corpus import DocumentSource, build_local_tfds, parse_tfds_spec
from bertgpt_jax.data.sources import TextOptions, read_documents, split_sentences
from bertgpt_jax.data.store import open_store, prepare_store
from bertgpt_jax.data.tokenizers import load_tokenizer


class BertgptTestArticles(tfds.core.GeneratorBasedBuilder):
    """Stands in for a named dataset such as wikipedia: an `article` text feature, two splits."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="en")]

    def _info(self):
        features = {"title": tfds.features.Text(), "article": tfds.features.Text()}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30), "validation": self._generate_examples(3)}

    def _generate_examples(self, count=30):
        for i in range(count):
            text = f"Article {i} starts here. It has a second sentence!\n\nA new paragraph {i}."
            yield str(i), {"title": f"Title {i}", "article": text}


def test_sentence_rule():
    text = 'First one. Second "quoted." (Third) starts\nhere? 3 items!\n\nNew para e.g. this.'
    assert split_sentences(text) == [
        "First one.",
        'Second "quoted."',
        "(Third) starts here?",
        "3 items!",
        "New para e.g. this.",
    ]
    assert split_sentences("no end mark here") == ["no end mark here"]
    assert split_sentences("version 3.11 is out. lower case next.") == [
        "version 3.11 is out. lower case next."
    ]


def test_formats(tmp_path):
    bert = tmp_path / "bert.txt"
    bert.write_text("A one.\nA two.\n\n\n  \nB one.\n")
    assert list(read_documents(bert, TextOptions())) == [["A one.", "A two."], ["B one."]]
    plain = tmp_path / "plain.txt"
    plain.write_text("Hard wrapped\nsentence one. Two!\n\nPara two.")
    docs = list(read_documents(plain, TextOptions(format="documents")))
    assert docs == [["Hard wrapped sentence one.", "Two!", "Para two."]]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"body": "X one. X two."}) + "\n\n" + json.dumps({"body": "Y."}))
    docs = list(read_documents(jsonl, TextOptions(format="jsonl", text_field="body")))
    assert docs == [["X one.", "X two."], ["Y."]]
    with pytest.raises(DataError, match=r"docs.jsonl:1 has no string field 'text'"):
        list(read_documents(jsonl, TextOptions(format="jsonl")))
    jsonl.write_text("{not json\n")
    with pytest.raises(DataError, match=r"docs.jsonl:1 is not a JSON object"):
        list(read_documents(jsonl, TextOptions(format="jsonl")))


def test_bad_bytes_are_refused_or_replaced(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Caf\u00e9 ok.\n".encode() + "Caf\u00e9 bad.\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:2 is not valid UTF-8"):
        list(read_documents(path, TextOptions()))
    docs = list(read_documents(path, TextOptions(encoding_errors="replace")))
    assert docs == [["Caf\u00e9 ok.", "Caf\ufffd bad."]]
    assert "latin1.txt" in capsys.readouterr().err


def test_local_text_round_trips_through_tfds_array_record(tmp_path):
    documents = [["Doc zero, line one.", "Line two."], ["Doc one."], ["Doc two.", "b", "c"]]
    path = write_bert_file(tmp_path / "corpus.txt", documents)
    spec = build_local_tfds([path], TextOptions(), tmp_path / "tfds")
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    source = DocumentSource(spec)
    assert sorted(source.documents(0, len(source))) == sorted(documents)
    assert "tensorflow" not in sys.modules  # and no TensorFlow was needed


@pytest.fixture(scope="module")
def articles_dir():
    data_dir = workdir() / "tfds_articles"
    BertgptTestArticles(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_named_tfds_dataset_from_a_data_dir(articles_dir):
    spec = parse_tfds_spec("bertgpt_test_articles/en:validation", str(articles_dir), "article")
    assert (spec.name, spec.split) == ("bertgpt_test_articles/en", "validation")
    assert parse_tfds_spec("wiki/x:1.2.0:test").name == "wiki/x:1.2.0"
    source = DocumentSource(spec)
    assert len(source) == 3
    assert sorted(source.documents(0, 3))[0] == [
        "Article 0 starts here.",
        "It has a second sentence!",
        "A new paragraph 0.",
    ]
    store = prepare_store(
        workdir() / "articles_store",
        default_tokenizer(),
        tfds_spec=parse_tfds_spec("bertgpt_test_articles/en", str(articles_dir), "article"),
        validation_fraction=0.1,
    )
    manifest = open_store(store).manifest
    assert manifest["splits"]["train"]["documents"] == 27
    assert manifest["splits"]["validation"]["documents"] == 3
    arrays = open_store(store).split("train")
    first = arrays.sentence_offsets[arrays.document_offsets[0]]
    text = load_tokenizer(store).decode(np.asarray(arrays.tokens[first : first + 5]))
    assert text.startswith("Article")


def test_named_tfds_errors_name_the_fix(articles_dir):
    def open_(name, feature="article"):
        return DocumentSource(parse_tfds_spec(name, str(articles_dir), feature))

    with pytest.raises(DataError, match="has no feature 'text'.*--text-feature"):
        open_("bertgpt_test_articles/en", "text")
    with pytest.raises(DataError, match="was not found in"):
        open_("no_such_dataset")
    with pytest.raises(DataError, match="choose one of train, validation"):
        open_("bertgpt_test_articles/en:test")
    info_file = next(articles_dir.rglob("dataset_info.json"))
    original = info_file.read_text()
    info = json.loads(original)
    info["fileFormat"] = "tfrecord"
    info_file.write_text(json.dumps(info))
    try:
        with pytest.raises(DataError, match="stored as tfrecord, which needs TensorFlow"):
            open_("bertgpt_test_articles/en")
    finally:
        info_file.write_text(original)


def test_tokenizer_cli_trains_from_a_named_tfds_dataset(articles_dir, tmp_path, capsys):
    argv = ["tokenizer", "--tfds", "bertgpt_test_articles/en", "--data-dir", str(articles_dir)]
    argv += ["--text-feature", "article", "--vocab-size", "40", "--output", str(tmp_path)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert load_tokenizer(tmp_path).vocab_size == 40
