"""What a run was made with, and whether another config may continue it: the package versions,
the tokenizer and prepared-data identity (from the store's manifest), and the differences
between a saved config and this run's, split into architecture changes (refused) and the rest
(recorded). Used by checkpoint.py for resumes and by loop.py for HuggingFace initialisation."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bertgpt_jax.core.config import Config, config_from_dict, config_to_dict
from bertgpt_jax.core.errors import CheckpointError, ConfigError

# Model keys that change how the model is run or trained, not what its parameters mean: a resume
# (or an HF initialisation) may change them. Every other model key is the architecture.
RUNTIME_MODEL_KEYS = frozenset({
    "dtype", "attention_impl", "scan_layers", "remat",
    "dropout_rate", "attention_dropout_rate", "initializer_range",
})  # fmt: skip
_PACKAGES = ("bertgpt-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def data_identity(config: Config) -> tuple[dict | None, dict | None]:
    """(tokenizer identity, prepared data identity) from the manifest.json of the store at
    data.path (see data/store.py), or Nones where there is none."""
    try:
        path = Path(config.data.path) / "manifest.json" if config.data.path else None
        manifest = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None, None
    if not isinstance(manifest, dict):
        return None, None
    keys = ("format", "fingerprint", "splits")
    data = {"path": str(Path(config.data.path).absolute()), **{k: manifest.get(k) for k in keys}}
    return manifest.get("tokenizer"), data


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, keys in config.items() for k, v in dict(keys).items()}


def config_changes(saved: Mapping[str, Any], config: Config) -> dict[str, list]:
    """`section.key` -> [saved value, this run's value] for every key that differs."""
    # Defaults added since the config was saved (e.g. task.name) are not changes.
    with contextlib.suppress(ConfigError):
        saved = config_to_dict(config_from_dict(dict(saved)))
    old, new = _flat(saved), _flat(config_to_dict(config))
    return {
        k: [old.get(k), new.get(k)]
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    }


def architecture_keys(changes: Mapping[str, list]) -> list[str]:
    return [
        k
        for k, (old, _) in changes.items()
        if (k.startswith("model.") and k[6:] not in RUNTIME_MODEL_KEYS or k.startswith("task."))
        and old is not None
    ]


def _describe(changes: Mapping[str, list], keys: list[str]) -> str:
    return ", ".join(f"{k} ({changes[k][0]!r} there, {changes[k][1]!r} here)" for k in keys)


def check_compatible(
    meta: Mapping[str, Any], config: Config, tokenizer: dict | None, where: str
) -> dict[str, list]:
    """Raises CheckpointError for another architecture or tokenizer; returns the other changes."""
    changes = config_changes(meta["config"], config)
    fatal = architecture_keys(changes)
    if fatal:
        raise CheckpointError(
            f"{where} was trained with a different model: {_describe(changes, fatal)}; set those "
            "keys back to the checkpoint's values, or train in a new workdir (or pass --fresh)."
        )
    saved = meta.get("tokenizer")
    if saved and tokenizer and saved != tokenizer:
        old, new = (str(t.get("model_sha256"))[:12] for t in (saved, tokenizer))
        raise CheckpointError(
            f"{where} was trained with another tokenizer (sha256 {old} there, {new} here); point "
            "data.path at a store prepared with the checkpoint's tokenizer, or train in a new "
            "workdir."
        )
    return {k: v for k, v in changes.items() if k not in fatal}
