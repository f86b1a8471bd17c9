"""PCLHD's hybrid memory: a centroid row and a hard row per cluster, one table.

The authors' `ClusterMemory(mode='CMhybrid')` and the default path of `mode='CMhard'`
(clustercontrast/models/cm.py, "CM", at 8a376cd: CM:41-83,147-148,152,165-180), as pure functions.

Table layout, (2K', C) float32 with K' >= K the capacity of one half:

  rows [0, K')       centroid rows M_c: cluster k at row k, rows K..K'-1 padding (zeros)
  rows [K', 2K')     hard rows M_h:     cluster k at row K' + k, rows K'+K..2K'-1 padding

Unpadded (K' = K) this is the authors' table, F.normalize(centres.repeat(2, 1)) (train_sysu.py
"TS":925-932), whose scores `torch.chunk(S, 2, 1)` splits into the centroid and hard columns
(CM:168). Padding each half keeps cluster k's two rows K' apart however many clusters are real,
so one compiled step serves every K <= K' (`memory.memory_capacity`); padded columns get -inf
in every logit (`num_valid` = K).

  loss     S = normalise(f) . M^T / temperature; S_c, S_h = the centroid and hard columns;
           H = 0.5 (CE(S_h, y) + relu(CE(S_c, y) - margin))                      (CM:165-171)
           both CEs are batch means, so the relu gates the batch-mean centroid CE.
  update   inside the call's backward (CM:53-79), after its feature gradient was read from the
           table as it is then (`backward_table`): for every label y in the call, with x_j the
           normalised features of its members (both visible views count as members)
             j* = argmin_j x_j . M_c[y]  (M_c[y] before its update; the first on ties, CM:74)
             M_c[y] <- normalise(m M_c[y] + (1 - m) mean_j x_j)                 (CM:70-72)
             M_h[y] <- normalise(m M_h[y] + (1 - m) x_j*)                       (CM:75-76)
           normalise = divide by the norm, no eps (as the authors). Rows never interact (one
           label's rows k and K' + k), so every label updates at once (segment reductions).

Labels outside [0, K') (-1: a cross-term row whose cluster has no partner, where the authors'
code would stop with a KeyError) leave both CE means and the update, as PGM's
`cross_entropy_matched` (vireid_jax/methods/pgm/losses.py); with no row left the loss is 0.
"""

from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from vireid_jax.memory import memory_logits
from vireid_jax.methods.pgm.losses import cross_entropy_matched
from vireid_jax.models import l2_normalize

ArrayLike = Union[jax.Array, np.ndarray]


def hybrid_table(centers: ArrayLike, capacity: Optional[int] = None) -> jax.Array:
  """The epoch's hybrid table from the cluster centres: normalize([C; C]), each half padded.

  Args:
    centers: (K, C) cluster centres (un-normalised; normalised here as F.normalize does).
    capacity: K' >= K rows per half; None = K (the authors' unpadded table).

  Returns:
    (2K', C) float32: rows k and K' + k the normalised centre k, padding rows zero.
  """
  centers = jnp.asarray(centers, jnp.float32)
  if centers.ndim != 2:
    raise ValueError(f'cluster centres must be (K, C), got shape {centers.shape}')
  num_clusters = centers.shape[0]
  capacity = num_clusters if capacity is None else int(capacity)
  if capacity < num_clusters:
    raise ValueError(f'capacity {capacity} is below the {num_clusters} clusters')
  half = jnp.zeros((capacity, centers.shape[1]), jnp.float32).at[:num_clusters].set(
      l2_normalize(centers))
  return jnp.concatenate([half, half])


def _half(table: jax.Array) -> int:
  if table.ndim != 2 or table.shape[0] % 2:
    raise ValueError(f'a hybrid table has an even number of rows, [centroids; hard rows] '
                     f'(2K\', C); got shape {table.shape}')
  return table.shape[0] // 2


def hybrid_logits(features: jax.Array, table: jax.Array, temperature: float, *,
                  num_valid: Optional[ArrayLike] = None,
                  backward_table: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
  """(centroid logits, hard logits), each (N, K'): normalise(f) . M^T / temperature, split.

  Args:
    features: (N, C) un-normalised features.
    table: (2K', C) hybrid table (module docstring); no gradient flows into it.
    temperature: softmax temperature (0.05).
    num_valid: () int, real clusters K of a padded table: columns K..K'-1 of each half get
      -inf. None = all.
    backward_table: (2K', C) the table the feature gradient reads (the authors' backward reads
      the table as earlier backward nodes left it, CM:58); None = `table`.
  """
  half = _half(table)
  scores = memory_logits(features, table, temperature, backward_centers=backward_table)
  centroid, hard = scores[:, :half], scores[:, half:]
  if num_valid is not None:
    valid = (jnp.arange(half) < num_valid)[None, :]
    centroid = jnp.where(valid, centroid, -jnp.inf)
    hard = jnp.where(valid, hard, -jnp.inf)
  return centroid, hard


def hybrid_terms(features: jax.Array, labels: jax.Array, table: jax.Array, *,
                 temperature: float = 0.05, margin: float = 0.2,
                 backward_table: Optional[jax.Array] = None,
                 num_valid: Optional[ArrayLike] = None) -> Dict[str, jax.Array]:
  """The hybrid loss and its two cross-entropies: {'loss', 'hard', 'centroid'}, each ().

  Args as `hybrid_losses`. 'loss' = 0.5 (hard + relu(centroid - margin)) (CM:169-170).
  """
  centroid_logits, hard_logits = hybrid_logits(
      features, table, temperature, num_valid=num_valid, backward_table=backward_table)
  labels = jnp.asarray(labels, jnp.int32)
  ce_hard = cross_entropy_matched(hard_logits, labels)
  ce_centroid = cross_entropy_matched(centroid_logits, labels)
  # jax.nn.relu's derivative at 0 is 0, as torch.relu's.
  loss = 0.5 * (ce_hard + jax.nn.relu(ce_centroid - margin))
  return {'loss': loss, 'hard': ce_hard, 'centroid': ce_centroid}


def _momentum_step(rows: jax.Array, target: jax.Array, momentum: float) -> jax.Array:
  """m <- momentum m + (1 - momentum) target, then m / |m| (no eps, CM:71-72,75-76)."""
  rows = rows * momentum + (1.0 - momentum) * target
  return rows / jnp.sqrt(jnp.sum(rows * rows, axis=-1, keepdims=True))


def hybrid_update(table: jax.Array, features: jax.Array, labels: jax.Array,
                  momentum: float) -> jax.Array:
  """The table after one call's backward (CM:60-77); see the module docstring.

  Args:
    table: (2K', C) float32 hybrid table.
    features: (N, C) features of the call, normalised here (F.normalize, CM:158).
    labels: (N,) int cluster of each row; outside [0, K') skips the row.
    momentum: weight of the old row (0.1 in PCLHD's scripts).

  Returns:
    (2K', C) float32; rows of clusters without a member in the call are unchanged.
  """
  table = jax.lax.stop_gradient(jnp.asarray(table, jnp.float32))
  half = _half(table)
  features = l2_normalize(jax.lax.stop_gradient(features), dtype=jnp.float32)
  num_samples = features.shape[0]
  labels = jnp.asarray(labels, jnp.int32)
  valid = (labels >= 0) & (labels < half)
  segment = jnp.where(valid, labels, half)  # segment K' collects the skipped rows
  centroids, hard = table[:half], table[half:]

  counts = jax.ops.segment_sum(jnp.ones((num_samples,), jnp.float32), segment,
                               num_segments=half + 1)[:half]
  sums = jax.ops.segment_sum(features, segment, num_segments=half + 1)[:half]
  present = counts > 0
  means = sums / jnp.maximum(counts, 1.0)[:, None]

  # The hardest member: lowest cosine to the centroid row before its update, first on ties.
  similarity = jnp.sum(features * centroids[jnp.minimum(segment, half - 1)], axis=-1)
  lowest = jax.ops.segment_min(similarity, segment, num_segments=half + 1)
  candidate = jnp.where(similarity == lowest[segment], jnp.arange(num_samples), num_samples)
  hardest = jax.ops.segment_min(candidate, segment, num_segments=half + 1)[:half]
  hardest_features = features[jnp.minimum(hardest, num_samples - 1)]

  centroids = jnp.where(present[:, None], _momentum_step(centroids, means, momentum), centroids)
  hard = jnp.where(present[:, None], _momentum_step(hard, hardest_features, momentum), hard)
  return jnp.concatenate([centroids, hard])


def hybrid_losses(features: jax.Array, labels: jax.Array, table: jax.Array, *,
                  temperature: float = 0.05, momentum: float = 0.1, margin: float = 0.2,
                  backward_table: Optional[jax.Array] = None,
                  num_valid: Optional[ArrayLike] = None) -> Tuple[jax.Array, jax.Array]:
  """One hybrid memory call: its loss and the table its backward leaves (CM:41-83,165-171).

  Args:
    features: (N, C) un-normalised features (e.g. [view A; view B] of the visible images).
    labels: (N,) int cluster of each row, in [0, K); -1 = no partner (cross terms only): the
      row leaves the loss and the update.
    table: (2K', C) float32 hybrid table, [centroids padded to K'; hard rows padded to K'].
    temperature: softmax temperature (0.05).
    momentum: weight of the old row in the update (0.1).
    margin: the centroid CE's margin inside the relu (0.2, CM:169).
    backward_table: (2K', C) the table the feature gradient reads; None = `table`.
    num_valid: () int, real clusters K of a padded table; None = all K' (unpadded).

  Returns:
    (loss () float32, table' (2K', C) float32). `jax.grad` of the loss w.r.t. `features` is the
    authors' autograd gradient, grad_S . backward_table through F.normalize.
  """
  terms = hybrid_terms(features, labels, table, temperature=temperature, margin=margin,
                       backward_table=backward_table, num_valid=num_valid)
  return terms['loss'], hybrid_update(table, features, labels, momentum)
