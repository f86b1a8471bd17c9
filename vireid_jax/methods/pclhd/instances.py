"""PCLHD's instance memory and its "dynamic prototype" term D (a constant: quirk 1).

Stage 2 keeps, per modality, a table I of 16 teacher features per cluster (train_sysu.py "TS":
891-902,934-935): for cluster i, 16 indices drawn with `np.random.choice(members, 16, True)`,
the teacher's features there placed at rows i + k K (k = 0..15), L2-normalised. The teacher's
features score it (clustercontrast/models/cm.py "CM":181-191):

  S = normalise(f_t) . I^T / temperature                      (N, 16 K')
  S_k = columns [k K', (k + 1) K'), k = 0..15                 instance k of every cluster
  z[n, c] = min_k S_k[n, c] if c = y_n, else max_k S_k[n, c]  hardest positive, hardest negatives
  D = CE(z, y), batch mean

The teacher's features come from a `torch.no_grad()` forward (clustercontrast/trainers.py
"TRN":173-176), so nothing in D requires a gradient: D is a constant of the step, and the
update that would rewrite I (CM_Hard.backward, CM:99-121) never runs. Here D is computed under
`stop_gradient`, for the logged loss only; I never changes within an epoch.

Padded layout (K' >= K clusters per instance block): rows i + k K' for cluster i < K, the rest
zero; columns c >= K of z get -inf (`num_valid`).
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from vireid_jax.losses import cross_entropy
from vireid_jax.models import l2_normalize

ArrayLike = Union[jax.Array, np.ndarray]


def instance_table(teacher_features: np.ndarray, labels: np.ndarray, num_clusters: int,
                   rng: np.random.RandomState, num_instances: int = 16,
                   capacity: Optional[int] = None) -> np.ndarray:
  """The epoch's instance table I (TS:891-902,934-935), on the host.

  Args:
    teacher_features: (N, C) the teacher's clustering features of one modality.
    labels: (N,) int that modality's cluster labels (the student's clustering), -1 outliers.
    num_clusters: K; every cluster 0..K-1 must have a member.
    rng: the draws: `rng.choice(members, num_instances, True)` per cluster in order, as the
      authors' global `np.random.choice` (a `np.random.RandomState` seeded alike gives their
      indices).
    num_instances: instances per cluster (16, `args.num_instances`).
    capacity: K' >= K clusters per block; None = K.

  Returns:
    (num_instances K', C) float32, row i + k K' the normalised teacher feature of instance k of
    cluster i (F.normalize, eps 1e-12), padding rows zero.
  """
  features = np.asarray(teacher_features, np.float32)
  labels = np.asarray(labels)
  capacity = num_clusters if capacity is None else int(capacity)
  if capacity < num_clusters:
    raise ValueError(f'capacity {capacity} is below the {num_clusters} clusters')
  table = np.zeros((num_instances * capacity, features.shape[1]), np.float32)
  for cluster in range(num_clusters):  # the authors' draw order, one choice per cluster
    members = np.where(labels == cluster)[0]
    if not len(members):
      raise ValueError(f'cluster {cluster} has no member')
    samples = rng.choice(members, num_instances, True)
    table[cluster + capacity * np.arange(num_instances)] = features[samples]
  norms = np.sqrt(np.sum(table * table, axis=1, keepdims=True))
  return table / np.maximum(norms, np.float32(1e-12))


def dynamic_loss(teacher_features: jax.Array, labels: jax.Array, instances: jax.Array, *,
                 num_instances: int = 16, temperature: float = 0.05,
                 num_valid: Optional[ArrayLike] = None) -> jax.Array:
  """D = CE(z, y) of the teacher's features against the instance table, a constant (CM:181-191).

  Args:
    teacher_features: (N, C) the teacher's train-mode features (no gradient flows: stopped).
    labels: (N,) int cluster of each row, in [0, K).
    instances: (num_instances K', C) float32 instance table (`instance_table`).
    num_instances: instances per cluster (16).
    temperature: softmax temperature (0.05).
    num_valid: () int, real clusters K of a padded table; None = all K'.

  Returns:
    () float32, under stop_gradient.
  """
  rows = instances.shape[0]
  if rows % num_instances:
    raise ValueError(f'an instance table has num_instances x K\' rows; {rows} rows do not '
                     f'divide into {num_instances} instances')
  capacity = rows // num_instances
  features = l2_normalize(jax.lax.stop_gradient(teacher_features), dtype=jnp.float32)
  instances = jax.lax.stop_gradient(jnp.asarray(instances, jnp.float32))
  scores = jnp.matmul(features, instances.T, precision=jax.lax.Precision.HIGHEST) / temperature
  chunks = scores.reshape(scores.shape[0], num_instances, capacity)  # [n, k, c] = S_k[n, c]
  labels = jnp.asarray(labels, jnp.int32)
  positive = jnp.arange(capacity)[None, :] == labels[:, None]
  z = jnp.where(positive, jnp.min(chunks, axis=1), jnp.max(chunks, axis=1))
  if num_valid is not None:
    z = jnp.where((jnp.arange(capacity) < num_valid)[None, :], z, -jnp.inf)
  return jax.lax.stop_gradient(cross_entropy(z, labels))
