"""HuggingFace interop: logits parity with `transformers` both ways (fp32, right-padded batch),
exact round trips, parameter counts of every shipped config, and clear errors on mismatches."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import BertConfig, BertForPreTraining, GPT2Config, GPT2LMHeadModel

from bertgpt_jax import load_pretrained
from bertgpt_jax.core.config import ModelConfig, load_config
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.hf import tables
from bertgpt_jax.hf import weights as hf
from bertgpt_jax.hf.config import hf_config_from_model, model_config_from_hf
from bertgpt_jax.pretrained.load import PretrainedModel
from bertgpt_jax.tasks import build_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TOL = 1e-4  # max abs logit error in fp32; measured 0.6e-6 to 9e-6 with logits up to ~7
LENGTHS = (16, 11, 5)  # right padding: rows 2 and 3 end in pads
HF_CLASSES = {"bert": (BertConfig, BertForPreTraining), "gpt": (GPT2Config, GPT2LMHeadModel)}
# Small HF configs with every size different, so a transposed or mis-split tensor cannot fit.
HF_TINY = {
    "bert": dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=3,
    ),
    "gpt": dict(
        vocab_size=99,
        n_embd=32,
        n_layer=3,
        n_head=4,
        n_inner=80,
        n_positions=40,
        bos_token_id=1,
        eos_token_id=2,
    ),
}
PARAM_COUNTS = {
    "bert_base": 110_106_428,
    "bert_large": 336_226_108,
    "gpt2_small": 124_439_808,
    "gpt2_medium": 354_823_168,
    "gpt2_large": 774_030_080,
    "gpt2_xl": 1_557_611_200,
}


def _batch(family: str, vocab_size: int, type_vocab_size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    length = max(LENGTHS)
    mask = (np.arange(length)[None] < np.array(LENGTHS)[:, None]).astype(np.int64)  # [B, L]
    batch = {"input_ids": rng.integers(1, vocab_size, mask.shape) * mask, "attention_mask": mask}
    if family == "bert":
        batch["token_type_ids"] = rng.integers(0, type_vocab_size, mask.shape) * mask
    return batch


def _hf_logits(model: torch.nn.Module, batch: dict) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in batch.items()})
    if "prediction_logits" in out:
        return {
            "mlm_logits": out.prediction_logits.numpy(),
            "nsp_logits": out.seq_relationship_logits.numpy(),
        }
    return {"logits": out.logits.numpy()}


def _max_errors(ours: dict, theirs: dict, mask: np.ndarray) -> dict[str, float]:
    """Max abs difference per output; [B, L, V] outputs only at real (unpadded) tokens."""
    assert set(ours) == set(theirs)
    errors = {}
    for name, expected in theirs.items():
        got = np.asarray(ours[name])
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        diff = np.abs(got - expected)
        errors[name] = float((diff[mask.astype(bool)] if diff.ndim == 3 else diff).max())
    return errors


def _randomise_torch(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random (HF init leaves biases 0 and norms 1, which would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.2 * torch.randn(p.shape, generator=gen)
            is_norm = "LayerNorm" in name or ".ln_" in name
            p.copy_(1.0 + noise if is_norm and name.endswith("weight") else noise)


def _random_params(config: ModelConfig, seed: int) -> dict:
    params = nnx.state(build_model(config, jax.random.key(seed)), nnx.Param).to_pure_dict()
    rng = np.random.default_rng(seed)

    def noisy(path: tuple, leaf: jax.Array) -> np.ndarray:
        noise = 0.2 * rng.standard_normal(leaf.shape).astype(np.float32)
        return noise + 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else noise

    return jax.tree_util.tree_map_with_path(noisy, params)


@pytest.fixture(scope="module", params=["bert", "gpt"])
def hf_saved(request, tmp_path_factory) -> tuple[str, Path, dict, dict]:
    """A random HF model saved with `save_pretrained`, a padded batch and HF's logits on it."""
    family = request.param
    config_cls, model_cls = HF_CLASSES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**HF_TINY[family], attn_implementation="eager")).eval()
    _randomise_torch(model, seed=1)
    path = tmp_path_factory.mktemp(f"hf_{family}")
    model.save_pretrained(path)
    batch = _batch(family, HF_TINY[family]["vocab_size"], HF_TINY[family].get("type_vocab_size", 0))
    return family, path, batch, _hf_logits(model, batch)


def _tiny(family: str) -> ModelConfig:
    name = "bert_tiny" if family == "bert" else "gpt_tiny"
    return load_config(CONFIGS / f"{name}.yaml").model


def test_hf_to_ours_logits_match(hf_saved):
    family, path, batch, expected = hf_saved
    model = load_pretrained(path)
    ours = model(**batch)
    errors = _max_errors(ours, expected, batch["attention_mask"])
    assert max(errors.values()) < TOL, errors
    assert max(np.abs(v).max() for v in expected.values()) > 1.0  # logits are not trivially small


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_ours_to_hf_logits_match(family, tmp_path):
    config = _tiny(family)
    params = _random_params(config, seed=2)
    hf_files.save_hf(tmp_path, params, config)
    model = HF_CLASSES[family][1].from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert sum(p.numel() for p in model.parameters()) == sum(
        int(np.prod(s)) for s in hf.param_shapes(config).values()
    )
    batch = _batch(family, config.vocab_size, config.type_vocab_size, seed=3)
    expected = _hf_logits(model, batch)
    ours = PretrainedModel(config, params)(**batch)
    errors = _max_errors(ours, expected, batch["attention_mask"])
    assert max(errors.values()) < TOL, errors


def test_hf_config_reads_back(hf_saved):
    family, path, _, _ = hf_saved
    config = model_config_from_hf(json.loads((path / "config.json").read_text()))
    tiny = HF_TINY[family]
    assert config.family == family and config.vocab_size == tiny["vocab_size"]
    if family == "bert":
        assert (config.mlp_dim, config.type_vocab_size, config.activation) == (37, 3, "gelu")
        assert config.layer_norm_eps == 1e-12 and config.norm_position == "post"
    else:
        assert (config.mlp_dim, config.num_layers, config.activation) == (80, 3, "gelu_tanh")
        assert config.type_vocab_size == 0 and config.norm_position == "pre"
    assert model_config_from_hf({"model_type": "gpt2", "n_embd": 64, "n_head": 4}).mlp_dim == 256


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_round_trip_is_exact(family, tmp_path):
    config = dataclasses.replace(_tiny(family), dropout_rate=0.05, attention_dropout_rate=0.2)
    params = _random_params(config, seed=4)
    back = hf.hf_to_params(hf.params_to_hf(params, config), config)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    assert model_config_from_hf(hf_config_from_model(config)) == config
    hf_files.save_hf(tmp_path / "f32", params, config)
    loaded_config, loaded = hf_files.load_hf(tmp_path / "f32")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert not [p.name for p in (tmp_path / "f32").iterdir() if p.name.startswith(".")]


def test_bfloat16_export(tmp_path):
    config = _tiny("gpt")
    params = _random_params(config, seed=5)
    hf_files.save_hf(tmp_path, params, config, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(tmp_path / "model.safetensors", "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is no dict) == {"BF16"}
    _, loaded = hf_files.load_hf(tmp_path)
    rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), params)
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b.astype(np.float32)), loaded, rounded
    )


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_param_counts_equal_hf(path):
    """Ours via jax.eval_shape, HF's model on the meta device: nothing is allocated."""
    config = load_config(path).model
    ours = hf.param_shapes(config)
    count = sum(int(np.prod(shape)) for shape in ours.values())
    config_cls, model_cls = HF_CLASSES[config.family]
    with torch.device("meta"):
        model = model_cls(config_cls.from_dict(hf_config_from_model(config)))
    assert count == sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert count == PARAM_COUNTS.get(path.stem, count)
    tied = tables.BERT.tied if config.family == "bert" else tables.GPT2.tied
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}
    assert theirs == hf.hf_shapes(config)


def test_legacy_names_load(hf_saved):
    """Older hub files: BERT LayerNorm gamma/beta, GPT-2 without "transformer." plus its mask
    buffers, and the tied decoder written out; all read to the same parameters."""
    family, path, _, _ = hf_saved
    config, params = hf_files.load_hf(path)
    state = hf.params_to_hf(params, config)
    if family == "bert":
        legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma"): v for k, v in state.items()}
        legacy = {k.replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in legacy.items()}
        legacy["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
        legacy["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
        legacy["bert.embeddings.position_ids"] = np.arange(config.max_len)[None]
    else:
        legacy = {k.removeprefix("transformer."): v for k, v in state.items()}
        legacy["h.0.attn.bias"] = np.tril(np.ones((1, 1, config.max_len, config.max_len)))
        legacy["h.0.attn.masked_bias"] = np.array(-1e4)
        legacy["lm_head.weight"] = state["transformer.wte.weight"]
    jax.tree.map(np.testing.assert_array_equal, hf.hf_to_params(legacy, config), params)


def test_sharded_checkpoint_loads(hf_saved, tmp_path):
    """A model.safetensors.index.json with two shards, as save_pretrained writes large models."""
    _, path, _, _ = hf_saved
    config, params = hf_files.load_hf(path)
    state = hf_files.read_safetensors(path)
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[:5],
        "model-00002-of-00002.safetensors": names[5:],
    }
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / shard, metadata={"format": "pt"})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    sharded_config, sharded = hf_files.load_hf(tmp_path)
    assert sharded_config == config
    jax.tree.map(np.testing.assert_array_equal, sharded, params)


@pytest.mark.parametrize(
    ("family", "edit", "message"),
    [
        ("bert", lambda s: s.pop("cls.seq_relationship.bias"), "missing.*cls.seq_relationship"),
        ("bert", lambda s: s.update(extra=np.zeros(3)), "unexpected.*extra"),
        (
            "bert",
            lambda s: s.update(
                {"bert.encoder.layer.1.intermediate.dense.weight": np.zeros((256, 63))}
            ),
            r"layer\.1\.intermediate\.dense\.weight has shape \(256, 63\) but \(256, 64\)",
        ),
        ("gpt", lambda s: s.pop("transformer.h.1.ln_2.bias"), "missing.*h.1.ln_2.bias"),
        (
            "gpt",
            lambda s: s.update({"transformer.h.0.attn.c_attn.weight": np.zeros((64, 64))}),
            r"c_attn\.weight has shape \(64, 64\) but \(64, 192\)",
        ),
        (
            "gpt",
            lambda s: s.update({"lm_head.weight": s["transformer.wte.weight"] + 1}),
            "lm_head.weight differs",
        ),
    ],
)
def test_state_dict_mismatch_is_a_clear_error(family, edit, message):
    config = _tiny(family)
    state = hf.params_to_hf(_random_params(config, seed=6), config)
    edit(state)
    with pytest.raises(ConfigError, match=message):
        hf.hf_to_params(state, config)


@pytest.mark.parametrize(
    ("hf_config", "message"),
    [
        ({"model_type": "roberta"}, "model_type 'roberta' is not supported"),
        ({"model_type": "gpt2", "activation_function": "relu"}, "activation_function='relu'"),
        ({"model_type": "bert", "tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"model_type": "bert", "position_embedding_type": "relative_key"}, "relative_key"),
        ({"model_type": "gpt2", "n_embd": 30, "n_head": 4}, "does not divide"),
        ({"model_type": "gpt2", "n_layer": 0}, "n_layer=0"),
    ],
)
def test_unsupported_hf_config_is_a_clear_error(hf_config, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_hf(hf_config)


def test_params_and_paths_errors(tmp_path):
    config = _tiny("gpt")
    params = _random_params(config, seed=7)
    wider = dataclasses.replace(config, mlp_dim=128)
    with pytest.raises(
        ConfigError, match=r"parameter core/layers/mlp/wi/bias has shape \(2, 256\) but \(2, 128\)"
    ):
        hf_files.save_hf(tmp_path / "x", params, wider)
    with pytest.raises(ConfigError, match="no HF GPT2LMHeadModel equivalent"):
        hf_config_from_model(dataclasses.replace(config, type_vocab_size=2))
    with pytest.raises(ConfigError, match="dtype 'float16'"):
        hf_files.save_hf(tmp_path / "x", params, config, dtype="float16")
    with pytest.raises(ConfigError, match="holds no model"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_from_model(config)))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="only safetensors"):
        load_pretrained(tmp_path)


def test_inference_api(hf_saved):
    """Deterministic; padding (right, and left for GPT) leaves real tokens' logits unchanged;
    bad inputs are refused."""
    family, path, batch, _ = hf_saved
    model = load_pretrained(path)
    first = model(**batch)
    jax.tree.map(np.testing.assert_array_equal, model(**batch), first)
    n = LENGTHS[2]
    row = {k: v[2:3, :n] for k, v in batch.items() if k != "attention_mask"}
    alone = model(**row)
    for name, value in alone.items():
        got = first[name][2:3, :n] if value.ndim == 3 else first[name][2:3]
        np.testing.assert_allclose(got, value, atol=1e-5, rtol=0)
    if family == "gpt":  # BERT reads [CLS] at index 0, so only right padding applies to it
        left = np.concatenate([np.zeros((1, 4), np.int64), row["input_ids"]], axis=1)
        mask = (np.arange(n + 4) >= 4)[None].astype(np.int64)
        got = model(left, attention_mask=mask)["logits"][:, 4:]
        np.testing.assert_allclose(got, alone["logits"], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="takes no token_type_ids"):
            model(left, token_type_ids=left * 0)
    with pytest.raises(ValueError, match="input_ids values"):
        model(batch["input_ids"] + 200)
    with pytest.raises(ValueError, match="length <= 40"):
        model(np.ones((1, 41), np.int32))
