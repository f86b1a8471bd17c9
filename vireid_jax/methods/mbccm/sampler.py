"""MBCCM's stage-2 sampler: matched (visible, infrared) cluster pairs at every position.

clusters_per_step / 2 infrared clusters are drawn (uniformly, without replacement), each paired
with a visible partner drawn uniformly from its row of the match mask; then clusters_per_step /
2 visible clusters, each paired with an infrared partner drawn uniformly from its column. Pair
positions hold the infrared-drawn pairs first, as in the reference's IdentitySamplerAssign;
visible image i of a step is paired with infrared image i. Images per cluster are drawn as the
core's `sampling.stage1_plan` draws them.
"""

import numpy as np

from vireid_jax.sampling import (ClusterMembers, EpochPlan, Rng, assemble, check_counts,
                                 cluster_members, draw_clusters)


def _partners(mask: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """For each entry of `rows`, a column drawn uniformly among that row's True entries."""
  row_of, col_of = np.nonzero(mask)  # row-major: columns of row r are contiguous
  count = mask.sum(axis=1)
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  pick = np.floor(rng.random(rows.shape) * count[rows]).astype(np.int64)
  return col_of[start[rows] + pick]


def _check_match_mask(mask: np.ndarray, visible: ClusterMembers,
                      infrared: ClusterMembers) -> np.ndarray:
  mask = np.asarray(mask).astype(bool)
  expected = (len(infrared.count), len(visible.count))
  if mask.shape != expected:
    raise ValueError(f'match_mask has shape {mask.shape}; expected (infrared clusters, visible '
                     f'clusters) = {expected} from the pseudo labels')
  for name, members in (('visible', visible), ('infrared', infrared)):
    empty = np.flatnonzero(members.count == 0)
    if len(empty):
      raise ValueError(f'{name} cluster labels must be 0..K-1 with no gaps; clusters '
                       f'{empty[:10].tolist()} have no image')
  for axis, name, other in ((1, 'infrared', 'visible'), (0, 'visible', 'infrared')):
    lonely = np.flatnonzero(~mask.any(axis=axis))
    if len(lonely):
      raise ValueError(f'match_mask gives {name} clusters {lonely[:10].tolist()} no {other} '
                       'partner; MBCCM matching gives every cluster at least one')
  return mask


def stage2_plan(visible_labels: np.ndarray, infrared_labels: np.ndarray, match_mask: np.ndarray,
                steps: int, clusters_per_step: int, instances_per_cluster: int,
                rng: Rng) -> EpochPlan:
  """An epoch of stage-2 steps: matched (visible, infrared) cluster pairs at every position.

  Args:
    visible_labels: (Nv,) int pseudo labels of the visible training images, -1 = outlier.
    infrared_labels: (Ni,) int pseudo labels of the infrared training images.
    match_mask: (K_i, K_v) bool, True where infrared cluster i and visible cluster v match.
    steps: steps in the epoch.
    clusters_per_step: cluster pairs per step (12; must be even: half are drawn from each side).
    instances_per_cluster: images per cluster (12).
    rng: np.random.Generator or seed.

  Returns:
    EpochPlan of (steps, clusters_per_step * instances_per_cluster) int32 arrays; position p of
    every step holds a visible and an infrared image of a matched cluster pair.
  """
  check_counts(steps, clusters_per_step, instances_per_cluster)
  if clusters_per_step % 2:
    raise ValueError(f'clusters_per_step = {clusters_per_step} must be even in stage 2: half of '
                     'the pairs are drawn from each modality')
  rng = np.random.default_rng(rng)
  visible = cluster_members(visible_labels, 'visible')
  infrared = cluster_members(infrared_labels, 'infrared')
  mask = _check_match_mask(match_mask, visible, infrared)
  half = clusters_per_step // 2
  infrared_drawn = draw_clusters(infrared.clusters, steps, half, rng)
  visible_of_infrared = _partners(mask, infrared_drawn, rng)
  visible_drawn = draw_clusters(visible.clusters, steps, half, rng)
  infrared_of_visible = _partners(mask.T, visible_drawn, rng)
  visible_clusters = np.concatenate([visible_of_infrared, visible_drawn], axis=1)
  infrared_clusters = np.concatenate([infrared_drawn, infrared_of_visible], axis=1)
  return assemble(visible, infrared, visible_clusters, infrared_clusters, instances_per_cluster,
                   rng)

