"""Exact k-reciprocal Jaccard distance (Zhong et al., CVPR 2017) as a sparse matrix.

The same numbers as the reference's `compute_jaccard_distance` (docs/mbccm.md, "Step 2:
cluster"), computed without an N x N array:
  1. neighbour table R: the k1 nearest rows of each row, itself included (k1 columns, as
     the reference's faiss search returns, so its `k1 + 1` slices see k1 entries);
  2. k-reciprocal sets K(i) = {j in R(i) : i in R(j)}, and the half sets H(i) on the first
     round(k1 / 2) + 1 columns;
  3. expansion E(i) = K(i) plus every H(j), j in K(i), with |H(j) & K(i)| > 2/3 |H(j)|;
  4. V[i, E(i)] = softmax(-(2 - 2 x_i.x_j)) over E(i);
  5. local query expansion: V_qe[i] = mean of V over the first k2 table rows of i (self too),
     or another weighted sum of those rows (`expansion_weights`, e.g. PCLHD's per-modality
     means: vireid_jax/methods/pclhd/clustering.py);
  6. d(i, j) = 1 - m / (2 - m), m = sum_c min(V_qe[i, c], V_qe[j, c]), clipped at 0.
Steps 2 and 5 are numpy/scipy array algebra; 3-4 and the min-sum of 6 (over the inverted
index, upper triangle only, then mirrored) are compiled loops in `kernels.py`.

Two readings of the features (`rank_by`):
  'dot' (MBCCM): the rows are unit vectors (renormalised here if they drift, as bf16 features
    do), and R ranks by x.y, which on unit rows is the reference's L2 ranking.
  'l2' (PGM, `search_option=3`): the rows are taken as given, of any norm: R ranks by the true
    squared distance (faiss IndexFlatL2, FR:58-62) and step 4 uses their raw dot products,
    softmax(-(2 - 2 x.y)) although they are not unit vectors (FR:81-85), exactly as the
    reference does with PGM's un-renormalised flip-averaged features (docs/pgm.md, quirk 6).
"""

from typing import Callable, Optional

import numba
import numpy as np
import scipy.sparse

from vireid_jax.clustering import kernels
from vireid_jax.clustering import neighbors

# Upper-triangle candidate slots filled per parallel min-sum call (memory of one call).
_SLOTS_PER_CHUNK = 1 << 23


def half_width(k1: int) -> int:
  """Columns of the k1/2 sets: round(k1 / 2) + 1, rounding as numpy does (half to even)."""
  return int(np.around(k1 / 2)) + 1


def reciprocal_mask(neighbor_index: np.ndarray, columns: int) -> np.ndarray:
  """(N, k) int table -> (N, columns) bool: i is among the first `columns` entries of R[i, c]."""
  table = neighbor_index[:, :columns]
  n = len(table)
  mask = np.empty(table.shape, bool)
  step = max(1, (1 << 24) // (columns * columns))  # bound the (rows, columns, columns) gather
  for start in range(0, n, step):
    rows = np.arange(start, min(start + step, n))
    mask[rows] = (table[table[rows]] == rows[:, None, None]).any(axis=2)
  return mask


# (N, k2) int32 expansion index -> (N, k2) float32 weights of those rows of V (see step 5).
ExpansionWeights = Callable[[np.ndarray], np.ndarray]


def jaccard_distance(features: np.ndarray, k1: int = 30, k2: int = 6,
                     max_distance: float = 1.0, rank_by: str = 'dot',
                     expansion_weights: Optional[ExpansionWeights] = None
                     ) -> scipy.sparse.csr_matrix:
  """The k-reciprocal Jaccard distance of every pair within max_distance.

  Args:
    features: (N, D) float32. rank_by='dot': L2-normalised rows (rows that are not are
      normalised here); 'l2': used as given.
    k1: neighbours of the k-reciprocal sets (the table holds min(k1, N) columns, self included).
    k2: rows averaged by the local query expansion (self included), at most the table width.
    max_distance: keep pairs at most this far; DBSCAN needs only its eps (much sparser).
    rank_by: 'dot' (MBCCM: unit rows, neighbours by dot product) or 'l2' (PGM: rows as given,
      neighbours by true squared L2, weights from their raw dot products); see the module doc.
    expansion_weights: None = the mean of the k2 rows (the published query expansion);
      otherwise a function of the (N, k2') int32 expansion index (the first k2' = min(k2, k)
      table columns, self first) returning the (N, k2') float32 weight of each of those rows
      of V in V_qe.

  Returns:
    (N, N) float32 csr_matrix, symmetric, sorted rows. Every pair at distance <= max_distance
    and < 1 is stored explicitly, zeros included (the diagonal); a missing pair is farther than
    max_distance, or at exactly 1 (no shared neighbour).
  """
  if rank_by not in neighbors.RANKINGS:
    raise ValueError(f'rank_by must be one of {neighbors.RANKINGS}, got {rank_by!r}')
  features = _checked_features(features, unit_rows=rank_by == 'dot')
  if k1 < 1 or k2 < 1:
    raise ValueError(f'k1 and k2 must be >= 1, got k1={k1}, k2={k2}')
  k = min(k1, len(features))
  neighbor_index, neighbor_similarities = neighbors.nearest_neighbors(features, k,
                                                                      rank_by=rank_by)
  return jaccard_from_neighbors(features, neighbor_index, neighbor_similarities, k1, k2,
                                max_distance, expansion_weights=expansion_weights)


def jaccard_from_neighbors(features: np.ndarray, neighbor_index: np.ndarray,
                           neighbor_similarities: np.ndarray, k1: int, k2: int,
                           max_distance: float = 1.0,
                           expansion_weights: Optional[ExpansionWeights] = None
                           ) -> scipy.sparse.csr_matrix:
  """`jaccard_distance` from a precomputed neighbour table (steps 2-6).

  Args:
    features: (N, D) float32 whose raw dot products give the weights (unit rows for MBCCM).
    neighbor_index: (N, k) int table from `nearest_neighbors`, k = min(k1, N).
    neighbor_similarities: (N, k) float32 dot products of the table entries.
    k1, k2, max_distance, expansion_weights: as in `jaccard_distance`.
  """
  features = np.ascontiguousarray(features, dtype=np.float32)
  neighbor_index = np.ascontiguousarray(neighbor_index, dtype=np.int32)
  n, k = neighbor_index.shape
  if k != min(k1, n):
    raise ValueError(f'the neighbour table has {k} columns; k1={k1} with N={n} needs {min(k1, n)}')
  reciprocal = reciprocal_mask(neighbor_index, k)
  half_reciprocal = reciprocal_mask(neighbor_index, min(half_width(k1), k))
  indptr, indices, data = kernels.expanded_weights(
      features, neighbor_index, np.ascontiguousarray(neighbor_similarities, np.float32),
      reciprocal, half_reciprocal)
  weights = scipy.sparse.csr_matrix((data, indices, indptr), shape=(n, n))
  expansion_index = neighbor_index[:, :min(k2, k)]
  row_weights = None
  if expansion_weights is not None:
    row_weights = np.asarray(expansion_weights(expansion_index), np.float32)
    if row_weights.shape != expansion_index.shape:
      raise ValueError(f'expansion_weights returned shape {row_weights.shape}, expected '
                       f'{expansion_index.shape} (one weight per expansion row)')
  weights = _query_expansion(weights, expansion_index, row_weights)
  return _min_sum_distance(weights, max_distance)


def _checked_features(features: np.ndarray, unit_rows: bool = True) -> np.ndarray:
  """(N, D) float32 finite rows; with `unit_rows`, unit rows: renormalised if they drift (bf16
  features do by ~1e-3)."""
  features = np.ascontiguousarray(features, dtype=np.float32)
  if features.ndim != 2 or len(features) == 0:
    raise ValueError(f'features must be a non-empty (N, D) array, got shape {features.shape}')
  norms = np.sqrt(np.einsum('ij,ij->i', features, features))  # no (N, D) temporary
  bad = np.flatnonzero(~np.isfinite(norms) | ((norms == 0) & unit_rows))
  if len(bad):
    raise ValueError(f'{len(bad)} feature rows are zero or not finite (first: row {bad[0]}); '
                     'the Jaccard distance needs finite (with rank_by="dot": L2-normalised) '
                     'features')
  if not unit_rows:
    return features
  if np.max(np.abs(norms - 1)) > 1e-4:
    features = features / norms[:, None]
  return features


def _query_expansion(weights: scipy.sparse.csr_matrix, expansion_index: np.ndarray,
                     row_weights: Optional[np.ndarray] = None) -> scipy.sparse.csr_matrix:
  """V_qe = Q V, Q[i, r] = 1 / k2 (or row_weights[i, c]) for the first k2 table entries r of
  row i (entry c)."""
  n, k2 = expansion_index.shape
  data = (np.full(n * k2, 1.0 / k2, np.float32) if row_weights is None
          else row_weights.ravel())
  averaging = scipy.sparse.csr_matrix(
      (data, expansion_index.ravel(), np.arange(0, n * k2 + 1, k2)), shape=(n, n))
  expanded = (averaging @ weights).tocsr()
  expanded.sort_indices()
  return expanded


def _min_sum_distance(weights: scipy.sparse.csr_matrix,
                      max_distance: float) -> scipy.sparse.csr_matrix:
  """Step 6 over the inverted index (the CSC form of V_qe), j >= i only, then mirrored.

  Rows are cut into chunks whose candidate slots fit one buffer; each chunk is one parallel
  kernel call, and its written pairs are gathered before the next.
  """
  n = weights.shape[0]
  col_indptr, col_rows, col_data, position = kernels.inverted_index(
      weights.indptr, weights.indices, weights.data)
  args = (weights.indptr, weights.indices, weights.data, col_indptr, col_rows, col_data,
          position)
  slots = kernels.upper_candidate_counts(weights.indptr, weights.indices, col_indptr, position)
  slot_ends = np.cumsum(slots)
  capacity = max(_SLOTS_PER_CHUNK, int(slots.max(initial=0)))
  out_cols = np.empty(capacity, np.int32)
  out_values = np.empty(capacity, np.float32)
  upper_counts = np.zeros(n, np.int64)
  pieces_cols, pieces_values = [], []
  start = 0
  while start < n:
    base = slot_ends[start - 1] if start else 0
    stop = max(start + 1, int(np.searchsorted(slot_ends, base + capacity, side='right')))
    offsets = np.concatenate([[0], slot_ends[start:stop] - base]).astype(np.int64)
    written = kernels.min_sum_upper(start, offsets, *args, np.float32(max_distance), out_cols,
                                    out_values, numba.get_num_threads())
    cols, values = kernels.compact_slots(offsets, written, out_cols, out_values)
    pieces_cols.append(cols)
    pieces_values.append(values)
    upper_counts[start:stop] = written
    start = stop
  upper_indptr = np.concatenate([[0], np.cumsum(upper_counts)]).astype(np.int64)
  indptr, indices, data = kernels.mirror_upper(n, upper_indptr, np.concatenate(pieces_cols),
                                               np.concatenate(pieces_values))
  distance = scipy.sparse.csr_matrix((data, indices, indptr), shape=(n, n))
  distance.has_sorted_indices = True
  return distance
