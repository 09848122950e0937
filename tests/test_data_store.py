"""`prepare`: contents, manifest, idempotence, atomicity, and one clear error per bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_shared import default_tokenizer, write_bert_file

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data import store
from bertgpt_jax.data.sources import TextOptions
from bertgpt_jax.data.store import MANIFEST, open_store, prepare_store
from bertgpt_jax.data.tokenizers import load_tokenizer
from bertgpt_jax.data.tokenizers.sentencepiece import UNK_ID

DOCUMENTS = [
    ["The first document starts here.", "It has two sentences."],
    ["A second document [SEP] with a literal special token."],
    ["Third.", "Fourth sentence of the third.", "Fifth."],
] * 10


@pytest.fixture
def corpus(tmp_path):
    return write_bert_file(tmp_path / "in" / "corpus.txt", DOCUMENTS)


def _prepare(tmp_path, inputs, **kwargs):
    return prepare_store(tmp_path / "store", default_tokenizer(), inputs=inputs, **kwargs)


def _left_over(tmp_path):
    """Anything prepare may have left next to the output (temp dirs included)."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "in")


def test_store_holds_every_sentence_and_the_tokenizer(tmp_path, corpus):
    path = _prepare(tmp_path, [corpus], validation_fraction=0.2)
    opened = open_store(path)
    tok = load_tokenizer(default_tokenizer())
    assert opened.identity == tok.identity
    assert (path / "tokenizer.model").read_bytes() == tok.model_path.read_bytes()
    counts = opened.manifest["splits"]
    assert counts["validation"]["documents"] == 6 and counts["train"]["documents"] == 24
    decoded = []
    for split in ("train", "validation"):
        arrays = opened.split(split)
        offsets = arrays.sentence_offsets
        for d in range(arrays.num_documents):
            first, last = arrays.document_offsets[d : d + 2]
            decoded.append(
                tuple(
                    tok.decode(np.asarray(arrays.tokens[offsets[s] : offsets[s + 1]]))
                    for s in range(first, last)
                )
            )
    # Sentences survive tokenization, except that a spelled-out [SEP] becomes [UNK].
    expected = [tuple(s.replace("[SEP]", " \u2047 ") for s in doc) for doc in DOCUMENTS]
    normalise = [tuple(" ".join(s.split()) for s in doc) for doc in expected]
    assert sorted(tuple(" ".join(s.split()) for s in d) for d in decoded) == sorted(normalise)
    tokens = np.asarray(opened.split("train").tokens)
    assert ((tokens >= 6) | (tokens == UNK_ID)).all()


def test_rerun_is_a_no_op_and_changes_are_refused(tmp_path, corpus):
    path = _prepare(tmp_path, [corpus])
    stamp = (path / MANIFEST).stat().st_mtime_ns
    assert _prepare(tmp_path, [corpus]) == path
    assert (path / MANIFEST).stat().st_mtime_ns == stamp
    corpus.write_text(corpus.read_text() + "\nA new document.\n")
    with pytest.raises(DataError, match="already exists and holds something else.*--overwrite"):
        _prepare(tmp_path, [corpus])
    _prepare(tmp_path, [corpus], overwrite=True)
    assert open_store(path).manifest["splits"]["train"]["documents"] == 30
    assert _left_over(tmp_path) == ["store"]


def test_interrupted_preparation_leaves_nothing(tmp_path, corpus, monkeypatch):
    def interrupted(*args, **kwargs):
        (args[2] / "train").mkdir()
        (args[2] / "train" / "tokens.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_tokenize_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, [corpus])
    assert _left_over(tmp_path) == []
    with pytest.raises(DataError, match="does not exist; create it with `bertgpt prepare"):
        open_store(tmp_path / "store")


def test_incomplete_store_is_not_a_store(tmp_path, corpus):
    path = _prepare(tmp_path, [corpus])
    (path / MANIFEST).unlink()
    with pytest.raises(DataError, match="is not a complete prepared store"):
        open_store(path)


def test_damaged_store_is_detected(tmp_path, corpus):
    path = _prepare(tmp_path, [corpus])
    tokens = path / "train" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(DataError, match="wrong size; prepare the store again"):
        open_store(path).split("train")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", r"input file .*empty.txt is empty"),
        ("blank.txt", b"\n   \n\t\n\n", r"input file .*blank.txt holds only blank lines"),
        ("latin.txt", "Caf\u00e9.\n".encode("latin-1"), r"latin.txt:1 is not valid UTF-8"),
        (
            "long.txt",
            b"word " * 30_000 + b"\n",
            r"long.txt:1 holds a sentence of 149999 characters",
        ),
        ("missing.txt", None, r"input path .*missing.txt does not exist"),
    ],
)
def test_bad_input_gives_one_clear_error_and_no_store(tmp_path, corpus, name, content, message):
    bad = tmp_path / "in" / name
    if content is not None:
        bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        _prepare(tmp_path, [corpus, bad])
    assert "\n" not in str(error.value)
    assert _left_over(tmp_path) == []


def test_replaced_bytes_and_directories_are_accepted(tmp_path, corpus):
    (tmp_path / "in" / "latin.txt").write_bytes("Caf\u00e9 au lait.\n".encode("latin-1"))
    (tmp_path / "in" / ".hidden").write_bytes(b"\xff")
    path = _prepare(
        tmp_path, [tmp_path / "in"], text_options=TextOptions(encoding_errors="replace")
    )
    manifest = json.loads((path / MANIFEST).read_text())
    assert [p.rsplit("/", 1)[-1] for p in manifest["sources"]["files"]] == [
        "corpus.txt",
        "latin.txt",
    ]


def test_argument_errors(tmp_path, corpus):
    with pytest.raises(DataError, match="either --input"):
        prepare_store(tmp_path / "s", default_tokenizer())
    with pytest.raises(DataError, match="validation-fraction"):
        _prepare(tmp_path, [corpus], validation_fraction=1.0)
    with pytest.raises(DataError, match="tokenizer model .* does not exist"):
        prepare_store(tmp_path / "s", tmp_path / "nope", inputs=[corpus])
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="already exists"):
        _prepare(tmp_path, [corpus])
