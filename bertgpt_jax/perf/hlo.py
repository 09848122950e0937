"""The matmuls of a compiled XLA program, read from its optimised HLO text: each dot's operand
dtypes and shapes, output dtype and dimension numbers, and its FLOPs. Used to check what XLA
really runs (tests/test_flops.py, tests/test_model.py) and by benchmarks/matmul_ceiling.py."""

from __future__ import annotations

import collections
import math
import re
from typing import Any

_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \((.*)\) -> .*\{\n((?:.*\n)*?)\}", re.M)
_DOT = re.compile(
    r"= (\w+)\[[\d,]*\]\{[\d,]*\} dot\(%([\w.\-]+), %([\w.\-]+)\), (.*?)(?:, metadata|$)"
)
_DIMS = re.compile(r"(lhs_batch|rhs_batch|lhs_contracting|rhs_contracting)_dims=\{([\d,]*)\}")

DotSpec = tuple  # (lhs dtype, lhs shape, rhs dtype, rhs shape, out dtype, dims)


def dot_specs(hlo_text: str) -> collections.Counter:
    """Every dot of an optimised HLO module, counted by (operand dtypes and shapes, output dtype,
    dimension numbers). Dots are found wherever XLA put them (in fusions or not)."""
    specs: collections.Counter = collections.Counter()
    for comp in _COMPUTATION.finditer(hlo_text):
        shapes = {
            name: (dt, tuple(int(d) for d in dims.split(",") if d))
            for name, dt, dims in re.findall(
                r"%?([\w.\-]+)(?::| =) (\w+)\[([\d,]*)\]", comp.group(2)
            )
            + re.findall(r"%([\w.\-]+) = (\w+)\[([\d,]*)\]", comp.group(3))
        }
        for line in comp.group(3).splitlines():
            dot = _DOT.search(line)
            if not dot:
                continue
            out, lhs, rhs, attrs = dot.groups()
            dims = {k: tuple(int(d) for d in v.split(",") if d) for k, v in _DIMS.findall(attrs)}
            key = (*shapes[lhs], *shapes[rhs], out, tuple(sorted(dims.items())))
            specs[key] += 1
    return specs


def dimension_numbers(spec: DotSpec) -> Any:
    """The spec's dimension numbers in lax.dot_general's form."""
    d = dict(spec[5])
    get = lambda k: d.get(k, ())  # noqa: E731
    return (get("lhs_contracting"), get("rhs_contracting")), (get("lhs_batch"), get("rhs_batch"))


def dot_flops(spec: DotSpec) -> int:
    (_, rhs_contracting), (_, rhs_batch) = dimension_numbers(spec)
    rhs_free = [n for i, n in enumerate(spec[3]) if i not in rhs_batch + rhs_contracting]
    return 2 * math.prod(spec[1]) * math.prod(rhs_free)  # lhs: batch x free x contracting
