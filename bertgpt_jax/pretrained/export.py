"""`bertgpt export`: a training workdir's checkpoint -> a HuggingFace model directory.

    bertgpt export --workdir runs/x [--step N] --output hf/x [--dtype float32|bfloat16]

writes config.json and model.safetensors (parameters only: the optimizer state is never read,
see `pretrained.workdir.restore_params`), the tokenizer as `tokenizer.json` + `tokenizer_config.json`
(plus the SentencePiece `tokenizer.model` it was converted from), and a README.md model card
with the training config and final metrics. `transformers.AutoTokenizer.from_pretrained(OUT)`
then gives our SentencePiece ids, and `BertForPreTraining` / `GPT2LMHeadModel.from_pretrained`
our logits. Everything is written into a hidden sibling directory that is renamed onto OUT at the
end, so a failed export leaves nothing behind. OUT may be a gs:// URL: the export is then written
to a local temporary directory and uploaded file by file, config.json last (an object store has
no rename; a directory without config.json is not an HF model), and a failed upload deletes what
it sent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from etils import epath

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config, config_to_dict
from bertgpt_jax.core.errors import CheckpointError
from bertgpt_jax.data.tokenizers import (
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
    tokenizer_location,
)
from bertgpt_jax.hf import files as hf_files
from bertgpt_jax.hf.tokenizer import add_chat_template, hf_special_ids, write_hf_tokenizer
from bertgpt_jax.pretrained.workdir import model_source, restore_params
from bertgpt_jax.tasks import get_task


def _fetch(location: epath.Path, into: Path) -> Path:
    """A local copy of a tokenizer (a .model file, or a directory's files) under `into`: the
    workdir may be on gs://."""
    into.mkdir(parents=True, exist_ok=True)
    files = [p for p in location.iterdir() if p.is_file()] if location.is_dir() else [location]
    for file in files:
        (into / file.name).write_bytes(file.read_bytes())
    return into if location.is_dir() else into / location.name


def find_tokenizer(
    workdir: epath.Path, config: Config, meta: Mapping[str, Any], scratch: Path
) -> Tokenizer:
    """The run's tokenizer: the workdir's copy, else the store's; checked against the identity
    recorded in the checkpoint. Copied under `scratch` to be read."""
    want = meta.get("tokenizer")
    places = [workdir] + ([epath.Path(config.data.path)] if config.data.path else [])
    for n, place in enumerate(places):
        location = tokenizer_location(place)
        if not location.exists():
            continue
        tokenizer = load_tokenizer(_fetch(location, scratch / str(n)))
        if want is None or tokenizer.identity.to_json() == want:
            return tokenizer
    raise CheckpointError(
        f"found no tokenizer in {workdir} or data.path={config.data.path!r} matching the "
        "checkpoint's tokenizer; copy the store's tokenizer files into the workdir."
    )


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = [f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()) if isinstance(v, float)]
    return "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "(none logged)"


def model_card(config: Config, step: int, meta: Mapping[str, Any], dtype: str) -> str:
    """A short README.md: what the model is, how it was trained, its last metrics."""
    m, task = config.model, get_task(config)
    arch = task.hf_architecture
    data = meta.get("data") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    changes = meta.get("config_changes") or []
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [bertgpt-jax, {m.family}, {task.hf_pipeline}]",
        "---",
        f"# {arch} trained with bertgpt-jax",
        "",
        f"A {m.num_layers}-layer, {m.hidden_size}-wide {m.family.upper()} ({task.description}), "
        f"exported from step {step} of {config.train.steps} as {dtype}.",
        "",
        f"- tokenizer: SentencePiece, {m.vocab_size} ids, sha256 "
        f"{(meta.get('tokenizer') or {}).get('model_sha256', 'unknown')}",
        f"- data: {data.get('path', config.data.path or 'unknown')} (fingerprint "
        f"{data.get('fingerprint', 'unknown')})",
        f"- mesh: {meta.get('mesh')} on {meta.get('process_count')} process(es)",
        f"- versions: {versions}",
    ]
    if changes:
        lines.append(f"- config changed at resumes: {json.dumps(changes)}")
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoTokenizer, " + arch,
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        f"model = {arch}.from_pretrained(PATH)",
        "```",
        "",
        f"## Metrics at step {step}",
        "",
        _metrics_table(meta.get("metrics") or {}),
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _install(tmp: Path, output: Path) -> None:
    """Renames the finished export onto `output` (which may be missing or an empty directory)."""
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    os.replace(tmp, output)


def _upload(tmp: Path, output: epath.Path) -> None:
    """Uploads the finished export to an object store, config.json last; on failure deletes what
    it sent."""
    files = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
    files.sort(key=lambda name: name == Path("config.json"))  # stable: the rest stay sorted
    sent: list[epath.Path] = []
    try:
        for name in files:
            target = output / name.as_posix()
            fs.copy_file(tmp / name, target)
            sent.append(target)
    except BaseException:
        for target in sent:
            target.unlink(missing_ok=True)
        raise


def _output_path(output: str | os.PathLike) -> epath.Path:
    """--output as a path: a gs:// URL as it is, anything else local; refuses a non-empty one."""
    if fs.is_remote(output):
        path = fs.as_path(output)
    else:
        path = fs.as_path(fs.require_local(output, "export --output"))
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise CheckpointError(
            f"output {path} already exists and is not empty; choose another --output."
        )
    return path


def _staging_dir(local: Path | None) -> Path:
    """Where the export is built: a hidden sibling of a local output (renamed onto it at the
    end), else a temporary directory (uploaded from there)."""
    if local is None:
        return Path(tempfile.mkdtemp(prefix="bertgpt-export-"))
    local.parent.mkdir(parents=True, exist_ok=True)
    fs.remove_stale(local, ("export",))  # left by a killed export
    tmp = fs.staging_path(local, "export")
    tmp.mkdir()
    return tmp


def _write_export(
    tmp: Path,
    config: Config,
    step: int,
    params: Any,
    meta: Mapping[str, Any],
    tokenizer: Tokenizer,
    dtype: str,
) -> None:
    task = get_task(config).tuned(meta.get("metrics") or {})
    paired = task.paired_inputs
    specials = hf_special_ids(tokenizer.specials, paired)
    extra = {**specials, **task.hf_config()}
    hf_files.save_hf(tmp, params, config.model, dtype, extra_config=extra, task=task)
    if isinstance(tokenizer, SentencePieceTokenizer):  # converted to tokenizer.json, same ids
        write_hf_tokenizer(tmp, tokenizer.model_path, paired, config.model.max_len)
    else:  # a HuggingFace tokenizer goes back as it came
        for file in tokenizer.files:
            shutil.copyfile(file, tmp / file.name)
    if config.task.chat_template:  # sft on conversations: the template it was trained with
        add_chat_template(tmp, config.task.chat_template)
    (tmp / "README.md").write_text(model_card(config, step, meta, dtype))


def export(
    workdir: str | Path,
    output: str | Path,
    step: int | None = None,
    dtype: str = "float32",
) -> Path | epath.Path:
    """Writes the HF directory for a workdir's checkpoint (the best of a fine-tuning run, else
    the newest, or `step`) to `output`, a local path or a gs:// URL; returns it (a
    pathlib.Path when local)."""
    workdir, target = fs.as_path(workdir), _output_path(output)
    if dtype not in ("float32", "bfloat16"):
        raise CheckpointError(f"--dtype {dtype!r} is not valid; use float32 or bfloat16.")
    config, step, params, meta = restore_params(model_source(workdir, step), step)
    local = None if fs.is_remote(target) else Path(os.fspath(target))
    tmp = _staging_dir(local)
    scratch = Path(tempfile.mkdtemp(prefix="bertgpt-tokenizer-"))
    try:
        tokenizer = find_tokenizer(workdir, config, meta, scratch)
        _write_export(tmp, config, step, params, meta, tokenizer, dtype)
        if local is None:
            _upload(tmp, target)
        else:
            _install(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return target if local is None else local
