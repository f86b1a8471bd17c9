"""The sparse Jaccard distance equals a plain dense implementation of the published algorithm."""

import numpy as np
import pytest

from vireid_jax.clustering import jaccard
from vireid_jax.clustering import neighbors


def clustered_features(n, dim=32, clusters=None, noise=0.6, seed=0):
  """(n, dim) float32 unit rows drawn around `clusters` random directions."""
  rng = np.random.default_rng(seed)
  clusters = clusters or max(1, n // 20)
  centers = rng.standard_normal((clusters, dim))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  x = centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)) / np.sqrt(dim)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(np.float32)


def exact_similarity(features):
  """(N, N) float64 dot products whose ties are exact by construction.

  BLAS (`f @ f.T`) may give two identical columns of one row different values, depending on
  the kernel and on where the column sits; then the reference's neighbour order among
  duplicated features depends on the machine. Here every entry is the same sequence of
  elementwise float64 products and additions, so identical features give identical values.
  """
  features = np.asarray(features, np.float64)
  similarity = np.zeros((len(features), len(features)))
  for d in range(features.shape[1]):
    similarity += features[:, None, d] * features[None, :, d]
  return similarity


def dense_jaccard(features, k1, k2):
  """The reference algorithm, row by row on dense N x N arrays, its conventions kept.

  Neighbour table: min(k1, N) columns (self included) of a stable sort on -x.y, ties to the
  lower index; the published `k1 + 1` slices therefore see k1 entries and the k1/2 sets
  round(k1/2) + 1. Returns the distance, V_qe, and (table, expansion sets) for coverage checks.
  """
  n = len(features)
  similarity = exact_similarity(features)
  table = np.argsort(-similarity, axis=1, kind='stable')[:, :min(k1, n)]

  def reciprocal(i, width):
    forward = table[i, :width]
    backward = table[forward, :width]
    return forward[np.where(backward == i)[0]]

  half = int(np.around(k1 / 2))
  sets = [reciprocal(i, k1 + 1) for i in range(n)]
  half_sets = [reciprocal(i, half + 1) for i in range(n)]
  v = np.zeros((n, n), np.float64)
  expansions = []
  for i in range(n):
    expansion = sets[i]
    for candidate in sets[i]:
      candidate_set = half_sets[candidate]
      if len(np.intersect1d(candidate_set, sets[i])) > 2 / 3 * len(candidate_set):
        expansion = np.append(expansion, candidate_set)
    expansion = np.unique(expansion)
    expansions.append(expansion)
    if len(expansion):
      logits = -(2 - 2 * features[i].astype(np.float64) @ features[expansion].T.astype(np.float64))
      weights = np.exp(logits - logits.max())
      v[i, expansion] = weights / weights.sum()
  v = np.stack([v[table[i, :k2]].mean(axis=0) for i in range(n)])
  distance = np.zeros((n, n))
  for i in range(n):
    overlap = np.minimum(v[i][None, :], v).sum(axis=1)
    distance[i] = 1 - overlap / (2 - overlap)
  return np.maximum(distance, 0), v, (table, sets, expansions)


def assert_matches_dense(features, k1, k2, max_distance=1.0):
  """Sparse result == dense reference: values to 1e-5, and exactly the right pairs stored."""
  sparse = jaccard.jaccard_distance(features, k1=k1, k2=k2, max_distance=max_distance)
  expected, v, details = dense_jaccard(features, k1, k2)
  assert sparse.shape == expected.shape and sparse.dtype == np.float32
  shares_column = (v > 0).astype(float) @ (v > 0).T.astype(float) > 0  # exactly the d < 1
  should_store = shares_column & (expected <= max_distance)
  coo = sparse.tocoo()
  stored = np.zeros_like(should_store)
  stored[coo.row, coo.col] = True
  near_cut = np.abs(expected - max_distance) < 1e-5  # float order may put these either side
  assert np.all((stored == should_store) | near_cut)
  np.testing.assert_allclose(coo.data, expected[coo.row, coo.col], atol=1e-5)
  assert (sparse != sparse.T).nnz == 0
  assert sparse.has_sorted_indices
  return sparse, expected, details


@pytest.mark.parametrize('n,k1,k2,noise', [(240, 30, 6, 0.6), (200, 20, 6, 1.5),
                                            (150, 25, 4, 1.0), (300, 9, 1, 2.5)])
def test_matches_dense_reference(n, k1, k2, noise):
  features = clustered_features(n, noise=noise, seed=n + k1)
  sparse, expected, (table, sets, expansions) = assert_matches_dense(features, k1, k2)
  # The case exercises the whole algorithm: some rows expand beyond their k-reciprocal set,
  # some expanded members lie outside the row's own neighbour table, many pairs are < 1.
  assert any(len(e) > len(s) for e, s in zip(expansions, sets))
  assert any(not np.isin(e, t).all() for e, t in zip(expansions, table))
  assert np.mean(expected < 1) > 0.1


@pytest.mark.parametrize('max_distance', [0.6, 0.3])
def test_max_distance_keeps_exactly_the_close_pairs(max_distance):
  features = clustered_features(260, noise=0.8, seed=3)
  sparse, expected, _ = assert_matches_dense(features, 30, 6, max_distance)
  assert sparse.nnz < np.count_nonzero(expected < 1) / 2  # far sparser than the < 1 pairs
  assert np.all(sparse.data <= np.float32(max_distance))
  coo = sparse.tocoo()
  diagonal = coo.row == coo.col
  assert diagonal.sum() == len(features)  # stored explicitly, although (about) zero
  assert np.all(coo.data[diagonal] < 1e-5)


def test_fewer_samples_than_k1_uses_every_sample_as_neighbour():
  features = clustered_features(12, clusters=2, noise=0.5, seed=1)
  sparse, expected, (table, _, _) = assert_matches_dense(features, 30, 6)
  assert table.shape == (12, 12)
  single = jaccard.jaccard_distance(features[:1], k1=30, k2=6)
  assert single.shape == (1, 1) and single.nnz == 1 and single[0, 0] == 0


def test_duplicate_features_break_ties_by_index():
  base = clustered_features(60, noise=0.8, seed=5)
  rng = np.random.default_rng(0)
  features = base[rng.permutation(np.repeat(np.arange(60), 3))]  # every row three times
  sparse, expected, (table, _, _) = assert_matches_dense(features, 20, 6)
  duplicates = np.flatnonzero((features == features[0]).all(axis=1))
  assert len(duplicates) == 3
  np.testing.assert_array_equal(table[duplicates[-1], :3], duplicates)  # lower index first
  np.testing.assert_allclose(sparse[duplicates[0]].toarray(), sparse[duplicates[1]].toarray(),
                             atol=1e-5)


def test_nearest_neighbors_equal_a_stable_sort():
  features = clustered_features(101, noise=1.0, seed=7)
  features[50] = features[10]  # a tie
  for block_size in (None, 16, 7):  # 7 and 16 leave a last partial (shifted) block
    index, similarity = neighbors.nearest_neighbors(features, 9, block_size=block_size)
    full = exact_similarity(features)
    expected = np.argsort(-full, axis=1, kind='stable')[:, :9]
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_allclose(similarity, np.take_along_axis(full, expected, 1), atol=1e-6)


def test_half_sets_round_half_to_even():
  assert jaccard.half_width(30) == 16
  assert jaccard.half_width(25) == 13  # round(12.5) = 12, as np.around in the reference
  assert jaccard.half_width(27) == 15  # round(13.5) = 14


def test_unnormalised_rows_are_normalised_and_bad_rows_rejected():
  features = clustered_features(80, noise=1.0, seed=6)
  scale = np.random.default_rng(1).uniform(0.5, 3, (80, 1)).astype(np.float32)
  scaled = jaccard.jaccard_distance(features * scale, max_distance=0.8)
  plain = jaccard.jaccard_distance(features, max_distance=0.8)
  np.testing.assert_array_equal(scaled.indices, plain.indices)
  np.testing.assert_allclose(scaled.data, plain.data, atol=1e-5)
  features[3] = 0
  with pytest.raises(ValueError, match='zero or not finite'):
    jaccard.jaccard_distance(features)
  with pytest.raises(ValueError, match='non-empty'):
    jaccard.jaccard_distance(np.zeros((0, 8), np.float32))


def test_min_sum_in_many_chunks_gives_the_same_matrix(monkeypatch):
  features = clustered_features(200, noise=1.0, seed=8)
  whole = jaccard.jaccard_distance(features, max_distance=0.7)
  monkeypatch.setattr(jaccard, '_SLOTS_PER_CHUNK', 500)  # a handful of rows per kernel call
  chunked = jaccard.jaccard_distance(features, max_distance=0.7)
  np.testing.assert_array_equal(chunked.indptr, whole.indptr)
  np.testing.assert_array_equal(chunked.indices, whole.indices)
  np.testing.assert_array_equal(chunked.data, whole.data)
