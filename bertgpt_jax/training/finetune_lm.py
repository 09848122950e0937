"""GPT fine-tuning: `bertgpt finetune --task causal-lm | sft --init GPT --train FILES
--validation FILES --workdir DIR`, as a run of the ordinary training loop.

`lm_finetune_config` starts from the recipe in `LM_DEFAULTS` (AdamW at 5e-5, 3% warmup, linear
decay, no weight decay, batch 8, windows of model.max_len tokens up to 1024, 3 epochs; the
`transformers` run_clm / TRL SFT defaults), applies --config and the overrides, takes the
architecture and tokenizer from --init (a GPT workdir or HF directory), and reads and tokenizes
both sets of files once to check them (every mistake a one-sentence DataError naming the file
and line) and to count the windows an epoch has. Nothing is written until the checks pass.

`prepare_lm_data` then tokenizes the files into the store the run reads (data.path, by default
WORKDIR/data; a no-op on resume), which the pretraining packer turns into windows:
`causal_lm` packs documents back to back with attention and positions reset at each document
start; `sft` packs whole examples with a loss mask on the completion tokens. Evaluation covers
every validation window (loss and perplexity), keeps the best checkpoint by loss, and writes
generated samples of eval.prompts (training/samples.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, config_from_dict, config_to_dict
from bertgpt_jax.core.errors import ConfigError, DataError
from bertgpt_jax.data.finetune.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplate,
    for_tokenizer,
    tokenizer_chat_template,
)
from bertgpt_jax.data.finetune.lm import example_lengths, is_chat, prepare_lm_store
from bertgpt_jax.data.pretrain.gpt_examples import num_windows
from bertgpt_jax.data.sources import expand_inputs
from bertgpt_jax.data.tokenizers import Tokenizer, load_tokenizer
from bertgpt_jax.training.init_from import adopt, init_source
from bertgpt_jax.training.samples import prompt_ids

_log = logging.getLogger(__name__)
LM_TASKS = {"causal-lm": "causal_lm", "causal_lm": "causal_lm", "sft": "sft"}
LM_DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {
        "epochs": 3.0, "batch_size": 8, "learning_rate": 5e-5, "warmup_ratio": 0.03,
        "schedule": "linear", "optimizer": "adamw", "weight_decay": 0.0, "log_every": 10,
        "best_metric": "loss", "eval_steps": 0,
    },
    "data": {"seq_len": 1024, "document_attention": True},
    "checkpoint": {"keep": 2},
}  # fmt: skip
DATA_DIR = "data"  # the prepared store's place in a local workdir


def lm_finetune_config(
    task_name: str,
    init: str,
    train: list[str],
    validation: list[str],
    workdir: str,
    merged: dict[str, Any],
    overrides: list[str],
    given: set[str],
) -> tuple[Config, int]:
    """The run's config (before the schedule) and the training windows an epoch has; `merged`
    is the defaults with --config applied, `given` the keys the user set."""
    name = LM_TASKS[task_name]
    source = init_source(init, "gpt")
    merged.setdefault("task", {})["name"] = name
    data = merged.setdefault("data", {})
    data.update(train_file=list(train), validation_file=list(validation),
                tokenizer=str(source.tokenizer))  # fmt: skip
    if "data.path" not in given:
        if fs.is_remote(workdir):
            raise ConfigError(
                f"--workdir {workdir} is not local, so the tokenized data cannot live in it; set "
                "data.path to a local directory for it (each host prepares its own copy)."
            )
        data["path"] = str(Path(workdir) / DATA_DIR)
    merged.setdefault("checkpoint", {})["init_from"] = str(source.path)
    # The init's architecture replaces the model section (adopt); until then it is a GPT's
    # with the init's positions, which bound the windows (the default: up to 1024 of them).
    limit = source.model.max_len
    merged["model"] = {**merged.get("model", {}), "family": "gpt", "norm_position": "pre",
                       "max_len": limit}  # fmt: skip
    if "data.seq_len" not in given:
        data["seq_len"] = min(int(data.get("seq_len", limit)), limit)
    config = adopt(config_from_dict(merged, overrides), source)
    config = config_from_dict(config_to_dict(config))  # checks the adopted model
    if name == "sft" and not config.data.document_attention:
        raise ConfigError(
            "task sft packs several examples into a window and needs data.document_attention="
            "true so that none attends to another; drop data.document_attention=false."
        )
    tokenizer = load_tokenizer(source.tokenizer)
    tokenizer.specials.require(("eos",), str(source.tokenizer), name)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"the tokenizer of --init {source.path} has {tokenizer.vocab_size} ids but its model "
            f"only {config.model.vocab_size}; pass a model directory with its own tokenizer."
        )
    files = {"train": expand_inputs(train), "validation": expand_inputs(validation)}
    template = _template(config, [*files["train"], *files["validation"]], tokenizer,
                         source.tokenizer)  # fmt: skip
    if template is not None:
        config = _with(config, "task", chat_template=template.source)
    prompt_ids(config)  # eval.prompts fit the model's positions
    counted = example_lengths(
        files, name, tokenizer, _text_field(config), template,
        config.data.seq_len if name == "sft" else None,
    )  # fmt: skip
    for split, (_, stats) in counted.items():
        if stats.get("truncated"):
            _log.warning(
                "%d of %d %s examples are longer than data.seq_len=%d and lose their first "
                "(prompt) tokens.", stats["truncated"], stats["examples"], split,
                config.data.seq_len,
            )  # fmt: skip
    lengths, _ = counted["train"]
    return config, num_windows(lengths, config.data.seq_len, name == "sft")


def _text_field(config: Config) -> str:
    return config.task.text_column or "text"


def _with(config: Config, section: str, **values: Any) -> Config:
    data = config_to_dict(config)
    data[section] = {**data[section], **values}
    return config_from_dict(data)


def _template(
    config: Config, files: list[Path], tokenizer: Tokenizer, where: Path
) -> ChatTemplate | None:
    """sft on conversations: task.chat_template, else the init tokenizer's, else the default."""
    if config.task.name != "sft" or not is_chat(files):
        return None
    source = config.task.chat_template
    if not source and where.is_dir():
        source = tokenizer_chat_template(where)
    return for_tokenizer(source or DEFAULT_CHAT_TEMPLATE, config.task.chat_roles, tokenizer)


def prepare_lm_data(config: Config) -> dict[str, dict[str, int]]:
    """Tokenizes the run's files into its store at data.path (nothing to do when it is there
    already); returns per split the example counts (and, for sft, those cut to fit)."""
    name = config.task.name
    files = {
        "train": expand_inputs(config.data.train_file),
        "validation": expand_inputs(config.data.validation_file),
    }
    tokenizer = load_tokenizer(config.data.tokenizer)
    template = None
    if config.task.chat_template:
        template = for_tokenizer(config.task.chat_template, config.task.chat_roles, tokenizer)
    path = fs.require_local(config.data.path, "data.path")
    if path.exists() and not path.is_dir():
        raise DataError(f"data.path={path} is a file; choose a directory for the tokenized data.")
    seq_len = config.data.seq_len if name == "sft" else None
    return prepare_lm_store(path, tokenizer, files, name, _text_field(config), template, seq_len)
