"""The device mesh, the closed list of logical axis names, and the one rules table.

Modules annotate parameters and activations with the logical names below; only `RULES` maps
them to the mesh axes `data`, `fsdp` and `tensor`. Data parallelism shards the batch over
`data` and `fsdp`; FSDP (ZeRO-3) additionally shards parameters and optimizer state over `fsdp`
along their `embed` dimension; tensor parallelism (Megatron-LM) shards heads, MLP width and
vocabulary over `tensor`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bertgpt_jax.core.config import MeshConfig
from bertgpt_jax.core.errors import ConfigError

# Parameter axes.
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
LAYERS = "layers"
# Activation axes.
ACT_BATCH = "act_batch"
ACT_SEQ = "act_seq"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

LOGICAL_AXES = (
    VOCAB, EMBED, HEADS, HEAD_DIM, MLP, LAYERS,
    ACT_BATCH, ACT_SEQ, ACT_EMBED, ACT_HEADS, ACT_MLP, ACT_VOCAB,
)  # fmt: skip

MESH_AXES = ("data", "fsdp", "tensor")

# The one table from logical names to mesh axes. A logical name absent here is replicated.
RULES: tuple[tuple[str, Any], ...] = (
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (HEAD_DIM, None),
    (MLP, "tensor"),
    (LAYERS, None),
    (ACT_BATCH, ("data", "fsdp")),
    (ACT_SEQ, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
)
_RULES = dict(RULES)


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolves a -1 entry and checks that the mesh uses every device exactly once."""
    sizes = [config.data, config.fsdp, config.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(
            f"mesh sizes must be positive or -1, got {sizes} for (data, fsdp, tensor)."
        )
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"mesh (data, fsdp, tensor)={sizes}: {num_devices} devices do not divide by {known}."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"mesh (data, fsdp, tensor)={sizes} uses {math.prod(sizes)} devices but "
            f"{num_devices} are present; make the product equal or set one size to -1."
        )
    return sizes[0], sizes[1], sizes[2]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all devices of all processes, with Auto axes for pjit-style propagation."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(config, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * 3
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_to_mesh(names: Sequence[str | None] | None) -> P:
    """Maps a tuple of logical axis names to a PartitionSpec over the mesh axes."""
    if names is None:
        return P()
    for name in names:
        if name is not None and name not in _RULES:
            raise ValueError(f"logical axis {name!r} is not one of {LOGICAL_AXES}")
    return P(*(None if name is None else _RULES[name] for name in names))


def _fits(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops a mesh axis from a dimension it does not divide (e.g. vocab 30522 over 4 devices)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if size > 1 and dim % size == 0 else None)
    return P(*out)


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """NamedShardings for every leaf of an abstract nnx.State (or any pytree of Variables)."""

    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nnx.Variable):
            names = leaf.get_metadata().get("out_sharding")
            shape = leaf.get_value().shape
        else:
            names, shape = None, getattr(leaf, "shape", ())
        return NamedSharding(mesh, _fits(logical_to_mesh(names), tuple(shape), mesh))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Annotates an activation with logical axes; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh(names))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch arrays: leading dimension over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_mesh((ACT_BATCH,) + (None,) * (ndim - 1)))
