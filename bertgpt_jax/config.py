"""Typed, frozen run configuration: YAML files validated into dataclasses, plus dotted overrides.

A config file names only the sections and keys it changes; everything else takes the defaults
below. Unknown keys, keys given twice and values of the wrong type or outside their allowed set
fail here, before any device work, with one sentence naming the key and what is valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The transformer architecture. BERT and GPT differ only in these values."""

    family: Literal["bert", "gpt"] = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_len: int = 512
    # 2 for BERT's sentence A/B embeddings; 0 means no token-type embedding (GPT-2).
    type_vocab_size: int = 2
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    # post: LayerNorm after each residual add and on the embeddings (BERT);
    # pre: LayerNorm before each sublayer and a final LayerNorm (GPT-2).
    norm_position: Literal["post", "pre"] = "post"
    layer_norm_eps: float = 1e-12
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    initializer_range: float = 0.02
    # Matmul inputs are cast to `dtype`; accumulation, softmax, LayerNorm and losses stay float32.
    dtype: Literal["float32", "bfloat16"] = "float32"
    attention_impl: Literal["xla", "cudnn"] = "xla"
    scan_layers: bool = True
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def causal(self) -> bool:
        return self.family == "gpt"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where examples come from and how they are built (see bertgpt_jax/data)."""

    path: str = ""
    # Optional tokenizer directory (or .model file) the store must have been prepared with;
    # empty trusts the copy inside the store. A mismatch is an error before any training.
    tokenizer: str = ""
    seq_len: int = 128
    seed: int = 0
    # BERT: the sentence-pair task. nsp (BERT), sop (ALBERT sentence order), none (RoBERTa).
    pair_task: Literal["nsp", "sop", "none"] = "nsp"
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    short_seq_prob: float = 0.1
    whole_word_masking: bool = False
    # GPT: confine attention and positions to one document inside a packed window.
    document_attention: bool = False
    prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop."""

    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    optimizer: Literal["adamw", "lamb", "adafactor"] = "adamw"
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    grad_clip_norm: float = 1.0
    microbatches: int = 1
    # Weight of the sentence-pair loss in the BERT objective; 0 trains masked LM alone.
    nsp_weight: float = 1.0
    nan_policy: Literal["stop", "skip"] = "stop"
    log_every: int = 10
    eval_every: int = 0
    eval_steps: int = 10
    profile_start: int = -1
    profile_steps: int = 0


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; one of them may be -1, meaning all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000
    keep: int = 3
    keep_every: int = 0
    async_save: bool = True
    init_from_hf: str = ""


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def _allowed(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return f"a {getattr(tp, '__name__', tp)}"


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Checks `value` against the annotated type `tp` and returns it (ints widen to float)."""
    ok: bool
    if typing.get_origin(tp) is Literal:
        ok = value in typing.get_args(tp) and type(value) is not bool
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"unsupported config type {tp} for {key}")
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid: expected {_allowed(tp)}.")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping of keys to values.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {name!r}; valid keys here are: {valid}.")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(typing.cast(type, tp), value, f"{name}.")
        else:
            kwargs[key] = _coerce(name, tp, value)
    return cls(**kwargs)


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
    for key in ("num_layers", "hidden_size", "num_heads", "mlp_dim", "vocab_size", "max_len"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(m, key)}.")


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


def config_from_dict(data: dict, overrides: typing.Sequence[str] = ()) -> Config:
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
    config = _build(Config, data, "")
    _validate(config)
    return config


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config file and applies `section.key=value` overrides."""
    from bertgpt_jax import fs  # a workdir's config.yaml may be on gs://

    file = fs.as_path(path)
    if not file.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass a YAML file from configs/."
        )
    try:
        data = yaml.load(file.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}.") from err
    return config_from_dict(data, overrides)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
