"""pclhd_match against transcriptions of the reference's two matchings (train_sysu.py:985-1034,
the nested `PGM`, and train_regdb.py:816-847), on torch CPU centres."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's matching needs it (pip install -r requirements-test.txt)")
import pclhd_reference  # pylint: disable=g-import-not-at-top
from pgm_matching_test import _as_array  # pylint: disable=g-import-not-at-top
from pgm_matching_test import _centers  # pylint: disable=g-import-not-at-top

from vireid_jax import methods  # pylint: disable=g-import-not-at-top
from vireid_jax.methods.pclhd.association import MoreInfraredClusters  # pylint: disable=g-import-not-at-top
from vireid_jax.methods.pclhd.association import pclhd_match  # pylint: disable=g-import-not-at-top
from vireid_jax.methods.pgm.matching import pgm_match  # pylint: disable=g-import-not-at-top


def _reference(visible, infrared, variant):
  """The reference's (r2i, i2r) as arrays, -1 where a key is missing."""
  v, i = torch.from_numpy(visible), torch.from_numpy(infrared)
  if variant == 'sysu':
    r2i, i2r = pclhd_reference.sysu_pgm(len(visible), len(infrared), v, i)
  else:
    r2i, i2r = pclhd_reference.regdb_pgm(len(visible), len(infrared), v, i)
  return _as_array(r2i, len(visible)), _as_array(i2r, len(infrared))


# K_v / K_i in {1, 1.5, 2, 2.5, 3, 3.5}, with K_i = 4 and 6.
RATIOS = (1, 1.5, 2, 2.5, 3, 3.5)
SIZES = [(int(r * k), k) for k in (4, 6) for r in RATIOS]


@pytest.mark.parametrize('num_visible,num_infrared', SIZES)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_sysu_equals_the_reference(num_visible, num_infrared, seed):
  visible, infrared = _centers(num_visible, num_infrared, seed)
  expected = _reference(visible, infrared, 'sysu')
  # Three rounds are the authors' code, -1 where a key is missing (their KeyError later).
  three = pclhd_match(visible, infrared, variant='sysu', rounds=3)
  for got, want in zip(three, expected):
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
  unmatched = np.sum(expected[0] < 0)
  assert unmatched == max(0, num_visible - 3 * num_infrared)
  assert np.all(expected[1] >= 0)
  # 'until_all' keeps every pair the reference makes and matches the rest.
  full = pclhd_match(visible, infrared, variant='sysu')
  kept = expected[0] >= 0
  np.testing.assert_array_equal(full[0][kept], expected[0][kept])
  assert np.all(full[0] >= 0) and np.all(full[1] >= 0)
  if not unmatched:
    np.testing.assert_array_equal(full[1], expected[1])


@pytest.mark.parametrize('num_visible,num_infrared', SIZES)
@pytest.mark.parametrize('seed', [0, 1])
def test_regdb_equals_the_reference(num_visible, num_infrared, seed):
  visible, infrared = _centers(num_visible, num_infrared, seed + 10)
  expected = _reference(visible, infrared, 'regdb')
  for got, want in zip(pclhd_match(visible, infrared, variant='regdb', rounds=2), expected):
    np.testing.assert_array_equal(got, want)
  full = pclhd_match(visible, infrared, variant='regdb')
  kept = expected[0] >= 0
  assert np.sum(~kept) == max(0, num_visible - 2 * num_infrared)
  np.testing.assert_array_equal(full[0][kept], expected[0][kept])
  np.testing.assert_array_equal(full[1], expected[1])  # RegDB's inverse map: round 1 only
  assert np.all(full[0] >= 0)


def _cost(visible, infrared):
  visible, infrared = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (visible, infrared))
  return np.exp(-(visible @ infrared.T).astype(np.float64))


@pytest.mark.parametrize('num_visible,num_infrared', [(4, 4), (6, 4), (8, 4), (10, 4), (12, 4)])
def test_sysu_inverse_map_is_the_last_round_s_partner(num_visible, num_infrared):
  """Round 1's partner while K_v < 2 K_i; from 2 K_i on, rounds 2' and 3 overwrite it."""
  visible, infrared = _centers(num_visible, num_infrared, 5)
  visible_to_infrared, infrared_to_visible = pclhd_match(visible, infrared, variant='sysu')
  round1 = pclhd_match(visible, infrared, variant='sysu', rounds=1)
  # Every visible cluster's partner is an infrared cluster whose inverse is a visible cluster
  # with that same partner (the inverse map names one of its visible partners).
  np.testing.assert_array_equal(visible_to_infrared[infrared_to_visible], np.arange(num_infrared))
  overwritten = np.any(infrared_to_visible != round1[1])
  assert overwritten == (num_visible >= 2 * num_infrared)
  if num_visible >= 2 * num_infrared:  # round 2' covered every infrared cluster
    unmatched = np.flatnonzero(round1[0] < 0)
    assert np.all(np.isin(infrared_to_visible, unmatched))


@pytest.mark.parametrize('num_visible,num_infrared', [(15, 4), (20, 4), (29, 4)])
def test_sysu_until_all_beyond_three_times(num_visible, num_infrared):
  """Where the authors' code leaves clusters without a partner (their KeyError): the extra
  rounds are optimal assignments of the rows still unmatched, paired by row."""
  visible, infrared = _centers(num_visible, num_infrared, 7)
  expected = _reference(visible, infrared, 'sysu')
  got = pclhd_match(visible, infrared, variant='sysu')
  kept = expected[0] >= 0
  np.testing.assert_array_equal(got[0][kept], expected[0][kept])
  assert np.all(got[0] >= 0)
  unmatched = np.flatnonzero(~kept)
  cost = _cost(visible, infrared)
  last = expected[1].copy()
  while len(unmatched):
    rows, cols = linear_sum_assignment(cost[unmatched])
    np.testing.assert_array_equal(got[0][unmatched[rows]], cols)
    last[cols] = unmatched[rows]
    unmatched = np.delete(unmatched, rows)
  np.testing.assert_array_equal(got[1], last)


def test_more_infrared_clusters():
  visible, infrared = _centers(4, 6, 3)
  # SYSU: torch.zeros(K_v, K_v - K_i) raises in the reference; ours raises a MethodStop.
  with pytest.raises(RuntimeError):
    _reference(visible, infrared, 'sysu')
  with pytest.raises(MoreInfraredClusters, match='6 infrared clusters outnumber the 4'):
    pclhd_match(visible, infrared, variant='sysu')
  assert issubclass(MoreInfraredClusters, methods.MethodStop)
  # RegDB: both maps stay empty (no cross term that epoch).
  expected = _reference(visible, infrared, 'regdb')
  for got, want in zip(pclhd_match(visible, infrared, variant='regdb'), expected):
    np.testing.assert_array_equal(got, want)
    assert np.all(got == -1)


def test_bad_arguments():
  visible, infrared = _centers(6, 4, 0)
  with pytest.raises(ValueError, match='variant'):
    pclhd_match(visible, infrared, variant='llcm')
  for bad in (0, 'all', 2.0, True):
    with pytest.raises(ValueError, match='rounds'):
      pclhd_match(visible, infrared, rounds=bad)
  with pytest.raises(ValueError, match='at least one cluster'):
    pclhd_match(visible[:0], infrared)


@pytest.mark.parametrize('num_visible,num_infrared', [(6, 4), (8, 4), (10, 4), (12, 4)])
def test_sysu_visible_map_is_pgm_s_only_up_to_twice(num_visible, num_infrared):
  """Up to K_v = 2 K_i the SYSU visible map is PGM's (`pgm_match`); beyond, round 2' pairs
  the rows of U by row where PGM's round 2 pairs them by position, and the maps part."""
  differ = 0
  for seed in range(4):
    visible, infrared = _centers(num_visible, num_infrared, seed)
    got = pclhd_match(visible, infrared, variant='sysu')[0]
    differ += np.any(got != pgm_match(visible, infrared)[0])
  assert (differ > 0) == (num_visible > 2 * num_infrared)
