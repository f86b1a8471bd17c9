"""Cluster memories: logits and the momentum update against direct NumPy computations."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax import memory
from vireid_jax.methods.mbccm import memories as mbccm_memories
from vireid_jax import sampling
from vireid_jax.methods.mbccm import sampler as mbccm_sampler

TEMPERATURE = 0.05
MOMENTUM = 0.1


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _numpy_update(centers, features, labels, momentum):
  """The reference's loop: one sample at a time, in batch order."""
  centers = np.array(centers, np.float64)
  for f, y in zip(_normalize(np.asarray(features, np.float64)), labels):
    if 0 <= y < len(centers):
      centers[y] = momentum * centers[y] + (1 - momentum) * f
      centers[y] /= np.linalg.norm(centers[y])
  return centers


def _random(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_memory_logits_match_numpy():
  features, centers = _random((5, 8), 0) * 3, _normalize(_random((4, 8), 1))
  logits = memory.memory_logits(jnp.asarray(features), jnp.asarray(centers), TEMPERATURE)
  np.testing.assert_allclose(logits, _normalize(features) @ centers.T / TEMPERATURE, rtol=1e-5,
                             atol=1e-5)
  raw = memory.memory_logits(jnp.asarray(features), jnp.asarray(centers), TEMPERATURE,
                             normalize_features=False)
  np.testing.assert_allclose(raw, features @ centers.T / TEMPERATURE, rtol=1e-5, atol=1e-4)


def test_memory_logits_mask_padding_rows():
  features, centers = _random((3, 8), 2), _normalize(_random((6, 8), 3))
  logits = memory.memory_logits(jnp.asarray(features), jnp.asarray(centers), TEMPERATURE,
                                num_valid=jnp.int32(4))
  assert np.all(np.isneginf(np.asarray(logits)[:, 4:]))
  np.testing.assert_allclose(np.asarray(logits)[:, :4],
                             _normalize(features) @ centers[:4].T / TEMPERATURE, rtol=1e-5,
                             atol=1e-5)


def test_backward_centers_change_only_the_feature_gradient():
  features = jnp.asarray(_random((3, 8), 4))
  centers, backward = (jnp.asarray(_normalize(_random((5, 8), s))) for s in (5, 6))
  weights = jnp.asarray(_random((3, 5), 7))
  objective = lambda f, table, back: jnp.sum(
      weights * memory.memory_logits(f, table, TEMPERATURE, backward_centers=back))
  np.testing.assert_allclose(objective(features, centers, backward),
                             objective(features, centers, None), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(objective)(features, centers, backward),
                             jax.grad(objective)(features, backward, None), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('update', [memory.update_memory_by_rank,
                                    memory.update_memory_sequential])
def test_update_matches_numpy_loop_with_repeated_and_skipped_labels(update):
  centers = _normalize(_random((5, 8), 8))
  features = _random((13, 8), 9) * 4
  labels = np.array([2, 0, 2, 2, -1, 4, 0, 2, 5, 4, 2, 0, 2], np.int32)  # -1 and 5: skipped
  got = jax.jit(update, static_argnums=3)(jnp.asarray(centers), jnp.asarray(features),
                                          jnp.asarray(labels), MOMENTUM)
  expected = _numpy_update(centers, features, labels, MOMENTUM)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[[1, 3]], centers[[1, 3]])  # untouched rows
  # Order matters: the last sample of a label dominates with momentum 0.1.
  assert np.abs(np.asarray(got)[2] - _numpy_update(centers, features[::-1], labels[::-1],
                                                   MOMENTUM)[2]).max() > 1e-2


def test_update_by_rank_equals_sequential_on_a_training_sized_batch():
  rng = np.random.default_rng(10)
  centers = jnp.asarray(_normalize(rng.normal(size=(40, 16))).astype(np.float32))
  features = jnp.asarray(rng.normal(size=(144, 16)).astype(np.float32))
  labels = jnp.asarray(np.repeat(rng.choice(40, 12, replace=False), 12).astype(np.int32))
  fast = jax.jit(memory.update_memory_by_rank, static_argnums=3)
  sequential = jax.jit(memory.update_memory_sequential, static_argnums=3)
  np.testing.assert_allclose(fast(centers, features, labels, MOMENTUM),
                             sequential(centers, features, labels, MOMENTUM), rtol=1e-5, atol=1e-6)


def test_update_with_more_samples_than_rows():
  centers = _normalize(_random((2, 4), 11))
  features, labels = _random((7, 4), 12), np.array([1, 1, 0, 1, 0, 1, 1], np.int32)
  got = jax.jit(memory.update_memory_by_rank, static_argnums=3)(
      jnp.asarray(centers), jnp.asarray(features), jnp.asarray(labels), 0.5)
  np.testing.assert_allclose(got, _numpy_update(centers, features, labels, 0.5), rtol=1e-5,
                             atol=1e-6)


def test_from_centers_builds_four_normalised_copies_and_keeps_padding_zero():
  visible = np.zeros((6, 8), np.float32)
  visible[:4] = _random((4, 8), 13)
  infrared = _random((3, 8), 14)
  mems = mbccm_memories.Memories.from_centers(visible, infrared, num_visible=4)
  np.testing.assert_allclose(mems.visible[:4], _normalize(visible[:4]), rtol=1e-6)
  np.testing.assert_array_equal(mems.visible[4:], 0)
  np.testing.assert_array_equal(mems.agnostic_visible, mems.visible)
  np.testing.assert_array_equal(mems.agnostic_infrared, mems.infrared)
  assert int(mems.num_visible) == 4 and int(mems.num_infrared) == 3
  with pytest.raises(ValueError, match='num_infrared'):
    mbccm_memories.Memories.from_centers(visible, infrared, num_infrared=5)


@pytest.mark.parametrize('method', ['sequential', 'by_rank'])
@pytest.mark.parametrize('stage', [1, 2])
def test_update_memories_follows_the_reference_order(stage, method):
  visible, infrared = _normalize(_random((4, 8), 15)), _normalize(_random((3, 8), 16))
  mems = mbccm_memories.Memories.from_centers(visible, infrared)
  f_a, f_b, f_r = (_random((6, 8), s) for s in (17, 18, 19))
  y_v = np.array([0, 0, 3, 3, 1, 1], np.int32)
  y_i = np.array([2, 2, 0, 0, 2, 1], np.int32)
  update = jax.jit(mbccm_memories.update_memories, static_argnames=('stage', 'momentum', 'method'))
  new = update(mems, *(jnp.asarray(a) for a in (f_a, f_b, f_r, y_v, y_i)), stage=stage,
               momentum=MOMENTUM, method=method)
  check = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  check(new.visible, _numpy_update(visible, np.concatenate([f_b, f_a]),
                                   np.concatenate([y_v, y_v]), MOMENTUM))
  check(new.infrared, _numpy_update(infrared, f_r, y_i, MOMENTUM))
  if stage == 1:
    np.testing.assert_array_equal(new.agnostic_visible, mems.agnostic_visible)
    np.testing.assert_array_equal(new.agnostic_infrared, mems.agnostic_infrared)
  else:
    all_f = np.concatenate([f_r, f_b, f_a])
    check(new.agnostic_visible, _numpy_update(visible, all_f, np.tile(y_v, 3), MOMENTUM))
    check(new.agnostic_infrared, _numpy_update(infrared, all_f, np.tile(y_i, 3), MOMENTUM))
  assert int(new.num_visible) == 4


def test_update_memory_rejects_an_unknown_method():
  with pytest.raises(ValueError, match='by_rank'):
    memory.update_memory(jnp.zeros((2, 3)), jnp.ones((1, 3)), jnp.zeros((1,), jnp.int32), 0.1,
                         method='parallel')


def _most_repeats(labels):
  """The most times one label occurs in one row: the bound `label_repeats` must cover."""
  return max(collections.Counter(row.tolist()).most_common(1)[0][1]
             for row in np.atleast_2d(labels))


@pytest.mark.parametrize('unit, most, width, expected', [
    (12, 12, 144, 12), (12, 24, 144, 24), (12, 36, 144, 36), (12, 48, 144, 48),
    (12, 60, 144, 72), (12, 13, 144, 24), (12, 100, 144, 144), (12, 24, 24, 24),
    (5, 11, 12, 12), (1, 5, 32, 6), (1, 7, 32, 8), (1, 9, 32, 12), (1, 1, 32, 1)])
def test_label_repeats_rounds_up_to_few_values(unit, most, width, expected):
  rng = np.random.default_rng(most)
  rows = rng.permutation(np.arange(3 * width) + 100).reshape(3, width)  # distinct labels
  rows[1, :most] = 7  # one label `most` times in one row
  other = rng.permutation(width)[None]
  assert memory.label_repeats(rows, other, unit=unit) == expected
  assert memory.label_repeats(other, unit=unit) == min(unit, width)  # each label once


def test_label_repeats_covers_every_step_of_a_plan():
  rng = np.random.default_rng(20)
  for _ in range(20):
    labels = rng.integers(0, rng.integers(1, 30), (5, 24))
    bound = memory.label_repeats(labels, labels[::-1] % 3, unit=4)
    assert max(_most_repeats(labels), _most_repeats(labels % 3)) <= bound <= 24
  with pytest.raises(ValueError, match='one B'):
    memory.label_repeats(np.zeros((2, 4), int), np.zeros((2, 5), int))


def _repeating_plan(stage, seed):
  """A plan whose steps repeat clusters: fewer clusters than slots (stage 1), colliding
  partners of a match mask (stage 2)."""
  visible_labels, infrared_labels = np.arange(90) % 5, np.arange(60) % 7
  if stage == 1:
    return sampling.stage1_plan(visible_labels, infrared_labels, 6, 6, 3, seed)
  mask = np.zeros((7, 5), bool)
  mask[np.arange(7), [0, 0, 0, 1, 2, 3, 4]] = True  # visible 0 partners three infrared
  return mbccm_sampler.stage2_plan(visible_labels, infrared_labels, mask, 6, 6, 3, seed)


@pytest.mark.parametrize('stage', [1, 2])
def test_by_rank_with_the_plan_bound_equals_sequential_on_repeated_clusters(stage):
  plan = _repeating_plan(stage, seed=21)
  repeats = memory.label_repeats(plan.visible_label, plan.infrared_label, unit=3)
  assert repeats > 3  # some cluster fills several slots of a step
  rng = np.random.default_rng(22)
  mems = mbccm_memories.Memories.from_centers(rng.normal(size=(8, 16)), rng.normal(size=(8, 16)),
                                              num_visible=5, num_infrared=7)
  update = jax.jit(mbccm_memories.update_memories,
                   static_argnames=('stage', 'momentum', 'method', 'label_repeats'))
  for y_v, y_i in zip(plan.visible_label, plan.infrared_label):
    features = [jnp.asarray(rng.normal(size=(18, 16)), jnp.float32) for _ in range(3)]
    by_rank = update(mems, *features, y_v, y_i, stage=stage, momentum=MOMENTUM,
                     method='by_rank', label_repeats=repeats)
    sequential = update(mems, *features, y_v, y_i, stage=stage, momentum=MOMENTUM,
                        method='sequential')
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 by_rank, sequential)


def test_by_rank_bound_exact_suffices_and_one_less_poisons_that_row():
  centers = _normalize(_random((6, 8), 23))
  features = _random((14, 8), 24)
  labels = np.array([4, 1, 4, 4, 0, 1, 4, 9, 4, 1, 0, 4, 5, 4], np.int32)  # 4: 7 times
  update = jax.jit(memory.update_memory_by_rank, static_argnums=(3, 4))
  expected = _numpy_update(centers, features, labels, MOMENTUM)
  exact = update(jnp.asarray(centers), jnp.asarray(features), jnp.asarray(labels), MOMENTUM, 7)
  np.testing.assert_allclose(exact, expected, rtol=1e-5, atol=1e-6)
  short = np.asarray(update(jnp.asarray(centers), jnp.asarray(features), jnp.asarray(labels),
                            MOMENTUM, 6))
  assert np.all(np.isnan(short[4]))  # a bound that is too small shows, never hides
  others = [0, 1, 2, 3, 5]
  np.testing.assert_allclose(short[others], expected[others], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='max_rounds'):
    memory.update_memory_by_rank(jnp.asarray(centers), jnp.asarray(features),
                                 jnp.asarray(labels), MOMENTUM, 0)
