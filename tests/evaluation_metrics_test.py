"""Tests of the SYSU-MM01 / LLCM / RegDB metrics: hand-worked cases and a slow per-query twin."""

import numpy as np
import pytest

from vireid_jax.evaluation import metrics


def slow_metrics(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, sysu, llcm=False):
  """One query at a time, the way the dataset authors' loop reads (an independent twin).

  sysu: SYSU-MM01's cam3/cam2 drop and distinct-identity CMC; llcm: LLCM's drop of the query's
  own identity and camera, and distinct-identity CMC.
  """
  cmc_hits, aps, inps = [], [], []
  for q in range(len(q_pids)):
    order = np.argsort(distmat[q])
    if sysu and q_cams[q] == 3:
      order = np.array([g for g in order if g_cams[g] != 2], dtype=np.int64)
    if llcm:
      order = np.array([g for g in order if not (g_pids[g] == q_pids[q] and
                                                 g_cams[g] == q_cams[q])], dtype=np.int64)
    labels = g_pids[order]
    correct = labels == q_pids[q]
    if not correct.any():
      continue
    positions = np.flatnonzero(correct) + 1  # 1-based ranks of the correct matches
    aps.append(np.mean([(i + 1) / p for i, p in enumerate(positions)]))
    inps.append(len(positions) / positions[-1])
    if sysu or llcm:
      distinct = []
      for label in labels:
        if label not in distinct:
          distinct.append(label)
      first = distinct.index(q_pids[q]) + 1
    else:
      first = positions[0]
    cmc_hits.append([first <= k for k in range(1, max_rank + 1)])
  return np.mean(cmc_hits, axis=0), np.mean(aps), np.mean(inps)


def random_case(seed, num_query, num_gallery, num_ids, ties=False):
  rng = np.random.default_rng(seed)
  # Query ids reach past the gallery's: some queries have no match at all.
  q_pids = rng.integers(0, num_ids + 2, num_query)
  g_pids = rng.integers(0, num_ids, num_gallery)
  q_cams = rng.choice([3, 6], num_query)
  g_cams = rng.choice([1, 2, 4, 5], num_gallery)
  distmat = rng.standard_normal((num_query, num_gallery))
  if ties:
    distmat = np.round(distmat, 1)  # many exactly tied distances
  return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize('seed,num_query,num_gallery,num_ids,ties', [
    (0, 40, 60, 8, False),
    (1, 7, 300, 30, False),
    (2, 50, 25, 5, True),
    (3, 300, 40, 6, False),
])
def test_sysu_matches_slow_per_query_loop(seed, num_query, num_gallery, num_ids, ties,
                                          monkeypatch):
  monkeypatch.setattr(metrics, '_CHUNK_ELEMENTS', 700)  # several query chunks
  distmat, q_pids, g_pids, q_cams, g_cams = random_case(seed, num_query, num_gallery, num_ids,
                                                        ties)
  cmc, mean_ap, mean_inp = metrics.eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, 20)
  want_cmc, want_ap, want_inp = slow_metrics(distmat, q_pids, g_pids, q_cams, g_cams, 20, True)
  np.testing.assert_allclose(cmc, want_cmc, atol=1e-12)
  assert mean_ap == pytest.approx(want_ap, abs=1e-12)
  assert mean_inp == pytest.approx(want_inp, abs=1e-12)


@pytest.mark.parametrize('seed,num_query,num_gallery,num_ids,ties', [
    (4, 40, 60, 8, False),
    (5, 60, 30, 6, True),
    (6, 300, 30, 4, False),
])
def test_regdb_matches_slow_per_query_loop(seed, num_query, num_gallery, num_ids, ties,
                                           monkeypatch):
  monkeypatch.setattr(metrics, '_CHUNK_ELEMENTS', 700)  # several query chunks
  distmat, q_pids, g_pids, q_cams, g_cams = random_case(seed, num_query, num_gallery, num_ids,
                                                        ties)
  cmc, mean_ap, mean_inp = metrics.eval_regdb(distmat, q_pids, g_pids, 20)
  want_cmc, want_ap, want_inp = slow_metrics(distmat, q_pids, g_pids, q_cams, g_cams, 20, False)
  np.testing.assert_allclose(cmc, want_cmc, atol=1e-12)
  assert mean_ap == pytest.approx(want_ap, abs=1e-12)
  assert mean_inp == pytest.approx(want_inp, abs=1e-12)


@pytest.mark.parametrize('seed,num_query,num_gallery,num_ids,ties', [
    (7, 40, 60, 8, False),
    (8, 60, 30, 5, True),
    (9, 300, 40, 6, False),
])
def test_llcm_matches_slow_per_query_loop(seed, num_query, num_gallery, num_ids, ties,
                                          monkeypatch):
  monkeypatch.setattr(metrics, '_CHUNK_ELEMENTS', 700)  # several query chunks
  distmat, q_pids, g_pids, _, _ = random_case(seed, num_query, num_gallery, num_ids, ties)
  # LLCM cameras record both modalities: queries and gallery share camera numbers 1..4.
  rng = np.random.default_rng(seed + 100)
  q_cams, g_cams = rng.integers(1, 5, num_query), rng.integers(1, 5, num_gallery)
  cmc, mean_ap, mean_inp = metrics.eval_llcm(distmat, q_pids, g_pids, q_cams, g_cams, 20)
  want_cmc, want_ap, want_inp = slow_metrics(distmat, q_pids, g_pids, q_cams, g_cams, 20,
                                             sysu=False, llcm=True)
  np.testing.assert_allclose(cmc, want_cmc, atol=1e-12)
  assert mean_ap == pytest.approx(want_ap, abs=1e-12)
  assert mean_inp == pytest.approx(want_inp, abs=1e-12)
  order = np.argsort(distmat, axis=1)
  for got, want in zip(
      metrics.ranked_metrics(order, q_pids, g_pids, q_cams, g_cams, 20, rules='llcm'),
      (cmc, mean_ap, mean_inp)):
    np.testing.assert_allclose(got, want)


def test_llcm_drops_only_the_query_identity_seen_by_its_own_camera():
  # Ranked gallery (identity, camera): (1, 2), (2, 1), (1, 4), (2, 2), (1, 5).
  g_pids = np.array([1, 2, 1, 2, 1])
  g_cams = np.array([2, 1, 4, 2, 5])
  distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
  # Identity 1 from camera 2: its own camera-2 image goes, identity 2's camera-2 image stays.
  # Left: 2, 1, 2, 1 -> matches at ranks 2 and 4; distinct identities 2, 1 -> Rank-2.
  cmc, mean_ap, mean_inp = metrics.eval_llcm(distmat, np.array([1]), g_pids, np.array([2]),
                                             g_cams, max_rank=4)
  np.testing.assert_allclose(cmc, [0, 1, 1, 1])
  assert mean_ap == pytest.approx((1 / 2 + 2 / 4) / 2)
  assert mean_inp == pytest.approx(2 / 4)
  # From camera 3 nothing is dropped (SYSU-MM01's cam3/cam2 rule is not LLCM's).
  cmc, mean_ap, mean_inp = metrics.eval_llcm(distmat, np.array([1]), g_pids, np.array([3]),
                                             g_cams, max_rank=4)
  np.testing.assert_allclose(cmc, [1, 1, 1, 1])
  assert mean_ap == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
  assert mean_inp == pytest.approx(3 / 5)
  # Identity 2 from camera 1: left (1, 2), (1, 4), (2, 2), (1, 5); the match is third, the
  # distinct identities read 1, 2: Rank-2.
  cmc, mean_ap, mean_inp = metrics.eval_llcm(distmat, np.array([2]), g_pids, np.array([1]),
                                             g_cams, max_rank=4)
  np.testing.assert_allclose(cmc, [0, 1, 1, 1])
  assert (mean_ap, mean_inp) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
  # A query whose only match shares its camera has nothing left to find: it is skipped.
  g_pids[4] = 3
  both = metrics.eval_llcm(np.concatenate([distmat, distmat]), np.array([1, 3]), g_pids,
                           np.array([3, 5]), g_cams, max_rank=4)
  alone = metrics.eval_llcm(distmat, np.array([1]), g_pids, np.array([3]), g_cams, max_rank=4)
  for got, want in zip(both, alone):
    np.testing.assert_allclose(got, want)
  np.testing.assert_allclose(alone[0], [1, 1, 1, 1])
  assert alone[1] == pytest.approx((1 + 2 / 3) / 2)


def test_ranked_metrics_equals_eval_on_the_same_order():
  distmat, q_pids, g_pids, q_cams, g_cams = random_case(7, 30, 50, 6)
  order = np.argsort(distmat, axis=1)
  for got, want in zip(
      metrics.ranked_metrics(order, q_pids, g_pids, q_cams, g_cams, 10, rules='sysu'),
      metrics.eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, 10)):
    np.testing.assert_allclose(got, want)
  for got, want in zip(metrics.ranked_metrics(order, q_pids, g_pids, max_rank=10),
                       metrics.eval_regdb(distmat, q_pids, g_pids, 10)):
    np.testing.assert_allclose(got, want)


def test_cam2_image_ranked_before_the_match_is_dropped_for_a_cam3_query():
  # Ranked gallery: (pid 2, cam 2), (pid 1, cam 1), (pid 3, cam 4).
  g_pids = np.array([2, 1, 3])
  g_cams = np.array([2, 1, 4])
  distmat = np.array([[0.1, 0.2, 0.3]])
  # From cam3 the cam2 image is dropped: the match moves to rank 1.
  cmc, mean_ap, mean_inp = metrics.eval_sysu(distmat, np.array([1]), g_pids, np.array([3]),
                                             g_cams, max_rank=3)
  np.testing.assert_allclose(cmc, [1, 1, 1])
  assert (mean_ap, mean_inp) == (1.0, 1.0)
  # From cam6 nothing is dropped: the match is second.
  cmc, mean_ap, mean_inp = metrics.eval_sysu(distmat, np.array([1]), g_pids, np.array([6]),
                                             g_cams, max_rank=3)
  np.testing.assert_allclose(cmc, [0, 1, 1])
  assert (mean_ap, mean_inp) == (0.5, 0.5)


def test_cam3_query_whose_only_match_is_from_cam2_is_skipped():
  g_pids = np.array([1, 2, 3])
  g_cams = np.array([2, 1, 4])
  distmat = np.array([[0.1, 0.2, 0.3],   # pid 1 from cam3: its only match (cam2) is dropped
                      [0.3, 0.1, 0.2]])  # pid 2 from cam6: rank 1
  cmc, mean_ap, mean_inp = metrics.eval_sysu(distmat, np.array([1, 2]), g_pids,
                                             np.array([3, 6]), g_cams, max_rank=2)
  np.testing.assert_allclose(cmc, [1, 1])  # averaged over the one valid query
  assert (mean_ap, mean_inp) == (1.0, 1.0)
  # Every query without a match: nothing to average.
  with pytest.raises(ValueError, match='No query has a correct match'):
    metrics.eval_sysu(distmat[:1], np.array([1]), g_pids, np.array([3]), g_cams)


def test_sysu_cmc_removes_repeated_identities_but_map_uses_the_full_list():
  # Ranked gallery identities: 2, 2, 3, 1, 1 (all visible cams, query from cam6).
  g_pids = np.array([2, 2, 3, 1, 1])
  g_cams = np.array([1, 4, 5, 1, 4])
  distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
  cmc, mean_ap, mean_inp = metrics.eval_sysu(distmat, np.array([1]), g_pids, np.array([6]),
                                             g_cams, max_rank=5)
  # Distinct identities in order: 2, 3, 1 -> the true one is third.
  np.testing.assert_allclose(cmc, [0, 0, 1, 1, 1])
  assert mean_ap == pytest.approx((1 / 4 + 2 / 5) / 2)  # matches at ranks 4 and 5
  assert mean_inp == pytest.approx(2 / 5)
  # RegDB's standard CMC counts images: the first match is fourth.
  cmc, _, _ = metrics.eval_regdb(distmat, np.array([1]), g_pids, max_rank=5)
  np.testing.assert_allclose(cmc, [0, 0, 0, 1, 1])


def test_minp_and_map_hand_worked():
  # Correct matches at ranks 1, 3 and 6 of six.
  g_pids = np.array([7, 0, 7, 0, 0, 7])
  distmat = np.arange(6, dtype=np.float64)[None, :]
  cmc, mean_ap, mean_inp = metrics.eval_regdb(distmat, np.array([7]), g_pids, max_rank=3)
  np.testing.assert_allclose(cmc, [1, 1, 1])
  assert mean_ap == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
  assert mean_inp == pytest.approx(3 / 6)  # hardest match at rank 6, 3 matches


def test_query_without_any_match_does_not_count():
  g_pids = np.array([1, 2, 3, 1])
  distmat = np.array([[0.4, 0.1, 0.2, 0.3]])
  alone = metrics.eval_regdb(distmat, np.array([1]), g_pids, max_rank=4)
  with_stranger = metrics.eval_regdb(np.concatenate([distmat, distmat]), np.array([1, 99]),
                                     g_pids, max_rank=4)
  for got, want in zip(with_stranger, alone):
    np.testing.assert_allclose(got, want)
  np.testing.assert_allclose(alone[0], [0, 0, 1, 1])
  assert alone[1] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_cmc_has_max_rank_entries_even_for_a_short_gallery():
  cmc, _, _ = metrics.eval_regdb(np.array([[0.2, 0.1]]), np.array([1]), np.array([1, 2]),
                                 max_rank=5)
  np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match='identities'):
    metrics.eval_regdb(np.zeros((2, 3)), np.array([1, 2]), np.array([1, 2]))
  with pytest.raises(ValueError, match='NaN'):
    metrics.eval_regdb(np.full((1, 2), np.nan), np.array([1]), np.array([1, 2]))
