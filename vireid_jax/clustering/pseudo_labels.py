"""From features to pseudo labels and cluster centres, one modality.

The reference's clustering of each modality: docs/mbccm.md, "Step 2: cluster".
"""

import numpy as np
import scipy.sparse

from vireid_jax.clustering.jaccard import jaccard_distance
from vireid_jax.clustering.sparse_dbscan import dbscan


class NoClustersError(RuntimeError):
  """DBSCAN left every sample of a modality an outlier: that modality cannot be trained."""


def cluster_centers(features: np.ndarray, labels: np.ndarray,
                    normalize: bool = True) -> np.ndarray:
  """Mean feature of each cluster, in label order (outliers, label -1, left out).

  Args:
    features: (N, D) float features.
    labels: (N,) int labels 0..K-1, -1 for outliers.
    normalize: L2-normalise each mean (MBCCM). False: the plain means, as PGM's
      `generate_cluster_features` returns them (TS:482-494); its memories normalise them.

  Returns:
    (K, D) float32 centres, row k the (normalised) mean of the members of cluster k.
  """
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if len(labels) != len(features):
    raise ValueError(f'{len(labels)} labels for {len(features)} features')
  clustered = np.flatnonzero(labels >= 0)
  num_clusters = int(labels.max(initial=-1)) + 1
  membership = scipy.sparse.csr_matrix(
      (np.ones(len(clustered), np.float32), (labels[clustered], clustered)),
      shape=(num_clusters, len(features)))
  sizes = np.bincount(labels[clustered], minlength=num_clusters)
  if np.any(sizes == 0):
    raise ValueError('labels must number the clusters 0..K-1 without gaps')
  centers = (membership @ features) / sizes[:, None]
  if not normalize:
    return centers.astype(np.float32)
  norms = np.linalg.norm(centers, axis=1, keepdims=True)
  return (centers / np.maximum(norms, 1e-12)).astype(np.float32)  # F.normalize's eps


def clustered_subset(pseudo_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The pseudo-labelled training set of the epoch: (indices (M,), labels (M,)), outliers out."""
  pseudo_labels = np.asarray(pseudo_labels)
  index = np.flatnonzero(pseudo_labels >= 0)
  return index, pseudo_labels[index]


def cluster_features(features: np.ndarray, k1: int = 30, k2: int = 6, eps: float = 0.6,
                     min_samples: int = 4, modality: str | None = None, rank_by: str = 'dot',
                     normalize_centers: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Jaccard distance + DBSCAN + centres for the features of one modality.

  Args:
    features: (N, D) float32 eval features: L2-normalised for rank_by='dot' (MBCCM), PGM's
      un-renormalised flip means for 'l2'.
    k1, k2: Jaccard distance settings (config.cluster.k1, .k2).
    eps, min_samples: DBSCAN settings (config.cluster.eps, .min_samples).
    modality: named in the error message when no cluster is found.
    rank_by: `jaccard_distance`'s neighbour ranking (config.cluster.rank_by).
    normalize_centers: `cluster_centers`'s normalize (False: PGM's plain means).

  Returns:
    pseudo_labels: (N,) int64, 0..K-1 in order of first appearance, -1 for outliers.
    centers: (K, D) float32 cluster means, L2-normalised with normalize_centers.

  Raises:
    NoClustersError: every sample is an outlier.
  """
  distance = jaccard_distance(features, k1=k1, k2=k2, max_distance=eps, rank_by=rank_by)
  pseudo_labels = dbscan(distance, eps=eps, min_samples=min_samples)
  if pseudo_labels.max(initial=-1) < 0:
    who = f'{modality} ' if modality else ''
    raise NoClustersError(
        f'DBSCAN found no cluster among the {len(features)} {who}features (eps={eps}, '
        f'min_samples={min_samples}, k1={k1}, k2={k2}): every sample is an outlier.')
  return pseudo_labels, cluster_centers(features, pseudo_labels, normalize=normalize_centers)
