"""Typed, frozen run configuration: YAML files validated (pydantic) into frozen dataclasses,
plus dotted overrides.

A config file names only the sections and keys it changes; everything else takes the defaults
below. Unknown keys, keys given twice and values of the wrong type or outside their allowed set
fail here, before any device work, with one sentence naming the key and what is valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml

from bertgpt_jax.core import fs  # a workdir's config.yaml may be on gs://
from bertgpt_jax.core.errors import ConfigError


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
    # Fine-tuning (bertgpt finetune): the labelled files, and whether every sub-token of a
    # word carries its tag (tagging) rather than the first one only.
    train_file: Str = ""
    validation_file: Str = ""
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


@dataclasses.dataclass(frozen=True)
class Config:
    __pydantic_config__ = _STRICT
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


_ADAPTER = pydantic.TypeAdapter(Config)


def _hint(loc: tuple[Any, ...]) -> tuple[Any, list[str]]:
    """The annotated type at a config location, and the keys valid beside it."""
    tp: Any = Config
    keys: list[str] = []
    for name in loc:
        keys = sorted(f.name for f in dataclasses.fields(tp))
        tp = typing.get_type_hints(tp, include_extras=True).get(str(name), Any)
        if not dataclasses.is_dataclass(tp):
            break
    return tp, keys


def _allowed(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return f"a {getattr(tp, '__name__', tp)}"


def _sentence(error: Any) -> str:
    """One pydantic validation error as the config's sentence: the key and what is valid."""
    loc = tuple(error["loc"])
    key = ".".join(map(str, loc))
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        _, keys = _hint(loc)
        return f"unknown config key {key!r}; valid keys here are: {', '.join(keys)}."
    if error["type"] in ("dataclass_type", "dataclass_args_type", "dict_type", "model_type"):
        return f"{key or 'the config'} must be a mapping of keys to values."
    tp, _ = _hint(loc)
    return f"{key}={error['input']!r} is not valid: expected {_allowed(tp)}."


def _validate(config: Config) -> None:
    m, t, d = config.model, config.train, config.data
    checks = [
        (
            m.hidden_size % m.num_heads == 0,
            "model.hidden_size must be divisible by model.num_heads",
        ),
        (
            m.family != "gpt" or m.norm_position == "pre",
            "a gpt model needs model.norm_position=pre",
        ),
        (d.seq_len <= m.max_len, "data.seq_len must not exceed model.max_len"),
        (t.batch_size % t.microbatches == 0, "train.batch_size must divide by train.microbatches"),
        (0.0 < d.masked_lm_prob < 1.0, "data.masked_lm_prob must lie strictly between 0 and 1"),
        (t.steps > 0 and t.batch_size > 0, "train.steps and train.batch_size must be positive"),
        (
            [config.mesh.data, config.mesh.fsdp, config.mesh.tensor].count(-1) <= 1,
            "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")
    keys = ("num_layers", "hidden_size", "num_heads", "mlp_dim", "vocab_size", "max_len")
    for key in (*keys, "vocab_multiple"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(m, key)}.")
    _validate_numbers(t)


# The largest float32: a learning rate above it is infinite on the device.
_FLOAT32_MAX = 3.4028234663852886e38


def _validate_numbers(t: TrainConfig) -> None:
    """Optimizer numbers that would make the very first update non-finite or meaningless."""
    lr = t.learning_rate
    if not (math.isfinite(lr) and 0.0 < lr < _FLOAT32_MAX):
        raise ConfigError(
            f"train.learning_rate={lr!r} must be a finite positive number (e.g. 1e-4 for BERT, "
            "6e-4 for GPT-2 small)."
        )
    if not math.isfinite(t.grad_clip_norm):
        raise ConfigError(f"train.grad_clip_norm={t.grad_clip_norm!r} must be finite (0: none).")
    for key in ("weight_decay", "eps", "nsp_weight"):
        value = getattr(t, key)
        if not (math.isfinite(value) and 0.0 <= value < _FLOAT32_MAX):
            raise ConfigError(f"train.{key}={value!r} must be a finite number >= 0.")
    for key in ("b1", "b2"):
        if not 0.0 <= getattr(t, key) < 1.0:
            raise ConfigError(f"train.{key}={getattr(t, key)!r} must lie in [0, 1).")
    for key in ("warmup_steps", "eval_steps"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}={getattr(t, key)} must not be negative.")
    if t.log_every <= 0 or t.microbatches <= 0:
        raise ConfigError("train.log_every and train.microbatches must be positive.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_unique(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(
                f"config key {key!r} is given twice (line {key_node.start_mark.line + 1})."
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.steps=100` -> (["train", "steps"], 100); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r} has a value that is not valid YAML: {err}.") from err
    return key.strip().split("."), value


def config_from_dict(data: Any, overrides: typing.Sequence[str] = ()) -> Config:
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            "the config must be a mapping of sections (model:, data:, train:, ...) to keys and "
            f"values, not a {type(data).__name__}."
        )
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    seen: set[str] = set()
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != 2:
            raise ConfigError(
                f"override {text!r} must name a section and a key, e.g. train.steps=10."
            )
        if ".".join(path) in seen:
            raise ConfigError(f"override {'.'.join(path)!r} is given twice.")
        seen.add(".".join(path))
        section = data.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"config section {path[0]!r} must be a mapping.")
        section[path[1]] = value
    try:
        config = _ADAPTER.validate_python(data)
    except pydantic.ValidationError as err:
        raise ConfigError(_sentence(err.errors()[0])) from None
    if not config.task.name:
        config = config.replace(task=TaskConfig(PRETRAINING_TASKS[config.model.family]))
    _validate(config)
    return config


# The configs that ship inside the package (also linked as configs/ in a source checkout).
SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def shipped_config(name: str | Path) -> Path | None:
    """A shipped config named `bert_tiny`, `bert_tiny.yaml` or `configs/bert_tiny.yaml`, so the
    README's commands work from a wheel install as from a checkout; None if there is none."""
    text = str(name)
    if fs.is_remote(text):
        return None
    stem = Path(text).name.removesuffix(".yaml")
    candidate = SHIPPED_CONFIGS / f"{stem}.yaml"
    parent = Path(text).parent
    if candidate.is_file() and str(parent) in (".", "configs"):
        return candidate
    return None


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config file and applies `section.key=value` overrides."""
    file = fs.as_path(path)
    if not file.is_file():
        file = shipped_config(path) or file
    if file.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory; pass a YAML file inside it.")
    if not file.is_file():
        shipped = ", ".join(p.stem for p in sorted(SHIPPED_CONFIGS.glob("*.yaml")))
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass a YAML file or one of the shipped "
            f"configs ({shipped})."
        )
    try:
        data = yaml.load(file.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        where = " ".join(str(err).split())  # PyYAML's message spans several lines
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {where}.") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not a text file ({err.reason}).") from err
    if data is None:
        # An empty file would silently train every default (BERT-base): almost surely a mistake.
        raise ConfigError(
            f"config file {str(path)!r} is empty; give at least the model: section, e.g. copy "
            "configs/bert_tiny.yaml."
        )
    return config_from_dict(data, overrides)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
