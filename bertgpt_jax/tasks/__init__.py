"""The task registry: `get_task(config)` is the one place that maps a run to what it trains.

`task.name` picks the task; a config without one gets its architecture's pretraining task
(`core.config.PRETRAINING_TASKS`), so configs and workdirs written before tasks existed mean
what they meant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from bertgpt_jax.core.config import PRETRAINING_TASKS, Config, ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.tasks.base import Task
from bertgpt_jax.tasks.causal_lm import CausalLm, Sft
from bertgpt_jax.tasks.finetune import FINETUNE_TASKS, FinetuneTask
from bertgpt_jax.tasks.masked_lm import MaskedLm

TASKS: dict[str, Task] = {
    task.name: task for task in (MaskedLm(), CausalLm(), Sft(), *FINETUNE_TASKS)
}


def task_named(name: str, model: ModelConfig) -> Task:
    """The registered task `name`, checked against the architecture it would train."""
    task = TASKS.get(name)
    if task is None:
        raise ConfigError(f"task.name={name!r} is not a task; use one of {', '.join(TASKS)}.")
    if task.family != model.family:
        raise ConfigError(
            f"task.name={name} trains a {task.family} model but model.family={model.family}; "
            f"set model.family={task.family} or pick another task."
        )
    return task


def get_task(config: Config) -> Task:
    return task_named(config.task.name, config.model).for_config(config)


def pretraining_task(model: ModelConfig) -> Task:
    """The task a bare architecture (an HF pretraining checkpoint) is trained with."""
    return task_named(PRETRAINING_TASKS[model.family], model)


def build_model(model: ModelConfig, key: jax.Array) -> Any:
    """The architecture's pretraining model (BERT with MLM + NSP heads, GPT with its LM head)."""
    return pretraining_task(model).build_model(model, key)


def task_from_hf_config(hf_config: Mapping[str, Any]) -> Task | None:
    """The fine-tuning task an exported config.json describes (its architecture, problem_type
    and id2label, and the options we stored under "bertgpt_task"), or None for another one."""
    architectures = hf_config.get("architectures") or [""]
    problems = {"regression": "regression", "multi_label_classification": "multilabel"}
    for task in FINETUNE_TASKS:
        if task.hf_architecture != architectures[0]:
            continue
        if task.hf_architecture == "BertForSequenceClassification":
            wanted = problems.get(str(hf_config.get("problem_type")), "classification")
            if task.name != wanted:
                continue
        return task.from_hf_config(hf_config)
    return None


def synthetic_batch(
    config: Config, batch_size: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """One global batch of random data for `config`'s task (bench, compile check, tests)."""
    return get_task(config).synthetic_batch(config, batch_size or config.train.batch_size, seed)


__all__ = [
    "TASKS", "FinetuneTask", "Task", "build_model", "get_task", "pretraining_task",
    "synthetic_batch", "task_from_hf_config", "task_named",
]  # fmt: skip
