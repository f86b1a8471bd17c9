"""Exact k-nearest-neighbour search by blocked matrix products (the floor of the Jaccard cost).

The reference searches a faiss `IndexFlatL2` for k1 neighbours, i.e. ranks by the squared
distance |x - y|^2 = |x|^2 + |y|^2 - 2 x.y. Two rankings, both exact:
  'dot': by the dot product x.y, the same ranking when every row has unit norm (MBCCM's
    features), and what MBCCM's path has always used;
  'l2': by the squared distance itself, for rows of any norm (PGM's flip-averaged features,
    norms below 1: docs/pgm.md, quirk 6). |x|^2 is the same along a query row, so the row is
    ranked by 2 x.y - |y|^2, largest first.
Each block of queries is one jitted `matmul + lax.top_k` on the default JAX backend: the
accelerator when there is one, the CPU otherwise (measured faster on CPU than numpy's BLAS +
argpartition, because XLA's top-k is cheaper than a full-row partition). Nothing of size N x N
is ever held.

Ties (duplicate features) are broken by the lower index first, as `lax.top_k` documents; the
reference's faiss heap leaves that order unspecified.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Query rows per block: a (block, N) float32 similarity slab of about this many bytes.
_CPU_SLAB_BYTES = 64 << 20
_ACCELERATOR_SLAB_BYTES = 1 << 30


RANKINGS = ('dot', 'l2')


@functools.partial(jax.jit, static_argnames=('block', 'k', 'rank_by'))
def _top_k_block(features: jax.Array, squared_norms: jax.Array, start: jax.Array, block: int,
                 k: int, rank_by: str):
  """Rows start..start+block of (N, D) features -> (block, k) dot products and int32 indices.

  squared_norms: (N,) |y|^2 of every row, used by rank_by='l2' only.
  """
  queries = jax.lax.dynamic_slice_in_dim(features, start, block)
  # HIGHEST: full float32 products (a GPU would otherwise use TF32 and reorder near-ties).
  similarities = jnp.matmul(queries, features.T, precision=jax.lax.Precision.HIGHEST)
  if rank_by == 'dot':
    return jax.lax.top_k(similarities, k)
  _, index = jax.lax.top_k(2 * similarities - squared_norms[None, :], k)
  return jnp.take_along_axis(similarities, index, axis=1), index


def default_block_size(num_features: int) -> int:
  """Query rows per block: a power of two whose similarity slab fits the backend's budget."""
  on_cpu = jax.default_backend() == 'cpu'
  budget = _CPU_SLAB_BYTES if on_cpu else _ACCELERATOR_SLAB_BYTES
  rows = max(1, budget // (4 * max(num_features, 1)))
  return int(min(max(64, 1 << (rows.bit_length() - 1)), 8192))


def nearest_neighbors(features: np.ndarray, k: int, block_size: int | None = None,
                      rank_by: str = 'dot') -> tuple[np.ndarray, np.ndarray]:
  """The k nearest rows of every row (itself included), exactly.

  Args:
    features: (N, D) float32; L2-normalised rows for rank_by='dot', any rows for 'l2'.
    k: neighbours per row, 1 <= k <= N.
    block_size: query rows per jitted block; None picks one for the backend.
    rank_by: 'dot' (largest x_i . x_j first) or 'l2' (smallest |x_i - x_j|^2 first, the
      reference's faiss IndexFlatL2 order on rows of any norm).

  Returns:
    indices: (N, k) int32, nearest first, ties by lower index.
    similarities: (N, k) float32, the matching dot products x_i . x_j (whatever the ranking).
  """
  if rank_by not in RANKINGS:
    raise ValueError(f'rank_by must be one of {RANKINGS}, got {rank_by!r}')
  features = np.ascontiguousarray(features, dtype=np.float32)
  n = len(features)
  if not 1 <= k <= n:
    raise ValueError(f'k must be in [1, {n}] for {n} features, got {k}')
  block = min(block_size or default_block_size(n), n)
  device_features = jax.device_put(features)  # one copy (jnp.asarray measured two on CPU)
  # |y|^2 computed once per row, so duplicate rows get identical scores (ties stay exact).
  squared_norms = _squared_norms(device_features)
  indices = np.empty((n, k), np.int32)
  similarities = np.empty((n, k), np.float32)
  pending = None  # copy block t back while block t + 1 runs
  for start in range(0, n, block):
    # The last block is shifted back to end at row n, so every block has one compiled shape.
    first = min(start, n - block)
    result = _top_k_block(device_features, squared_norms, first, block=block, k=k,
                          rank_by=rank_by)
    if pending is not None:
      _store(pending, indices, similarities)
    pending = (start, first, result)
  _store(pending, indices, similarities)
  return indices, similarities


@jax.jit
def _squared_norms(features: jax.Array) -> jax.Array:
  return jnp.sum(features * features, axis=1)


def _store(pending, indices: np.ndarray, similarities: np.ndarray) -> None:
  start, first, (block_similarities, block_indices) = pending
  block_similarities = np.asarray(block_similarities)
  stop = min(first + len(block_similarities), len(indices))
  similarities[start:stop] = block_similarities[start - first:]
  indices[start:stop] = np.asarray(block_indices)[start - first:]
