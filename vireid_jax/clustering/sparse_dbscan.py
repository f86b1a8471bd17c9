"""DBSCAN on a sparse precomputed distance, the same partition as scikit-learn on the dense one.

DBSCAN only ever asks which pairs lie within eps, so a matrix holding every pair at distance
<= max_distance (>= eps) gives exactly the neighbourhoods of the dense N x N matrix. The search
below is scikit-learn's `dbscan_inner` (core points in index order, each growing its cluster
depth-first; a border point joins the first cluster that reaches it), so ambiguous border
points land where scikit-learn puts them.
"""

import numba
import numpy as np
import scipy.sparse


@numba.njit(cache=True)
def _eps_neighbourhoods(indptr, indices, data, eps):
  """CSR of the stored pairs at distance <= eps (eps in the matrix's dtype)."""
  n = len(indptr) - 1
  within_indptr = np.zeros(n + 1, np.int64)
  for i in range(n):
    count = 0
    for p in range(indptr[i], indptr[i + 1]):
      if data[p] <= eps:
        count += 1
    within_indptr[i + 1] = within_indptr[i] + count
  within = np.empty(within_indptr[n], np.int64)
  for i in range(n):
    out = within_indptr[i]
    for p in range(indptr[i], indptr[i + 1]):
      if data[p] <= eps:
        within[out] = indices[p]
        out += 1
  return within_indptr, within


@numba.njit(cache=True)
def _grow_clusters(indptr, indices, min_samples):
  """scikit-learn's dbscan_inner on CSR neighbourhoods: labels in order of discovery."""
  n = len(indptr) - 1
  labels = np.full(n, -1, np.int64)
  stack = np.empty(max(16, n), np.int64)
  num_clusters = 0
  for seed in range(n):
    if labels[seed] != -1 or indptr[seed + 1] - indptr[seed] < min_samples:
      continue
    top = 0
    i = seed
    while True:
      if labels[i] == -1:
        labels[i] = num_clusters
        if indptr[i + 1] - indptr[i] >= min_samples:  # a core point spreads the cluster
          for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            if labels[j] == -1:
              if top == len(stack):
                grown = np.empty(2 * len(stack), np.int64)
                grown[:top] = stack[:top]
                stack = grown
              stack[top] = j
              top += 1
      if top == 0:
        break
      top -= 1
      i = stack[top]
    num_clusters += 1
  return labels


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
    (N,) int64 labels 0..K-1 numbered in order of first appearance, -1 for outliers; the same
    partition as `sklearn.cluster.DBSCAN(eps, min_samples=min_samples,
    metric='precomputed').fit_predict(dense)` (which numbers clusters by their lowest core
    point instead; the two numberings differ only when a border point precedes that core).
  """
  dist = scipy.sparse.csr_matrix(dist)
  n = dist.shape[0]
  if dist.shape != (n, n):
    raise ValueError(f'dist must be square, got shape {dist.shape}')
  if min_samples < 1:
    raise ValueError(f'min_samples must be >= 1, got {min_samples}')
  if not np.issubdtype(dist.dtype, np.floating):
    dist = dist.astype(np.float64)
  if not dist.has_canonical_format:  # duplicate entries add up, as on the dense matrix
    dist = dist.copy()
    dist.sum_duplicates()
  # Compared in the matrix's dtype: for a float32 matrix numpy casts a Python eps to float32,
  # and so does scikit-learn's `d <= radius` on the dense array.
  threshold = np.asarray(eps).astype(dist.dtype)[()]
  indptr, neighbours = _eps_neighbourhoods(dist.indptr.astype(np.int64), dist.indices,
                                           dist.data, threshold)
  return renumber_by_first_appearance(_grow_clusters(indptr, neighbours, min_samples))
