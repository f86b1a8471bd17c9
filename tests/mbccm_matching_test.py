"""MBCCM matching: the reference's loops, its properties, and hand-worked cases."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from vireid_jax.methods.mbccm import matching


def reference_mask(centers_visible, centers_infrared):
  """The reference's mbccm_matching, line by line (numpy for torch), as a float 0/1 mask."""
  num_v, num_i = len(centers_visible), len(centers_infrared)

  def pairwise(x, y):
    return (x ** 2).sum(1)[:, None] + (y ** 2).sum(1)[None, :] - 2 * x @ y.T

  if num_v >= num_i:
    k = num_v // num_i + 1
    dist_mat = pairwise(centers_infrared, centers_visible)
    cost_mat = np.tile(dist_mat, (k, 1))
    ir_idx1, rgb_idx1 = linear_sum_assignment(dist_mat)
    ir_idx2, rgb_idx2 = linear_sum_assignment(cost_mat)
  else:
    k = num_i // num_v + 1
    dist_mat = pairwise(centers_visible, centers_infrared)
    cost_mat = np.tile(dist_mat, (k, 1))
    rgb_idx1, ir_idx1 = linear_sum_assignment(dist_mat)
    rgb_idx2, ir_idx2 = linear_sum_assignment(cost_mat)
    dist_mat = dist_mat.T
  mask1 = np.zeros_like(dist_mat)
  mask2 = np.zeros_like(dist_mat)
  for j in range(len(ir_idx1)):
    idx = ir_idx1[j] % num_i
    mask1[idx, np.where(dist_mat[idx, :] <= dist_mat[idx, rgb_idx1[j] % num_v])[0]] = 1
  for j in range(len(rgb_idx2)):
    idx = rgb_idx2[j] % num_v
    mask2[np.where(dist_mat[:, idx] <= dist_mat[ir_idx2[j] % num_i, idx])[0], idx] = 1
  return 1 - (1 - mask1) * (1 - mask2)


def unit_rows(rng, n, dim=16):
  x = rng.standard_normal((n, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def on_circle(degrees):
  radians = np.deg2rad(np.asarray(degrees, np.float64))
  return np.stack([np.cos(radians), np.sin(radians)], 1).astype(np.float32)


@pytest.mark.parametrize('num_visible,num_infrared', [(23, 7), (7, 23), (12, 12), (30, 29),
                                                      (1, 9), (9, 1)])
def test_equals_the_reference_and_has_its_properties(num_visible, num_infrared):
  rng = np.random.default_rng(num_visible * 100 + num_infrared)
  for _ in range(5):
    visible, infrared = unit_rows(rng, num_visible), unit_rows(rng, num_infrared)
    result = matching.mbccm_match(visible, infrared)
    mask = result.mask
    assert mask.shape == (num_infrared, num_visible) and mask.dtype == bool
    np.testing.assert_array_equal(mask, reference_mask(visible, infrared) == 1)
    # Every cluster on both sides has a partner.
    assert mask.any(axis=1).all() and mask.any(axis=0).all()
    # The one-to-one pairs are a valid assignment covering the smaller side.
    one = result.one_to_one
    assert len(one) == min(num_visible, num_infrared)
    assert len(set(one[:, 0])) == len(one) and len(set(one[:, 1])) == len(one)
    # The many-to-one pairs give every cluster of the larger side exactly one partner.
    many = result.many_to_one
    larger = 1 if num_visible >= num_infrared else 0
    assert sorted(many[:, larger]) == list(range(max(num_visible, num_infrared)))
    # Relaxation: exactly the pairs at or below some assigned pair's distance, along the
    # visible side for one-to-one pairs and along the infrared side for many-to-one pairs.
    distance = matching.squared_distances(infrared, visible)
    expected = np.zeros_like(mask)
    for i, v in one:
      expected[i] |= distance[i] <= distance[i, v]
    for i, v in many:
      expected[:, v] |= distance[:, v] <= distance[i, v]
    np.testing.assert_array_equal(mask, expected)
    # Partner lists and means agree with the mask.
    assert [list(p) for p in result.infrared_partners] == [list(np.flatnonzero(r)) for r in mask]
    assert [list(p) for p in result.visible_partners] == [
        list(np.flatnonzero(c)) for c in mask.T]
    assert result.mean_partners_infrared == pytest.approx(mask.sum(1).mean())
    assert result.mean_partners_visible == pytest.approx(mask.sum(0).mean())


def test_hand_worked_more_visible_clusters():
  # Visible at 0, 30, 90 degrees; infrared at 1 and 3 degrees (distance grows with the angle).
  # (a) one-to-one: ir 1->vis 0 and ir 3->vis 30 (d(1) + d(27) < d(29) + d(3)); relaxing
  #     ir 3 along the visible side adds vis 0 (3 <= 27 degrees away).
  # (b) stacked twice: visible 0->ir 1, 30->ir 3, 90->ir 3; relaxing along the infrared side
  #     adds nothing (ir 1 is 29 > 27 from visible 30, 89 > 87 from visible 90).
  result = matching.mbccm_match(on_circle([0, 30, 90]), on_circle([1, 3]))
  np.testing.assert_array_equal(result.mask, [[1, 0, 0], [1, 1, 1]])
  assert sorted(map(tuple, result.one_to_one)) == [(0, 0), (1, 1)]
  assert sorted(map(tuple, result.many_to_one)) == [(0, 0), (1, 1), (1, 2)]
  assert result.mean_partners_infrared == 2.0
  assert result.mean_partners_visible == pytest.approx(4 / 3)


def test_hand_worked_more_infrared_clusters():
  # Visible at 1 and 3 degrees; infrared at 0, 30, 90.
  # (a) one-to-one over the visible side: vis 1->ir 0, vis 3->ir 30; relaxed along the visible
  #     side: ir 0 keeps only vis 1 (vis 3 is 3 > 1 away), ir 30 only vis 3 (vis 1: 29 > 27).
  # (b) stacked twice: ir 0->vis 1, ir 30->vis 3, ir 90->vis 3; relaxed along the infrared
  #     side: vis 3 gains ir 0 (3 <= 27), and from (ir 90, vis 3) every infrared within 87.
  result = matching.mbccm_match(on_circle([1, 3]), on_circle([0, 30, 90]))
  np.testing.assert_array_equal(result.mask, [[1, 1], [0, 1], [0, 1]])
  assert sorted(map(tuple, result.one_to_one)) == [(0, 0), (1, 1)]
  assert sorted(map(tuple, result.many_to_one)) == [(0, 0), (1, 1), (2, 1)]
  assert result.mean_partners_infrared == pytest.approx(4 / 3)
  assert result.mean_partners_visible == 2.0


def test_single_cluster_matches_everything():
  rng = np.random.default_rng(0)
  many = unit_rows(rng, 6)
  one = unit_rows(rng, 1)
  assert matching.mbccm_match(many, one).mask.all()
  assert matching.mbccm_match(one, many).mask.all()
  assert matching.mbccm_match(one, one).mask.shape == (1, 1)


def test_empty_side_is_an_error():
  with pytest.raises(ValueError, match='clusters on both sides'):
    matching.mbccm_match(np.zeros((0, 4), np.float32), np.ones((2, 4), np.float32))


def test_partner_lists_are_inverse_of_each_other():
  rng = np.random.default_rng(5)
  result = matching.mbccm_match(unit_rows(rng, 17), unit_rows(rng, 11))
  pairs_infrared = {(i, v) for i, p in enumerate(result.infrared_partners) for v in p}
  pairs_visible = {(i, v) for v, p in enumerate(result.visible_partners) for i in p}
  assert pairs_infrared == pairs_visible == set(zip(*np.nonzero(result.mask)))
