"""HuggingFace `transformers` interop: weights both ways, as pure functions over parameter
trees, driven by the name maps of tables.py (config.json: config.py; the files: files.py).
Only safetensors are read or written (never pickles) and nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.hf.tables import BERT_ENCODER, BERT_POOLER, Family, Rule, family_of, table_of
from bertgpt_jax.tasks import Task, pretraining_task

Params = dict[str, Any]
_log = logging.getLogger(__name__)
StateDict = dict[str, np.ndarray]


def _layered(rule: Rule) -> bool:
    return "{i}" in rule.hf


@functools.lru_cache(maxsize=16)
def _param_shapes(
    config: ModelConfig, task: Task | None
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    flat = _flatten((task or pretraining_task(config)).abstract_params(config))
    return tuple((path, tuple(leaf.shape)) for path, leaf in flat.items())


def param_shapes(config: ModelConfig, task: Task | None = None) -> dict[str, tuple[int, ...]]:
    """Our parameter shapes by "/"-joined path, from `jax.eval_shape` (nothing allocated), of
    `task`'s model (default: the pretraining one)."""
    return dict(_param_shapes(config, task))


def _hf_shape(rule: Rule, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The HF tensor shape of a rule, from our per-layer shapes."""
    if rule.in_axes == 0:
        return (sum(math.prod(s) for s in shapes),)
    n_in = math.prod(shapes[0][: rule.in_axes])
    n_out = sum(math.prod(s[rule.in_axes :]) for s in shapes)
    return (n_out, n_in) if rule.transpose else (n_in, n_out)


# Parameters with a vocabulary axis first: padded here (model.vocab_multiple), not in HF files.
_VOCAB_PARAMS = frozenset({"core/embeddings/token", "mlm_head/output_bias"})


def _is_vocab(rule: Rule) -> bool:
    return rule.ours[0] in _VOCAB_PARAMS


def hf_shapes(config: ModelConfig, task: Task | None = None) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name (tied aliases left out, as `save_pretrained` does) -> its shape."""
    ours = param_shapes(config, task)
    out = {}
    for rule in table_of(config, task):
        per_layer = _layered(rule)
        shapes = [ours[p][1:] if per_layer else ours[p] for p in rule.ours]
        for name in _names(rule, config.num_layers):
            shape = _hf_shape(rule, shapes)
            out[name] = (config.vocab_size, *shape[1:]) if _is_vocab(rule) else shape
    return out


def _names(rule: Rule, num_layers: int) -> list[str]:
    return [rule.hf.format(i=i) for i in range(num_layers)] if _layered(rule) else [rule.hf]


def _to_hf(rule: Rule, parts: list[np.ndarray]) -> np.ndarray:
    if rule.in_axes == 0:
        return np.concatenate([p.reshape(-1) for p in parts])
    rows = math.prod(parts[0].shape[: rule.in_axes])
    matrix = np.concatenate([p.reshape(rows, -1) for p in parts], axis=1)  # [in, out]
    return np.ascontiguousarray(matrix.T if rule.transpose else matrix)


def _from_hf(rule: Rule, tensor: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    # HF -> [in, out]; a vector is one row.
    matrix = tensor.reshape(1, -1) if rule.in_axes == 0 else tensor.T if rule.transpose else tensor
    sizes = [math.prod(s[rule.in_axes :]) for s in shapes]
    pieces = np.split(matrix, np.cumsum(sizes)[:-1], axis=1)
    return [np.ascontiguousarray(p).reshape(s) for p, s in zip(pieces, shapes, strict=True)]


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(dict(tree), sep="/")


def _check_names(
    noun: str, found: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], fix: str
) -> None:
    """One ConfigError for missing or unexpected names, else for the first wrong shape."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    for label, names in (("missing", missing), ("unexpected", extra)):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            raise ConfigError(f"{label} {noun}s: {shown}; {fix}.")
    for name, shape in expected.items():
        got = tuple(np.shape(found[name]))
        if got != shape:
            raise ConfigError(f"{noun} {name} has shape {got} but {shape} is needed; {fix}.")


def check_params(params: Mapping[str, Any], config: ModelConfig, task: Task | None = None) -> None:
    """Raises ConfigError unless `params` has exactly the paths and shapes `config` builds."""
    fix = "the parameters were made for another model config"
    _check_names("parameter", _flatten(params), param_shapes(config, task), fix)


def params_to_hf(
    params: Mapping[str, Any], config: ModelConfig, task: Task | None = None
) -> StateDict:
    """Our nested parameter dict -> the HF state dict (float32 numpy, tied aliases left out)."""
    check_params(params, config, task)
    flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in _flatten(params).items()}
    state: StateDict = {}
    for rule in table_of(config, task):
        parts = [flat[p] for p in rule.ours]
        if _layered(rule):
            for i, name in enumerate(_names(rule, config.num_layers)):
                state[name] = _to_hf(rule, [p[i] for p in parts])
        else:
            tensor = _to_hf(rule, parts)
            state[rule.hf] = tensor[: config.vocab_size] if _is_vocab(rule) else tensor
    return state


def _normalise(state: Mapping[str, Any], family: Family) -> StateDict:
    """Applies legacy renames, drops buffers, and folds tied aliases into their source."""
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in family.renames:
            key = re.sub(pattern, replacement, key)
        if any(re.search(p, key) for p in family.buffers):
            continue
        out[key] = np.asarray(value, np.float32)
    for alias, source in family.tied.items():
        if alias not in out:
            continue
        tensor = out.pop(alias)
        if source not in out:
            out[source] = tensor
        elif out[source].shape != tensor.shape or not np.array_equal(out[source], tensor):
            raise ConfigError(
                f"HF tensor {alias} differs from {source}; bertgpt-jax ties them "
                "(tie_word_embeddings=true), so untied output layers cannot be loaded."
            )
    return out


def _rule_params(
    rule: Rule,
    tensors: Mapping[str, np.ndarray],
    ours: Mapping[str, tuple[int, ...]],
    config: ModelConfig,
) -> dict[str, np.ndarray]:
    """Our parameter(s) of one rule from the HF tensors (per-layer rows stacked, a vocabulary
    axis padded with zero rows to model.vocab_multiple)."""
    if not _layered(rule):
        tensor = tensors[rule.hf]
        if _is_vocab(rule):
            rows = config.padded_vocab_size - tensor.shape[0]
            tensor = np.pad(tensor, [(0, rows)] + [(0, 0)] * (tensor.ndim - 1))
        parts = _from_hf(rule, tensor, [ours[p] for p in rule.ours])
        return dict(zip(rule.ours, parts, strict=True))
    shapes = [ours[p][1:] for p in rule.ours]
    per_layer = [_from_hf(rule, tensors[n], shapes) for n in _names(rule, config.num_layers)]
    return {path: np.stack([parts[j] for parts in per_layer]) for j, path in enumerate(rule.ours)}


def hf_to_params(
    state: Mapping[str, Any],
    config: ModelConfig,
    fresh: Callable[[], Params] | None = None,
    task: Task | None = None,
) -> Params:
    """An HF state dict (name -> array) -> our nested parameter dict of float32 numpy arrays,
    for `task`'s model (default: the pretraining class).

    Head tensors a base or masked-LM-only checkpoint lacks (`Family.optional`) are taken from
    `fresh()` (freshly initialised parameters) when it is given, and logged; otherwise every
    tensor must be there."""
    family = family_of(config)
    tensors = _normalise(state, family)
    expected = hf_shapes(config, task)
    absent = sorted(n for n in expected if n not in tensors and n in family.optional)
    if fresh is not None and absent:
        expected = {n: s for n, s in expected.items() if n not in absent}
        _log.warning("initialised fresh (not in the checkpoint): %s", ", ".join(absent))
    architecture = family.architecture if task is None else task.hf_architecture
    fix = f"the weights do not match config.json (a {architecture} is expected)"
    _check_names("HF tensor", tensors, expected, fix)
    ours = param_shapes(config, task)
    flat: dict[str, np.ndarray] = {}
    new = _flatten(fresh()) if fresh is not None and absent else {}
    for rule in table_of(config, task):
        if rule.hf in absent:
            flat.update({p: np.asarray(new[p], np.float32) for p in rule.ours})
        else:
            flat.update(_rule_params(rule, tensors, ours, config))
    return traverse_util.unflatten_dict(flat, sep="/")


def hf_encoder_to_params(state: Mapping[str, Any], config: ModelConfig) -> Params:
    """The encoder (`core`) and, where the checkpoint has one, the `pooler` of any BERT state
    dict (pretraining, base, or a task class whose head is left out): what fine-tuning starts
    from."""
    family = family_of(config)
    tensors = _normalise(state, family)
    shapes = hf_shapes(config)
    rules = BERT_ENCODER + (BERT_POOLER if BERT_POOLER[0].hf in tensors else ())
    wanted = {n for rule in rules for n in _names(rule, config.num_layers)}
    fix = f"the weights do not match config.json (a {family.architecture} is expected)"
    found = {n: t for n, t in tensors.items() if n in wanted}
    _check_names("HF tensor", found, {n: shapes[n] for n in wanted}, fix)
    ours = param_shapes(config)
    flat: dict[str, np.ndarray] = {}
    for rule in rules:
        flat.update(_rule_params(rule, tensors, ours, config))
    return traverse_util.unflatten_dict(flat, sep="/")
