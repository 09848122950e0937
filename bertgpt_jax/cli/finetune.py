"""`bertgpt finetune --task TASK --init PATH --train FILE... --validation FILE... --workdir DIR
[--config C] [--fresh] [key=value ...]`: see training/finetune.py (BERT tasks) and
training/finetune_lm.py (causal-lm, sft). The last line printed is one JSON object with the
final and the best validation metrics."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bertgpt_jax.cli.common import add_distributed_args
from bertgpt_jax.core.errors import ConfigError

_OVERRIDE = re.compile(r"^[A-Za-z_]+\.[A-Za-z_]+=")


def _split_overrides(args: argparse.Namespace) -> None:
    """`--validation FILE key=value`: the greedy file lists also took the overrides that follow
    them; an item shaped like section.key=value that is not a path goes back to them."""
    for name in ("train", "validation"):
        items = getattr(args, name)
        taken = [i for i in items if _OVERRIDE.match(i) and not Path(i).exists()]
        setattr(args, name, [i for i in items if i not in taken])
        args.overrides = [*taken, *args.overrides]
        if not getattr(args, name):
            raise ConfigError(f"--{name} names no file, only overrides; give its files first.")


def _run(args: argparse.Namespace) -> int:
    from bertgpt_jax.training.finetune import finetune_config, run_finetune

    _split_overrides(args)
    config = finetune_config(
        args.task, args.init, args.train, args.validation, args.config, args.overrides,
        workdir=args.workdir,
    )  # fmt: skip
    from bertgpt_jax.parallel import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    result = run_finetune(config, args.workdir, fresh=args.fresh)
    print(json.dumps(result), flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a BERT on labelled files, or a GPT on documents or examples"
    )
    p.add_argument(
        "--task",
        required=True,
        help="BERT: classification | regression | multilabel | tagging | qa; GPT: causal-lm | sft",
    )
    p.add_argument("--init", required=True, help="a pretraining workdir or HF model directory")
    p.add_argument(
        "--train",
        required=True,
        nargs="+",
        help="BERT: one CSV / TSV / JSON / JSONL / CoNLL / SQuAD file; causal-lm: text files, "
        "folders, JSONL {text}; sft: JSONL {prompt, completion} or {messages}",
    )
    p.add_argument("--validation", required=True, nargs="+", help="files of the same format")
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", help="YAML file of keys that change the fine-tuning defaults")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=2")
    add_distributed_args(p)
    p.set_defaults(func=_run)
