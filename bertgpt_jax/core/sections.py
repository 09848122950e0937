"""The run configuration's sections: typed, frozen dataclasses that pydantic validates
(core/config.py reads YAML and overrides into them and checks how their values fit together).

Values are checked, never coerced: 1.5 is not an int, "yes" not a bool (ints widen to float).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Annotated, Any, Literal

import pydantic


def _yaml_float(value: Any) -> Any:
    if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
        with contextlib.suppress(ValueError):
            return float(value)
    return value


# Values are checked, never coerced: 1.5 is not an int, "yes" not a bool (ints widen to float).
Int = Annotated[int, pydantic.Strict()]
Float = Annotated[float, pydantic.BeforeValidator(_yaml_float), pydantic.Strict()]
Bool = Annotated[bool, pydantic.Strict()]
Str = Annotated[str, pydantic.Strict()]
_STRICT = pydantic.ConfigDict(extra="forbid")
# A list of strings given in YAML or on the command line, kept as a (hashable) tuple.
Labels = Annotated[
    tuple[Str, ...],
    pydantic.BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v),
    pydantic.Strict(),
]


def _paths(value: Any) -> Any:
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(value) if isinstance(value, list) else value


# One path or several (fine-tuning files and folders), kept as a tuple; a string is one path.
Paths = Annotated[tuple[Str, ...], pydantic.BeforeValidator(_paths), pydantic.Strict()]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The transformer architecture. BERT and GPT differ only in these values."""

    __pydantic_config__ = _STRICT

    family: Literal["bert", "gpt"] = "bert"
    vocab_size: Int = 30522
    # The embedding table (and tied output layer) is padded to a multiple of this many rows,
    # e.g. 128, for matmul-friendly shapes; the padding is never predicted and export trims it.
    vocab_multiple: Int = 1
    hidden_size: Int = 768
    num_layers: Int = 12
    num_heads: Int = 12
    mlp_dim: Int = 3072
    max_len: Int = 512
    # 2 for BERT's sentence A/B embeddings; 0 means no token-type embedding (GPT-2).
    type_vocab_size: Int = 2
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    # post: LayerNorm after each residual add and on the embeddings (BERT);
    # pre: LayerNorm before each sublayer and a final LayerNorm (GPT-2).
    norm_position: Literal["post", "pre"] = "post"
    layer_norm_eps: Float = 1e-12
    dropout_rate: Float = 0.1
    attention_dropout_rate: Float = 0.1
    initializer_range: Float = 0.02
    # Matmul inputs are cast to `dtype`; accumulation, softmax, LayerNorm and losses stay float32.
    dtype: Literal["float32", "bfloat16"] = "float32"
    attention_impl: Literal["xla", "cudnn"] = "xla"
    scan_layers: Bool = True
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def causal(self) -> bool:
        return self.family == "gpt"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they are built (see bertgpt_jax/data)."""

    __pydantic_config__ = _STRICT

    path: Str = ""
    # Optional tokenizer directory (or .model file) the store must have been prepared with;
    # empty trusts the copy inside the store. A mismatch is an error before any training.
    tokenizer: Str = ""
    seq_len: Int = 128
    seed: Int = 0
    # BERT: the sentence-pair task. nsp (BERT), sop (ALBERT sentence order), none (RoBERTa).
    pair_task: Literal["nsp", "sop", "none"] = "nsp"
    masked_lm_prob: Float = 0.15
    max_predictions_per_seq: Int = 20
    short_seq_prob: Float = 0.1
    whole_word_masking: Bool = False
    # GPT: confine attention and positions to one document inside a packed window.
    document_attention: Bool = False
    prefetch: Int = 2
    # Fine-tuning (bertgpt finetune): the training and validation files (one for a BERT task;
    # files or folders for causal_lm and sft), and whether every sub-token of a word carries
    # its tag (tagging) rather than the first one only.
    train_file: Paths = ()
    validation_file: Paths = ()
    label_all_tokens: Bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop."""

    __pydantic_config__ = _STRICT

    steps: Int = 1000
    batch_size: Int = 32
    seed: Int = 0
    learning_rate: Float = 1e-4
    warmup_steps: Int = 100
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    optimizer: Literal["adamw", "lamb", "adafactor"] = "adamw"
    weight_decay: Float = 0.01
    b1: Float = 0.9
    b2: Float = 0.999
    eps: Float = 1e-6
    grad_clip_norm: Float = 1.0
    microbatches: Int = 1
    # Weight of the sentence-pair loss in the BERT objective; 0 trains masked LM alone.
    nsp_weight: Float = 1.0
    nan_policy: Literal["stop", "skip"] = "stop"
    log_every: Int = 10
    eval_every: Int = 0
    eval_steps: Int = 10
    profile_start: Int = -1
    profile_steps: Int = 0
    # Fine-tuning: epochs > 0 sets train.steps from the training set's size; warmup_ratio > 0
    # sets train.warmup_steps to that share of the steps. best_metric (an eval metric, e.g.
    # "f1") picks the kept best checkpoint; patience > 0 stops after that many evaluations
    # without improving it.
    epochs: Float = 0.0
    warmup_ratio: Float = 0.0
    best_metric: Str = ""
    patience: Int = 0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; one of them may be -1, meaning all remaining devices."""

    __pydantic_config__ = _STRICT

    data: Int = -1
    fsdp: Int = 1
    tensor: Int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    __pydantic_config__ = _STRICT
    every_steps: Int = 1000
    keep: Int = 3
    keep_every: Int = 0
    async_save: Bool = True
    init_from_hf: Str = ""
    # Fine-tuning: a training workdir or an HF BERT directory whose encoder (and pooler)
    # initialise the model; the task's head starts fresh.
    init_from: Str = ""


# The pretraining task of each architecture: what a config without task.name trains.
PRETRAINING_TASKS = {"bert": "masked_lm", "gpt": "causal_lm"}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What is trained on the model (see bertgpt_jax/tasks); empty: the architecture's
    pretraining task (PRETRAINING_TASKS)."""

    __pydantic_config__ = _STRICT

    name: Str = ""
    # Fine-tuning tasks (see bertgpt_jax/tasks/finetune): the label names in id order (read
    # from the training file when empty), the input columns (empty: found by name or
    # position), and the SQuAD windowing and answer rules.
    labels: Labels = ()
    text_column: Str = ""
    text_pair_column: Str = ""
    label_column: Str = ""
    doc_stride: Int = 128
    max_query_length: Int = 64
    n_best_size: Int = 20
    max_answer_length: Int = 30
    # SQuAD v2: predict "no answer" when its score beats the best span's by more than this
    # (tuned on the validation set during fine-tuning and stored with the model).
    null_threshold: Float = 0.0
    # sft on chat files: the Jinja chat template that renders {"messages": [...]} (empty: the
    # init tokenizer's, else data/finetune/chat.py's default) and the roles a message may have.
    chat_template: Str = ""
    chat_roles: Labels = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Samples at each evaluation (GPT): the prompts (and/or a file of them, one per line)
    are continued with the KV-cache generator into WORKDIR/samples.jsonl and TensorBoard."""

    __pydantic_config__ = _STRICT

    prompts: Labels = ()
    prompts_file: Str = ""
    max_new_tokens: Int = 64
    temperature: Float = 0.0
    top_k: Int = 0
    top_p: Float = 1.0
    seed: Int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    __pydantic_config__ = _STRICT
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)
