"""`bertgpt compile --config C --topology T`: the ahead-of-time fit check (perf/aot.py)."""

from __future__ import annotations

import argparse
import json

from bertgpt_jax.core.config import load_config


def _run(args: argparse.Namespace) -> int:
    from bertgpt_jax.perf.aot import compile_report, format_report, parse_topology

    topology = parse_topology(args.topology)
    config = load_config(args.config, args.overrides)
    report = compile_report(config, topology, args.chip_config)
    if args.json:
        print(json.dumps({"config": args.config, **report}))
    else:
        print(format_report(report, args.config))
    return 0 if report["fits"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `bertgpt compile` ."""
    p = subparsers.add_parser(
        "compile", help="ahead-of-time fit check of the train step for a TPU topology (no TPU)"
    )
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/bert_base.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.microbatches=4")
    p.add_argument(
        "--topology", required=True, help="GENERATION:AxB[xC]: v5p:2x2x1, v4:2x2x2, v6e:2x2"
    )
    p.add_argument(
        "--chip-config",
        help="libtpu chip_config_name (default: megacore for v4, none otherwise)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    p.set_defaults(func=_run)
