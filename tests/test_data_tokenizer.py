"""Tokenizers: fixed special ids, identity, idempotent training, imported models checked."""

from __future__ import annotations

import io
import json

import pytest
import sentencepiece as spm
from test_data_shared import default_store, default_tokenizer

from bertgpt_jax.core.errors import DataError
from bertgpt_jax.data.tokenizers import SpecialIds, TokenizerIdentity, load_tokenizer
from bertgpt_jax.data.tokenizers.sentencepiece import (
    SPECIAL_TOKENS,
    import_tokenizer,
    train_tokenizer,
)

SENTENCES = [
    f"Line {i}: the quick brown fox number {i % 17} jumps over {i * 3} dogs." for i in range(400)
]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_trained_tokenizers_keep_the_special_ids(tmp_path, model_type):
    tok = train_tokenizer(SENTENCES, tmp_path, vocab_size=160, model_type=model_type)
    sp = tok.processor
    assert sp.pad_id() == 0 and sp.unk_id() == 1 and sp.bos_id() == -1 and sp.eos_id() == -1
    assert {piece: sp.PieceToId(piece) for piece in list(SPECIAL_TOKENS)[2:]} == {
        "[CLS]": 2,
        "[SEP]": 3,
        "[MASK]": 4,
        "<|endoftext|>": 5,
    }
    assert [sp.IdToPiece(i) for i in range(6)] == list(SPECIAL_TOKENS)
    assert tok.vocab_size == 160
    info = json.loads((tmp_path / "tokenizer.json").read_text())
    assert TokenizerIdentity.from_json(info["identity"]) == tok.identity
    assert tok.decode(tok.encode(["the quick brown fox"])[0]) == "the quick brown fox"


def test_identity_is_the_model_hash_and_training_is_idempotent(tmp_path):
    first = train_tokenizer(SENTENCES, tmp_path / "a", vocab_size=160, inputs_fingerprint="x")
    stamp = first.model_path.stat().st_mtime_ns
    again = train_tokenizer(SENTENCES, tmp_path / "a", vocab_size=160, inputs_fingerprint="x")
    assert again.identity == first.identity and first.model_path.stat().st_mtime_ns == stamp
    other = train_tokenizer(SENTENCES, tmp_path / "b", vocab_size=150, inputs_fingerprint="x")
    assert other.identity != first.identity
    assert load_tokenizer(tmp_path / "a" / "tokenizer.model").identity == first.identity


def test_vocab_too_large_for_the_text_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not train a 5000-piece tokenizer.*--vocab-size"):
        train_tokenizer(SENTENCES[:20], tmp_path, vocab_size=5000)
    assert not (tmp_path / "tokenizer.json").exists()


def test_imported_models_keep_their_own_special_ids(tmp_path):
    """Special ids are read from the model, never assumed (issue 12: a foreign SentencePiece
    model used to be refused for not having ours); a task that needs a token the model lacks
    names it."""
    imported = import_tokenizer(default_tokenizer(), tmp_path / "copy")
    assert imported.identity == load_tokenizer(default_store()).identity
    assert imported.specials == SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, eos=5, bos=5)
    foreign = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(SENTENCES), model_writer=foreign, vocab_size=100, minloglevel=2
    )
    (tmp_path / "foreign.model").write_bytes(foreign.getvalue())
    theirs = import_tokenizer(tmp_path / "foreign.model", tmp_path / "other").specials
    assert theirs == SpecialIds(unk=0, bos=1, eos=2)  # SentencePiece's defaults
    with pytest.raises(DataError, match=r"has no cls token, which masked LM needs"):
        theirs.require(("cls",), "foreign.model", "masked LM")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="is not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")


def test_word_start_table_marks_word_initial_pieces():
    tok = load_tokenizer(default_tokenizer())
    table = tok.word_start_table()
    ids = tok.encode(["The tokenizer splits words"])[0]
    pieces = [tok.processor.IdToPiece(i) for i in ids]
    assert [p.startswith("\u2581") for p in pieces] == table[ids].tolist()
    assert table[:6].all()
