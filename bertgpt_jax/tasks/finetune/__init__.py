"""Fine-tuning tasks for BERT encoders: a new head on a labelled file (see base.py)."""

from bertgpt_jax.tasks.finetune.base import Dataset, FinetuneTask
from bertgpt_jax.tasks.finetune.sequence import Classification, MultiLabel, Regression

FINETUNE_TASKS: tuple[FinetuneTask, ...] = (Classification(), Regression(), MultiLabel())

__all__ = ["FINETUNE_TASKS", "Classification", "Dataset", "FinetuneTask", "MultiLabel", "Regression"]
