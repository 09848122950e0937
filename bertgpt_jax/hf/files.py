"""HuggingFace model directories on disk: config.json + model.safetensors (or sharded
safetensors with an index), read and written atomically; never pickles, never downloads. The
name maps and config conversion they rely on live in weights.py and config.py."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.hf.config import hf_config_from_model, model_config_from_hf
from bertgpt_jax.hf.weights import (
    Params,
    StateDict,
    hf_encoder_to_params,
    hf_to_params,
    params_to_hf,
)
from bertgpt_jax.tasks import Task, pretraining_task, task_from_hf_config

_DTYPES: dict[str, Any] = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def local_dir(path: str | os.PathLike, what: str = "HuggingFace model directory") -> Path:
    """`path`, an HF directory to read, as a local Path: safetensors reads local files only, so a
    bucket URL raises FsError naming the fix."""
    text = os.fspath(path)
    copy = f" (gcloud storage cp -r {text} .)" if text.startswith("gs://") else ""
    return fs.require_local(path, what, fs.mount_fix(text, f"copy it to a local disk{copy}"))


def is_hf_dir(path: str | Path) -> bool:
    """A HuggingFace model directory has a config.json (our workdirs have config.yaml); one in a
    bucket is recognised here, and refused with the fix by `load_hf`."""
    where = fs.as_path(path) if fs.is_remote(path) else Path(path)
    return (where / "config.json").is_file()


def read_safetensors(path: str | Path) -> StateDict:
    """The tensors of an HF directory: model.safetensors, or the shards its index names."""
    path = local_dir(path)
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        state: StateDict = {}
        if not shards:
            raise ConfigError(f"{index} has no weight_map naming its shards; re-save the model.")
        for shard in shards:
            if Path(shard).name != shard or not (path / shard).is_file():
                raise ConfigError(f"{index} names shard {shard!r}, which is not in {path}.")
            state.update(load_file(path / shard))
        return state
    raise ConfigError(
        f"{path} has no model.safetensors; bertgpt-jax reads only safetensors (never pickles), "
        "so re-save the model with transformers' save_pretrained(safe_serialization=True)."
    )


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of an HF directory's config.json."""
    path = local_dir(path)
    if not is_hf_dir(path):
        raise ConfigError(f"{path} is not a HuggingFace model directory: it has no config.json.")
    try:
        hf_config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path / 'config.json'} is not valid JSON: {err}.") from err
    return model_config_from_hf(hf_config)


def load_hf(path: str | Path, seed: int = 0, vocab_multiple: int = 1) -> tuple[ModelConfig, Params]:
    """Reads an HF directory (config.json + safetensors) -> (ModelConfig, our params). Heads
    the checkpoint lacks (BertModel, BertForMaskedLM) are initialised fresh from `seed`; the
    vocabulary is padded to `vocab_multiple` rows (zeros)."""
    config = dataclasses.replace(read_model_config(path), vocab_multiple=vocab_multiple)
    state = read_safetensors(local_dir(path))

    def fresh() -> Params:
        model = pretraining_task(config).build_model(config, jax.random.key(seed))
        return nnx.state(model, nnx.Param).to_pure_dict()

    return config, hf_to_params(state, config, fresh)


def _hf_config_json(path: Path) -> dict[str, Any]:
    data = json.loads((local_dir(path) / "config.json").read_text())
    return data if isinstance(data, dict) else {}


def load_hf_model(path: str | Path, seed: int = 0) -> tuple[ModelConfig, Task, Params]:
    """An HF directory as the task it was saved for: a fine-tuning class (sequence / token
    classification, question answering, with its labels) or the pretraining one (`load_hf`)."""
    config = read_model_config(path)
    task = task_from_hf_config(_hf_config_json(Path(path)))
    if task is None:
        config, params = load_hf(path, seed)
        return config, pretraining_task(config), params
    state = read_safetensors(local_dir(path))
    return config, task, hf_to_params(state, config, task=task)


def load_hf_encoder(path: str | Path) -> tuple[ModelConfig, Params]:
    """The encoder (and pooler, when it has one) of any HF BERT directory, for fine-tuning."""
    config = read_model_config(path)
    return config, hf_encoder_to_params(read_safetensors(local_dir(path)), config)


def save_hf(
    out_dir: str | Path,
    params: Mapping[str, Any],
    config: ModelConfig,
    dtype: str = "float32",
    extra_config: Mapping[str, Any] | None = None,
    task: Task | None = None,
) -> Path:
    """Writes config.json + model.safetensors that `from_pretrained` loads; returns out_dir.

    `extra_config` adds HF config keys we do not own (e.g. bos/eos/pad ids from the tokenizer,
    a task's architecture and id2label); `task` is the model's task (default: pretraining).
    """
    text = os.fspath(out_dir)
    upload = f"write it locally, then gcloud storage cp -r DIR {text}"
    out = fs.require_local(out_dir, "save_hf out_dir", fs.mount_fix(text, upload))
    if dtype not in _DTYPES:
        raise ConfigError(f"export dtype {dtype!r} is not supported; use one of {list(_DTYPES)}.")
    hf_config = {**hf_config_from_model(config), "dtype": dtype, **(extra_config or {})}
    hf_state = params_to_hf(params, config, task)
    state = {k: v.astype(_DTYPES[dtype]) for k, v in hf_state.items()}
    out.mkdir(parents=True, exist_ok=True)
    fs.atomic_write(
        out / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"})
    )
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    fs.atomic_write(out / "config.json", lambda p: p.write_text(text))
    return out
