"""`bertgpt export --workdir W [--step N] --output OUT [--dtype D]`: see pretrained/export.py."""

from __future__ import annotations

import argparse
import json

from bertgpt_jax.cli.common import check_output


def _run(args: argparse.Namespace) -> int:
    from bertgpt_jax.core import fs
    from bertgpt_jax.pretrained.export import export

    if not fs.is_remote(args.output):
        check_output(args.output, "export --output", sibling=True)
    out = export(args.workdir, args.output, args.step, args.dtype)
    print(json.dumps({"exported": str(out), "files": sorted(p.name for p in out.iterdir())}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a workdir's checkpoint as a HuggingFace model directory"
    )
    p.add_argument("--workdir", required=True, help="the --workdir of a `bertgpt train` run")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--output", required=True, help="new directory for the HF model, or gs://...")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.set_defaults(func=_run)
