"""The HuggingFace name maps, one explicit table per family and per task head: a row (`Rule`)
pairs one HF tensor, as `save_pretrained` writes it to `model.safetensors`, with one or more of
our parameters (paths into `nnx.state(model, nnx.Param).to_pure_dict()`, joined by "/"). Rows
with "{i}" exist once per layer; our side keeps all layers stacked along a leading axis. HF
`nn.Linear` weights are [out, in] (transposed); GPT-2 `Conv1D` weights are already [in, out];
GPT-2's `c_attn` holds q|k|v fused along its output axis. `Family` holds everything else that
differs between BERT and GPT-2 in the HF format. The conversion itself is weights.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from bertgpt_jax.core.config import ModelConfig
from bertgpt_jax.core.errors import ConfigError
from bertgpt_jax.tasks import Task


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
