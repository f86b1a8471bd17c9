"""DBSCAN on the sparse distance equals scikit-learn on the dense one; centres; edge cases."""

import numpy as np
import pytest
import scipy.sparse
from sklearn.cluster import DBSCAN

from vireid_jax import clustering
from vireid_jax.clustering import sparse_dbscan

from clustering_jaccard_test import clustered_features

FAR = 1.0  # what an unstored pair is, densified (every eps used here is below it)


def sklearn_labels(dense, eps, min_samples):
  return DBSCAN(eps=eps, min_samples=min_samples, metric='precomputed').fit_predict(dense)


def first_appearance(labels):
  """The test's own renumbering: walk the array, give each new cluster the next number."""
  mapping = {}
  out = np.full(len(labels), -1)
  for position, label in enumerate(labels):
    if label >= 0:
      out[position] = mapping.setdefault(label, len(mapping))
  return out


def densify(sparse):
  dense = np.full(sparse.shape, FAR, sparse.dtype)
  coo = sparse.tocoo()
  dense[coo.row, coo.col] = coo.data
  return dense


@pytest.mark.parametrize('eps,min_samples,noise', [(0.6, 4, 2.0), (0.3, 4, 1.2), (0.5, 2, 1.6)])
def test_equals_sklearn_on_the_jaccard_distance(eps, min_samples, noise):
  features = clustered_features(300, noise=noise, seed=11)
  distance = clustering.jaccard_distance(features, k1=30, k2=6, max_distance=eps)
  labels = clustering.dbscan(distance, eps, min_samples)
  expected = sklearn_labels(densify(distance), eps, min_samples)
  np.testing.assert_array_equal(labels, first_appearance(expected))
  assert labels.max() >= 1 and (labels == -1).any()  # several clusters and some outliers


@pytest.mark.parametrize('symmetric', [True, False])
def test_equals_sklearn_on_random_sparse_graphs(symmetric):
  rng = np.random.default_rng(2)
  for _ in range(20):
    n = 60
    dense = rng.uniform(0, 1, (n, n)).astype(np.float32)
    keep = rng.uniform(size=(n, n)) < 0.12
    if symmetric:
      dense = np.minimum(dense, dense.T)
      keep = keep | keep.T
    dense[rng.uniform(size=(n, n)) < 0.05] = np.float32(0.4)  # exactly at eps
    np.fill_diagonal(keep, rng.uniform(size=n) < 0.9)  # some points miss their own diagonal
    np.fill_diagonal(dense, 0)
    sparse = scipy.sparse.csr_matrix((dense[keep], np.nonzero(keep)), shape=(n, n))  # zeros too
    for min_samples in (2, 3, 5):
      expected = sklearn_labels(densify(sparse), 0.4, min_samples)
      np.testing.assert_array_equal(clustering.dbscan(sparse, 0.4, min_samples),
                                    first_appearance(expected))


def graph(n, edges, distance=0.1):
  """Dense and sparse forms of a graph whose edges (and diagonal) are at `distance` / 0."""
  dense = np.full((n, n), FAR, np.float32)
  np.fill_diagonal(dense, 0)
  for i, j in edges:
    dense[i, j] = dense[j, i] = distance
  near = dense < FAR
  return dense, scipy.sparse.csr_matrix((dense[near], np.nonzero(near)), shape=(n, n))


def test_ambiguous_border_point_joins_the_first_cluster_found():
  # Cores 2 (neighbours 0, 1, 3) and 4 (3, 5, 6); border point 3 touches both, and joins the
  # cluster of the lower core, found first; 0, 1, 5, 6 are border points of one cluster each.
  dense, sparse = graph(7, [(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (4, 6)])
  labels = clustering.dbscan(sparse, 0.2, min_samples=4)
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(labels, first_appearance(sklearn_labels(dense, 0.2, 4)))


def test_numbering_differs_from_sklearn_only_by_first_appearance():
  # Cores 1-4 and 5-8 form two cliques; point 0 is a border point of the second clique.
  cliques = [(i, j) for group in ((1, 2, 3, 4), (5, 6, 7, 8)) for i in group for j in group
             if i < j]
  dense, sparse = graph(9, cliques + [(0, 5)])
  expected = sklearn_labels(dense, 0.2, 4)
  np.testing.assert_array_equal(expected, [1, 0, 0, 0, 0, 1, 1, 1, 1])  # by lowest core
  np.testing.assert_array_equal(clustering.dbscan(sparse, 0.2, 4), [0, 1, 1, 1, 1, 0, 0, 0, 0])


def test_labels_are_numbered_by_first_appearance():
  np.testing.assert_array_equal(
      sparse_dbscan.renumber_by_first_appearance(np.array([5, -1, 2, 5, 0, 2, -1])),
      [0, -1, 1, 0, 2, 1, -1])


def test_cluster_centers_are_normalised_member_means():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((30, 8)).astype(np.float32)
  labels = rng.integers(-1, 4, 30)
  labels[:4] = [0, 1, 2, 3]
  centers = clustering.cluster_centers(features, labels)
  for k in range(4):
    mean = features[labels == k].mean(axis=0)
    np.testing.assert_allclose(centers[k], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
  index, kept = clustering.clustered_subset(labels)
  np.testing.assert_array_equal(index, np.flatnonzero(labels >= 0))
  np.testing.assert_array_equal(kept, labels[labels >= 0])


def test_cluster_features_finds_the_planted_clusters():
  features = clustered_features(200, clusters=5, noise=0.3, seed=4)
  labels, centers = clustering.cluster_features(features, k1=30, k2=6, eps=0.6, min_samples=4)
  assert labels.max() + 1 == len(centers) == 5
  np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1, rtol=1e-5)
  assert labels[0] == 0  # first appearance


def test_fewer_samples_than_k1_still_cluster():
  # With N <= k1 every sample is in every neighbour table; the pipeline still runs through.
  features = clustered_features(10, clusters=2, noise=0.2, seed=9)
  labels, centers = clustering.cluster_features(features, k1=30, k2=6, eps=0.6, min_samples=4)
  assert labels.shape == (10,) and len(centers) == labels.max() + 1 >= 1
  np.testing.assert_allclose(centers, clustering.cluster_centers(features, labels))


def test_single_cluster_modality():
  features = clustered_features(40, clusters=1, noise=0.5, seed=2)
  labels, centers = clustering.cluster_features(features, k1=30, k2=6, eps=0.6)
  assert centers.shape == (1, 32) and np.all(labels == 0)


def test_no_cluster_raises_with_the_modality_named():
  features = clustered_features(3, noise=0.5, seed=0)  # fewer samples than min_samples
  with pytest.raises(clustering.NoClustersError, match='3 infrared features'):
    clustering.cluster_features(features, eps=0.6, min_samples=4, modality='infrared')
