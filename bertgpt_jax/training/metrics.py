"""Observability: model FLOPs per step, device peaks for MFU, and the metrics writers
(progress bar, WORKDIR/metrics.jsonl, TensorBoard event files), all on process 0 only."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import jax
from etils import epath

from bertgpt_jax.core import fs
from bertgpt_jax.core.config import Config
from bertgpt_jax.tasks import get_task

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets.
_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    """The per-chip peak for known accelerators; None (no MFU reported) elsewhere, e.g. CPU."""
    kind = (device or jax.devices()[0]).device_kind
    for name, peak in sorted(_PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(name):
            return peak
    return None


def non_embedding_params(config: Config) -> int:
    m = config.model
    d, f = m.hidden_size, m.mlp_dim
    per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
    return m.num_layers * per_layer


def flops_per_step(config: Config) -> float:
    """Training FLOPs of one global step as the model really computes them (PaLM appendix B):
    6N per token for the weights, 12*L*D*S per token for attention, and the task's heads as it
    runs them (BERT's MLM head only at the masked positions, GPT's tied projection everywhere)."""
    m, b, s = config.model, config.train.batch_size, config.data.seq_len
    tokens = b * s
    dense = (6 * non_embedding_params(config) + 12 * m.num_layers * m.hidden_size * s) * tokens
    return float(dense + get_task(config).head_flops(config))


def strict(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with NaN and infinities (which RFC 8259 JSON has not) as None, i.e. null."""
    return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()}


def json_line(row: dict[str, Any]) -> str:
    """`row` as one line of strict JSON."""
    return json.dumps(strict(row), allow_nan=False)


SAMPLES = "samples.jsonl"


class MetricsWriter:
    """Writes one JSON object per logged step (floats as Python floats, written exactly; NaN and
    infinities, which JSON has not, as null) and
    TensorBoard scalars; shows a progress bar. Only process 0 writes."""

    def __init__(self, workdir: epath.Path, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self._bar: Any = None
        self._tb: Any = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        # A remote workdir gets these files from a local mirror (object stores cannot append).
        self._mirror = fs.Mirror(workdir)
        self._mirror.fetch("metrics.jsonl")
        self._mirror.fetch(SAMPLES)
        self._jsonl = (self._mirror.local / "metrics.jsonl").open("a")
        self._tb = SummaryWriter(str(self._mirror.local / "tb"))
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {"step": step, **{f"{prefix}{k}": float(v) for k, v in metrics.items()}}
        self._jsonl.write(json_line(row) + "\n")
        self._jsonl.flush()
        self._mirror.sync()
        for key, value in row.items():
            if key != "step" and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        if not prefix and self._bar is not None:
            postfix = {"loss": f"{metrics['loss']:.4f}"}
            if "tokens_per_sec" in metrics:
                postfix["tok/s"] = f"{metrics['tokens_per_sec']:,.0f}"
            if metrics.get("skipped_steps"):
                postfix["skipped"] = f"{metrics['skipped_steps']:.0f}"
            self._bar.set_postfix(postfix, refresh=False)
        elif prefix and self._bar is not None:
            self._bar.write(
                f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "step")
            )

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Generated samples: one JSON object each in samples.jsonl, and one TensorBoard text."""
        if not self.enabled:
            return
        with (self._mirror.local / SAMPLES).open("a") as f:
            f.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)
        shown = "\n\n".join(f"**{r['prompt']}** {r['completion']}" for r in rows)
        self._tb.add_text("samples", shown, step)
        self._mirror.sync()

    def note(self, text: str) -> None:
        """One line to the terminal (stderr) without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def sync(self, force: bool = False) -> None:
        """Uploads the files of a remote workdir (every 30 s, or now with `force`)."""
        if self.enabled:
            self._tb.flush()
            self._mirror.sync(force)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._tb.close()
        self._jsonl.close()
        self._mirror.close()
