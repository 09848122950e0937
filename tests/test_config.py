"""Config loading: every shipped file builds; mistakes fail early and say what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertgpt_jax.core.config import load_config
from bertgpt_jax.core.errors import ConfigError

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads(path):
    config = load_config(path)
    assert config.model.family in ("bert", "gpt")


def test_overrides_apply_and_widen_ints():
    config = load_config("configs/bert_tiny.yaml", ["train.steps=7", "train.learning_rate=1"])
    assert config.train.steps == 7
    assert config.train.learning_rate == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown config key 'train.stepz'"),
        ("model.family=bart", "model.family='bart' is not valid: expected one of 'bert', 'gpt'"),
        ("train.steps=1.5", "train.steps=1.5 is not valid: expected a int"),
        ("model.num_heads=5", "divisible"),
        ("train.steps", "must look like section.key=value"),
        ("mesh.data=-1", None),
    ],
)
def test_bad_overrides_fail_with_a_clear_message(override, message):
    if message is None:
        load_config("configs/bert_tiny.yaml", [override])
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("configs/bert_tiny.yaml", [override])


def test_duplicate_key_in_yaml_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 1\n  steps: 2\n")
    with pytest.raises(ConfigError, match="given twice"):
        load_config(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
