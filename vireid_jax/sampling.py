"""Identity samplers: which images every step of an epoch trains on (building blocks).

Each step draws `clusters_per_step` clusters per modality and `instances_per_cluster` images of
each (without replacement when the cluster has more members than that, with replacement
otherwise), so a step holds B = clusters_per_step * instances_per_cluster visible and B infrared
images, each cluster's images consecutive. `stage1_plan` draws the visible and the infrared
clusters of a step independently, each uniformly without replacement among that modality's
clusters (MBCCM's stage 1, ClusterContrast). The pieces (`cluster_members`, `draw_clusters`,
`draw_instances`, `assemble`) serve methods that draw otherwise: MBCCM's matched pairs
(methods/mbccm/sampler.py), PGM's camera-aware passes (methods/pgm/sampler.py).

A whole epoch is planned at once on the host, vectorised with numpy; every step is independent,
as in the reference (no epoch-level iteration over clusters). Randomness comes from one
np.random.Generator, so a plan is reproducible from its seed; it does not reproduce the
reference's legacy np.random stream draw for draw.

One deviation: when a modality has fewer clusters than a step needs, the reference raises
(np.random.choice without replacement); here every cluster is taken once and the rest of the
step is filled with clusters drawn with replacement, so a run with few clusters keeps going.
"""

from typing import NamedTuple, Union

import numpy as np

Rng = Union[np.random.Generator, int, None]


class EpochPlan(NamedTuple):
  """Indices and labels of every training step of an epoch.

  Attributes:
    visible_index: (steps, B) int32 rows of the visible training ImageSet.
    infrared_index: (steps, B) int32 rows of the infrared training ImageSet.
    visible_label: (steps, B) int32 y_v, visible cluster of each pair position.
    infrared_label: (steps, B) int32 y_i, infrared cluster of each pair position.
  """

  visible_index: np.ndarray
  infrared_index: np.ndarray
  visible_label: np.ndarray
  infrared_label: np.ndarray


class ClusterMembers(NamedTuple):
  """Members of each cluster, as slices of one array sorted by label."""
  order: np.ndarray  # (M,) image indices of non-outliers, grouped by label, ascending inside
  start: np.ndarray  # (K,) first position of cluster k in `order`
  count: np.ndarray  # (K,) members of cluster k
  clusters: np.ndarray  # (K',) labels with at least one member


def cluster_members(labels: np.ndarray, modality: str) -> ClusterMembers:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{modality} pseudo labels must be a 1-D integer array, got '
                     f'{labels.dtype} of shape {labels.shape}')
  members = np.flatnonzero(labels >= 0)
  if not len(members):
    raise ValueError(f'every {modality} image is an outlier (label -1): there is no cluster to '
                     'sample from')
  order = members[np.argsort(labels[members], kind='stable')]
  count = np.bincount(labels[members])
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  return ClusterMembers(order, start, count, np.flatnonzero(count))


def draw_clusters(candidates: np.ndarray, steps: int, per_step: int,
                   rng: np.random.Generator) -> np.ndarray:
  """(steps, per_step) clusters, uniformly without replacement inside each step."""
  num = len(candidates)
  if num >= per_step:
    keys = rng.random((steps, num))
    picked = np.argpartition(keys, per_step - 1, axis=1)[:, :per_step]
    # argpartition leaves the picked keys in no particular order: sort them, so the order of the
    # clusters in the step is uniformly random too.
    picked = np.take_along_axis(
        picked, np.argsort(np.take_along_axis(keys, picked, axis=1), axis=1), axis=1)
    return candidates[picked]
  # Fewer clusters than slots: all of them once, the rest with replacement (see module doc).
  extra = rng.integers(0, num, size=(steps, per_step - num))
  slots = np.concatenate([np.broadcast_to(np.arange(num), (steps, num)), extra], axis=1)
  slots = np.take_along_axis(slots, np.argsort(rng.random(slots.shape), axis=1), axis=1)
  return candidates[slots]


def draw_instances(members: ClusterMembers, clusters: np.ndarray, per_cluster: int,
                    rng: np.random.Generator) -> np.ndarray:
  """(..., per_cluster) image indices of each cluster in `clusters` (any shape).

  Without replacement for clusters with more than `per_cluster` members (Floyd's algorithm,
  vectorised over clusters, then a random order), with replacement for the others.
  """
  flat = clusters.reshape(-1)
  size = members.count[flat][:, None]  # (D, 1)
  with_replacement = np.floor(rng.random((len(flat), per_cluster)) * size).astype(np.int64)
  # Floyd: for j = n-k .. n-1, draw t in [0, j]; take t unless already taken, else take j.
  uniforms = rng.random((len(flat), per_cluster))
  distinct = np.empty((len(flat), per_cluster), np.int64)
  for i in range(per_cluster):
    j = np.maximum(size[:, 0] - per_cluster + i, 0)
    t = np.floor(uniforms[:, i] * (j + 1)).astype(np.int64)
    taken = (distinct[:, :i] == t[:, None]).any(axis=1)
    distinct[:, i] = np.where(taken, j, t)
  distinct = np.take_along_axis(distinct, np.argsort(rng.random(distinct.shape), axis=1), axis=1)
  offsets = np.where(size > per_cluster, distinct, with_replacement)
  index = members.order[members.start[flat][:, None] + offsets]
  return index.reshape(clusters.shape + (per_cluster,))


def assemble(visible: ClusterMembers, infrared: ClusterMembers, visible_clusters: np.ndarray,
              infrared_clusters: np.ndarray, per_cluster: int,
              rng: np.random.Generator) -> EpochPlan:
  steps = visible_clusters.shape[0]
  to_batch = lambda a: a.reshape(steps, -1).astype(np.int32)
  repeat = lambda c: np.repeat(c, per_cluster, axis=1)
  return EpochPlan(
      visible_index=to_batch(draw_instances(visible, visible_clusters, per_cluster, rng)),
      infrared_index=to_batch(draw_instances(infrared, infrared_clusters, per_cluster, rng)),
      visible_label=to_batch(repeat(visible_clusters)),
      infrared_label=to_batch(repeat(infrared_clusters)))


def check_counts(steps: int, clusters_per_step: int, instances_per_cluster: int) -> None:
  for name, value in (('steps', steps), ('clusters_per_step', clusters_per_step),
                      ('instances_per_cluster', instances_per_cluster)):
    if int(value) != value or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}')


def stage1_plan(visible_labels: np.ndarray, infrared_labels: np.ndarray, steps: int,
                clusters_per_step: int, instances_per_cluster: int, rng: Rng) -> EpochPlan:
  """An epoch of stage-1 steps: visible and infrared clusters drawn independently.

  Args:
    visible_labels: (Nv,) int pseudo labels of the visible training images, -1 = outlier.
    infrared_labels: (Ni,) int pseudo labels of the infrared training images.
    steps: steps in the epoch (300 SYSU-MM01, 100 RegDB).
    clusters_per_step: clusters per modality per step (12).
    instances_per_cluster: images per cluster (12).
    rng: np.random.Generator or seed.

  Returns:
    EpochPlan of (steps, clusters_per_step * instances_per_cluster) int32 arrays.
  """
  check_counts(steps, clusters_per_step, instances_per_cluster)
  rng = np.random.default_rng(rng)
  visible = cluster_members(visible_labels, 'visible')
  infrared = cluster_members(infrared_labels, 'infrared')
  visible_clusters = draw_clusters(visible.clusters, steps, clusters_per_step, rng)
  infrared_clusters = draw_clusters(infrared.clusters, steps, clusters_per_step, rng)
  return assemble(visible, infrared, visible_clusters, infrared_clusters, instances_per_cluster,
                   rng)
