"""`bertgpt predict --model DIR --input FILE --output FILE.jsonl [--batch-size N]`: see
pretrained/predict.py."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> int:
    from bertgpt_jax.pretrained.predict import predict_file

    count = predict_file(args.model, args.input, args.output, args.batch_size)
    print(json.dumps({"predictions": count, "output": str(args.output)}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="a fine-tuned model's predictions for a file")
    p.add_argument("--model", required=True, help="a `bertgpt finetune` workdir or its export")
    p.add_argument("--input", required=True, help="a file in a training format, labels optional")
    p.add_argument("--output", required=True, help="the JSONL file to write")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_run)
