"""Clustering and matching diagnostics on hand-worked labels."""

import numpy as np
import pytest

from vireid_jax import clustering
from vireid_jax.methods.mbccm import matching as mbccm_matching
from vireid_jax.clustering import diagnostics


def test_cluster_diagnostics_hand_worked():
  pseudo = np.array([0, 0, 0, 1, 1, -1, 2, 2, -1, 1])
  pids = np.array([7, 7, 8, 9, 9, 9, 4, 4, 5, 3])
  stats = clustering.cluster_diagnostics(pseudo, pids)
  assert stats['clusters'] == 3 and stats['outliers'] == 2
  assert stats['outlier_fraction'] == pytest.approx(0.2)
  assert stats['identities'] == 6
  # Majorities: cluster 0 -> 7 (2 of 3), 1 -> 9 (2 of 3), 2 -> 4 (2 of 2): 6 of 8 clustered.
  assert stats['purity'] == pytest.approx(6 / 8)
  assert 0 < stats['nmi'] < 1 and stats['ari'] < 1


def test_perfect_clustering_scores_one():
  pids = np.array([3, 3, 5, 5, 5, 8])
  stats = clustering.cluster_diagnostics(np.array([1, 1, 0, 0, 0, 2]), pids)
  assert stats['purity'] == stats['nmi'] == stats['ari'] == pytest.approx(1.0)


def test_without_identities_only_counts():
  stats = clustering.cluster_diagnostics(np.array([0, -1, 0, 1]), None)
  assert stats == {'clusters': 2.0, 'outliers': 1.0, 'outlier_fraction': 0.25}
  assert clustering.match_diagnostics(np.ones((2, 3), bool), None, None, None, None) == {
      'pairs': 6.0}


def test_all_outliers_gives_nan_scores():
  stats = clustering.cluster_diagnostics(np.array([-1, -1]), np.array([1, 2]))
  assert stats['clusters'] == 0 and np.isnan(stats['purity'])


def test_majority_identities_break_ties_by_smaller_pid():
  majority = diagnostics.majority_identities(np.array([0, 0, 1, 1, 1]), np.array([9, 2, 5, 5, 1]))
  np.testing.assert_array_equal(majority, [2, 5])


def test_match_diagnostics_hand_worked():
  labels_visible = np.array([0, 0, 1, 1, 2, -1])
  pids_visible = np.array([10, 10, 20, 20, 30, 10])  # majorities 10, 20, 30
  labels_infrared = np.array([1, 1, 0, -1])
  pids_infrared = np.array([20, 20, 10, 30])  # majorities: cluster 0 -> 10, 1 -> 20
  mask = np.array([[1, 0, 1],   # ir 0 (10) ~ vis 0 (10) yes, vis 2 (30) no
                   [0, 1, 0]],  # ir 1 (20) ~ vis 1 (20) yes
                  bool)
  stats = clustering.match_diagnostics(mask, labels_visible, pids_visible, labels_infrared,
                                       pids_infrared)
  assert stats == {'pairs': 3.0, 'pair_precision': pytest.approx(2 / 3),
                   'infrared_with_true_partner': 1.0}
  with pytest.raises(ValueError, match='shape'):
    clustering.match_diagnostics(mask.T, labels_visible, pids_visible, labels_infrared,
                                 pids_infrared)


def test_matching_measures_per_cluster_on_a_hand_built_mask():
  # Visible clusters 0..3 hold identities 10, 20, 30, 40; infrared clusters 0..2 hold 20, 30, 50.
  labels_visible, pids_visible = np.arange(4), np.array([10, 20, 30, 40])
  labels_infrared, pids_infrared = np.arange(3), np.array([20, 30, 50])
  mask = np.array([[1, 1, 0, 0],   # ir 0 (20): partners 10 and 20 -> a true partner
                   [0, 0, 0, 1],   # ir 1 (30): partner 40 only -> none
                   [0, 0, 1, 0]],  # ir 2 (50): no visible cluster of 50 exists -> none
                  bool)
  # The Hungarian pairs: ir 0 -> vis 0 (wrong), ir 1 -> vis 2 (right; the relaxed mask above
  # need not contain it in this hand-built case), ir 2 -> vis 3 (wrong).
  one_to_one = np.array([[0, 0], [1, 2], [2, 3]])
  stats = clustering.match_diagnostics(mask, labels_visible, pids_visible, labels_infrared,
                                       pids_infrared, one_to_one=one_to_one)
  assert stats['pairs'] == 4.0
  assert stats['pair_precision'] == pytest.approx(1 / 4)
  assert stats['infrared_with_true_partner'] == pytest.approx(1 / 3)
  assert stats['one_to_one_precision'] == pytest.approx(1 / 3)


def test_matching_measures_use_majority_identities_of_impure_clusters():
  # Infrared cluster 0 is mostly identity 7 (2 of 3), so its true partner is visible cluster 1.
  labels_visible, pids_visible = np.array([0, 0, 1, 1, 1]), np.array([5, 5, 7, 7, 5])
  labels_infrared, pids_infrared = np.array([0, 0, 0, -1]), np.array([7, 7, 5, 5])
  right = clustering.match_diagnostics(np.array([[0, 1]], bool), labels_visible, pids_visible,
                                       labels_infrared, pids_infrared,
                                       one_to_one=np.array([[0, 1]]))
  wrong = clustering.match_diagnostics(np.array([[1, 0]], bool), labels_visible, pids_visible,
                                       labels_infrared, pids_infrared,
                                       one_to_one=np.array([[0, 0]]))
  assert right['infrared_with_true_partner'] == right['one_to_one_precision'] == 1.0
  assert wrong['infrared_with_true_partner'] == wrong['one_to_one_precision'] == 0.0


def test_one_to_one_precision_of_a_real_mbccm_match():
  # Centres: infrared cluster i sits next to visible cluster perm[i]; the Hungarian pairs find it.
  rng = np.random.default_rng(0)
  visible = rng.normal(size=(6, 16)).astype(np.float32)
  perm = np.array([4, 0, 5, 2])
  infrared = visible[perm] + 0.05 * rng.normal(size=(4, 16)).astype(np.float32)
  normalise = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  match = mbccm_matching.mbccm_match(normalise(visible), normalise(infrared))
  pids_visible = np.arange(6) * 10
  stats = clustering.match_diagnostics(match.mask, np.arange(6), pids_visible, np.arange(4),
                                       pids_visible[perm], one_to_one=match.one_to_one)
  assert stats['one_to_one_precision'] == 1.0 and stats['infrared_with_true_partner'] == 1.0
