"""Identity samplers: batch composition, pairing against the match mask, the replacement rule."""

import time

import numpy as np
import pytest

from vireid_jax import sampling
from vireid_jax.methods.mbccm import sampler as mbccm_sampler

CLUSTERS, INSTANCES = 4, 3  # B = 12


def _labels(sizes, outliers=5, seed=0):
  """Pseudo labels with cluster k of sizes[k] members, shuffled, plus some -1 outliers."""
  labels = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), -np.ones(outliers, int)])
  return np.random.default_rng(seed).permutation(labels)


def _blocks(a):
  """(steps, B) -> (steps, clusters, instances)."""
  return a.reshape(a.shape[0], -1, INSTANCES)


def _check_common(plan, visible_labels, infrared_labels, steps):
  batch = CLUSTERS * INSTANCES
  for field in plan:
    assert field.shape == (steps, batch) and field.dtype == np.int32
  # Labels are the pseudo labels of the drawn images, outliers never drawn.
  np.testing.assert_array_equal(visible_labels[plan.visible_index], plan.visible_label)
  np.testing.assert_array_equal(infrared_labels[plan.infrared_index], plan.infrared_label)
  assert (plan.visible_label >= 0).all() and (plan.infrared_label >= 0).all()
  # Each cluster's images are consecutive: one label per block of INSTANCES positions.
  for labels in (plan.visible_label, plan.infrared_label):
    blocks = _blocks(labels)
    assert (blocks == blocks[:, :, :1]).all()


def _check_replacement_rule(index, labels, sizes):
  """Clusters larger than INSTANCES: distinct images; the others: with replacement."""
  seen_repeat = False
  for block, label in zip(_blocks(index).reshape(-1, INSTANCES),
                          _blocks(labels)[:, :, 0].reshape(-1)):
    if sizes[label] > INSTANCES:
      assert len(set(block.tolist())) == INSTANCES
    else:
      seen_repeat |= len(set(block.tolist())) < INSTANCES
  return seen_repeat


def test_stage1_batches_follow_the_recipe():
  visible_sizes = [10, 2, 3, 5, 4, 7]
  infrared_sizes = [4, 6, 1, 3, 8]
  visible_labels, infrared_labels = _labels(visible_sizes), _labels(infrared_sizes, seed=1)
  plan = sampling.stage1_plan(visible_labels, infrared_labels, 50, CLUSTERS, INSTANCES, 0)
  _check_common(plan, visible_labels, infrared_labels, 50)
  for labels in (plan.visible_label, plan.infrared_label):
    clusters = _blocks(labels)[:, :, 0]
    assert all(len(set(row)) == CLUSTERS for row in clusters.tolist())  # no repeat in a step
  # Sizes 2, 3 (<= INSTANCES) force repeats by pigeonhole or allow them; size 3 == INSTANCES
  # must still be drawn with replacement, which over 50 steps shows a repeat.
  assert _check_replacement_rule(plan.visible_index, plan.visible_label, visible_sizes)
  assert _check_replacement_rule(plan.infrared_index, plan.infrared_label, infrared_sizes)
  exact = _blocks(plan.infrared_index)[_blocks(plan.infrared_label)[:, :, 0] == 3]
  assert any(len(set(block.tolist())) < INSTANCES for block in exact)


def test_stage1_is_deterministic_given_the_seed():
  visible_labels, infrared_labels = _labels([5, 6, 7, 8, 9]), _labels([4, 4, 4, 4])
  plan = lambda seed: sampling.stage1_plan(visible_labels, infrared_labels, 10, CLUSTERS,
                                           INSTANCES, np.random.default_rng(seed))
  for a, b in zip(plan(3), plan(3)):
    np.testing.assert_array_equal(a, b)
  assert any((a != b).any() for a, b in zip(plan(3), plan(4)))


def test_draws_are_uniform_over_clusters_and_members():
  sizes = [6] * 8
  labels = _labels(sizes, outliers=0)
  plan = sampling.stage1_plan(labels, labels, 4000, CLUSTERS, INSTANCES, 7)
  cluster_freq = np.bincount(_blocks(plan.visible_label)[:, :, 0].ravel(), minlength=8)
  expected = 4000 * CLUSTERS / 8
  assert np.abs(cluster_freq - expected).max() < 0.1 * expected
  # Without replacement inside a cluster of 6, each member is in half the cluster's blocks, at
  # every position of the block alike.
  draws_of_cluster = cluster_freq[labels]  # (N,) how often each image's cluster was drawn
  for position in range(INSTANCES):
    image_freq = np.bincount(_blocks(plan.visible_index)[:, :, position].ravel(),
                             minlength=len(labels))
    ratio = image_freq / (draws_of_cluster / 6)
    assert np.abs(ratio - 1).max() < 0.25, ratio


def test_fewer_clusters_than_slots_takes_every_cluster_each_step():
  visible_labels, infrared_labels = _labels([5, 5]), _labels([5, 5, 5, 5, 5])
  plan = sampling.stage1_plan(visible_labels, infrared_labels, 20, CLUSTERS, INSTANCES, 0)
  clusters = _blocks(plan.visible_label)[:, :, 0]
  assert all(set(row) == {0, 1} for row in clusters.tolist())


def _match_problem():
  visible_sizes, infrared_sizes = [8, 2, 5, 6, 3, 9, 4], [7, 5, 2, 6, 4]
  mask = np.zeros((5, 7), bool)
  for i, v in [(0, 0), (0, 1), (1, 2), (2, 3), (2, 4), (3, 5), (4, 6), (1, 6), (3, 1)]:
    mask[i, v] = True
  return _labels(visible_sizes), _labels(infrared_sizes, seed=1), mask, visible_sizes, \
      infrared_sizes


def test_stage2_pairs_are_matched_clusters():
  visible_labels, infrared_labels, mask, visible_sizes, infrared_sizes = _match_problem()
  plan = mbccm_sampler.stage2_plan(visible_labels, infrared_labels, mask, 400, CLUSTERS, INSTANCES,
                              0)
  _check_common(plan, visible_labels, infrared_labels, 400)
  assert mask[plan.infrared_label, plan.visible_label].all()
  half = CLUSTERS // 2
  infrared_drawn = _blocks(plan.infrared_label)[:, :half, 0]
  visible_drawn = _blocks(plan.visible_label)[:, half:, 0]
  assert all(len(set(row)) == half for row in infrared_drawn.tolist())
  assert all(len(set(row)) == half for row in visible_drawn.tolist())
  # Every partner in the mask is drawn: visible cluster 0 and 1 for infrared cluster 0.
  partners_of_0 = _blocks(plan.visible_label)[:, :half, 0][infrared_drawn == 0]
  assert set(partners_of_0.tolist()) == {0, 1}
  # All pairs of the mask occur somewhere in the epoch.
  pairs = set(zip(plan.infrared_label.ravel().tolist(), plan.visible_label.ravel().tolist()))
  assert pairs == set(zip(*np.nonzero(mask)))
  assert _check_replacement_rule(plan.visible_index, plan.visible_label, visible_sizes)
  _check_replacement_rule(plan.infrared_index, plan.infrared_label, infrared_sizes)


def test_stage2_rejects_unusable_inputs():
  visible_labels, infrared_labels, mask, _, _ = _match_problem()
  plan = lambda m, clusters=CLUSTERS: mbccm_sampler.stage2_plan(
      visible_labels, infrared_labels, m, 5, clusters, INSTANCES, 0)
  with pytest.raises(ValueError, match='even'):
    plan(mask, clusters=3)
  with pytest.raises(ValueError, match='shape'):
    plan(mask[:, :6])
  lonely = mask.copy()
  lonely[4] = False
  with pytest.raises(ValueError, match='infrared clusters \\[4\\]'):
    plan(lonely)
  with pytest.raises(ValueError, match='outlier'):
    sampling.stage1_plan(-np.ones(5, int), infrared_labels, 5, CLUSTERS, INSTANCES, 0)


def test_a_sysu_sized_epoch_is_fast():
  rng = np.random.default_rng(0)
  visible_labels = rng.integers(-1, 500, 22258)
  infrared_labels = rng.integers(-1, 400, 11909)
  mask = rng.random((400, 500)) < 0.01
  mask[np.arange(400), rng.integers(0, 500, 400)] = True
  mask[rng.integers(0, 400, 500), np.arange(500)] = True
  start = time.perf_counter()
  plan = mbccm_sampler.stage2_plan(visible_labels, infrared_labels, mask, 300, 12, 12, 0)
  assert time.perf_counter() - start < 1.0  # ~20 ms measured; the bound leaves room for load
  assert plan.visible_index.shape == (300, 144)
