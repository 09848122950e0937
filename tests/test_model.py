"""Properties of the shared core and the two families, on tiny configs: no causal leakage,
padding and packing invariance, losses equal to a numpy reference, scanned == unrolled,
rematerialisation changes nothing, bf16 compute stays close to fp32, and every shipped config
builds (with `jax.eval_shape`, nothing allocated)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertgpt_jax.core.config import ModelConfig, load_config
from bertgpt_jax.model import Bert, Gpt
from bertgpt_jax.ops import gelu
from bertgpt_jax.ops.matmul import _BACKWARD, matmul
from bertgpt_jax.perf import hlo
from bertgpt_jax.tasks import build_model, losses

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Same math in another order (scan vs loop, another sequence length): float32 rounding only.
REORDER_TOL = 1e-5
SAME_TOL = 1e-6


def _config(family: str, **changes) -> ModelConfig:
    name = "bert_tiny" if family == "bert" else "gpt_tiny"
    return dataclasses.replace(load_config(CONFIGS / f"{name}.yaml").model, **changes)


@pytest.fixture(scope="module")
def bert() -> Bert:
    model = build_model(_config("bert"), jax.random.key(0))
    assert isinstance(model, Bert)
    return model


@pytest.fixture(scope="module")
def gpt() -> Gpt:
    model = build_model(_config("gpt"), jax.random.key(0))
    assert isinstance(model, Gpt)
    return model


def _jit(model: nnx.Module, method: str = "__call__"):
    """`model.method` jitted over its parameters (eager NNX calls are slow on CPU)."""
    graphdef, state = nnx.split(model)

    def run(state: nnx.State, *args, **kwargs):
        return getattr(nnx.merge(graphdef, state), method)(*args, **kwargs)

    return functools.partial(jax.jit(run), state)


def _ids(shape: tuple[int, ...], vocab: int, seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, shape), jnp.int32)


def _max_diff(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.abs(a - b).max())


def test_causal_output_ignores_later_tokens(gpt):
    t = 12
    ids = _ids((2, 32), gpt.config.vocab_size, seed=0)
    changed = ids.at[:, t + 1 :].set(_ids((2, 32 - t - 1), gpt.config.vocab_size, seed=1))
    run = _jit(gpt)
    before, after = run(ids)["logits"], run(changed)["logits"]
    assert _max_diff(before[:, : t + 1], after[:, : t + 1]) <= SAME_TOL
    assert _max_diff(before[:, t + 1 :], after[:, t + 1 :]) > 1e-3  # later outputs do see them


def test_bert_padding_does_not_change_real_tokens(bert):
    n, length = 20, 32
    ids = _ids((1, n), bert.config.vocab_size, seed=2)
    types = (jnp.arange(n) >= 8).astype(jnp.int32)[None]
    run = _jit(bert)
    alone = run(ids, token_type_ids=types)
    for seed in (3, 4):  # two different junk paddings
        junk = _ids((1, length - n), bert.config.vocab_size, seed=seed)
        padded_ids = jnp.concatenate([ids, junk], axis=1)
        padded_types = jnp.concatenate([types, jnp.ones_like(junk)], axis=1)
        segments = (jnp.arange(length) < n).astype(jnp.int32)[None]  # 0 = padding
        out = run(padded_ids, token_type_ids=padded_types, segment_ids=segments)
        assert _max_diff(out["mlm_logits"][:, :n], alone["mlm_logits"]) <= REORDER_TOL
        assert _max_diff(out["nsp_logits"], alone["nsp_logits"]) <= REORDER_TOL
    unmasked = run(padded_ids, token_type_ids=padded_types)  # pads without segment ids do leak in
    assert _max_diff(unmasked["mlm_logits"][:, :n], alone["mlm_logits"]) > 1e-3


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_packed_segments_do_not_attend_across(family, bert, gpt):
    model = gpt if family == "gpt" else bert
    lengths = (7, 9)
    docs = [_ids((1, n), model.config.vocab_size, seed=5 + i) for i, n in enumerate(lengths)]
    packed = jnp.concatenate(docs, axis=1)
    segments = jnp.concatenate(
        [jnp.full((1, n), i + 1, jnp.int32) for i, n in enumerate(lengths)], 1
    )
    positions = jnp.concatenate([jnp.arange(n, dtype=jnp.int32) for n in lengths])[None]

    run = _jit(model, "__call__" if family == "gpt" else "encode")

    def hidden(ids, segment_ids=None, pos=None):
        out = run(ids, positions=pos, segment_ids=segment_ids)
        return out["logits"] if family == "gpt" else out  # GPT logits, BERT hidden states

    together = hidden(packed, segments, positions)
    start = 0
    for doc, n in zip(docs, lengths, strict=True):
        assert _max_diff(together[:, start : start + n], hidden(doc)) <= REORDER_TOL
        start += n
    leaky = hidden(packed, None, positions)  # one segment: the second doc sees the first
    assert _max_diff(leaky[:, lengths[0] :], together[:, lengths[0] :]) > 1e-3


def _numpy_cross_entropy(logits, labels, weights) -> tuple[float, float, float]:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, np.asarray(labels)[..., None], -1)[..., 0]
    correct = (logits.argmax(-1) == labels).astype(np.float64)
    weights = np.asarray(weights, np.float64)
    return (nll * weights).sum(), weights.sum(), (correct * weights).sum()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_losses_match_numpy(dtype):
    rng = np.random.default_rng(8)
    cases = {
        "masked_lm": (losses.masked_lm_loss, (4, 6, 50)),
        "causal_lm": (losses.causal_lm_loss, (3, 10, 50)),
        "next_sentence": (losses.next_sentence_loss, (16, 2)),
    }
    for name, (fn, shape) in cases.items():
        logits = jnp.asarray(3 * rng.standard_normal(shape), dtype)
        labels = rng.integers(0, shape[-1], shape[:-1])
        weights = (rng.random(shape[:-1]) < 0.7).astype(np.float32)  # some padded predictions
        got = fn(logits, jnp.asarray(labels), jnp.asarray(weights))
        # The reference sees the same (possibly bf16-rounded) logits, in float64.
        want = _numpy_cross_entropy(np.asarray(logits.astype(jnp.float32)), labels, weights)
        assert all(x.dtype == jnp.float32 for x in got), name
        np.testing.assert_allclose(float(got.loss_sum), want[0], rtol=1e-5, err_msg=name)
        assert float(got.weight_sum) == want[1] and float(got.correct_sum) == want[2], name
        np.testing.assert_allclose(float(got.mean()), want[0] / want[1], rtol=1e-5)
        np.testing.assert_allclose(float(got.accuracy()), want[2] / want[1], rtol=1e-6)
    unweighted = losses.next_sentence_loss(logits, jnp.asarray(labels))
    want = _numpy_cross_entropy(np.asarray(logits.astype(jnp.float32)), labels, np.ones(16))
    np.testing.assert_allclose(float(unweighted.loss_sum), want[0], rtol=1e-5)
    assert float(unweighted.weight_sum) == 16.0


def _same_params(config: ModelConfig, reference: nnx.Module) -> nnx.Module:
    """A model of `config` (another layout or dtype) carrying `reference`'s parameters."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config, jax.random.key(0))))
    return nnx.merge(graphdef, nnx.state(reference))


def _outputs(model: nnx.Module, ids: jax.Array, key: jax.Array | None = None) -> dict:
    return _jit(model)(ids, key=key)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_scanned_equals_unrolled(family, bert, gpt):
    model = bert if family == "bert" else gpt
    unrolled = _same_params(dataclasses.replace(model.config, scan_layers=False), model)
    ids = _ids((2, 24), model.config.vocab_size, seed=9)
    for key in (None, jax.random.key(1)):  # with and without dropout
        a, b = _outputs(model, ids, key), _outputs(unrolled, ids, key)
        for name in a:
            assert _max_diff(a[name], b[name]) <= SAME_TOL, (name, key)


def _loss_and_grads(model: Gpt, ids: jax.Array) -> tuple[jax.Array, nnx.State]:
    graphdef, state = nnx.split(model)

    def loss(state: nnx.State) -> jax.Array:
        logits = nnx.merge(graphdef, state)(ids[:, :-1])["logits"]
        sums = losses.causal_lm_loss(logits, ids[:, 1:], jnp.ones(ids[:, 1:].shape))
        return sums.mean()

    return jax.jit(jax.value_and_grad(loss))(state)


@pytest.fixture(scope="module")
def gpt_grads(gpt) -> tuple[jax.Array, jax.Array, nnx.State]:
    ids = _ids((2, 17), gpt.config.vocab_size, seed=10)
    return (ids, *_loss_and_grads(gpt, ids))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_nothing(policy, gpt, gpt_grads):
    ids, loss, grads = gpt_grads
    remat = _same_params(dataclasses.replace(gpt.config, remat=policy), gpt)
    remat_loss, remat_grads = _loss_and_grads(remat, ids)
    assert abs(float(loss - remat_loss)) <= SAME_TOL
    diffs = jax.tree.leaves(jax.tree.map(_max_diff, grads, remat_grads))
    assert max(diffs) <= SAME_TOL
    assert max(jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).max()), grads))) > 1e-3


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_bf16_compute_stays_close_to_fp32(family, bert, gpt):
    """bf16 matmul inputs (8-bit mantissa, relative rounding 2^-9 = 0.2 %) with float32
    accumulation, softmax and LayerNorm: measured max |bf16 - fp32| logit error is 0.3-0.4 %
    of the largest fp32 logit on these tiny models; the test allows 1 %."""
    model = bert if family == "bert" else gpt
    bf16 = _same_params(dataclasses.replace(model.config, dtype="bfloat16"), model)
    ids = _ids((4, 64), model.config.vocab_size, seed=11)
    fp32_out, bf16_out = _outputs(model, ids), _outputs(bf16, ids)
    for name, reference in fp32_out.items():
        assert bf16_out[name].dtype == jnp.float32
        scale = float(jnp.abs(reference).max())
        error = _max_diff(bf16_out[name], reference)
        assert error <= 0.01 * scale, (name, error, scale)
        assert error > 0.0  # bf16 really was used


def test_dropout_only_with_a_key(gpt):
    ids = _ids((2, 16), gpt.config.vocab_size, seed=12)
    run = _jit(gpt)
    plain = run(ids)["logits"]
    assert _max_diff(run(ids)["logits"], plain) == 0.0
    key = jax.random.key(3)
    noisy = run(ids, key=key)["logits"]
    assert _max_diff(noisy, plain) > 1e-3
    assert _max_diff(run(ids, key=key)["logits"], noisy) == 0.0


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_builds(path):
    config = load_config(path)
    model = nnx.eval_shape(lambda: build_model(config.model, jax.random.key(0)))
    graphdef, state = nnx.split(model)
    batch, length, vocab = 2, config.data.seq_len, config.model.vocab_size
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def forward(state, ids):
        m = nnx.merge(graphdef, state)
        if isinstance(m, Bert):
            positions = jnp.zeros((batch, config.data.max_predictions_per_seq), jnp.int32)
            return m(ids, token_type_ids=jnp.zeros_like(ids), mlm_positions=positions)
        return m(ids)

    out = jax.eval_shape(forward, state, ids)
    if config.model.family == "bert":
        predictions = config.data.max_predictions_per_seq
        assert out["mlm_logits"].shape == (batch, predictions, vocab)
        assert out["nsp_logits"].shape == (batch, 2)
    else:
        assert out["logits"].shape == (batch, length, vocab)
    assert all(v.dtype == jnp.float32 for v in out.values())


def test_cross_entropy_gradient_matches_autodiff_of_log_softmax():
    """ops/cross_entropy.py writes the backward out (softmax - onehot); it must equal JAX's autodiff."""
    from bertgpt_jax.tasks.losses import causal_lm_loss

    logits = jax.random.normal(jax.random.key(0), (4, 7, 50)) * 3
    labels = jax.random.randint(jax.random.key(1), (4, 7), 0, 50)
    weights = (jax.random.uniform(jax.random.key(2), (4, 7)) > 0.3).astype(jnp.float32)

    def reference(x):
        log_probs = jax.nn.log_softmax(x)
        picked = jnp.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
        return -(picked * weights).sum()

    ours = jax.jit(jax.grad(lambda x: causal_lm_loss(x, labels, weights).loss_sum))(logits)
    np.testing.assert_allclose(ours, jax.grad(reference)(logits), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tied_lm_loss_equals_projection_then_cross_entropy(dtype):
    """losses.tied_causal_lm_loss (head + loss as one op, written-out backward) gives the sums of
    Embeddings.attend followed by causal_lm_loss, and their gradients: equal in float32; in
    bfloat16 no further from the exact gradient (float32 math on the same bf16-rounded inputs)
    than the separate ops are, which round the whole logit gradient, one-hot part included."""
    rng = np.random.default_rng(13)
    hidden = jnp.asarray(rng.standard_normal((3, 9, 16)), jnp.float32)
    table = jnp.asarray(0.5 * rng.standard_normal((40, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 40, (3, 9)), jnp.int32)
    weights = jnp.asarray(rng.random((3, 9)) < 0.7, jnp.float32)

    def fused(h, t):
        return losses.tied_causal_lm_loss(h, t, targets, weights, dtype)

    def separate(h, t):
        logits = matmul("xd,vd->xv", h.reshape(-1, 16), t, jnp.dtype(dtype)).reshape(3, 9, 40)
        return losses.causal_lm_loss(logits, targets, weights)

    def exact(h, t):
        rounded = lambda a: a + jax.lax.stop_gradient(a.astype(dtype).astype(a.dtype) - a)  # noqa: E731
        logits = jnp.einsum("bld,vd->blv", rounded(h), rounded(t), precision="highest")
        return losses.causal_lm_loss(logits, targets, weights)

    got, want = jax.jit(fused)(hidden, table), jax.jit(separate)(hidden, table)
    np.testing.assert_allclose(float(got.loss_sum), float(want.loss_sum), rtol=1e-6)
    assert float(got.weight_sum) == float(want.weight_sum)
    assert float(got.correct_sum) == float(want.correct_sum)
    grad = lambda f: jax.jit(jax.grad(lambda h, t: f(h, t).loss_sum, argnums=(0, 1)))  # noqa: E731
    triples = zip(*(grad(f)(hidden, table) for f in (fused, separate, exact)), strict=True)
    for ours, reference, truth in triples:
        assert float(jnp.abs(truth).max()) > 1e-2
        if dtype == "float32":
            np.testing.assert_allclose(ours, reference, atol=1e-6)
        else:
            assert _max_diff(ours, truth) <= _max_diff(reference, truth)


def test_backward_without_cpu_layout_barriers_is_the_same(gpt, monkeypatch):
    """On TPU/GPU the written-out bf16 backward leaves its transposes to the compiler (no
    optimization barrier, see ops.matmul.cpu_layout_barrier). Traced as if for such a backend (XLA:CPU
    then runs those matmuls in float32 on the same bf16 inputs), the gradients are the same."""
    bf16 = _same_params(dataclasses.replace(gpt.config, dtype="bfloat16"), gpt)
    ids = _ids((2, 17), gpt.config.vocab_size, seed=14)
    graphdef, state = nnx.split(bf16)

    def loss(state: nnx.State) -> jax.Array:
        model = nnx.merge(graphdef, state)
        hidden = model.encode(ids[:, :-1])
        targets, weights = ids[:, 1:], jnp.ones(ids[:, 1:].shape)
        fused = losses.tied_causal_lm_loss(
            hidden, model.output_embedding(), targets, weights, "bfloat16"
        )
        logits = model(ids[:, :-1])["logits"]  # attend: the layers' written-out backward too
        return fused.mean() + losses.causal_lm_loss(logits, targets, weights).mean()

    def grads() -> tuple[nnx.State, str]:
        run = jax.jit(jax.grad(lambda s: loss(s)))  # a new function: traced afresh
        return run(state), run.lower(state).as_text()

    on_cpu, cpu_text = grads()
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    elsewhere, other_text = grads()
    assert "optimization_barrier" in cpu_text and "optimization_barrier" not in other_text
    for a, b in zip(jax.tree.leaves(on_cpu), jax.tree.leaves(elsewhere), strict=True):
        np.testing.assert_allclose(a, b, rtol=REORDER_TOL, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(on_cpu)) > 1e-3


@pytest.mark.parametrize("eq", sorted(_BACKWARD))
def test_written_out_backward_equals_autodiff(eq):
    """Each forward contraction's written-out bf16 backward (ops.matmul._BACKWARD) gives the gradients
    of float32 autodiff on the same inputs. Inputs and cotangent are small integers, exact in
    bf16, so the two differ only in float32 summation order."""
    sizes = dict(zip("bhqskxzndv", (2, 3, 4, 5, 6, 7, 5, 3, 4, 9), strict=True))
    lhs, rhs = eq.split("->")[0].split(",")
    out = eq.split("->")[1]
    rng = np.random.default_rng(len(eq))
    x, w, r = (
        jnp.asarray(rng.integers(-4, 5, [sizes[c] for c in spec]), jnp.float32)
        for spec in (lhs, rhs, out)
    )
    ours = jax.grad(lambda a, b: (matmul(eq, a, b, jnp.dtype("bfloat16")) * r).sum(), (0, 1))
    exact = jax.grad(lambda a, b: (jnp.einsum(eq, a, b, precision="highest") * r).sum(), (0, 1))
    for got, want in zip(jax.jit(ours)(x, w), jax.jit(exact)(x, w), strict=True):
        assert float(jnp.abs(want).max()) > 1.0
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bf16_training_matmuls_stay_bf16_on_cpu(gpt):
    """XLA:CPU converts the inputs of some bf16 matmuls to float32 (a transposed operand of a
    batched one, for instance), which runs them about 2x slower. In the compiled bf16 train
    gradient of the tiny GPT, with dropout on, every dot takes bf16 inputs."""
    if jax.default_backend() != "cpu":
        pytest.skip("a property of XLA:CPU's compiled HLO")
    bf16 = _same_params(dataclasses.replace(gpt.config, dtype="bfloat16"), gpt)
    ids = _ids((2, 17), gpt.config.vocab_size, seed=15)
    graphdef, state = nnx.split(bf16)

    def loss(state: nnx.State) -> jax.Array:
        model = nnx.merge(graphdef, state)
        hidden = model.encode(ids[:, :-1], key=jax.random.key(0))
        targets, weights = ids[:, 1:], jnp.ones(ids[:, 1:].shape)
        terms = losses.tied_causal_lm_loss(
            hidden, model.output_embedding(), targets, weights, "bfloat16"
        )
        return terms.loss_sum

    specs = hlo.dot_specs(jax.jit(jax.grad(loss)).lower(state).compile().as_text())
    assert sum(specs.values()) >= 6 * gpt.config.num_layers
    assert {(s[0], s[2]) for s in specs} == {("bf16", "bf16")}


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh"])
def test_gelu_backward_equals_autodiff(name):
    """layers.activation's written-out backward (it saves only the input) gives autodiff's
    gradient of the same function, jax.nn.gelu in the exact or the tanh form."""
    x = jnp.linspace(-8.0, 8.0, 20001, dtype=jnp.float32)
    reference = functools.partial(jax.nn.gelu, approximate=name == "gelu_tanh")
    np.testing.assert_allclose(gelu.activation(name, x), reference(x), rtol=0, atol=2e-6)
    ours = jax.vmap(jax.grad(lambda v: gelu.activation(name, v)))(x)
    want = jax.vmap(jax.grad(reference))(x)
    np.testing.assert_allclose(ours, want, rtol=0, atol=2e-6)
