"""pgm_match against a transcription of the reference's matching (train_regdb.py:683-739)."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's matching needs it (pip install -r requirements-test.txt)")
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

from vireid_jax.methods.pgm.matching import pgm_match  # pylint: disable=g-import-not-at-top


def _reference_pgm(cluster_features_rgb, cluster_features_ir):
  """train_regdb.py:683-739, both branches, verbatim but for the prints. Returns (r2i, i2r)."""
  num_cluster_rgb, num_cluster_ir = len(cluster_features_rgb), len(cluster_features_ir)
  i2r = {}
  r2i = {}
  R = []
  bgm = False
  if num_cluster_rgb >= num_cluster_ir:
    cluster_features_rgb = F.normalize(cluster_features_rgb, dim=1)
    cluster_features_ir = F.normalize(cluster_features_ir, dim=1)
    similarity = ((torch.mm(cluster_features_rgb, cluster_features_ir.T)) / 1).exp().cpu()
    dis_similarity = (1 / (similarity))
    cost = dis_similarity / 1
    tmp = torch.zeros(dis_similarity.shape[0], dis_similarity.shape[0] - dis_similarity.shape[1])
    cost = (torch.cat((cost, tmp), 1))
    unmatched_row = []
    row_ind, col_ind = linear_sum_assignment(cost)
    for idx, item in enumerate(row_ind):
      if col_ind[idx] < similarity.shape[1]:
        R.append((row_ind[idx], col_ind[idx]))
        r2i[row_ind[idx]] = col_ind[idx]
        i2r[col_ind[idx]] = row_ind[idx]
      else:
        unmatched_row.append(row_ind[idx])
    if bgm is False:
      unmatched_cost = cost[unmatched_row][:, :dis_similarity.shape[1]]
      unmatched_row_ind, unmatched_col_ind = linear_sum_assignment(unmatched_cost)
      for idx, item in enumerate(unmatched_row_ind):
        R.append((unmatched_row[idx], unmatched_col_ind[idx]))
        r2i[unmatched_row[idx]] = unmatched_col_ind[idx]
  else:
    cluster_features_rgb = F.normalize(cluster_features_rgb, dim=1)
    cluster_features_ir = F.normalize(cluster_features_ir, dim=1)
    similarity = ((torch.mm(cluster_features_ir, cluster_features_rgb.T)) / 1).exp().cpu()
    dis_similarity = (1 / (similarity))
    cost = dis_similarity / 1
    tmp = torch.zeros(dis_similarity.shape[0], dis_similarity.shape[0] - dis_similarity.shape[1])
    cost = (torch.cat((cost, tmp), 1))
    unmatched_row = []
    row_ind, col_ind = linear_sum_assignment(cost)
    for idx, item in enumerate(row_ind):
      if col_ind[idx] < similarity.shape[1]:
        R.append((row_ind[idx], col_ind[idx]))
        i2r[row_ind[idx]] = col_ind[idx]
        r2i[col_ind[idx]] = row_ind[idx]
      else:
        unmatched_row.append(row_ind[idx])
    if bgm is False:
      unmatched_cost = cost[unmatched_row][:, :dis_similarity.shape[1]]
      unmatched_row_ind, unmatched_col_ind = linear_sum_assignment(unmatched_cost)
      for idx, item in enumerate(unmatched_row_ind):
        R.append((unmatched_row[idx], unmatched_col_ind[idx]))
        i2r[unmatched_row[idx]] = unmatched_col_ind[idx]
  return r2i, i2r


def _as_array(mapping, size):
  out = np.full(size, -1, np.int64)
  for key, value in mapping.items():
    out[int(key)] = int(value)
  return out


def _centers(num_visible, num_infrared, seed, dim=16):
  """Un-normalised centres of various norms, each one of the larger side near one of the
  smaller side (as real clusters are), so that the assignments are not decided by chance."""
  rng = np.random.default_rng(seed)
  num_small, num_big = sorted((num_visible, num_infrared))
  small = rng.normal(size=(num_small, dim))
  big = small[rng.integers(0, num_small, num_big)] + rng.normal(size=(num_big, dim))
  small, big = (x * rng.uniform(0.5, 3, size=(len(x), 1)) for x in (small, big))
  visible, infrared = (big, small) if num_visible >= num_infrared else (small, big)
  return visible.astype(np.float32), infrared.astype(np.float32)


def _reference(visible, infrared):
  r2i, i2r = _reference_pgm(torch.from_numpy(visible), torch.from_numpy(infrared))
  return _as_array(r2i, len(visible)), _as_array(i2r, len(infrared))


# (K_v, K_i): equal, K_i < K_v <= 2 K_i, K_v < K_i <= 2 K_v, and beyond 2x either way.
SIZES_WITHIN_2X = [(6, 6), (9, 6), (12, 6), (7, 11), (5, 10), (1, 1), (2, 1)]
SIZES_BEYOND_2X = [(13, 6), (20, 4), (5, 16), (3, 17)]


@pytest.mark.parametrize('num_visible,num_infrared', SIZES_WITHIN_2X + SIZES_BEYOND_2X)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_two_rounds_equal_the_reference(num_visible, num_infrared, seed):
  visible, infrared = _centers(num_visible, num_infrared, seed)
  expected = _reference(visible, infrared)
  got = pgm_match(visible, infrared, rounds=2)
  for g, e in zip(got, expected):
    assert g.dtype == np.int64
    np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize('num_visible,num_infrared', SIZES_WITHIN_2X)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_until_all_equals_the_reference_where_it_matches_everything(num_visible, num_infrared,
                                                                     seed):
  visible, infrared = _centers(num_visible, num_infrared, seed)
  expected = _reference(visible, infrared)
  assert all(np.all(e >= 0) for e in expected)  # the regime where the reference can train
  for g, e in zip(pgm_match(visible, infrared), expected):
    np.testing.assert_array_equal(g, e)


def _cost(big, small):
  big, small = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (big, small))
  return np.exp(-(big @ small.T).astype(np.float64))


@pytest.mark.parametrize('num_visible,num_infrared', SIZES_BEYOND_2X)
@pytest.mark.parametrize('seed', [0, 1])
def test_until_all_extends_the_reference_beyond_2x(num_visible, num_infrared, seed):
  visible, infrared = _centers(num_visible, num_infrared, seed)
  expected = _reference(visible, infrared)
  got = pgm_match(visible, infrared, rounds='until_all')
  big = 0 if num_visible >= num_infrared else 1
  num_big, num_small = len(got[big]), len(got[1 - big])
  # The reference leaves |U| - n_S of the larger side unmatched (its KeyError later).
  assert np.sum(expected[big] < 0) == num_big - 2 * num_small
  # Every pair the reference makes is kept; the smaller side is its one-to-one map.
  kept = expected[big] >= 0
  np.testing.assert_array_equal(got[big][kept], expected[big][kept])
  np.testing.assert_array_equal(got[1 - big], expected[1 - big])
  # Every cluster now has a partner, and each later round is an optimal assignment of the
  # rows still unmatched (rows assigned in order of index; at most n_S per round).
  assert np.all(got[big] >= 0) and np.all(got[big] < num_small)
  unmatched = np.flatnonzero(~kept)
  cost = _cost(*((visible, infrared) if big == 0 else (infrared, visible)))
  while len(unmatched):
    rows, cols = linear_sum_assignment(cost[unmatched])
    np.testing.assert_array_equal(got[big][unmatched[rows]], cols)
    unmatched = np.delete(unmatched, rows)


def test_round_limit_and_bad_rounds():
  visible, infrared = _centers(20, 4, 3)
  one = pgm_match(visible, infrared, rounds=1)
  assert np.sum(one[0] >= 0) == 4 and np.all(one[1] >= 0)  # the one-to-one round only
  three = pgm_match(visible, infrared, rounds=3)
  assert np.sum(three[0] >= 0) == 12
  np.testing.assert_array_equal(pgm_match(visible, infrared, rounds=5)[0],
                                pgm_match(visible, infrared)[0])
  for bad in (0, 'all', 2.0, True):
    with pytest.raises(ValueError, match='rounds'):
      pgm_match(visible, infrared, rounds=bad)
  with pytest.raises(ValueError, match='at least one cluster'):
    pgm_match(visible[:0], infrared)
