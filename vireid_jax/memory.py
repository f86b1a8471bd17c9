"""Cluster memories: one L2-normalised centre per cluster, scored by features, updated by momentum.

The primitives every method builds its memories from (docs/mbccm.md, "Step 4: memories";
docs/pgm.md, "Memories"):

  memory_logits(features, table, temperature)   normalise(f) . M^T / temperature, with masks for
                                                padded rows and the reference's in-place
                                                backward (`backward_centers`)
  update_memory(table, features, labels, m)     per sample, in order: m_y <- m m_y + (1 - m) f,
                                                then m_y <- m_y / |m_y| (sequential or by rank)
  memory_capacity / pad_rows / normalize_rows   tables padded to a power of two, so the jitted
                                                step compiles once per capacity, not per cluster
                                                count; padded rows are masked out of every logit
  slot_logits(features, table (S, K, C), t)     several slots per cluster (centre + hardest
                                                sample, sub-centres, ...): (B, S, K) logits,
                                                each slot a table of the same K clusters

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


def slot_logits(features: jax.Array, table: jax.Array, temperature: float, *,
                num_valid: Optional[ArrayLike] = None) -> jax.Array:
  """Scores of features against a memory of S slots per cluster: (B, S, K) float32.

  Slot s of cluster k is row table[s, k]; each slot is scored as `memory_logits` scores a
  table (normalised features, no gradient into the table), and columns k >= num_valid of every
  slot get -inf. A method reduces the slots as it likes: a loss per slot (a centroid slot and a
  hardest-sample slot), the best slot (`logits.max(axis=1)`), or a log-sum-exp over slots.

  Args:
    features: (B, C) features.
    table: (S, K, C) float32 memory, K padded as `pad_rows` pads (zero rows after the real
      clusters).
    temperature: the softmax temperature.
    num_valid: () int, real clusters of every slot; None = all K.
  """
  slots, clusters, channels = table.shape
  logits = memory_logits(features, table.reshape(slots * clusters, channels), temperature)
  logits = logits.reshape(features.shape[0], slots, clusters)
  if num_valid is not None:
    valid = jnp.arange(clusters) < num_valid
    logits = jnp.where(valid[None, None, :], logits, -jnp.inf)
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
                          momentum: float, max_rounds: Optional[int] = None) -> jax.Array:
  """The sequential momentum update, computed one occurrence rank at a time.

  A row's update depends only on the samples carrying its label, in batch order; rows never
  interact. So round r updates, at once, every row whose label has an r-th sample in the batch,
  with exactly the per-row arithmetic of the sequential loop; a row whose samples are used up
  keeps its value through the remaining rounds. Each round touches min(N, K) rows: the right
  trade on an accelerator, where a loop iteration costs far more than its few small kernels,
  and the wrong one on a CPU.

  The number of rounds is static, so XLA knows the loop's trip count (XLA:GPU would otherwise
  copy the loop predicate to the host every round, and the host could never run ahead of the
  device). It must cover the most samples any one label has in `labels`: `max_rounds` is that
  bound when the caller knows it (see `label_repeats`), else N, which always holds.

  Args:
    centers: (K, C) float32 memory table.
    features: (N, C) features, normalised here before they are written.
    labels: (N,) int memory row of each sample; a label outside [0, K) skips the sample.
    momentum: weight of the old row (0.1).
    max_rounds: static upper bound of the samples of one label; None = N. A label with more
      samples than this is a caller's bug: its row becomes NaN (so the next loss is NaN and
      the trainer stops), never a silently partial update.

  Returns:
    (K, C) float32 updated table; equal to `update_memory_sequential` to float32 rounding.
  """
  centers = jax.lax.stop_gradient(centers.astype(jnp.float32))
  features = l2_normalize(jax.lax.stop_gradient(features), dtype=jnp.float32)
  num_rows, num_samples = centers.shape[0], features.shape[0]
  rounds = num_samples if max_rounds is None else min(int(max_rounds), num_samples)
  if rounds < 1:
    raise ValueError(f'max_rounds must be a positive int (a bound on the samples of one '
                     f'label), got {max_rounds!r}')
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
  with jax.named_scope('memory_rounds'):
    rows = jax.lax.fori_loop(0, rounds, round_, rows)
  rows = jnp.where((group_count > rounds)[:, None], jnp.nan, rows)
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


def label_repeats(*labels: ArrayLike, unit: int = 1) -> int:
  """A static bound of how often one label occurs in one step, for `update_memories`.

  Host side (numpy), from the labels of every step the bound must serve: the most times one
  label occurs in one row, over every row of every array, rounded up to unit x (1, 2, 3, 4,
  6, 8, 12, 16, ...) and capped at the row length B. The rounding keeps the set of values a
  run meets (one compiled step per value) small, at fewer than 1.5x the rounds needed.

  With the samplers' plans, a label fills `instances_per_cluster` positions per cluster slot,
  so `unit=instances_per_cluster` gives unit x (slots of the most repeated cluster): stage 1
  draws distinct clusters per step (1 slot) unless a modality has fewer clusters than slots;
  stage 2 repeats a visible (infrared) cluster when it is the partner of several drawn
  infrared (visible) clusters, or also drawn itself (2 slots in about 1 step in 10 at a few
  hundred clusters, 3 rarely).

  Args:
    *labels: (steps, B) or (B,) int arrays, e.g. an EpochPlan's visible_label and
      infrared_label; every array has rows of the same length B.
    unit: counts are multiples of this (instances_per_cluster); 1 for arbitrary labels.

  Returns:
    An int in [1, B].
  """
  rows = [np.atleast_2d(np.asarray(a)) for a in labels]
  if not rows or any(r.ndim != 2 or r.shape[1] != rows[0].shape[1] for r in rows):
    raise ValueError('label_repeats needs label arrays of shape (steps, B) with one B, got '
                     f'{[np.shape(a) for a in labels]}')
  if unit < 1:
    raise ValueError(f'unit must be a positive int, got {unit!r}')
  width = rows[0].shape[1]
  most = 0
  for row_labels in rows:
    if row_labels.size:
      ordered = np.sort(row_labels, axis=1)
      starts = np.ones(ordered.shape, bool)
      starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
      run_id = np.cumsum(starts.ravel()) - 1  # one id per (row, label) run
      most = max(most, int(np.bincount(run_id).max()))
  units = max(1, -(-most // unit))
  power = 1 << max(0, units - 1).bit_length()  # the next power of two >= units
  bucket = 3 * power // 4 if units <= 3 * power // 4 else power  # or 3/4 of it
  return max(1, min(unit * bucket, width))


UPDATE_METHODS = ('auto', 'sequential', 'by_rank')


def resolve_update_method(method: str) -> str:
  """'sequential' or 'by_rank': what `method` ('auto' = by backend) runs on this backend."""
  if method not in UPDATE_METHODS:
    raise ValueError(f'method must be one of {UPDATE_METHODS}, got {method!r}')
  if method == 'auto':
    return 'sequential' if jax.default_backend() == 'cpu' else 'by_rank'
  return method


def update_memory(centers: jax.Array, features: jax.Array, labels: jax.Array, momentum: float,
                  *, method: str = 'auto', max_rounds: Optional[int] = None) -> jax.Array:
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
    max_rounds: by_rank only: static bound of the samples of one label (None = N); see
      `update_memory_by_rank`.

  Returns:
    (K, C) float32 updated table.
  """
  method = resolve_update_method(method)
  if method == 'sequential':
    return update_memory_sequential(centers, features, labels, momentum)
  return update_memory_by_rank(centers, features, labels, momentum, max_rounds)


def rounds_bound(label_repeats: Optional[int], copies: int) -> Optional[int]:
  """`max_rounds` of an update whose labels are `copies` step label arrays end to end."""
  return None if label_repeats is None else copies * label_repeats
