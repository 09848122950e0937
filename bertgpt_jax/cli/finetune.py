"""`bertgpt finetune --task TASK --init PATH --train FILE --validation FILE --workdir DIR
[--config C] [--fresh] [key=value ...]`: see training/finetune.py. The last line printed is
one JSON object with the final and the best validation metrics."""

from __future__ import annotations

import argparse
import json

from bertgpt_jax.cli.common import add_distributed_args


def _run(args: argparse.Namespace) -> int:
    from bertgpt_jax.training.finetune import finetune_config, run_finetune

    config = finetune_config(
        args.task, args.init, args.train, args.validation, args.config, args.overrides
    )
    from bertgpt_jax.parallel import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    result = run_finetune(config, args.workdir, fresh=args.fresh)
    print(json.dumps(result), flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a BERT workdir or HF directory on a labelled file"
    )
    p.add_argument(
        "--task", required=True, help="classification | regression | multilabel | tagging | qa"
    )
    p.add_argument("--init", required=True, help="a pretraining workdir or HF BERT directory")
    p.add_argument("--train", required=True, help="CSV / TSV / JSON / JSONL / CoNLL / SQuAD")
    p.add_argument("--validation", required=True, help="a file of the same format")
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", help="YAML file of keys that change the fine-tuning defaults")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=2")
    add_distributed_args(p)
    p.set_defaults(func=_run)
