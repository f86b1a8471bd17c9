"""rank_by='l2': the Jaccard distance of PGM's non-unit features equals the reference's own.

The reference here is a transcription of `compute_jaccard_distance(..., search_option=3)`
(PGM: clustercontrast/utils/faiss_rerank.py:30-123, "FR"), its loops and dtypes kept, torch for
its torch lines; only faiss `IndexFlatL2` is replaced by an exact squared-L2 ranking with stable
ties (faiss's order among exact ties is unspecified). PGM clusters flip-averaged features that
are not renormalised (norms below 1; docs/pgm.md, quirk 6): FR ranks them by true L2 and
weights them with their raw dot products.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from vireid_jax.clustering import jaccard
from vireid_jax.clustering import neighbors
from vireid_jax.clustering import pseudo_labels
from vireid_jax.clustering.sparse_dbscan import renumber_by_first_appearance

from clustering_jaccard_test import clustered_features
from clustering_jaccard_test import exact_similarity


def shrunk_features(n, dim=32, noise=0.8, seed=0, clusters=None):
  """(n, dim) float32 rows around random directions, norms drawn in [0.9, 1] like PGM's
  (f(x) + f(flip x)) / 2 of two unit features."""
  features = clustered_features(n, dim=dim, noise=noise, seed=seed, clusters=clusters)
  norms = np.random.default_rng(seed + 1).uniform(0.9, 1.0, (n, 1))
  return (features * norms).astype(np.float32)


def exact_squared_distance(features):
  """(N, N) float64 |x_i - x_j|^2, each entry the same elementwise sequence (exact ties)."""
  features = np.asarray(features, np.float64)
  distance = np.zeros((len(features), len(features)))
  for d in range(features.shape[1]):
    difference = features[:, None, d] - features[None, :, d]
    distance += difference * difference
  return distance


def l2_rank(features, k):
  """faiss IndexFlatL2 search of the features against themselves: (N, k), stable ties."""
  return np.argsort(exact_squared_distance(features), axis=1, kind='stable')[:, :k]


def k_reciprocal_neigh(initial_rank, i, k1):  # FR:23-27
  forward_k_neigh_index = initial_rank[i, :k1 + 1]
  backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
  fi = np.where(backward_k_neigh_index == i)[0]
  return forward_k_neigh_index[fi]


def fr_compute_jaccard_distance(features, k1, k2):
  """FR:30-123 with search_option=3, use_float16=False; returns (jaccard_dist, initial_rank)."""
  target_features = torch.from_numpy(np.asarray(features, np.float32))
  n = target_features.size(0)
  mat_type = np.float32
  initial_rank = l2_rank(features, min(k1, n))  # index.search(features, k1), FR:58-62
  nn_k1 = []
  nn_k1_half = []
  for i in range(n):
    nn_k1.append(k_reciprocal_neigh(initial_rank, i, k1))
    nn_k1_half.append(k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2))))
  v = np.zeros((n, n), dtype=mat_type)
  for i in range(n):
    k_reciprocal_index = nn_k1[i]
    k_reciprocal_expansion_index = k_reciprocal_index
    for candidate in k_reciprocal_index:
      candidate_k_reciprocal_index = nn_k1_half[candidate]
      if (len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) >
          2 / 3 * len(candidate_k_reciprocal_index)):
        k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,
                                                 candidate_k_reciprocal_index)
    k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
    dist = 2 - 2 * torch.mm(target_features[i].unsqueeze(0).contiguous(),
                            target_features[k_reciprocal_expansion_index].t())
    v[i, k_reciprocal_expansion_index] = F.softmax(-dist, dim=1).view(-1).cpu().numpy()
  if k2 != 1:
    v_qe = np.zeros_like(v, dtype=mat_type)
    for i in range(n):
      v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
    v = v_qe
  inv_index = []
  for i in range(n):
    inv_index.append(np.where(v[:, i] != 0)[0])
  jaccard_dist = np.zeros((n, n), dtype=mat_type)
  for i in range(n):
    temp_min = np.zeros((1, n), dtype=mat_type)
    ind_non_zero = np.where(v[i, :] != 0)[0]
    ind_images = [inv_index[ind] for ind in ind_non_zero]
    for j in range(len(ind_non_zero)):
      temp_min[0, ind_images[j]] = temp_min[0, ind_images[j]] + np.minimum(
          v[i, ind_non_zero[j]], v[ind_images[j], ind_non_zero[j]])
    jaccard_dist[i] = 1 - temp_min / (2 - temp_min)
  jaccard_dist[jaccard_dist < 0] = 0.0
  return jaccard_dist, initial_rank


def assert_sparse_equals_dense(sparse, expected, max_distance=1.0):
  """Values to 1e-5; exactly the pairs below 1 and within max_distance stored."""
  coo = sparse.tocoo()
  stored = np.zeros(expected.shape, bool)
  stored[coo.row, coo.col] = True
  should_store = (expected < 1) & (expected <= max_distance)
  near_cut = (np.abs(expected - max_distance) < 1e-5) | (np.abs(expected - 1) < 1e-5)
  assert np.all((stored == should_store) | near_cut)
  np.testing.assert_allclose(coo.data, expected[coo.row, coo.col], atol=1e-5)
  assert (sparse != sparse.T).nnz == 0


@pytest.mark.parametrize('n,dim,k1,k2,noise', [(240, 32, 30, 6, 0.8), (200, 64, 20, 6, 1.5),
                                                (150, 2048, 30, 6, 1.0), (180, 16, 25, 4, 1.2)])
def test_equals_the_reference_on_non_unit_features(n, dim, k1, k2, noise):
  features = shrunk_features(n, dim=dim, noise=noise, seed=n + k1)
  sparse = jaccard.jaccard_distance(features, k1=k1, k2=k2, rank_by='l2')
  expected, initial_rank = fr_compute_jaccard_distance(features, k1, k2)
  assert sparse.dtype == np.float32 and sparse.shape == (n, n)
  assert_sparse_equals_dense(sparse, expected)
  assert np.mean(expected < 1) > 0.05
  # The case needs the L2 reading: ranking by dot product would pick other neighbours, and
  # the 'dot' path (which renormalises the rows) gives other distances.
  dot_rank = np.argsort(-exact_similarity(features), axis=1, kind='stable')[:, :k1]
  assert np.any(np.sort(dot_rank, axis=1) != np.sort(initial_rank, axis=1))
  dot_path = jaccard.jaccard_distance(features, k1=k1, k2=k2).toarray()
  dense = sparse.toarray()
  assert np.abs(dot_path - dense).max() > 1e-3


@pytest.mark.parametrize('eps,noise', [(0.6, 1.5), (0.3, 1.2)])  # SYSU's eps, RegDB's
def test_dbscan_labels_equal_sklearn_on_the_reference_distance(eps, noise):
  features = shrunk_features(300, dim=32, noise=noise, seed=11, clusters=12)
  expected_distance, _ = fr_compute_jaccard_distance(features, 30, 6)
  # No pair sits on the cut, where float32 summation order could move it either side.
  assert not np.any(np.abs(expected_distance - np.float32(eps)) < 1e-5)
  expected = DBSCAN(eps=eps, min_samples=4, metric='precomputed').fit_predict(expected_distance)
  labels, centers = pseudo_labels.cluster_features(features, k1=30, k2=6, eps=eps,
                                                   min_samples=4, rank_by='l2',
                                                   normalize_centers=False)
  np.testing.assert_array_equal(labels, renumber_by_first_appearance(expected))
  assert labels.max() >= 2 and np.any(labels == -1)  # several clusters and some outliers
  # PGM's centres: the plain member means, in label order (TS:482-494).
  for k in range(labels.max() + 1):
    np.testing.assert_allclose(centers[k], features[labels == k].astype(np.float64).mean(0),
                               atol=1e-6)


def test_duplicate_non_unit_features_break_ties_by_index():
  base = shrunk_features(60, noise=0.8, seed=5)
  order = np.random.default_rng(0).permutation(np.repeat(np.arange(60), 3))
  features = base[order]  # every row three times
  sparse = jaccard.jaccard_distance(features, k1=20, k2=6, rank_by='l2')
  expected, initial_rank = fr_compute_jaccard_distance(features, 20, 6)
  assert_sparse_equals_dense(sparse, expected)
  duplicates = np.flatnonzero((features == features[0]).all(axis=1))
  np.testing.assert_array_equal(initial_rank[duplicates[-1], :3], duplicates)


def test_nearest_neighbors_by_l2_equal_a_stable_sort():
  features = shrunk_features(101, noise=1.0, seed=7)
  features[50] = features[10]  # a tie
  features[20] *= 0.5  # far from everything by norm, close by angle to its cluster
  for block_size in (None, 16, 7):
    index, similarity = neighbors.nearest_neighbors(features, 9, block_size=block_size,
                                                    rank_by='l2')
    expected = l2_rank(features, 9)
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_allclose(similarity, np.take_along_axis(exact_similarity(features),
                                                              expected, 1), atol=1e-6)
  by_dot, _ = neighbors.nearest_neighbors(features, 9, rank_by='dot')
  assert np.any(by_dot != expected)
  with pytest.raises(ValueError, match='rank_by'):
    neighbors.nearest_neighbors(features, 9, rank_by='cosine')


def test_on_unit_features_l2_gives_the_dot_result():
  features = clustered_features(200, noise=1.0, seed=9)
  by_dot = jaccard.jaccard_distance(features, k1=30, k2=6, max_distance=0.7)
  by_l2 = jaccard.jaccard_distance(features, k1=30, k2=6, max_distance=0.7, rank_by='l2')
  np.testing.assert_array_equal(by_l2.indices, by_dot.indices)
  np.testing.assert_allclose(by_l2.data, by_dot.data, atol=1e-6)


def test_rows_are_taken_as_given_but_must_be_finite():
  features = shrunk_features(50, seed=3)
  with pytest.raises(ValueError, match='rank_by'):
    jaccard.jaccard_distance(features, rank_by='L2')
  features[4] = np.nan
  with pytest.raises(ValueError, match='not finite'):
    jaccard.jaccard_distance(features, rank_by='l2')


def test_cluster_centers_plain_or_normalised_means():
  rng = np.random.default_rng(4)
  features = rng.standard_normal((30, 8)).astype(np.float32)
  labels = rng.integers(-1, 5, 30)
  labels[:5] = np.arange(5)  # every cluster has a member
  plain = pseudo_labels.cluster_centers(features, labels, normalize=False)
  means = np.stack([features[labels == k].astype(np.float64).mean(0) for k in range(5)])
  np.testing.assert_allclose(plain, means, atol=1e-6)
  assert plain.dtype == np.float32
  normalised = pseudo_labels.cluster_centers(features, labels)
  np.testing.assert_allclose(normalised, means / np.linalg.norm(means, axis=1, keepdims=True),
                             atol=1e-6)
