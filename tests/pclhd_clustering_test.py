"""PCLHD's joint clustering against the reference: the modality-aware Jaccard distance
(faiss_rerank.py:126-246, transcribed faiss-free in tests/pclhd_reference.py), DBSCAN's labels on
it, the joint centres (train_sysu.py:858-888) and the joint training lists (train_sysu.py:
352-380,958-981)."""

import numpy as np
import pytest
from sklearn.cluster import DBSCAN

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's clustering needs it (pip install -r "
                            'requirements-test.txt)')
import pclhd_reference  # pylint: disable=g-import-not-at-top
from clustering_jaccard_l2_test import assert_sparse_equals_dense  # pylint: disable=g-import-not-at-top

from vireid_jax.clustering import jaccard  # pylint: disable=g-import-not-at-top
from vireid_jax.clustering import neighbors  # pylint: disable=g-import-not-at-top
from vireid_jax.clustering.sparse_dbscan import dbscan  # pylint: disable=g-import-not-at-top
from vireid_jax.clustering.sparse_dbscan import renumber_by_first_appearance  # pylint: disable=g-import-not-at-top
from vireid_jax.methods.pclhd import clustering  # pylint: disable=g-import-not-at-top


def joint_features(seed=0, dim=32, ids=14, visible=400, infrared=300, noise=0.8,
                   gap=(0.5, 1.5)):
  """[visible; infrared] rows in identity blobs, each identity's two modalities apart by a gap
  of its own (so some rows' 32 nearest neighbours are all of one modality, others mixed); two
  identities visible-only and two infrared-only; norms in [0.9, 1] as the authors' flip means."""
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((ids, dim))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  shift = rng.standard_normal((ids, dim))
  shift *= rng.uniform(*gap, (ids, 1)) / np.linalg.norm(shift, axis=1, keepdims=True)
  visible_ids = np.arange(ids - 2)
  infrared_ids = np.concatenate([np.arange(ids - 4), np.arange(ids - 2, ids)])
  y_visible, y_infrared = rng.choice(visible_ids, visible), rng.choice(infrared_ids, infrared)
  f_visible = (centers[y_visible] + shift[y_visible] / 2
               + noise * rng.standard_normal((visible, dim)) / np.sqrt(dim))
  f_infrared = (centers[y_infrared] - shift[y_infrared] / 2
                + noise * rng.standard_normal((infrared, dim)) / np.sqrt(dim))
  features = np.concatenate([f_visible, f_infrared])
  features /= np.linalg.norm(features, axis=1, keepdims=True)
  features *= rng.uniform(0.9, 1.0, (len(features), 1))
  is_infrared = np.concatenate([np.zeros(visible, bool), np.ones(infrared, bool)])
  return features.astype(np.float32), is_infrared


@pytest.fixture(scope='module')
def joint():
  """The features and the reference's dense distance (computed once: ~10 s of Python loops)."""
  features, is_infrared = joint_features()
  expected = pclhd_reference.compute_modal_invariant_jaccard_distance(
      torch.from_numpy(features), pclhd_reference.file_list(is_infrared), k1=40, k2=32)
  return features, is_infrared, expected


def test_joint_distance_equals_the_reference(joint):
  features, is_infrared, expected = joint
  got = clustering.joint_jaccard_distance(features, is_infrared)
  assert got.dtype == np.float32 and got.shape == (700, 700)
  assert_sparse_equals_dense(got, expected)
  # The case exercises both branches of the query expansion: rows whose 32 neighbours are all
  # of one modality (one mean) and rows with both (two means, averaged).
  table, _ = neighbors.nearest_neighbors(features, 40, rank_by='l2')
  infrared_neighbours = is_infrared[table[:, :32]].sum(axis=1)
  single = (infrared_neighbours == 0) | (infrared_neighbours == 32)
  assert 50 < np.sum(single) < 650
  # ... and it is not the plain mean of compute_jaccard_distance.
  plain = jaccard.jaccard_distance(features, k1=40, k2=32, rank_by='l2').toarray()
  assert np.abs(plain - got.toarray()).max() > 1e-2
  # max_distance keeps exactly the pairs DBSCAN needs.
  assert_sparse_equals_dense(clustering.joint_jaccard_distance(features, is_infrared,
                                                               max_distance=0.3), expected, 0.3)


@pytest.mark.parametrize('eps', [0.6, 0.3])  # SYSU-MM01's, RegDB's
def test_dbscan_labels_centres_and_training_lists_equal_the_reference(joint, eps):
  features, is_infrared, expected = joint
  # No pair sits on the cut, where float32 summation order could move it either side.
  assert not np.any(np.abs(expected - np.float32(eps)) < 1e-5)
  reference_labels = DBSCAN(eps=eps, min_samples=4, metric='precomputed').fit_predict(expected)
  labels = dbscan(clustering.joint_jaccard_distance(features, is_infrared, max_distance=eps),
                  eps=eps, min_samples=4)
  np.testing.assert_array_equal(labels, renumber_by_first_appearance(reference_labels))
  num_clusters = reference_labels.max() + 1
  assert num_clusters >= 8 and np.any(reference_labels == -1)

  # Centres of the reference's labels: visible mean and infrared mean, averaged, or the one.
  file = pclhd_reference.file_list(is_infrared)
  want = pclhd_reference.generate_modal_invariant_cluster_features(
      reference_labels, num_clusters, torch.from_numpy(features), file).numpy()
  centers, mixed = clustering.joint_clusters(features, is_infrared, reference_labels)
  assert centers.dtype == np.float32 and centers.shape == (num_clusters, 32)
  np.testing.assert_allclose(centers, want, rtol=1e-5, atol=1e-6)
  # Both kinds of clusters occur; a mixed centre is not the mean of all its members.
  assert 0 < mixed.sum() < num_clusters
  k = np.flatnonzero(mixed)[0]
  assert np.abs(centers[k] - features[reference_labels == k].mean(0)).max() > 1e-3

  # The joint training lists: images (in the joint order) of the mixed clusters only.
  ir_list, rgb_list = pclhd_reference.joint_training_lists(reference_labels, file)
  visible_rows, infrared_rows = clustering.joint_training_rows(reference_labels, is_infrared,
                                                               mixed)
  for rows, listed in ((visible_rows, rgb_list), (infrared_rows, ir_list)):
    np.testing.assert_array_equal([file[r][0] for r in rows], [name for name, _, _ in listed])
    np.testing.assert_array_equal(reference_labels[rows], [label for _, label, _ in listed])
  # Its mixed flags, as associated_analysis_for_all gives them.
  flag_ir, flag_rgb = pclhd_reference.associated_analysis_for_all(
      reference_labels, [l for l in reference_labels if l >= 0],
      [file[i][0] for i in np.flatnonzero(reference_labels >= 0)], None)
  np.testing.assert_array_equal(
      mixed, [flag_ir[c] == 1 and flag_rgb[c] == 1 for c in range(num_clusters)])


def test_query_expansion_weights():
  index = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1]])
  is_infrared = np.array([False, False, True, True])
  weights = clustering.modality_balanced_weights(index, is_infrared)
  np.testing.assert_allclose(weights, np.full((3, 4), 0.25))  # 2 + 2: half of a half each
  weights = clustering.modality_balanced_weights(index, np.array([False, True, True, True]))
  np.testing.assert_allclose(weights[0], [0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3])
  weights = clustering.modality_balanced_weights(index[:, :2], np.array([True, True, False,
                                                                         False]))
  np.testing.assert_allclose(weights[:2], 0.5)  # one modality: the plain mean
  np.testing.assert_allclose(weights[2], 0.5)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_bad_inputs():
  features, is_infrared = joint_features(visible=20, infrared=20, ids=4)
  with pytest.raises(ValueError, match='is_infrared'):
    clustering.joint_jaccard_distance(features, is_infrared[:-1])
  labels = np.zeros(40, int)
  labels[5] = 2  # cluster 1 has no member
  with pytest.raises(ValueError, match='without gaps'):
    clustering.joint_clusters(features, is_infrared, labels)
