"""MBCCM bilateral cluster matching between visible and infrared centres.

The reference's matching: docs/mbccm.md, "Step 3: match".

D[i, v] is the squared Euclidean distance between infrared centre i and visible centre v.
With the larger side called L and the smaller S:
  (a) one-to-one: a Hungarian assignment on D gives every S cluster one L partner;
  (b) many-to-one: the S side stacked k = n_L // n_S + 1 times has more rows than L has
      clusters, so a second assignment gives every L cluster one S partner;
  (c) relaxation, as the reference writes it in both orderings: every pair (i, v) of (a) also
      matches i to each visible u with D[i, u] <= D[i, v]; every pair (i, v) of (b) also
      matches v to each infrared j with D[j, v] <= D[i, v].
The mask is the union, so every cluster on both sides has at least one partner.
"""

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclasses.dataclass(frozen=True)
class MatchResult:
  """Matched cluster pairs of one epoch.

  Attributes:
    mask: (n_infrared, n_visible) bool, true where the two clusters are matched.
    infrared_partners: per infrared cluster, its matched visible clusters (int64 arrays).
    visible_partners: per visible cluster, its matched infrared clusters.
    mean_partners_infrared: mean number of visible partners of an infrared cluster.
    mean_partners_visible: mean number of infrared partners of a visible cluster.
    one_to_one: (min(n_i, n_v), 2) int64 (infrared, visible) pairs of assignment (a).
    many_to_one: (max(n_i, n_v), 2) int64 (infrared, visible) pairs of assignment (b).
  """

  mask: np.ndarray
  infrared_partners: list[np.ndarray]
  visible_partners: list[np.ndarray]
  mean_partners_infrared: float
  mean_partners_visible: float
  one_to_one: np.ndarray
  many_to_one: np.ndarray


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """(m, D), (n, D) -> (m, n) float32 |x|^2 + |y|^2 - 2 x.y, as the reference computes it."""
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.float32)
  return (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T


def mbccm_match(centers_visible: np.ndarray, centers_infrared: np.ndarray) -> MatchResult:
  """Bilateral cluster matching of the two modalities' cluster centres.

  Args:
    centers_visible: (n_v, D) float32 L2-normalised visible cluster centres.
    centers_infrared: (n_i, D) float32 L2-normalised infrared cluster centres.

  Returns:
    The MatchResult; its mask is (n_i, n_v).
  """
  num_visible, num_infrared = len(centers_visible), len(centers_infrared)
  if num_visible == 0 or num_infrared == 0:
    raise ValueError(f'matching needs clusters on both sides, got {num_visible} visible and '
                     f'{num_infrared} infrared')
  # Each assignment sees the matrix in the reference's orientation (smaller side as rows), so
  # that scipy breaks ties the same way.
  if num_visible >= num_infrared:
    distance = squared_distances(centers_infrared, centers_visible)  # (n_i, n_v)
    stack = num_visible // num_infrared + 1
    one_infrared, one_visible = linear_sum_assignment(distance)  # every infrared: a partner
    rows, many_visible = linear_sum_assignment(np.tile(distance, (stack, 1)))
    many_infrared = rows % num_infrared  # every visible cluster: an infrared partner
  else:
    distance_t = squared_distances(centers_visible, centers_infrared)  # (n_v, n_i)
    stack = num_infrared // num_visible + 1
    one_visible, one_infrared = linear_sum_assignment(distance_t)  # every visible: a partner
    rows, many_infrared = linear_sum_assignment(np.tile(distance_t, (stack, 1)))
    many_visible = rows % num_visible  # every infrared cluster: a visible partner
    distance = distance_t.T
  # A union of threshold sets on one row (column) is the set at the largest threshold.
  row_threshold = np.full(num_infrared, -np.inf, np.float32)
  np.maximum.at(row_threshold, one_infrared, distance[one_infrared, one_visible])
  column_threshold = np.full(num_visible, -np.inf, np.float32)
  np.maximum.at(column_threshold, many_visible, distance[many_infrared, many_visible])
  mask = (distance <= row_threshold[:, None]) | (distance <= column_threshold[None, :])
  return match_result(mask, np.stack([one_infrared, one_visible], 1),
                      np.stack([many_infrared, many_visible], 1))


def match_result(mask: np.ndarray, one_to_one: np.ndarray,
                 many_to_one: np.ndarray) -> MatchResult:
  """The MatchResult of a (n_i, n_v) mask and its two assignments' (infrared, visible) pairs."""
  mask = np.asarray(mask, bool)
  return MatchResult(
      mask=mask,
      infrared_partners=[np.flatnonzero(row) for row in mask],
      visible_partners=[np.flatnonzero(column) for column in mask.T],
      mean_partners_infrared=float(mask.sum(1).mean()),
      mean_partners_visible=float(mask.sum(0).mean()),
      one_to_one=np.asarray(one_to_one, np.int64).reshape(-1, 2),
      many_to_one=np.asarray(many_to_one, np.int64).reshape(-1, 2))
