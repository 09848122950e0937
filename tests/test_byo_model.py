"""Bring your own model: directories shaped like the public bert-base-uncased and gpt2 ones
(a WordPiece / byte-level BPE tokenizer trained here with `tokenizers`, special tokens at their
ids, a random `transformers` model saved next to it) go through prepare -> continued
pretraining -> resume -> export, and `transformers` loads the export with the same tokenizer ids
and logits. Nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from bertgpt_jax import load_pretrained
from bertgpt_jax.cli import main
from bertgpt_jax.data.embedded import write_default_corpus
from bertgpt_jax.data.tokenizers import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4
VOCAB = 1000
SMALL = ["train.batch_size=8", "data.seq_len=32", "mesh.data=-1", "checkpoint.every_steps=1",
         "checkpoint.async_save=false", "train.log_every=1", "data.max_predictions_per_seq=5"]  # fmt: skip
TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Return a new list containing all items from the iterable in ascending order.",
    "  Odd   spacing, UPPER case, ünïcödé and [MASK] or <|endoftext|> spelled out.",
]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus")
    write_default_corpus(path)
    return path


def _hf_model(family: str, kind: str = "full"):
    """A random transformers model of a small config, as the public checkpoints lay it out."""
    torch.manual_seed(0)
    if family == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64, pad_token_id=0,
        )  # fmt: skip
        cls = {"full": transformers.BertForPreTraining, "base": transformers.BertModel,
               "mlm": transformers.BertForMaskedLM}[kind]  # fmt: skip
    else:
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
        )  # fmt: skip
        cls = {"full": transformers.GPT2LMHeadModel, "base": transformers.GPT2Model}[kind]
    return cls(config).eval()


@pytest.fixture(scope="module", params=["bert", "gpt"])
def hf_dir(request, corpus, tmp_path_factory) -> tuple[str, Path]:
    """A bert-base-uncased-like or gpt2-like directory: tokenizer files + config + weights."""
    family = request.param
    path = tmp_path_factory.mktemp(f"hf_{family}")
    kind = "wordpiece" if family == "bert" else "byte-bpe"
    argv = ["tokenizer", "--input", corpus, "--vocab-size", VOCAB, "--model-type", kind]
    assert main([str(a) for a in [*argv, "--output", path]]) == 0
    _hf_model(family).save_pretrained(path, safe_serialization=True)
    return family, path


def test_special_tokens_sit_where_the_public_checkpoints_have_them(hf_dir):
    family, path = hf_dir
    tok = load_tokenizer(path)
    assert tok.vocab_size == VOCAB
    if family == "bert":
        assert (tok.specials.pad, tok.specials.unk, tok.specials.cls) == (0, 100, 101)
        assert (tok.specials.sep, tok.specials.mask, tok.specials.eos) == (102, 103, None)
    else:
        assert tok.specials.eos == tok.specials.bos == VOCAB - 1 and tok.specials.pad is None
    theirs = AutoTokenizer.from_pretrained(path)
    for text in TEXT:
        assert tok.encode([text])[0] == theirs(text, add_special_tokens=False)["input_ids"]


def test_continue_pretraining_resume_export(hf_dir, corpus, tmp_path, capsys):
    family, path = hf_dir
    store, workdir, out = tmp_path / "store", tmp_path / "run", tmp_path / "export"
    assert (
        _run(capsys, "prepare", "--input", corpus, "--tokenizer", path, "--output", store)[0] == 0
    )
    config = ROOT / "configs" / f"{family}_tiny.yaml"
    train = ["train", "--config", config, "--workdir", workdir, f"checkpoint.init_from_hf={path}",
             f"data.path={store}", *SMALL]  # fmt: skip
    code, stdout, err = _run(capsys, *train, "train.steps=2")
    assert code == 0, err
    if family == "bert":  # a BertForPreTraining has every head: nothing starts fresh
        assert "initialised fresh" not in err
    saved = json.loads((workdir / "checkpoints" / "2" / "metadata" / "metadata").read_text())
    assert saved["config"]["model"]["hidden_size"] == 64  # the shape came from config.json
    code, stdout, err = _run(capsys, *train, "train.steps=4")
    assert code == 0 and "Resuming from step 2" in stdout, err
    assert _run(capsys, "export", "--workdir", workdir, "--output", out)[0] == 0

    ours = load_tokenizer(out)
    assert ours.identity == load_tokenizer(path).identity  # the original files went back
    theirs_tok = AutoTokenizer.from_pretrained(out)
    ids = [theirs_tok(t, add_special_tokens=False)["input_ids"] for t in TEXT]
    assert ids == ours.encode(TEXT)
    hf_cls = transformers.BertForPreTraining if family == "bert" else transformers.GPT2LMHeadModel
    model = hf_cls.from_pretrained(out).eval()
    batch = np.asarray([ids[0][:12], ids[1][:12]], np.int64)
    with torch.no_grad():
        out_hf = model(input_ids=torch.tensor(batch))
    key, hf_key = ("mlm_logits", "prediction_logits") if family == "bert" else ("logits", "logits")
    for source in (out, workdir):
        got = np.asarray(load_pretrained(source)(batch)[key])
        np.testing.assert_allclose(got, out_hf[hf_key].numpy(), atol=TOL, rtol=0)


def test_bad_pairings_are_refused_in_one_sentence(hf_dir, corpus, tmp_path, capsys):
    family, path = hf_dir
    config = ROOT / "configs" / f"{family}_tiny.yaml"
    store = tmp_path / "store"
    assert (
        _run(capsys, "prepare", "--input", corpus, "--tokenizer", path, "--output", store)[0] == 0
    )
    base = ["train", "--config", config, "--workdir", tmp_path / "run",
            f"checkpoint.init_from_hf={path}", *SMALL]  # fmt: skip
    code, _, err = _run(capsys, *base, f"data.path={store}", "model.hidden_size=32")
    assert code == 2 and "model.hidden_size=32 contradicts" in err and "64" in err
    other = tmp_path / "other_store"
    other_tok = tmp_path / "other_tok"
    kind = "byte-bpe" if family == "bert" else "wordpiece"
    assert _run(capsys, "tokenizer", "--input", corpus, "--vocab-size", 500, "--model-type", kind,
                "--output", other_tok)[0] == 0  # fmt: skip
    assert _run(capsys, "prepare", "--input", corpus, "--tokenizer", other_tok, "--output",
                other)[0] == 0  # fmt: skip
    code, _, err = _run(capsys, *base, f"data.path={other}", "train.steps=1")
    assert code == 2 and "another tokenizer" in err and str(path) in err


def test_masked_lm_checkpoint_loads_with_a_fresh_pair_head(tmp_path, caplog):
    model = _hf_model("bert", "mlm")
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_pretrained(tmp_path)
    assert "initialised fresh" in caplog.text and "cls.seq_relationship.weight" in caplog.text
    assert "cls.predictions.bias" not in caplog.text  # the MLM head came from the checkpoint
    ids = np.arange(1, 13, dtype=np.int64)[None]
    with torch.no_grad():
        want = model(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(loaded(ids)["mlm_logits"]), want, atol=TOL, rtol=0)


def test_base_checkpoint_loads_with_fresh_heads(tmp_path, caplog):
    model = _hf_model("bert", "base")
    model.save_pretrained(tmp_path, safe_serialization=True)
    params = load_pretrained(tmp_path).params
    assert "cls.predictions.transform.dense.weight" in caplog.text
    table = model.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(params["core"]["embeddings"]["token"]), table)
    pooler = model.pooler.dense.weight.detach().numpy().T  # the pooler is BertModel's own
    np.testing.assert_array_equal(np.asarray(params["pooler"]["kernel"]), pooler)


def test_gpt2_base_model_loads(tmp_path):
    model = _hf_model("gpt", "base")
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_pretrained(tmp_path)
    ids = np.arange(1, 13, dtype=np.int64)[None]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids)).last_hidden_state
    want = hidden.numpy() @ model.wte.weight.detach().numpy().T  # the tied head
    np.testing.assert_allclose(np.asarray(loaded(ids)["logits"]), want, atol=TOL, rtol=0)
