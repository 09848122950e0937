"""HuggingFace `transformers` interop: weights of BertForPreTraining and GPT2LMHeadModel, both
ways, as pure functions over parameter trees (their config.json: hf_config.py).

Each family has one explicit name-map table (`BERT_TABLE`, `GPT2_TABLE`): a row pairs one HF
tensor, as `save_pretrained` writes it to `model.safetensors`, with one or more of our
parameters (paths into `nnx.state(model, nnx.Param).to_pure_dict()`, joined by "/"). Rows with
"{i}" exist once per layer; our side keeps all layers stacked along a leading axis.
HF `nn.Linear` weights are [out, in] (transposed here); GPT-2 `Conv1D` weights are already
[in, out]; GPT-2's `c_attn` holds q|k|v fused along its output axis. Only safetensors are read
or written (never pickles) and nothing is ever downloaded; the files themselves are read and
written by hf_files.py.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import numpy as np
from flax import traverse_util

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.tasks import Task, pretraining_task

Params = dict[str, Any]
_log = logging.getLogger(__name__)
StateDict = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor <-> our parameter(s). Several `ours` are fused along HF's output axis.

    `in_axes` leading axes of our (per-layer) array form the matmul input (2 for the attention
    output kernel [H, K, D]); 0 marks a vector. `transpose`: HF stores it [out, in] (nn.Linear).
    """

    hf: str
    ours: tuple[str, ...]
    transpose: bool = False
    in_axes: int = 1


def _vec(hf: str, *ours: str) -> Rule:
    return Rule(hf, ours, in_axes=0)


def _linear(hf: str, ours: str, in_axes: int = 1) -> Rule:
    return Rule(hf, (ours,), transpose=True, in_axes=in_axes)


def _same(hf: str, *ours: str, in_axes: int = 1) -> Rule:
    return Rule(hf, ours, in_axes=in_axes)


_BL = "bert.encoder.layer.{i}."
_GL = "transformer.h.{i}."
_ATT = "core/layers/attention/"
_MLP = "core/layers/mlp/"
_QKV = ("query", "key", "value")

BERT_ENCODER: tuple[Rule, ...] = (
    _same("bert.embeddings.word_embeddings.weight", "core/embeddings/token"),
    _same("bert.embeddings.position_embeddings.weight", "core/embeddings/position"),
    _same("bert.embeddings.token_type_embeddings.weight", "core/embeddings/token_type"),
    _vec("bert.embeddings.LayerNorm.weight", "core/embedding_norm/scale"),
    _vec("bert.embeddings.LayerNorm.bias", "core/embedding_norm/bias"),
    _linear(_BL + "attention.self.query.weight", _ATT + "query/kernel"),
    _vec(_BL + "attention.self.query.bias", _ATT + "query/bias"),
    _linear(_BL + "attention.self.key.weight", _ATT + "key/kernel"),
    _vec(_BL + "attention.self.key.bias", _ATT + "key/bias"),
    _linear(_BL + "attention.self.value.weight", _ATT + "value/kernel"),
    _vec(_BL + "attention.self.value.bias", _ATT + "value/bias"),
    _linear(_BL + "attention.output.dense.weight", _ATT + "out_kernel", in_axes=2),
    _vec(_BL + "attention.output.dense.bias", _ATT + "out_bias"),
    _vec(_BL + "attention.output.LayerNorm.weight", "core/layers/attention_norm/scale"),
    _vec(_BL + "attention.output.LayerNorm.bias", "core/layers/attention_norm/bias"),
    _linear(_BL + "intermediate.dense.weight", _MLP + "wi/kernel"),
    _vec(_BL + "intermediate.dense.bias", _MLP + "wi/bias"),
    _linear(_BL + "output.dense.weight", _MLP + "wo/kernel"),
    _vec(_BL + "output.dense.bias", _MLP + "wo/bias"),
    _vec(_BL + "output.LayerNorm.weight", "core/layers/mlp_norm/scale"),
    _vec(_BL + "output.LayerNorm.bias", "core/layers/mlp_norm/bias"),
)
BERT_POOLER: tuple[Rule, ...] = (
    _linear("bert.pooler.dense.weight", "pooler/kernel"),
    _vec("bert.pooler.dense.bias", "pooler/bias"),
)
BERT_PRETRAINING_HEADS: tuple[Rule, ...] = (
    _linear("cls.predictions.transform.dense.weight", "mlm_head/transform/kernel"),
    _vec("cls.predictions.transform.dense.bias", "mlm_head/transform/bias"),
    _vec("cls.predictions.transform.LayerNorm.weight", "mlm_head/norm/scale"),
    _vec("cls.predictions.transform.LayerNorm.bias", "mlm_head/norm/bias"),
    _vec("cls.predictions.bias", "mlm_head/output_bias"),
    _linear("cls.seq_relationship.weight", "nsp_head/kernel"),
    _vec("cls.seq_relationship.bias", "nsp_head/bias"),
)
BERT_TABLE = BERT_ENCODER + BERT_POOLER + BERT_PRETRAINING_HEADS

# The fine-tuning classes: BERT's encoder rows plus their head, keyed by HF architecture.
_CLASSIFIER = (
    _linear("classifier.weight", "classifier/kernel"),
    _vec("classifier.bias", "classifier/bias"),
)
HEAD_TABLES: dict[str, tuple[Rule, ...]] = {
    "BertForSequenceClassification": BERT_POOLER + _CLASSIFIER,
    "BertForTokenClassification": _CLASSIFIER,
    "BertForQuestionAnswering": (
        _linear("qa_outputs.weight", "qa_outputs/kernel"),
        _vec("qa_outputs.bias", "qa_outputs/bias"),
    ),
}

GPT2_TABLE: tuple[Rule, ...] = (
    _same("transformer.wte.weight", "core/embeddings/token"),
    _same("transformer.wpe.weight", "core/embeddings/position"),
    _vec(_GL + "ln_1.weight", "core/layers/attention_norm/scale"),
    _vec(_GL + "ln_1.bias", "core/layers/attention_norm/bias"),
    _same(_GL + "attn.c_attn.weight", *(_ATT + f"{n}/kernel" for n in _QKV)),  # q|k|v
    _vec(_GL + "attn.c_attn.bias", *(_ATT + f"{n}/bias" for n in _QKV)),
    _same(_GL + "attn.c_proj.weight", _ATT + "out_kernel", in_axes=2),
    _vec(_GL + "attn.c_proj.bias", _ATT + "out_bias"),
    _vec(_GL + "ln_2.weight", "core/layers/mlp_norm/scale"),
    _vec(_GL + "ln_2.bias", "core/layers/mlp_norm/bias"),
    _same(_GL + "mlp.c_fc.weight", _MLP + "wi/kernel"),
    _vec(_GL + "mlp.c_fc.bias", _MLP + "wi/bias"),
    _same(_GL + "mlp.c_proj.weight", _MLP + "wo/kernel"),
    _vec(_GL + "mlp.c_proj.bias", _MLP + "wo/bias"),
    _vec("transformer.ln_f.weight", "core/final_norm/scale"),
    _vec("transformer.ln_f.bias", "core/final_norm/bias"),
)


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything family-specific about the HF format besides the name-map table."""

    model_type: str
    architecture: str
    table: tuple[Rule, ...]
    # HF names that alias another tensor (the tied decoder); `save_pretrained` drops them.
    tied: Mapping[str, str]
    # Legacy names in older checkpoints (e.g. the hub's bert-base-uncased, gpt2): regex renames,
    # then regexes of non-parameter buffers to skip.
    renames: tuple[tuple[str, str], ...]
    buffers: tuple[str, ...]
    # ModelConfig field -> (HF config key, HF default when the key is absent).
    fields: Mapping[str, tuple[str, Any]]
    # HF config keys we cannot represent unless they hold the default: key -> required value.
    required: Mapping[str, Any]
    # Head tensors a checkpoint may lack (a base model, a masked-LM-only one): started fresh.
    optional: frozenset[str]
    # Our model.family, and the ModelConfig values the HF class implies.
    family: Literal["bert", "gpt"]
    implied: Mapping[str, Any]
    # Which of our layouts the HF class can hold, and the fix to name when it cannot.
    fits: Callable[[ModelConfig], bool]
    layout: str
    # HF keys written from a ModelConfig field besides `fields`, and keys written as null.
    copies: Mapping[str, str] = dataclasses.field(default_factory=dict)
    nulls: tuple[str, ...] = ()


BERT = Family(
    model_type="bert",
    architecture="BertForPreTraining",
    table=BERT_TABLE,
    tied={
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    },
    renames=(
        (r"LayerNorm\.gamma$", "LayerNorm.weight"),
        (r"LayerNorm\.beta$", "LayerNorm.bias"),
        # BertModel's files name tensors without "bert."; the task classes' heads sit at the top.
        (r"^(?!bert\.|cls\.|classifier\.|qa_outputs\.)", "bert."),
    ),
    buffers=(r"^bert\.embeddings\.position_ids$",),
    fields={
        "vocab_size": ("vocab_size", 30522),
        "hidden_size": ("hidden_size", 768),
        "num_layers": ("num_hidden_layers", 12),
        "num_heads": ("num_attention_heads", 12),
        "mlp_dim": ("intermediate_size", 3072),
        "max_len": ("max_position_embeddings", 512),
        "type_vocab_size": ("type_vocab_size", 2),
        "activation": ("hidden_act", "gelu"),
        "layer_norm_eps": ("layer_norm_eps", 1e-12),
        "dropout_rate": ("hidden_dropout_prob", 0.1),
        "attention_dropout_rate": ("attention_probs_dropout_prob", 0.1),
        "initializer_range": ("initializer_range", 0.02),
    },
    required={
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    },
    optional=frozenset(r.hf for r in BERT_TABLE if r.hf.startswith(("cls.", "bert.pooler."))),
    family="bert",
    implied={"norm_position": "post"},
    fits=lambda c: c.norm_position == "post" and c.type_vocab_size > 0,
    layout="norm_position='post' and type_vocab_size>0",
)

GPT2 = Family(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    table=GPT2_TABLE,
    tied={"lm_head.weight": "transformer.wte.weight"},
    # The hub's original gpt2 files name tensors without the "transformer." prefix.
    renames=((r"^(?!transformer\.|lm_head\.)", "transformer."),),
    buffers=(r"\.attn\.(masked_)?bias$",),
    fields={
        "vocab_size": ("vocab_size", 50257),
        "hidden_size": ("n_embd", 768),
        "num_layers": ("n_layer", 12),
        "num_heads": ("n_head", 12),
        "mlp_dim": ("n_inner", None),  # None means 4 * n_embd
        "max_len": ("n_positions", 1024),
        "activation": ("activation_function", "gelu_new"),
        "layer_norm_eps": ("layer_norm_epsilon", 1e-5),
        "dropout_rate": ("resid_pdrop", 0.1),
        "attention_dropout_rate": ("attn_pdrop", 0.1),
        "initializer_range": ("initializer_range", 0.02),
    },
    required={
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    },
    optional=frozenset(),
    family="gpt",
    implied={"norm_position": "pre", "type_vocab_size": 0},
    fits=lambda c: c.norm_position == "pre" and c.type_vocab_size == 0,
    layout="norm_position='pre' and type_vocab_size=0",
    copies={"embd_pdrop": "dropout_rate"},
    # Our tokenizer, not GPT-2's, decides the special ids; the export adds them if known.
    nulls=("bos_token_id", "eos_token_id"),
)

FAMILIES = {"bert": BERT, "gpt": GPT2}


def family_of(config: ModelConfig) -> Family:
    return FAMILIES[config.family]


def table_of(config: ModelConfig, task: Task | None = None) -> tuple[Rule, ...]:
    """The name map of `task`'s model (default: the family's pretraining class)."""
    family = family_of(config)
    if task is None or task.hf_architecture == family.architecture:
        return family.table
    if task.hf_architecture not in HEAD_TABLES:
        raise ConfigError(f"task {task.name} has no HuggingFace weight table.")
    return BERT_ENCODER + HEAD_TABLES[task.hf_architecture]


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
