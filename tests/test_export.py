"""`bertgpt export` and `checkpoint.init_from_hf`: transformers loads the export and gives our
logits; AutoTokenizer gives our SentencePiece ids on real text; only parameters are read; bad
input fails in one sentence and leaves nothing behind; an HF directory seeds a new run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open
from test_data_shared import default_store
from transformers import AutoTokenizer, BertForPreTraining, GPT2LMHeadModel

from bertgpt_jax import load_pretrained
from bertgpt_jax.cli import main
from bertgpt_jax.core.config import load_config
from bertgpt_jax.core.errors import CheckpointError
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.pretrained.export import export
from bertgpt_jax.pretrained.workdir import restore_params
from bertgpt_jax.training.checkpoint import Checkpointer
from bertgpt_jax.training.hf_init import state_from_hf
from bertgpt_jax.training.loop import _copy_tokenizer, train_and_evaluate
from bertgpt_jax.training.step import Trainer

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4  # max abs logit error, fp32
HF_CLASS = {"bert": BertForPreTraining, "gpt": GPT2LMHeadModel}
STEP = 7


def _config(family: str, *overrides: str):
    name = "bert_tiny" if family == "bert" else "gpt_tiny"
    small = ["train.batch_size=8", "data.seq_len=32", "checkpoint.async_save=false"]
    return load_config(ROOT / f"configs/{name}.yaml", [f"data.path={default_store()}", *small,
                                                       *overrides])  # fmt: skip


def _random_state(trainer: Trainer, seed: int):
    """A device state with every parameter random (init leaves biases 0, hiding mistakes)."""
    rng = np.random.default_rng(seed)

    def leaf(a: jax.ShapeDtypeStruct) -> np.ndarray:
        if np.issubdtype(a.dtype, np.floating):
            return (0.3 * rng.standard_normal(a.shape)).astype(a.dtype)
        return np.full(a.shape, STEP if a.shape == () else 3, a.dtype)

    host = jax.tree.map(leaf, trainer.abstract_state)
    return host, jax.device_put(host, trainer.state_shardings)


@pytest.fixture(scope="module", params=["bert", "gpt"])
def workdir(request, tmp_path_factory):
    """A workdir with one checkpoint of random parameters, as `bertgpt train` leaves it."""
    family = request.param
    path = tmp_path_factory.mktemp(f"run_{family}")
    config = _config(family)
    trainer = Trainer(config, make_mesh(config.mesh))
    host, state = _random_state(trainer, seed=1)
    checkpointer = Checkpointer(path, config, trainer)
    checkpointer.save(STEP, state, {"loss": 2.5, "eval_loss": 2.75}, force=True)
    checkpointer.close()
    _copy_tokenizer(config, path)
    return family, path, host.params


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    family, path, params = workdir
    return family, path, params, export(path, tmp_path_factory.mktemp("hf") / "out")


def _batch(family: str, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = (np.arange(24)[None] < np.array([24, 17, 9])[:, None]).astype(np.int64)  # [B, L]
    batch = {"input_ids": rng.integers(6, vocab, mask.shape) * mask, "attention_mask": mask}
    if family == "bert":
        batch["token_type_ids"] = (np.arange(24)[None] >= 12).astype(np.int64) * mask
    return batch


def test_transformers_gives_our_logits(exported):
    family, path, params, out = exported
    assert {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "tokenizer.model", "README.md",
    }  # fmt: skip
    _, loaded = hf_files.load_hf(out)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)  # the checkpoint's, exactly
    model = HF_CLASS[family].from_pretrained(out, attn_implementation="eager").eval()
    batch = _batch(family, model.config.vocab_size)
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(v) for k, v in batch.items()})
    ours = load_pretrained(path)(**batch)  # from the workdir, not from the export
    real = batch["attention_mask"].astype(bool)
    if family == "bert":
        pairs = [(ours["mlm_logits"], theirs.prediction_logits)]
        pairs.append((ours["nsp_logits"], theirs.seq_relationship_logits))
    else:
        pairs = [(ours["logits"], theirs.logits)]
    for mine, ref in pairs:
        diff = np.abs(np.asarray(mine) - ref.numpy())
        assert (diff[real] if diff.ndim == 3 else diff).max() < TOL
        assert np.abs(ref.numpy()).max() > 1.0
    card = (out / "README.md").read_text()
    assert f"step {STEP}" in card and "| eval_loss | 2.75 |" in card and "learning_rate" in card


def _corpus_lines() -> list[str]:
    files = sorted((default_store().parent / "corpus").glob("*.txt"))
    lines = [line for f in files for line in f.read_text().splitlines() if line.strip()]
    return lines[::4]


def test_auto_tokenizer_gives_our_ids_on_real_text(exported):
    family, _, _, out = exported
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(default_store() / "tokenizer.model"))
    lines = _corpus_lines()
    ours = sp.Encode(lines)
    theirs = tok(lines, add_special_tokens=False)["input_ids"]
    ties = 0
    for text, a, b in zip(lines, ours, theirs, strict=True):
        if a != b:  # only a segmentation of exactly the same score may differ (Unigram ties)
            score = lambda ids: sum(sp.GetScore(i) for i in ids)  # noqa: E731
            assert len(a) == len(b) and math.isclose(score(a), score(b), rel_tol=1e-6), text
            ties += 1
    assert len(lines) > 3000 and ties <= len(lines) // 1000, ties
    text = lines[10]
    if family == "bert":
        assert tok(text)["input_ids"] == [2, *sp.Encode(text), 3]  # [CLS] ... [SEP]
        pair = tok(text, lines[11])
        assert pair["token_type_ids"] == [0] * (len(sp.Encode(text)) + 2) + [1] * (
            len(sp.Encode(lines[11])) + 1
        )
        assert tok.mask_token_id == 4 and tok.pad_token_id == 0
    else:
        assert tok(text)["input_ids"] == sp.Encode(text)
        assert tok.eos_token_id == 5 and tok.pad_token_id == 0
    assert tok.decode(sp.Encode(text)) == sp.Decode(sp.Encode(text))


def test_export_reads_only_the_parameters(workdir, monkeypatch):
    import orbax.checkpoint as ocp

    _, path, params = workdir
    names: list[str] = []
    for cls in (ocp.type_handlers.ArrayHandler, ocp.type_handlers.NumpyHandler):

        async def spy(self, infos, args=None, _orig=cls.deserialize):
            names.extend(info.name for info in infos)
            return await _orig(self, infos, args)

        monkeypatch.setattr(cls, "deserialize", spy)
    _, step, restored, _ = restore_params(path)
    assert step == STEP
    assert sorted(names) == sorted("params." + ".".join(k.key for k in p) for p, _ in
                                   jax.tree_util.tree_leaves_with_path(params))  # fmt: skip


def test_bfloat16_export(workdir, tmp_path):
    (
        _,
        path,
        _,
    ) = workdir
    out = export(path, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118


def test_bad_input_fails_in_one_sentence(workdir, tmp_path, capsys):
    _, path, _ = workdir
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty_run").mkdir()
    cases = [
        (["--workdir", str(tmp_path / "missing")], "does not exist"),
        (["--workdir", str(tmp_path / "empty_run")], "has no checkpoints/"),
        (["--workdir", str(path), "--step", "99"], "no committed checkpoint at step 99"),
        (["--workdir", str(path), "--output", str(tmp_path / "full")], "already exists"),
    ]
    for args, expected in cases:
        output = [] if "--output" in args else ["--output", str(tmp_path / "out")]
        assert main(["export", *args, *output]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_run", "full"]  # nothing written


def test_training_starts_from_an_hf_directory(exported, tmp_path):
    family, _, params, out = exported
    config = _config(family, f"checkpoint.init_from_hf={out}", "train.steps=2")
    trainer = Trainer(config, make_mesh(config.mesh))
    state = state_from_hf(trainer, out, None)
    assert int(state.step) == 0
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), state.params, params)
    metrics = train_and_evaluate(config, tmp_path / "continued")
    assert np.isfinite(metrics["loss"])
    wrong = _config(family, f"checkpoint.init_from_hf={out}", "model.num_layers=3")
    with pytest.raises(CheckpointError, match=r"model.num_layers \(2 in config.json, 3 here\)"):
        state_from_hf(Trainer(wrong, make_mesh(wrong.mesh)), out, None)


@pytest.mark.parametrize("model_type,byte_fallback", [("bpe", False), ("unigram", True)])
def test_other_sentencepiece_models_convert(tmp_path, model_type, byte_fallback):
    from bertgpt_jax.data.tokenizers.sentencepiece import train_tokenizer
    from bertgpt_jax.hf.tokenizer import SAMPLE, build_tokenizer

    lines = _corpus_lines()
    model = train_tokenizer(lines[:3000], tmp_path, 400, model_type=model_type,
                            byte_fallback=byte_fallback).model_path  # fmt: skip
    tok, sp = build_tokenizer(model, False), spm.SentencePieceProcessor(model_file=str(model))
    texts = [*lines[3000:], *SAMPLE.splitlines(), "emoji 😀 and 中文字符 ☃"]
    differ = [t for t in texts if sp.Encode(t) != tok.encode(t, add_special_tokens=False).ids]
    assert len(differ) <= len(texts) // 1000, differ[:3]  # only Unigram ties may differ
    # Byte fallback spells unknown characters in bytes, which must decode back to them.
    text = "emoji 😀 and 中文字符 ☃" if byte_fallback else lines[3001]
    assert 1 not in sp.Encode(text)  # no [UNK]
    assert tok.decode(sp.Encode(text)) == sp.Decode(sp.Encode(text)) == text.strip()
