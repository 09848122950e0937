"""Sampling rules: each filter keeps exactly the tokens its definition keeps (checked against a
numpy reference written from the definitions), sampled frequencies match the filtered
distribution (chi-square), greedy is the argmax, and keys depend on (seed, prompt, position)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bertgpt_jax.generation import sampling

LOGITS = np.array([2.0, 1.5, 1.2, 0.9, 0.3, -0.5, -1.0, -3.0], np.float32)  # V = 8


def _reference(logits: np.ndarray, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """The filtered distribution, in float64, from the definitions (HF's order)."""
    x = logits.astype(np.float64) / temperature
    keep = np.ones(x.shape, bool)
    if top_k:
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    if top_p < 1.0:
        p = np.where(keep, np.exp(x - x.max()), 0.0)
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        kept = np.zeros_like(keep)
        kept[order[before < top_p]] = True
        keep &= kept
    if min_p:
        p = np.where(keep, np.exp(x - x.max()), 0.0)
        keep &= p >= min_p * p.max()
    probs = np.where(keep, np.exp(x - x.max()), 0.0)
    return probs / probs.sum()


SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=3),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.2),
    dict(temperature=0.9, top_k=6, top_p=0.9, min_p=0.1),
]


def _draw(settings: dict, n: int = 40_000) -> np.ndarray:
    """Counts of n draws, each row with its own key, from LOGITS under `settings`."""
    rule, params = sampling.make_params(**settings)
    keys = jax.random.split(jax.random.key(7), n)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, LOGITS.size))
    ids = np.asarray(jax.jit(sampling.choose, static_argnums=2)(logits, keys, rule, params))
    return np.bincount(ids, minlength=LOGITS.size)


def _matches(counts: np.ndarray, expected: np.ndarray) -> bool:
    """No draw outside the support, and a chi-square test on it not rejected at 1e-3."""
    if counts[expected == 0].sum():
        return False
    support = expected > 0
    return stats.chisquare(counts[support], counts.sum() * expected[support]).pvalue > 1e-3


@pytest.mark.parametrize("settings", SETTINGS)
def test_sampled_frequencies_match_filtered_distribution(settings):
    counts = _draw(settings)
    assert _matches(counts, _reference(LOGITS, **settings)), (settings, counts)


def test_chi_square_detects_a_wrong_distribution():
    """The check above can fail: temperature 0.7 draws against temperature 1.0's distribution,
    and unfiltered draws against top-k=6's."""
    assert not _matches(_draw(dict(temperature=0.7)), _reference(LOGITS, temperature=1.0))
    assert not _matches(_draw(dict(temperature=1.0)), _reference(LOGITS, top_k=6))


@pytest.mark.parametrize("settings", SETTINGS[1:])
def test_filters_keep_exactly_the_reference_support(settings):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 50)).astype(np.float32) * 2
    rule, params = sampling.make_params(**settings)
    filtered = np.asarray(sampling.filter_logits(jnp.asarray(logits), rule, params))
    for row, out in zip(logits, filtered, strict=True):
        np.testing.assert_array_equal(np.isfinite(out), _reference(row, **settings) > 0)


def test_greedy_is_argmax_and_ignores_keys():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(5, 40)), jnp.float32)
    rule, params = sampling.make_params(temperature=0.0, top_k=3)
    keys = jax.random.split(jax.random.key(0), 5)
    ids = sampling.choose(logits, keys, rule, params)
    np.testing.assert_array_equal(ids, np.argmax(np.asarray(logits), -1))
    assert rule.greedy


def test_top_p_keeps_the_crossing_token():
    # probabilities 0.5, 0.3, 0.2: p = 0.6 keeps the first two (0.5 < 0.6 before the second).
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.2]], jnp.float32))
    rule, params = sampling.make_params(top_p=0.6)
    kept = np.isfinite(np.asarray(sampling.filter_logits(logits, rule, params)))
    np.testing.assert_array_equal(kept, [[True, True, False]])
    rule, params = sampling.make_params(top_p=0.5)
    kept = np.isfinite(np.asarray(sampling.filter_logits(logits, rule, params)))
    np.testing.assert_array_equal(kept, [[True, False, False]])


def test_keys_depend_on_seed_prompt_and_position_only():
    h = [sampling.prompt_hash([5, 6, 7]), sampling.prompt_hash([5, 6, 8])]
    assert h[0] != h[1] and h[0] == sampling.prompt_hash([5, 6, 7])
    keys = sampling.row_keys(jnp.asarray([0, 0, 1]), jnp.asarray([h[0], h[1], h[0]]))
    at = sampling.step_keys(keys, jnp.asarray([3, 3, 3]))
    alone = sampling.step_keys(
        sampling.row_keys(jnp.asarray([0]), jnp.asarray([h[0]])), jnp.asarray([3])
    )
    data = np.asarray(jax.random.key_data(at))
    np.testing.assert_array_equal(data[0], np.asarray(jax.random.key_data(alone))[0])
    assert len({tuple(row) for row in data}) == 3
    later = sampling.step_keys(keys, jnp.asarray([4, 4, 4]))
    assert not np.array_equal(np.asarray(jax.random.key_data(later)), data)
