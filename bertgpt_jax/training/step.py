"""The pure, jitted train and eval steps and the sharded training state.

`Trainer` holds what is fixed for a run (graph definition, optimizer, mesh, shardings) and
compiles `train_step(state, batch) -> (state, metrics)` once, with explicit in/out shardings
and the state donated. Parameters are created already sharded: `jax.eval_shape` gives the
abstract state, the rules table gives its shardings, and the initialiser runs under
`jax.jit(..., out_shardings=...)`, so no host ever holds a full copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bertgpt_jax.core.config import Config
from bertgpt_jax.ops.cross_entropy import LossSums
from bertgpt_jax.parallel import sharding as sh
from bertgpt_jax.tasks import get_task
from bertgpt_jax.training.optim import all_finite, learning_rate_schedule, make_optimizer

Array = jax.Array
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds: only arrays, no Python objects."""

    step: Any  # int32 [] (or its sharding, in the shardings tree)
    params: Any  # nested dict of float32 arrays (nnx pure dict)
    opt_state: Any
    rng: Any  # uint32 key data; the step key is fold_in(rng, step)


def _zero_sums(terms: Mapping[str, Any]) -> dict[str, LossSums]:
    return {k: LossSums(*(jnp.zeros((), jnp.float32) for _ in range(3))) for k in terms}


@dataclasses.dataclass
class Trainer:
    config: Config
    mesh: Mesh

    def __post_init__(self) -> None:
        self.optimizer = make_optimizer(self.config.train)
        self.schedule = learning_rate_schedule(self.config.train)
        self.task = get_task(self.config)
        self.coefficients = self.task.coefficients(self.config)
        abstract_model = self.task.abstract_model(self.config.model)
        self.graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
        self.param_shardings = sh.state_shardings(abstract_params, self.mesh).to_pure_dict()
        self.abstract_state = jax.eval_shape(self._init_state, jax.random.key(0))
        self.state_shardings = self._state_shardings(self.abstract_state)
        self._train_step = jax.jit(
            self._step,
            in_shardings=(self.state_shardings, None),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )
        self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
        self._eval_step = jax.jit(
            self._eval, in_shardings=(self.state_shardings, None), out_shardings=self.replicated
        )
        self._state_finite = jax.jit(
            lambda s: all_finite(self.saved(s)),
            in_shardings=(self.state_shardings,),
            out_shardings=self.replicated,
        )
        self._restored = jax.jit(
            lambda s: dataclasses.replace(
                s, opt_state=self.optimizer.restored(s.opt_state, s.params)
            ),
            in_shardings=(self.saved(self.state_shardings),),
            out_shardings=self.state_shardings,
            donate_argnums=0,
        )
        self._outputs_step = jax.jit(
            self._outputs, in_shardings=(self.state_shardings, None), out_shardings=self.replicated
        )

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def _init_state(self, key: Array) -> TrainState:
        k_params, k_rng = jax.random.split(key)
        model = self.task.build_model(self.config.model, k_params)
        params = nnx.state(model, nnx.Param).to_pure_dict()
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            rng=jax.random.key_data(k_rng),
        )

    def _state_shardings(self, abstract: TrainState) -> TrainState:
        """Parameter shardings from the rules; optimizer moments follow their parameter."""

        def fit(leaf: jax.ShapeDtypeStruct, sharding: NamedSharding) -> NamedSharding:
            ok = len(sharding.spec) <= leaf.ndim and all(
                dim % _axis_size(self.mesh, axes) == 0
                for dim, axes in zip(leaf.shape, sharding.spec, strict=False)
            )
            return sharding if ok else self.replicated

        opt = optax.tree_map_params(
            self.optimizer,
            lambda leaf, sharding: fit(leaf, sharding),
            abstract.opt_state,
            self.param_shardings,
            transform_non_params=lambda _: self.replicated,
            is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
        )
        return TrainState(
            step=self.replicated, params=self.param_shardings, opt_state=opt, rng=self.replicated
        )

    def init(self, seed: int) -> TrainState:
        """Fresh state, created directly in its shards."""
        return self._init(jax.random.key(seed))

    def model(self, params: Any) -> Any:
        return nnx.merge(self.graphdef, params)

    def _grads(self, params: Any, batch: Batch, key: Array) -> tuple[Any, dict[str, LossSums]]:
        """Gradient of the full-batch loss, accumulated over `train.microbatches` slices."""
        weights = self.task.term_weights(batch)
        n = self.config.train.microbatches

        def loss_fn(p: Any, micro: Batch, k: Array) -> tuple[Array, dict[str, LossSums]]:
            terms = self.task.loss_terms(self.model(p), micro, k)
            return self.task.scalar_loss(terms, self.coefficients, weights), terms

        grad_fn = jax.grad(loss_fn, has_aux=True)
        if n == 1:
            return grad_fn(params, batch, key)
        micro_batches = jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

        def body(carry: tuple, xs: tuple) -> tuple[tuple, None]:
            grads, sums = carry
            micro, k = xs
            g, terms = grad_fn(params, micro, k)
            grads = jax.tree.map(jnp.add, grads, g)
            sums = {t: LossSums(*map(jnp.add, sums[t], terms[t])) for t in sums}
            return (grads, sums), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, sums), _ = jax.lax.scan(
            body, (zeros, _zero_sums(self.coefficients)), (micro_batches, jax.random.split(key, n))
        )
        return grads, sums

    def _step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grads, terms = self._grads(state.params, batch, key)
        grad_norm = optax.global_norm(grads)
        metrics = self.task.metrics(terms, self.coefficients)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        # A non-finite step never reaches the state: the optimizer applies the update only when
        # the loss and gradient norm are finite and so is every new parameter and moment (a
        # learning rate too large, an overflow); otherwise the state stays bit for bit as it was
        # (optim.py). The host loop then stops (nan_policy=stop) or carries on (skip).
        params, opt_state, applied = self.optimizer.apply(
            grads, state.opt_state, state.params, grad_norm, finite
        )
        new_state = TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng
        )
        metrics.update(
            grad_norm=grad_norm,
            learning_rate=self.schedule(state.step),
            finite=applied.astype(jnp.float32),
        )
        return new_state, metrics

    def _eval(self, state: TrainState, batch: Batch) -> dict[str, LossSums]:
        return self.task.loss_terms(self.model(state.params), batch, None)

    def _outputs(self, state: TrainState, batch: Batch) -> dict[str, Array]:
        return self.task.predict(
            self.model(state.params),
            batch["input_ids"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
            token_type_ids=batch.get("token_type_ids"),
        )

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        with jax.set_mesh(self.mesh):
            return self._train_step(state, batch)

    def saved(self, state: TrainState) -> TrainState:
        """The state as a checkpoint holds it (`Optimizer.saved`): also works on the shardings
        and the abstract state."""
        return dataclasses.replace(state, opt_state=self.optimizer.saved(state.opt_state))

    def restored(self, state: TrainState) -> TrainState:
        """The full state from a checkpoint's (`saved`), or from a state changed outside the
        train step (passed through `saved`), in this run's shardings."""
        with jax.set_mesh(self.mesh):
            return self._restored(state)

    def state_is_finite(self, state: TrainState) -> bool:
        """Whether every value a checkpoint of `state` would hold is finite (checked before a
        save and after a restore)."""
        with jax.set_mesh(self.mesh):
            return bool(jax.device_get(self._state_finite(state)))

    def lower_train_step(self, state: TrainState, batch: Batch) -> jax.stages.Lowered:
        """The train step lowered for these arguments (arrays or ShapeDtypeStructs), for compile
        checks and HLO inspection."""
        with jax.set_mesh(self.mesh):
            return self._train_step.lower(state, batch)

    def eval_step(self, state: TrainState, batch: Batch) -> dict[str, LossSums]:
        with jax.set_mesh(self.mesh):
            return self._eval_step(state, batch)

    def outputs_step(self, state: TrainState, batch: Batch) -> dict[str, Array]:
        """The task's deterministic outputs (`Task.predict`) of a global batch, replicated."""
        with jax.set_mesh(self.mesh):
            return self._outputs_step(state, batch)

    def device_batch(self, host_rows: Mapping[str, Any]) -> dict[str, Array]:
        """This process's numpy rows -> global arrays sharded over the batch axes."""
        return {
            k: jax.make_array_from_process_local_data(sh.batch_sharding(self.mesh, v.ndim), v)
            for k, v in host_rows.items()
        }


def _axis_size(mesh: Mesh, axes: Any) -> int:
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size
