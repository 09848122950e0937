"""HuggingFace config.json <-> our ModelConfig for BertForPreTraining and GPT2LMHeadModel: each
field read with its HF default and checked, and refused in one sentence where our model cannot
represent it (see tables.Family for the per-family key tables)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.hf.tables import FAMILIES, Family, family_of

# HF activation names -> ours. "gelu" is the exact erf GELU, "gelu_new" the tanh approximation.
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


_FLOAT_FIELDS = ("layer_norm_eps", "dropout_rate", "attention_dropout_rate", "initializer_range")


def _read_field(hf_config: Mapping[str, Any], family: Family, field: str) -> Any:
    """One ModelConfig field from an HF config, checked; the HF default fills a missing key."""
    key, default = family.fields[field]
    value = hf_config.get(key, default)
    if field == "mlp_dim" and value is None:
        return 4 * _read_field(hf_config, family, "hidden_size")
    if field == "activation":
        if value not in _ACTIVATIONS:
            raise ConfigError(
                f"HF config has {key}={value!r}; supported activations are {sorted(_ACTIVATIONS)}."
            )
        return _ACTIVATIONS[value]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if field in _FLOAT_FIELDS:
        if not number or value < 0:
            raise ConfigError(f"HF config has {key}={value!r}; a number >= 0 is needed.")
        return float(value)
    minimum = 0 if field == "type_vocab_size" else 1
    if not number or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"HF config has {key}={value!r}; an integer >= {minimum} is needed.")
    return value


def model_config_from_hf(hf_config: Mapping[str, Any]) -> ModelConfig:
    """An HF config.json (BertConfig or GPT2Config, as a dict) -> our ModelConfig."""
    if not isinstance(hf_config, Mapping):
        raise ConfigError("an HF config must be a JSON object of keys to values.")
    model_type = hf_config.get("model_type")
    family = next((f for f in FAMILIES.values() if f.model_type == model_type), None)
    if family is None:
        raise ConfigError(
            f"HF model_type {model_type!r} is not supported; bertgpt-jax reads 'bert' "
            "(BertForPreTraining) and 'gpt2' (GPT2LMHeadModel)."
        )
    for key, value in family.required.items():
        if hf_config.get(key, value) != value:
            raise ConfigError(
                f"HF config has {key}={hf_config[key]!r}, which bertgpt-jax cannot represent; "
                f"it supports only {key}={value!r}."
            )
    values = {field: _read_field(hf_config, family, field) for field in family.fields}
    if values["hidden_size"] % values["num_heads"]:
        raise ConfigError(
            f"HF config has hidden size {values['hidden_size']}, which does not divide into "
            f"{values['num_heads']} attention heads; fix config.json."
        )
    return ModelConfig(family=family.family, **{**values, **family.implied})


def hf_config_from_model(config: ModelConfig) -> dict[str, Any]:
    """Our ModelConfig -> the HF config.json dict (BertConfig or GPT2Config fields)."""
    family = family_of(config)
    if not family.fits(config):
        raise ConfigError(
            f"a {config.family} model with norm_position={config.norm_position!r} and "
            f"type_vocab_size={config.type_vocab_size} has no HF {family.architecture} "
            f"equivalent; use {family.layout}."
        )
    out: dict[str, Any] = {"architectures": [family.architecture], "model_type": family.model_type}
    for field, (key, _) in family.fields.items():
        out[key] = getattr(config, field)
    out[family.fields["activation"][0]] = _HF_ACTIVATION[config.activation]
    out.update({k: v for k, v in family.required.items() if k != "position_embedding_type"})
    out.update({key: getattr(config, field) for key, field in family.copies.items()})
    out.update(dict.fromkeys(family.nulls))
    return dict(sorted(out.items()))
