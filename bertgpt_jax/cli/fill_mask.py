"""`bertgpt fill-mask --model PATH "text with [MASK] in it" [...] [--top-k 5]`: a BERT
model's top guesses at each [MASK], one JSON object per text (see `PretrainedModel.fill_mask`).
"""

from __future__ import annotations

import argparse
import json


def _fill_mask(args: argparse.Namespace) -> int:
    from bertgpt_jax.pretrained.load import load_pretrained

    model = load_pretrained(args.model)
    for text, masks in zip(args.text, model.fill_mask(args.text, args.top_k), strict=True):
        print(json.dumps({"text": text, "masks": masks}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fill-mask", help="guess the [MASK] tokens with a BERT model")
    p.add_argument("--model", required=True, help="HuggingFace directory or training workdir")
    p.add_argument("text", nargs="+", help='text with [MASK] in it, e.g. "the [MASK] sat"')
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=_fill_mask)
