"""Fine-tuning tasks for BERT encoders: a new head on a labelled file (see base.py)."""

from bertgpt_jax.tasks.finetune.base import Dataset, FinetuneTask
from bertgpt_jax.tasks.finetune.qa import QuestionAnswering
from bertgpt_jax.tasks.finetune.sequence import Classification, MultiLabel, Regression
from bertgpt_jax.tasks.finetune.tagging import Tagging

FINETUNE_TASKS: tuple[FinetuneTask, ...] = (
    Classification(), Regression(), MultiLabel(), Tagging(), QuestionAnswering(),
)  # fmt: skip

__all__ = [
    "FINETUNE_TASKS", "Classification", "Dataset", "FinetuneTask", "MultiLabel", "Regression",
    "QuestionAnswering", "Tagging",
]  # fmt: skip
