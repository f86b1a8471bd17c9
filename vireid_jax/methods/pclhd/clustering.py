"""PCLHD's joint clustering of both modalities: modality-aware Jaccard distance, joint centres.

Every stage-2 epoch the authors cluster F_all = [F_v; F_i] (the visible clustering features in
their sorted order, then the infrared ones; train_sysu.py "TS":821,829-832) with
`compute_modal_invariant_jaccard_distance(F_all, k1=40, k2=32, search_option=3)`
(clustercontrast/utils/faiss_rerank.py "FR":126-246) and DBSCAN at the dataset's eps.

That distance is the core's k-reciprocal Jaccard distance with `rank_by='l2'` (PGM's reading:
true squared-L2 neighbours of the un-renormalised features, weights from raw dot products;
vireid_jax/clustering/jaccard.py) line for line, except the local query expansion (FR:190-217
against FR:89-94): for row i, its first k2 table rows (itself included) split by modality,

  V_qe[i] = (mean of the infrared rows' V + mean of the visible rows' V) / 2

or the one mean that exists when all k2 rows are of one modality. The authors read the modality
from the path ('ir_modify' / 'rgb_modify', FR:200-203); here it is an explicit flag.

Joint centres (TS:858-888): per joint cluster, the mean of its visible members and the mean of
its infrared members, then their plain mean (equal weight whatever the counts), or the one that
exists. All clusters make M_all's rows; only clusters with both modalities ("mixed") give the
joint training sets (TS:352-380,958-981).
"""

from typing import Tuple

import numpy as np
import scipy.sparse

from vireid_jax.clustering import jaccard


def modality_balanced_weights(expansion_index: np.ndarray,
                              is_infrared: np.ndarray) -> np.ndarray:
  """The query expansion's weights of FR:190-214 (`jaccard_distance`'s `expansion_weights`).

  Args:
    expansion_index: (N, k2) int, row i's first k2 neighbours (itself first).
    is_infrared: (N,) bool modality of every row.

  Returns:
    (N, k2) float32: 1 / (2 n_IR) on infrared entries and 1 / (2 n_V) on visible ones when row
    i's entries hold both modalities, else 1 / k2 on every entry.
  """
  infrared = np.asarray(is_infrared, bool)[expansion_index]
  num_infrared = infrared.sum(axis=1, keepdims=True)
  num_visible = infrared.shape[1] - num_infrared
  both = (num_infrared > 0) & (num_visible > 0)
  share = np.where(both, 0.5, 1.0)  # each modality's mean gets half, or all when alone
  weights = np.where(infrared, share / np.maximum(num_infrared, 1),
                     share / np.maximum(num_visible, 1))
  return weights.astype(np.float32)


def joint_jaccard_distance(features: np.ndarray, is_infrared: np.ndarray, k1: int = 40,
                           k2: int = 32, *, max_distance: float = 1.0) -> scipy.sparse.csr_matrix:
  """The authors' modality-invariant Jaccard distance (FR:126-246), sparse.

  Args:
    features: (N, C) float32 clustering features of both modalities, as given (un-normalised
      flip means, as the authors cluster them).
    is_infrared: (N,) bool, True for infrared rows.
    k1: neighbours of the k-reciprocal sets (40, TS:829).
    k2: rows of the query expansion (32, TS:829).
    max_distance: keep pairs at most this far (DBSCAN needs only its eps).

  Returns:
    (N, N) float32 csr_matrix, symmetric: every pair at distance <= max_distance and < 1
    (`jaccard.jaccard_distance`'s conventions); DBSCAN on it gives the authors' joint labels.
  """
  is_infrared = np.asarray(is_infrared, bool)
  if is_infrared.shape != (len(features),):
    raise ValueError(f'is_infrared must hold one flag per feature row ({len(features)},), got '
                     f'shape {is_infrared.shape}')
  return jaccard.jaccard_distance(
      features, k1=k1, k2=k2, max_distance=max_distance, rank_by='l2',
      expansion_weights=lambda index: modality_balanced_weights(index, is_infrared))


def joint_clusters(features: np.ndarray, is_infrared: np.ndarray,
                   labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Joint centres (TS:858-888) and which joint clusters hold both modalities (TS:352-380).

  Args:
    features: (N, C) the clustering features of both modalities.
    is_infrared: (N,) bool.
    labels: (N,) int joint labels 0..K-1, -1 outliers; every cluster has a member.

  Returns:
    centers: (K, C) float32, (visible mean + infrared mean) / 2, or the one mean that exists
      (un-normalised: the memory normalises them, TS:932).
    mixed: (K,) bool, the cluster has visible and infrared members: its images form the joint
      training sets (TS:958-981).
  """
  features = np.asarray(features, np.float32)
  is_infrared = np.asarray(is_infrared, bool)
  labels = np.asarray(labels)
  if labels.shape != (len(features),) or is_infrared.shape != (len(features),):
    raise ValueError(f'labels {labels.shape} and is_infrared {is_infrared.shape} must have one '
                     f'entry per feature row ({len(features)},)')
  num_clusters = int(labels.max(initial=-1)) + 1
  member = labels >= 0
  sizes = np.bincount(labels[member], minlength=num_clusters)
  if np.any(sizes == 0):
    raise ValueError('labels must number the clusters 0..K-1 without gaps')
  means, counts = [], []
  for rows in (member & ~is_infrared, member & is_infrared):  # visible, infrared
    rows = np.flatnonzero(rows)
    count = np.bincount(labels[rows], minlength=num_clusters)
    # A (K, N) membership matrix sums the members without an (N, C) temporary.
    membership = scipy.sparse.csr_matrix(
        (np.ones(len(rows), np.float32), (labels[rows], rows)),
        shape=(num_clusters, len(features)))
    means.append(np.asarray(membership @ features, np.float32)
                 / np.maximum(count, 1).astype(np.float32)[:, None])
    counts.append(count)
  (visible, infrared), (num_visible, num_infrared) = means, counts
  mixed = (num_visible > 0) & (num_infrared > 0)
  # float32, as torch.mean(torch.stack([visible, infrared]), 0).
  both = (visible + infrared) / np.float32(2)
  centers = np.where(mixed[:, None], both, np.where((num_visible > 0)[:, None], visible,
                                                    infrared))
  return centers.astype(np.float32), mixed


def joint_training_rows(labels: np.ndarray, is_infrared: np.ndarray,
                        mixed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """The rows of the two joint training sets (TS:970-981), in the joint order.

  Args:
    labels: (N,) int joint labels, -1 outliers (they drop out).
    is_infrared: (N,) bool.
    mixed: (K,) bool from `joint_clusters`.

  Returns:
    (visible_rows, infrared_rows): int64 indices into [F_v; F_i] of the images whose joint
    cluster is mixed, in order; each trains with its joint label (not renumbered).
  """
  labels = np.asarray(labels)
  is_infrared = np.asarray(is_infrared, bool)
  mixed = np.asarray(mixed, bool)
  member = labels >= 0
  kept = np.zeros(labels.shape, bool)
  kept[member] = mixed[labels[member]]
  return np.flatnonzero(kept & ~is_infrared), np.flatnonzero(kept & is_infrared)
