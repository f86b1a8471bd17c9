"""DBSCAN on a sparse precomputed distance: scikit-learn's, numbered by first appearance.

DBSCAN only ever asks which pairs lie within eps, so a matrix holding every pair at distance
<= max_distance (>= eps) gives exactly the neighbourhoods of the dense N x N matrix.
scikit-learn reads such a matrix directly (`metric='precomputed'`: stored entries are the only
neighbours, a stored zero included), as the reference does on the dense one; at N = 22,000 it
costs under a second per modality (benchmarks/README.md), against tens of seconds per epoch.
"""

import numpy as np
import scipy.sparse
from sklearn.cluster import DBSCAN
from sklearn.neighbors import sort_graph_by_row_values


def renumber_by_first_appearance(labels: np.ndarray) -> np.ndarray:
  """Labels 0..K-1 in the order each cluster first appears in the array; -1 stays -1."""
  labels = np.asarray(labels)
  clustered = labels >= 0
  _, first, inverse = np.unique(labels[clustered], return_index=True, return_inverse=True)
  rank = np.empty(len(first), np.int64)
  rank[np.argsort(first)] = np.arange(len(first))
  renumbered = np.full(len(labels), -1, np.int64)
  renumbered[clustered] = rank[inverse]
  return renumbered


def _store_missing_diagonal(dist: scipy.sparse.csr_matrix, far: float) -> scipy.sparse.csr_matrix:
  """Stores `far` (> eps) on the diagonal where nothing is stored.

  scikit-learn makes every point its own neighbour on a sparse matrix (it stores the diagonal
  it reads, an unstored one as 0), where the dense matrix counts a point only when its own
  distance is within eps; an explicit far diagonal keeps the dense meaning.
  """
  coo = dist.tocoo()
  has_diagonal = np.zeros(dist.shape[0], bool)
  has_diagonal[coo.row[coo.row == coo.col]] = True
  missing = np.flatnonzero(~has_diagonal)
  if not len(missing):
    return dist
  # Through COO, not `dist + diagonal`: sparse addition would drop the stored zero distances.
  return scipy.sparse.csr_matrix(
      (np.concatenate([coo.data, np.full(len(missing), far, dist.dtype)]),
       (np.concatenate([coo.row, missing]), np.concatenate([coo.col, missing]))),
      shape=dist.shape)


def dbscan(dist: scipy.sparse.spmatrix, eps: float, min_samples: int = 4) -> np.ndarray:
  """DBSCAN with a precomputed sparse distance.

  Args:
    dist: (N, N) sparse distances, e.g. `jaccard_distance(..., max_distance >= eps)`. Stored
      entries (zeros included) are distances; a missing entry is farther than eps. A point is
      its own neighbour only through a stored diagonal, as on the dense matrix.
    eps: neighbourhood radius: two points at distance <= eps are neighbours (compared in the
      matrix's dtype, as scikit-learn does on the dense array).
    min_samples: neighbours (the point itself included) that make a core point.

  Returns:
    (N,) int64 labels 0..K-1 numbered in order of first appearance, -1 for outliers: the
    partition of `sklearn.cluster.DBSCAN(eps, min_samples=min_samples,
    metric='precomputed').fit_predict(dense)`, renumbered (scikit-learn numbers clusters by
    their lowest core point; the two numberings differ only when a border point precedes it).
  """
  dist = scipy.sparse.csr_matrix(dist)
  n = dist.shape[0]
  if dist.shape != (n, n):
    raise ValueError(f'dist must be square, got shape {dist.shape}')
  if min_samples < 1:
    raise ValueError(f'min_samples must be >= 1, got {min_samples}')
  if n == 0:
    return np.zeros(0, np.int64)
  if not np.issubdtype(dist.dtype, np.floating):
    dist = dist.astype(np.float64)
  # Duplicate entries add up, as on the dense matrix; copies, so the caller's matrix is kept.
  dist = dist.copy()
  dist.sum_duplicates()
  # eps is compared in the matrix's dtype: for a float32 matrix the Python float is cast to
  # float32, as on the dense array.
  threshold = float(np.asarray(eps).astype(dist.dtype))
  dist = _store_missing_diagonal(dist, far=2 * abs(threshold) + 1)
  # scikit-learn wants each row's entries in increasing distance (it warns and sorts otherwise).
  dist = sort_graph_by_row_values(dist, copy=False, warn_when_not_sorted=False)
  labels = DBSCAN(eps=threshold, min_samples=min_samples, metric='precomputed').fit_predict(dist)
  return renumber_by_first_appearance(labels)
