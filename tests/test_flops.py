"""The model FLOPs that `bertgpt bench` and metrics.jsonl report (metrics.flops_per_step) are
the FLOPs of the matmuls XLA really compiles into the train step: counted from the optimised
HLO's dots by bertgpt_jax/hlo.py, for both families, on one device, unrolled."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from bertgpt_jax.core.config import load_config
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.perf import hlo
from bertgpt_jax.tasks import synthetic_batch
from bertgpt_jax.training.metrics import flops_per_step
from bertgpt_jax.training.step import Trainer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["bert_tiny", "gpt_tiny"])
def test_counted_flops_are_the_compiled_matmuls(name):
    config = load_config(
        ROOT / "configs" / f"{name}.yaml",
        ["model.scan_layers=false", "model.dtype=bfloat16", "mesh.data=1"],
    )
    trainer = Trainer(config, make_mesh(config.mesh, jax.devices()[:1]))
    state = trainer.init(0)
    batch = trainer.device_batch(synthetic_batch(config))
    specs = hlo.dot_specs(trainer.lower_train_step(state, batch).compile().as_text())
    compiled = sum(hlo.dot_flops(s) * n for s, n in specs.items())
    # The count's 6N per token includes each layer's biases and LayerNorm parameters (9D + F),
    # which are not matmul weights; everything else is exactly the compiled dots.
    m = config.model
    tokens = config.train.batch_size * config.data.seq_len
    vectors = m.num_layers * (9 * m.hidden_size + m.mlp_dim)
    assert compiled == flops_per_step(config) - 6 * vectors * tokens
    # bf16 compute: the matmuls take bf16 inputs (BERT's 2-way NSP classifier is float32).
    assert sum(n for s, n in specs.items() if (s[0], s[2]) != ("bf16", "bf16")) <= 1
