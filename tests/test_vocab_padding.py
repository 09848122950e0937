"""model.vocab_multiple: the embedding table is padded, the padding can never be predicted (the
loss and the logits are those of the unpadded model, whatever the padded rows hold), and the
HuggingFace export trims it (transformers sees the real vocabulary and the same logits)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import BertForPreTraining, GPT2LMHeadModel

from bertgpt_jax import load_pretrained
from bertgpt_jax.core.config import load_config
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.tasks import build_model, pretraining_task

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
VOCAB, MULTIPLE = 1000, 128  # 1000 -> 1024 rows
TOL = 1e-4


def _config(family: str, multiple: int):
    model = load_config(CONFIGS / f"{family}_tiny.yaml").model
    return dataclasses.replace(model, vocab_size=VOCAB, vocab_multiple=multiple, dropout_rate=0.0)


def _params(config, seed: int) -> dict:
    return nnx.state(build_model(config, jax.random.key(seed)), nnx.Param).to_pure_dict()


def _padded_copy(params: dict, rng: np.random.Generator) -> dict:
    """The same model with 24 junk rows appended to the vocabulary-sized tensors."""
    out = jax.tree.map(np.asarray, params)
    table = out["core"]["embeddings"]["token"]
    junk = 5.0 * rng.standard_normal((1024 - VOCAB, table.shape[1])).astype(np.float32)
    out["core"]["embeddings"]["token"] = np.concatenate([table, junk])
    if "mlm_head" in out:  # a large bias would dominate any row it were allowed into
        bias = out["mlm_head"]["output_bias"]
        out["mlm_head"]["output_bias"] = np.concatenate([bias, np.full(1024 - VOCAB, 50.0)])
    return out


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_padding_is_never_predicted(family):
    plain, padded = _config(family, 1), _config(family, MULTIPLE)
    assert padded.padded_vocab_size == 1024
    params = _params(plain, seed=1)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, VOCAB, (2, 17)), jnp.int32)
    task = pretraining_task(plain)
    batch = {
        "input_ids": ids[:, :-1], "positions": jnp.broadcast_to(jnp.arange(16), (2, 16)),
        "segment_ids": jnp.ones((2, 16), jnp.int32), "targets": ids[:, 1:],
        "loss_weights": jnp.ones((2, 16)), "token_type_ids": jnp.zeros((2, 16), jnp.int32),
        "mlm_positions": jnp.asarray([[1, 5, 9], [2, 3, 15]], jnp.int32),
        "mlm_ids": ids[:, :3], "mlm_weights": jnp.ones((2, 3)), "nsp_labels": jnp.asarray([0, 1]),
    }  # fmt: skip

    def loss(config, p):
        model = nnx.merge(nnx.graphdef(task.abstract_model(config)), nnx.State(p))
        return jax.tree.map(float, task.loss_terms(model, batch, None))

    want, got = loss(plain, params), loss(padded, _padded_copy(params, rng))
    for term in want:
        np.testing.assert_allclose(got[term], want[term], rtol=1e-6)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_export_trims_padding_and_import_pads_it(family, tmp_path):
    config = _config(family, MULTIPLE)
    params = _params(config, seed=2)
    hf_files.save_hf(tmp_path, params, config)
    hf_cls = GPT2LMHeadModel if family == "gpt" else BertForPreTraining
    theirs = hf_cls.from_pretrained(tmp_path).eval()
    assert theirs.config.vocab_size == VOCAB
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, 12))
    with torch.no_grad():
        out = theirs(input_ids=torch.tensor(ids))
    want = (out.logits if family == "gpt" else out.prediction_logits).numpy()
    key = "logits" if family == "gpt" else "mlm_logits"
    ours = load_pretrained(tmp_path)(ids)[key]  # read back unpadded: multiple 1
    np.testing.assert_allclose(np.asarray(ours), want, atol=TOL, rtol=0)
    _, repadded = hf_files.load_hf(tmp_path, vocab_multiple=MULTIPLE)
    assert repadded["core"]["embeddings"]["token"].shape[0] == 1024
    from bertgpt_jax.pretrained.load import PretrainedModel

    again = PretrainedModel(config, repadded)(ids)[key]
    assert again.shape[-1] == VOCAB
    np.testing.assert_allclose(np.asarray(again), want, atol=TOL, rtol=0)
