"""Cluster memories: one L2-normalised centre per cluster, scored by features, updated by momentum.

The primitives every method builds its memories from (SPEC.md step 4; PGM.md "Memories"):

  memory_logits(features, table, temperature)   normalise(f) . M^T / temperature, with masks for
                                                padded rows and the reference's in-place
                                                backward (`backward_centers`)
  update_memory(table, features, labels, m)     per sample, in order: m_y <- m m_y + (1 - m) f,
                                                then m_y <- m_y / |m_y| (sequential or by rank)
  memory_capacity / pad_rows / normalize_rows   tables padded to a power of two, so the jitted
                                                step compiles once per capacity, not per cluster
                                                count; padded rows are masked out of every logit

Which tables a method keeps, which features update which table in which order, is the method's
(e.g. MBCCM's four memories: vireid_jax/methods/mbccm/memories.py).
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from vireid_jax.models import l2_normalize

ArrayLike = Union[jax.Array, np.ndarray]


def memory_capacity(num_clusters: int) -> int:
  """Rows of a memory table: a power of two (at least 16), so the jitted step recompiles only
  when the cluster count crosses one."""
  return max(16, 1 << int(np.ceil(np.log2(max(num_clusters, 1)))))


def pad_rows(centers: np.ndarray, capacity: int) -> np.ndarray:
  """(K, C) centres as a (capacity, C) float32 table, zero rows after K (masked out)."""
  padded = np.zeros((capacity, centers.shape[1]), np.float32)
  padded[:len(centers)] = centers
  return padded


def normalize_rows(centers: ArrayLike) -> jax.Array:
  """(K, C) centres as a float32 table of L2-normalised rows (all-zero padding rows stay zero)."""
  centers = jnp.asarray(centers, jnp.float32)
  if centers.ndim != 2:
    raise ValueError(f'cluster centres must be (K, C), got shape {centers.shape}')
  return l2_normalize(centers)  # padding rows (zeros) stay zeros


@jax.custom_vjp
def _scores_with_backward_centers(features, centers, backward_centers):
  return jnp.matmul(features, centers.T, precision=jax.lax.Precision.HIGHEST)


def _scores_fwd(features, centers, backward_centers):
  return _scores_with_backward_centers(features, centers, backward_centers), (centers,
                                                                               backward_centers)


def _scores_bwd(residuals, grad_scores):
  centers, backward_centers = residuals
  grad_features = jnp.matmul(grad_scores, backward_centers, precision=jax.lax.Precision.HIGHEST)
  return grad_features, jnp.zeros_like(centers), jnp.zeros_like(backward_centers)


_scores_with_backward_centers.defvjp(_scores_fwd, _scores_bwd)


def memory_logits(features: jax.Array, centers: jax.Array, temperature: float, *,
                  num_valid: Optional[ArrayLike] = None, normalize_features: bool = True,
                  backward_centers: Optional[jax.Array] = None) -> jax.Array:
  """Scores of features against a memory: normalise(f) . M^T / temperature.

  No gradient flows into the centres (the reference keeps them in a buffer); the gradient with
  respect to `features` flows through the normalisation.

  Args:
    features: (B, C) features (any float dtype; computed in float32).
    centers: (K, C) float32 memory table.
    temperature: the softmax temperature (0.05).
    num_valid: () int, real rows of a padded table; columns from here on get -inf. None = all.
    normalize_features: False scores the raw feature (the reference's X_i / X_v cross logits).
    backward_centers: (K, C) table used for the gradient with respect to the features instead
      of `centers` (forward values are unchanged). This reproduces the reference, whose
      backward pass reads a memory that earlier backward nodes already updated in place.

  Returns:
    (B, K) float32 logits.
  """
  f = features.astype(jnp.float32)
  if normalize_features:
    f = l2_normalize(f)
  centers = jax.lax.stop_gradient(centers.astype(jnp.float32))
  if backward_centers is None:
    scores = jnp.matmul(f, centers.T, precision=jax.lax.Precision.HIGHEST)
  else:
    backward_centers = jax.lax.stop_gradient(backward_centers.astype(jnp.float32))
    scores = _scores_with_backward_centers(f, centers, backward_centers)
  logits = scores / temperature
  if num_valid is not None:
    valid = jnp.arange(centers.shape[0]) < num_valid
    logits = jnp.where(valid[None, :], logits, -jnp.inf)
  return logits


def _momentum_step(rows: jax.Array, features: jax.Array, momentum: float) -> jax.Array:
  """m <- momentum * m + (1 - momentum) * f, then m / |m| (no eps, as the reference)."""
  rows = momentum * rows + (1.0 - momentum) * features
  return rows / jnp.sqrt(jnp.sum(rows * rows, axis=-1, keepdims=True))


def update_memory_sequential(centers: jax.Array, features: jax.Array, labels: jax.Array,
                             momentum: float) -> jax.Array:
  """The momentum update exactly as the reference loops: one sample at a time (lax.scan).

  What `update_memory_by_rank` is tested against, and the default on CPU: one row is read and
  written per sample (in place in the scan carry), so the cost is O(N * C) however large the
  table is.

  Args:
    centers: (K, C) float32 memory table.
    features: (N, C) features, normalised here before they are written.
    labels: (N,) int memory row of each sample; a label outside [0, K) skips the sample.
    momentum: weight of the old row (0.1).

  Returns:
    (K, C) float32 updated table.
  """
  centers = jax.lax.stop_gradient(centers.astype(jnp.float32))
  features = l2_normalize(jax.lax.stop_gradient(features), dtype=jnp.float32)
  num_rows = centers.shape[0]

  def step(table, sample):
    feature, label = sample
    row_index = jnp.clip(label, 0, num_rows - 1)
    row = jax.lax.dynamic_index_in_dim(table, row_index, keepdims=False)
    new_row = jnp.where((label >= 0) & (label < num_rows),
                        _momentum_step(row, feature, momentum), row)
    return jax.lax.dynamic_update_index_in_dim(table, new_row, row_index, 0), None

  centers, _ = jax.lax.scan(step, centers, (features, labels.astype(jnp.int32)))
  return centers


def update_memory_by_rank(centers: jax.Array, features: jax.Array, labels: jax.Array,
                          momentum: float) -> jax.Array:
  """The sequential momentum update, computed one occurrence rank at a time.

  A row's update depends only on the samples carrying its label, in batch order; rows never
  interact. So round r updates, at once, every row whose label has an r-th sample in the batch,
  with exactly the per-row arithmetic of the sequential loop. The loop runs max-occurrences
  rounds (about 12-36 for a batch of 12 clusters x 12 images) instead of N, but each round
  touches min(N, K) rows: the right trade on an accelerator, where a loop iteration costs far
  more than its few small kernels, and the wrong one on a CPU.

  Args:
    centers: (K, C) float32 memory table.
    features: (N, C) features, normalised here before they are written.
    labels: (N,) int memory row of each sample; a label outside [0, K) skips the sample.
    momentum: weight of the old row (0.1).

  Returns:
    (K, C) float32 updated table; equal to `update_memory_sequential` to float32 rounding.
  """
  centers = jax.lax.stop_gradient(centers.astype(jnp.float32))
  features = l2_normalize(jax.lax.stop_gradient(features), dtype=jnp.float32)
  num_rows, num_samples = centers.shape[0], features.shape[0]
  labels = labels.astype(jnp.int32)
  # Skipped samples get key K so they sort after every real row.
  keys = jnp.where((labels >= 0) & (labels < num_rows), labels, num_rows)
  order = jnp.argsort(keys, stable=True)  # groups by label, batch order inside each group
  sorted_keys = keys[order]
  is_first = jnp.concatenate([jnp.ones((1,), bool), sorted_keys[1:] != sorted_keys[:-1]])
  num_groups = min(num_samples, num_rows)  # distinct real labels cannot exceed either
  (group_start,) = jnp.nonzero(is_first, size=num_groups, fill_value=num_samples)
  group_label = jnp.where(group_start < num_samples,
                          sorted_keys[jnp.minimum(group_start, num_samples - 1)], num_rows)
  group_count = jnp.searchsorted(sorted_keys, group_label, side='right',
                                 method='compare_all') - group_start
  group_count = jnp.where(group_label < num_rows, group_count, 0)

  def round_(r, rows):
    sample = order[jnp.minimum(group_start + r, num_samples - 1)]
    return jnp.where((r < group_count)[:, None],
                     _momentum_step(rows, features[sample], momentum), rows)

  rows = centers[jnp.minimum(group_label, num_rows - 1)]
  rows = jax.lax.fori_loop(0, jnp.max(group_count), round_, rows)
  # Padding groups carry label K and are dropped; real labels are distinct, so no collisions.
  return centers.at[group_label].set(rows, mode='drop')


def update_memory_hard(centers: jax.Array, features: jax.Array, labels: jax.Array,
                       momentum: float) -> jax.Array:
  """PGM's hard momentum update (the reference's CM_Hard): one update per label, hardest member.

  For every label y present in the batch, x* = the member least similar to the row as it is
  before the update (lowest cosine; the first such member in batch order on ties), then
  m_y <- momentum * m_y + (1 - momentum) * x*, m_y <- m_y / |m_y| (no eps). Rows never interact,
  so this is one masked reduction per label (segment ops), no loop.

  Args:
    centers: (K, C) float32 memory table.
    features: (N, C) features, normalised here before they are compared and written.
    labels: (N,) int memory row of each sample; a label outside [0, K) skips the sample.
    momentum: weight of the old row (0.2 in PGM).

  Returns:
    (K, C) float32 updated table; rows with no sample are unchanged.
  """
  centers = jax.lax.stop_gradient(centers.astype(jnp.float32))
  features = l2_normalize(jax.lax.stop_gradient(features), dtype=jnp.float32)
  num_rows, num_samples = centers.shape[0], features.shape[0]
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_rows)
  rows = jnp.where(valid, labels, num_rows)  # segment K collects the skipped samples
  similarity = jnp.sum(features * centers[jnp.minimum(rows, num_rows - 1)], axis=-1)
  lowest = jax.ops.segment_min(similarity, rows, num_segments=num_rows + 1)
  is_hardest = similarity == lowest[rows]
  sample = jnp.where(is_hardest, jnp.arange(num_samples), num_samples)
  hardest = jax.ops.segment_min(sample, rows, num_segments=num_rows + 1)[:num_rows]
  present = hardest < num_samples
  updated = _momentum_step(centers, features[jnp.minimum(hardest, num_samples - 1)], momentum)
  return jnp.where(present[:, None], updated, centers)


def update_memory(centers: jax.Array, features: jax.Array, labels: jax.Array, momentum: float,
                  *, method: str = 'auto') -> jax.Array:
  """Momentum-updates `centers` with each (normalised feature, label), one at a time, in order.

  m_y <- momentum * m_y + (1 - momentum) * normalise(f), then m_y <- m_y / |m_y|.

  Args:
    centers: (K, C) float32 memory table.
    features: (N, C) features, normalised here before they are written.
    labels: (N,) int memory row of each sample; a label outside [0, K) skips the sample.
    momentum: weight of the old row (0.1).
    method: 'sequential' (lax.scan over samples), 'by_rank' (lax loop over occurrence ranks),
      or 'auto': sequential on CPU, by_rank on GPU/TPU. Both give the same result to float32
      rounding.

  Returns:
    (K, C) float32 updated table.
  """
  if method == 'auto':
    method = 'sequential' if jax.default_backend() == 'cpu' else 'by_rank'
  if method == 'sequential':
    return update_memory_sequential(centers, features, labels, momentum)
  if method == 'by_rank':
    return update_memory_by_rank(centers, features, labels, momentum)
  raise ValueError(f"method must be 'auto', 'sequential' or 'by_rank', got {method!r}")
