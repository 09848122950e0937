"""Sharded training: equivalence across meshes and microbatching, learning, real sharding,
and the non-finite guard."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bertgpt_jax.core.config import MeshConfig, load_config
from bertgpt_jax.parallel.sharding import make_mesh
from bertgpt_jax.tasks import synthetic_batch
from bertgpt_jax.training.step import Trainer

NO_DROPOUT = ["model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"]


def _losses(
    name: str, mesh: tuple[int, int, int], overrides: list[str], steps: int = 5, dropout=False
):
    config = load_config(f"configs/{name}.yaml", ([] if dropout else NO_DROPOUT) + overrides)
    devices = jax.devices()[: int(np.prod(mesh))]
    trainer = Trainer(config, make_mesh(MeshConfig(*mesh), devices))
    state = trainer.init(0)
    batch = trainer.device_batch(synthetic_batch(config))
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), trainer, state


@pytest.fixture(scope="module", params=["bert_tiny", "gpt_tiny"])
def reference(request):
    losses, _, _ = _losses(request.param, (1, 1, 1), [])
    return request.param, losses


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2), (1, 8, 1)])
def test_sharded_losses_equal_single_device(reference, mesh):
    name, expected = reference
    losses, _, _ = _losses(name, mesh, [])
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_unrolled_layers_on_a_sharded_mesh_equal_single_device(reference):
    """The unrolled layer loop (model.scan_layers=false, the CPU benchmark's setting) slices the
    stacked, sharded parameters per layer and stacks their gradients back."""
    name, expected = reference
    losses, _, _ = _losses(name, (2, 2, 2), ["model.scan_layers=false"])
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["bert_tiny", "gpt_tiny"])
def test_dropout_masks_do_not_depend_on_the_mesh(name):
    """Dropout masks hash the global element index, so a sharded run with dropout on gives the
    single-device losses too."""
    expected, _, _ = _losses(name, (1, 1, 1), [], dropout=True)
    losses, _, _ = _losses(name, (2, 2, 2), [], dropout=True)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_microbatches_equal_one_batch(reference):
    name, expected = reference
    losses, _, _ = _losses(name, (1, 1, 1), ["train.microbatches=4"])
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["bert_tiny", "gpt_tiny"])
def test_overfits_a_fixed_batch(name):
    overrides = [
        "train.batch_size=4",
        "train.warmup_steps=5",
        "train.learning_rate=3e-3",
        "train.schedule=constant",
    ]
    losses, _, _ = _losses(name, (1, 1, 1), overrides, steps=60)
    assert losses[-1] < 0.3 * losses[0], losses


def test_large_matrices_are_sharded_as_the_rules_say():
    config = load_config("configs/bert_tiny.yaml", ["model.vocab_size=1024"])
    trainer = Trainer(config, make_mesh(MeshConfig(2, 2, 2)))
    state = trainer.init(0)
    core = state.params["core"]
    query = core["layers"]["attention"]["query"]["kernel"]  # [layers, D, H, K]
    assert query.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    # Each device holds a quarter (fsdp x tensor) of the matrix.
    shard = query.addressable_shards[0].data
    assert shard.shape == (2, 32, 2, 16)
    wi = core["layers"]["mlp"]["wi"]["kernel"]
    assert wi.addressable_shards[0].data.shape == (2, 32, 128)
    token = core["embeddings"]["token"]
    assert token.addressable_shards[0].data.shape == (512, 32)
    # Adam moments follow their parameters (ZeRO-3: optimizer state sharded as well).
    mu = state.opt_state.mu["core"]["layers"]["attention"]["query"]["kernel"]
    assert mu.sharding.spec == query.sharding.spec
    # Every parameter has a spec from the rules table.
    for leaf in jax.tree.leaves(state.params):
        assert isinstance(leaf.sharding, jax.sharding.NamedSharding)


def test_non_finite_step_is_not_applied():
    config = load_config("configs/gpt_tiny.yaml", NO_DROPOUT)
    trainer = Trainer(config, make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    state = trainer.init(0)
    batch = synthetic_batch(config)
    batch["loss_weights"] = batch["loss_weights"] * np.float32(np.inf)
    before = jax.device_get(state.params)
    state, metrics = trainer.train_step(state, trainer.device_batch(batch))
    assert float(metrics["finite"]) == 0.0
    after = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
