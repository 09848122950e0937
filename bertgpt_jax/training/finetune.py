"""Fine-tuning as a run of the ordinary training loop: `finetune_config` turns the command
line into a validated config before anything is written, `run_finetune` trains it.

`finetune_config` starts from the BERT recipe (`FINETUNE_DEFAULTS`: AdamW, 10% warmup, linear
decay, sequence length 128, batch 32, 3 epochs), applies --config and the key=value overrides,
takes the architecture and tokenizer from --init, reads the label names from the training file
(unless task.labels gives them), reads and checks both files with that tokenizer (a label the
validation file has but training never had is an error), and turns epochs into steps, the
warmup ratio into warmup steps, and evaluates (and checkpoints) once an epoch unless told
otherwise. Every mistake is a one-sentence error, and the workdir is not touched.

The GPT tasks (`causal-lm`, `sft`) take files and folders, their own recipe and data path:
see training/finetune_lm.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, config_from_dict, config_to_dict, parse_override
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.data.tokenizers import load_tokenizer
from bertgpt_jax.tasks import TASKS, FinetuneTask
from bertgpt_jax.training.finetune_lm import (
    LM_DEFAULTS,
    LM_TASKS,
    lm_finetune_config,
    prepare_lm_data,
)
from bertgpt_jax.training.init_from import adopt, init_source

FINETUNE_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {
        "epochs": 3.0, "batch_size": 32, "learning_rate": 3e-5, "warmup_ratio": 0.1,
        "schedule": "linear", "optimizer": "adamw", "weight_decay": 0.01, "log_every": 10,
    },
    "data": {"seq_len": 128},
    "checkpoint": {"keep": 2},
}  # fmt: skip


def _given(config_file: str | None, overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    data: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {config_file!r} does not exist; pass a YAML file.")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {config_file} must be a mapping of sections.")
    keys = {f"{s}.{k}" for s, v in data.items() if isinstance(v, dict) for k in v}
    keys |= {".".join(parse_override(o)[0]) for o in overrides}
    return data, keys


def finetune_task(name: str) -> FinetuneTask:
    task = TASKS.get(name)
    if not isinstance(task, FinetuneTask):
        names = ", ".join(n for n, t in TASKS.items() if isinstance(t, FinetuneTask))
        raise ConfigError(
            f"--task {name!r} is not a fine-tuning task; use one of {names}, causal-lm, sft."
        )
    return task


def _merged(defaults: dict[str, dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    merged = {s: dict(v) for s, v in defaults.items()}
    for section, values in data.items():
        merged.setdefault(section, {}).update(values if isinstance(values, dict) else {})
    return merged


def _paths(given: str | list[str] | tuple[str, ...]) -> list[str]:
    return [given] if isinstance(given, str) else [str(p) for p in given]


def finetune_config(
    task_name: str,
    init: str,
    train: str | list[str],
    validation: str | list[str],
    config_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    workdir: str | None = None,
) -> Config:
    """The run's whole config, with both files read and checked (see the module docstring);
    the GPT tasks (causal-lm, sft) need the `workdir`, where their tokenized data goes."""
    data, given = _given(config_file, list(overrides))
    if task_name in LM_TASKS:
        if workdir is None:
            raise ConfigError(f"task {task_name} needs the workdir its tokenized data goes to.")
        merged = _merged(LM_DEFAULTS, data)
        config, windows = lm_finetune_config(
            task_name, init, _paths(train), _paths(validation), workdir, merged,
            list(overrides), given,
        )  # fmt: skip
        return _schedule(config, windows, given)
    task = finetune_task(task_name)
    train, validation = _paths(train), _paths(validation)
    for split, paths in (("--train", train), ("--validation", validation)):
        if len(paths) != 1:
            raise ConfigError(f"task {task.name} reads one {split} file, not {len(paths)}.")
    source = init_source(init)
    merged = _merged(FINETUNE_DEFAULTS, data)
    merged.setdefault("task", {})["name"] = task.name
    merged["data"].update(train_file=train, validation_file=validation,
                          tokenizer=str(source.tokenizer))  # fmt: skip
    merged.setdefault("checkpoint", {})["init_from"] = str(source.path)
    config = adopt(config_from_dict(merged, overrides), source)
    if "data.seq_len" not in given and config.data.seq_len > config.model.max_len:
        config = _with(config, "data", seq_len=config.model.max_len)  # a short-context init
    config = config_from_dict(config_to_dict(config))  # checks the adopted model
    tokenizer = load_tokenizer(source.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"the tokenizer of --init {source.path} has {tokenizer.vocab_size} ids but its model "
            f"only {config.model.vocab_size}; pass a model directory with its own tokenizer."
        )
    if not config.task.labels and task.name != "regression":
        labels = task.for_config(config).discover_labels(Path(train[0]))
        config = _with(config, "task", labels=list(labels))
    bound = task.for_config(config)
    metric = config.train.best_metric
    if metric and metric not in bound.metric_names and "/" not in metric:
        raise ConfigError(
            f"train.best_metric={metric!r} is not a {task.name} metric; use one of "
            f"{', '.join(bound.metric_names)} (or a per-label one such as f1/NAME)."
        )
    size = len(bound.dataset(config, "train"))
    bound.check_validation(bound.dataset(config, "validation"))
    return _schedule(config, size, given)


def _with(config: Config, section: str, **values: Any) -> Config:
    data = config_to_dict(config)
    data[section] = {**data[section], **values}
    return config_from_dict(data)


def _schedule(config: Config, size: int, given: set[str]) -> Config:
    """Steps from epochs, warmup from its ratio, one evaluation and checkpoint an epoch."""
    t = config.train
    per_epoch = math.ceil(size / t.batch_size)
    train: dict[str, Any] = {}
    if t.epochs > 0 and "train.steps" not in given:
        train["steps"] = max(1, math.ceil(t.epochs * size / t.batch_size))
    steps = train.get("steps", t.steps)
    if t.warmup_ratio > 0 and "train.warmup_steps" not in given:
        train["warmup_steps"] = round(t.warmup_ratio * steps)
    if "train.eval_every" not in given:
        train["eval_every"] = min(per_epoch, steps)
    config = _with(config, "train", **train)
    if "checkpoint.every_steps" not in given:
        config = _with(config, "checkpoint", every_steps=config.train.eval_every)
    return config


def run_finetune(config: Config, workdir: str | Path, fresh: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the fine-tuning run; returns the final and best eval metrics. The
    GPT tasks first tokenize their files into data.path (once: a resume finds them there)."""
    import jax
    from jax.experimental import multihost_utils

    from bertgpt_jax.pretrained.workdir import BEST, restore_params
    from bertgpt_jax.training.loop import train_and_evaluate
    from bertgpt_jax.training.preflight import check_mesh, check_workdir

    if config.task.name in LM_TASKS.values():
        check_mesh(config)  # the checks that need no data, before the data is written
        check_workdir(fs.as_path(workdir), config)
        if jax.process_index() == 0:
            prepare_lm_data(config)
        multihost_utils.sync_global_devices("bertgpt-finetune-data")
        if jax.process_index() != 0:
            prepare_lm_data(config)  # a host-local data.path; nothing to do on a shared one

    metrics = train_and_evaluate(config, workdir, fresh=fresh)
    final = {k[5:]: v for k, v in metrics.items() if k.startswith("eval_")}
    best: dict[str, Any] = {}
    if (Path(workdir) / BEST).is_dir():
        _, step, _, meta = restore_params(Path(workdir) / BEST)
        saved = meta.get("metrics") or {}
        best = {"step": step, **{k[5:]: v for k, v in saved.items() if k.startswith("eval_")}}
    return {"final": final, "best": best}
