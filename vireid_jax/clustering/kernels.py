"""Compiled loops of the Jaccard distance (numba; cached on disk after the first call).

These loops do not vectorise in numpy without materialising far more than they touch: the
k-reciprocal expansion of each row (small set operations against stamp arrays), the min-sum
over the inverted index (a scatter-add into one dense accumulator row per thread), and the
sparse bookkeeping around it (the inverted index with each entry's position, gathering the
written pairs, mirroring the upper triangle into a symmetric CSR). Rows hold a few dozen to a
few hundred entries.
"""

import numba
import numpy as np


@numba.njit(cache=True, fastmath=True)
def _dot(a, b):
  total = np.float32(0.0)
  for d in range(a.shape[0]):
    total += a[d] * b[d]
  return total


@numba.njit(cache=True)
def expanded_weights(features, neighbor_index, neighbor_similarities, reciprocal,
                     half_reciprocal):
  """Rows of V: softmax(-(2 - 2 x_i.x_j)) over the expanded k-reciprocal set of each i.

  Args:
    features: (N, D) float32, as the weights take them (unit rows for MBCCM; PGM's are not).
    neighbor_index: (N, k) int32 neighbour table, nearest first.
    neighbor_similarities: (N, k) float32, x_i . x_j for the table entries.
    reciprocal: (N, k) bool, j = table[i, c] is in R(i) (i is in j's table row too).
    half_reciprocal: (N, h) bool, the same for the first h columns (the k1/2 sets).

  Returns:
    CSR arrays of V (N x N): indptr (N + 1,) int64, indices int32 sorted per row, data float32.
  """
  n, k = neighbor_index.shape
  h = half_reciprocal.shape[1]
  in_set = np.full(n, -1, np.int64)  # in_set[j] == i: j is in R(i)
  in_expansion = np.full(n, -1, np.int64)  # in_expansion[j] == i: j is already in E(i)
  table_row = np.full(n, -1, np.int64)  # table_row[j] == i: j sits in i's table at table_col[j]
  table_col = np.zeros(n, np.int64)
  members = np.empty(k * (h + 1), np.int32)
  indptr = np.zeros(n + 1, np.int64)
  capacity = max(16, 2 * n * k)
  indices = np.empty(capacity, np.int32)
  data = np.empty(capacity, np.float32)
  size = 0
  for i in range(n):
    count = 0
    for c in range(k):
      j = neighbor_index[i, c]
      table_row[j] = i
      table_col[j] = c
      if reciprocal[i, c]:
        in_set[j] = i
        in_expansion[j] = i
        members[count] = j
        count += 1
    # Add the k1/2 set of a candidate when more than 2/3 of it lies in R(i).
    for c in range(k):
      if not reciprocal[i, c]:
        continue
      candidate = neighbor_index[i, c]
      half_size = 0
      overlap = 0
      for t in range(h):
        if half_reciprocal[candidate, t]:
          half_size += 1
          if in_set[neighbor_index[candidate, t]] == i:
            overlap += 1
      if overlap > 2.0 / 3.0 * half_size:  # the reference's float comparison
        for t in range(h):
          if half_reciprocal[candidate, t]:
            j = neighbor_index[candidate, t]
            if in_expansion[j] != i:
              in_expansion[j] = i
              members[count] = j
              count += 1
    expansion = np.sort(members[:count])
    if size + count > capacity:
      capacity = max(2 * capacity, size + count)
      grown_indices = np.empty(capacity, np.int32)
      grown_indices[:size] = indices[:size]
      indices = grown_indices
      grown_data = np.empty(capacity, np.float32)
      grown_data[:size] = data[:size]
      data = grown_data
    # softmax(-(2 - 2 s)) = softmax(2 s); shift by the largest logit for stability.
    largest = -np.inf
    for t in range(count):
      j = expansion[t]
      if table_row[j] == i:
        similarity = neighbor_similarities[i, table_col[j]]
      else:  # a member of a neighbour's k1/2 set outside i's own table
        similarity = _dot(features[i], features[j])
      data[size + t] = 2.0 * similarity
      indices[size + t] = j
      largest = max(largest, data[size + t])
    total = 0.0
    for t in range(count):
      weight = np.exp(data[size + t] - largest)
      data[size + t] = weight
      total += weight
    for t in range(count):
      data[size + t] = data[size + t] / total
    size += count
    indptr[i + 1] = size
  return indptr, indices[:size], data[:size]


@numba.njit(cache=True)
def inverted_index(indptr, indices, data):
  """CSC form (columns sorted by row) of an N x N CSR, and where each CSR entry landed in it.

  Returns col_indptr (N + 1,), col_rows int32, col_data float32, and position (nnz,) int64:
  CSR entry p = (i, c) is col_rows[position[p]] = i, so column c's rows j >= i start there.
  """
  n = len(indptr) - 1
  col_indptr = np.zeros(n + 1, np.int64)
  for p in range(len(indices)):
    col_indptr[indices[p] + 1] += 1
  for c in range(n):
    col_indptr[c + 1] += col_indptr[c]
  fill = col_indptr[:n].copy()
  col_rows = np.empty(len(indices), np.int32)
  col_data = np.empty(len(indices), np.float32)
  position = np.empty(len(indices), np.int64)
  for i in range(n):  # rows in order, so every column comes out sorted by row
    for p in range(indptr[i], indptr[i + 1]):
      q = fill[indices[p]]
      fill[indices[p]] += 1
      col_rows[q] = i
      col_data[q] = data[p]
      position[p] = q
  return col_indptr, col_rows, col_data, position


@numba.njit(cache=True)
def upper_candidate_counts(indptr, indices, col_indptr, position):
  """For each row i: an upper bound on the j >= i sharing a column with it (<= N - i)."""
  n = len(indptr) - 1
  counts = np.zeros(n, np.int64)
  for i in range(n):
    total = 0
    for p in range(indptr[i], indptr[i + 1]):
      total += col_indptr[indices[p] + 1] - position[p]
    counts[i] = min(total, n - i)
  return counts


@numba.njit(cache=True, parallel=True)
def min_sum_upper(first_row, slot_offsets, indptr, indices, data, col_indptr, col_rows,
                  col_data, position, max_distance, out_cols, out_values, lanes):
  """Jaccard distances of rows first_row.. against j >= i, within max_distance.

  Row first_row + r writes its pairs to out_*[slot_offsets[r]:], sorted by j, and the
  function returns how many each row wrote. `lanes` parallel workers (numba threads) take
  interleaved rows, each with its own dense accumulator row. The distance is 1 - m / (2 - m),
  m the sum over shared columns c of min(V[i, c], V[j, c]), clipped at 0 (the reference's
  order of operations, in float32); pairs with no shared column are at exactly 1 and never
  written.
  """
  n = len(indptr) - 1
  rows = len(slot_offsets) - 1
  written = np.zeros(rows, np.int64)
  lanes = max(1, min(lanes, rows))
  one = np.float32(1.0)
  two = np.float32(2.0)
  # d <= max_distance  <=>  m >= 2 (1 - max_distance) / (2 - max_distance); the bound, less a
  # margin for rounding, only skips pairs that the exact float32 test below would reject.
  # (Kept in float32: a float64 comparison in the scan measured 3x slower.)
  least_overlap = np.float32(2.0 * (1.0 - max_distance) / (2.0 - max_distance) - 1e-4)
  for lane in numba.prange(lanes):
    accumulator = np.zeros(n, np.float32)
    for r in range(lane, rows, lanes):  # interleaved: early rows have longer upper parts
      i = first_row + r
      for p in range(indptr[i], indptr[i + 1]):
        a = data[p]
        for q in range(position[p], col_indptr[indices[p] + 1]):  # rows j >= i of column c
          b = col_data[q]
          accumulator[col_rows[q]] += a if a < b else b
      # A sequential scan of j >= i is cheaper than tracking which j were touched.
      out = slot_offsets[r]
      for j in range(i, n):
        m = accumulator[j]
        if m >= least_overlap:  # rarely true within eps: a predictable branch
          if m > 0.0:
            distance = max(one - m / (two - m), np.float32(0.0))
            if distance <= max_distance:
              out_cols[out] = j
              out_values[out] = distance
              out += 1
      accumulator[i:] = 0.0
      written[r] = out - slot_offsets[r]
  return written


@numba.njit(cache=True)
def compact_slots(slot_offsets, written, out_cols, out_values):
  """Concatenate the written prefixes of the row slots: (cols int32, values float32)."""
  total = 0
  for r in range(len(written)):
    total += written[r]
  cols = np.empty(total, np.int32)
  values = np.empty(total, np.float32)
  out = 0
  for r in range(len(written)):
    for t in range(slot_offsets[r], slot_offsets[r] + written[r]):
      cols[out] = out_cols[t]
      values[out] = out_values[t]
      out += 1
  return cols, values


@numba.njit(cache=True)
def mirror_upper(n, upper_indptr, upper_indices, upper_data):
  """A symmetric CSR (sorted rows) from its upper triangle, diagonal included."""
  lower_counts = np.zeros(n, np.int64)
  for i in range(n):
    for p in range(upper_indptr[i], upper_indptr[i + 1]):
      j = upper_indices[p]
      if j != i:
        lower_counts[j] += 1
  indptr = np.zeros(n + 1, np.int64)
  for i in range(n):
    indptr[i + 1] = indptr[i] + lower_counts[i] + upper_indptr[i + 1] - upper_indptr[i]
  indices = np.empty(indptr[n], np.int32)
  data = np.empty(indptr[n], np.float32)
  fill = indptr[:n].copy()
  for i in range(n):  # row j's lower part is column j of the upper part, met in order of i
    for p in range(upper_indptr[i], upper_indptr[i + 1]):
      j = upper_indices[p]
      if j != i:
        indices[fill[j]] = i
        data[fill[j]] = upper_data[p]
        fill[j] += 1
  for i in range(n):
    for p in range(upper_indptr[i], upper_indptr[i + 1]):
      indices[fill[i]] = upper_indices[p]
      data[fill[i]] = upper_data[p]
      fill[i] += 1
  return indptr, indices, data
