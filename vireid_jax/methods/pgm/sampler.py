"""PGM's camera-aware identity sampler: which images every step of an epoch trains on.

The reference (docs/pgm.md, "Sampling"; `RandomMultipleGallerySampler(num_instances=16)`,
SM:46-106,
under a `DataLoader(drop_last=True)` and an `IterLoader`, TS:52-69, IL:22-27) draws each modality
on its own, and the two are never paired. For one modality:

- One **pass** visits every cluster once, in a uniformly random order (`torch.randperm`).
- Per cluster: an anchor, uniformly among its members (`random.choice`); then 15
  (num_instances - 1) more members from the **candidates**: the members whose camera differs
  from the anchor's, or, when there is none (always on RegDB, one camera per modality), the
  members other than the anchor. The anchor itself is never a candidate.
- The 15 are drawn without replacement iff there are at least 16 (num_instances) candidates,
  else with replacement (`np.random.choice`): the reference compares with 16 but draws 15, so
  exactly 15 candidates go with replacement and may repeat (docs/pgm.md, quirk 10; kept).
- A one-member cluster contributes its anchor only, a run of 1 instead of 16, which shifts
  every later cluster of the pass against the batch borders (kept).
- The pass's indices, cluster after cluster, are cut into consecutive batches; the last,
  incomplete batch is dropped (`drop_last=True`); when a pass runs out, the next step starts a
  new pass (`IterLoader.next`), so a cluster can straddle two steps and passes run on across
  the steps of an epoch.
- Every epoch starts with a fresh pass (the loaders are rebuilt, `new_epoch`, TS:526-536), and
  runs `steps` steps (200 SYSU-MM01, 100 RegDB).

PGM's batches: infrared 256 images (16 clusters x 16), visible 128 images (8 x 16, each giving
views A and B). Outliers (label -1) are not in the reference's training list; here they are
simply never drawn, so the arrays can be the whole modality's.

Randomness comes from one np.random.Generator: the semantics above are reproduced exactly, the
reference's torch/random/numpy streams draw for draw are not (tests/pgm_sampler_test.py replays
the reference's sampler on this module's draws and compares their statistics).
"""

from typing import NamedTuple, Union

import numpy as np

from vireid_jax import sampling

Rng = Union[np.random.Generator, int, None]

# PGM's settings (run_train_*.sh; TS:527-532, TR:496): images per cluster, per-step batches.
NUM_INSTANCES = 16
INFRARED_BATCH = 256
VISIBLE_BATCH = 128


class PassTooShort(ValueError):
  """One pass over a modality's clusters holds fewer images than one batch."""


class ModalityPlan(NamedTuple):
  """One modality's images for every step of an epoch.

  Attributes:
    index: (steps, batch_size) int32 rows of the modality's training images.
    label: (steps, batch_size) int32 cluster label of each of those images.
  """

  index: np.ndarray
  label: np.ndarray


class _Clusters(NamedTuple):
  """Members of each cluster, sorted by camera inside the cluster."""
  members: np.ndarray  # (M,) image indices, grouped by cluster, by camera inside, then index
  start: np.ndarray  # (K,) first position of cluster k in `members`
  count: np.ndarray  # (K,) members of cluster k
  camera_start: np.ndarray  # (M,) first position of that member's camera inside its cluster
  camera_count: np.ndarray  # (M,) members of its cluster with its camera


def _group(labels: np.ndarray, cameras: np.ndarray, modality: str) -> _Clusters:
  labels, cameras = np.asarray(labels), np.asarray(cameras)
  for name, a in (('pseudo labels', labels), ('cameras', cameras)):
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f'{modality} {name} must be a 1-D integer array, got {a.dtype} of shape '
                       f'{a.shape}')
  if len(labels) != len(cameras):
    raise ValueError(f'{len(labels)} {modality} pseudo labels for {len(cameras)} cameras')
  clustered = np.flatnonzero(labels >= 0)
  if not len(clustered):
    raise ValueError(f'every {modality} image is an outlier (label -1): there is no cluster to '
                     'sample from')
  members = clustered[np.lexsort((clustered, cameras[clustered], labels[clustered]))]
  label, camera = labels[members], cameras[members]
  new_cluster = np.r_[True, label[1:] != label[:-1]]
  new_camera = new_cluster | np.r_[True, camera[1:] != camera[:-1]]
  start = np.flatnonzero(new_cluster)
  count = np.diff(np.r_[start, len(members)])
  block = np.flatnonzero(new_camera)
  block_size = np.diff(np.r_[block, len(members)])
  cluster_of = np.cumsum(new_cluster) - 1
  block_of = np.cumsum(new_camera) - 1
  return _Clusters(members, start, count, block[block_of] - start[cluster_of],
                   block_size[block_of])


def pass_length(labels: np.ndarray, num_instances: int = NUM_INSTANCES) -> int:
  """Images in one pass: num_instances per cluster of two or more members, 1 per singleton."""
  count = np.bincount(np.asarray(labels)[np.asarray(labels) >= 0])
  count = count[count > 0]
  return int(np.where(count > 1, num_instances, 1).sum())


def _draw_without_replacement(size: np.ndarray, draws: int,
                              rng: np.random.Generator) -> np.ndarray:
  """(len(size), draws) uniformly random ordered samples without replacement from range(size)."""
  if not len(size):
    return np.zeros((0, draws), np.int64)
  offsets = np.r_[0, np.cumsum(size)[:-1]]
  segment = np.repeat(np.arange(len(size)), size)
  position = np.arange(segment.size) - offsets[segment]
  # The `draws` smallest of iid uniform keys, in key order, are a uniform ordered sample.
  order = np.lexsort((rng.random(segment.size), segment))
  return position[order][offsets[:, None] + np.arange(draws)]


def _one_pass(clusters: _Clusters, num_instances: int, rng: np.random.Generator) -> np.ndarray:
  """(L,) image indices of one pass: the clusters in random order, each its anchor then draws."""
  count = clusters.count
  num_clusters, draws = len(count), num_instances - 1
  cluster_order = rng.permutation(num_clusters)
  anchor = rng.integers(0, count)  # position inside the cluster
  anchor_at = clusters.start + anchor
  # The excluded block: the anchor's camera if another camera exists, else the anchor alone.
  other_camera = count > clusters.camera_count[anchor_at]
  excluded_start = np.where(other_camera, clusters.camera_start[anchor_at], anchor)
  excluded_size = np.where(other_camera, clusters.camera_count[anchor_at], 1)
  candidates = count - excluded_size
  pick = np.zeros((num_clusters, draws), np.int64)
  replace = (candidates > 0) & (candidates < num_instances)
  pick[replace] = rng.integers(0, candidates[replace, None], (replace.sum(), draws))
  distinct = candidates >= num_instances
  pick[distinct] = _draw_without_replacement(candidates[distinct], draws, rng)
  # Candidate j is the j-th member outside the excluded block.
  inside = pick + excluded_size[:, None] * (pick >= excluded_start[:, None])
  rows = np.concatenate([anchor_at[:, None], clusters.start[:, None] + inside], axis=1)
  keep = np.ones(rows.shape, bool)
  keep[:, 1:] = (candidates > 0)[:, None]  # a singleton gives its anchor only
  return clusters.members[rows[cluster_order][keep[cluster_order]]]


def camera_aware_plan(labels: np.ndarray, cameras: np.ndarray, steps: int, batch_size: int,
                      num_instances: int = NUM_INSTANCES, rng: Rng = None,
                      modality: str = 'training') -> ModalityPlan:
  """An epoch of one modality's batches, as the reference's camera-aware sampler draws them.

  Args:
    labels: (N,) int pseudo labels of the modality's training images, -1 = outlier (never
      drawn).
    cameras: (N,) int camera of each image.
    steps: steps in the epoch.
    batch_size: images per step (PGM: 256 infrared, 128 visible).
    num_instances: images per cluster (16).
    rng: np.random.Generator or seed.
    modality: name used in error messages.

  Returns:
    ModalityPlan of (steps, batch_size) int32 image indices and their cluster labels.

  Raises:
    ValueError: malformed inputs, or a pass too short to fill one batch (the reference then
      fails with StopIteration).
  """
  for name, value in (('steps', steps), ('batch_size', batch_size),
                      ('num_instances', num_instances)):
    if int(value) != value or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}')
  clusters = _group(labels, cameras, modality)
  length = pass_length(labels, num_instances)
  if length < batch_size:
    raise PassTooShort(
        f'one pass over the {modality} clusters gives {length} images ({len(clusters.count)} '
        f'clusters), fewer than a batch of {batch_size}: lower the batch size or get more '
        'clustered images')
  rng = np.random.default_rng(rng)
  batches, planned = [], 0
  while planned < steps:  # a fresh pass whenever the previous one is used up
    index = _one_pass(clusters, num_instances, rng)
    full = len(index) // batch_size  # drop_last
    batches.append(index[:full * batch_size].reshape(full, batch_size))
    planned += full
  index = np.concatenate(batches)[:steps]
  return ModalityPlan(index.astype(np.int32), np.asarray(labels)[index].astype(np.int32))


def plan_epoch(visible_labels: np.ndarray, visible_cameras: np.ndarray,
               infrared_labels: np.ndarray, infrared_cameras: np.ndarray, steps: int,
               rng: Rng, visible_batch: int = VISIBLE_BATCH,
               infrared_batch: int = INFRARED_BATCH,
               num_instances: int = NUM_INSTANCES) -> sampling.EpochPlan:
  """Both modalities' epoch, drawn independently (unpaired; the batch sizes differ).

  Returns:
    sampling.EpochPlan with visible_index / visible_label (steps, visible_batch) and
    infrared_index / infrared_label (steps, infrared_batch) int32. Unlike MBCCM's plans, row i
    of the two modalities are not partners.
  """
  rng = np.random.default_rng(rng)
  visible = camera_aware_plan(visible_labels, visible_cameras, steps, visible_batch,
                              num_instances, rng, 'visible')
  infrared = camera_aware_plan(infrared_labels, infrared_cameras, steps, infrared_batch,
                               num_instances, rng, 'infrared')
  return sampling.EpochPlan(visible_index=visible.index, infrared_index=infrared.index,
                            visible_label=visible.label, infrared_label=infrared.label)
