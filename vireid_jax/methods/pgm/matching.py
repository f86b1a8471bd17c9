"""PGM's progressive graph matching of visible and infrared cluster centres.

The reference's matching: docs/pgm.md, "Matching: `pgm_match`".

With the centres L2-normalised, B the side with more clusters (visible when K_v >= K_i, ties
included) and S the other:

  D = 1 / exp(C_B . C_S^T)                     (n_B, n_S) float32, = exp(-cosine)
  round 1: Hungarian on [D | 0]  (n_B, n_B)    every S cluster gets one B partner (B2S and S2B);
                                               the B rows assigned a zero column form U
  round 2: Hungarian on D[U]     (|U|, n_S)    B2S of U; S2B is not touched
  round 3, ... ('until_all'): round 2 again on the B rows still without a partner

The reference stops after round 2, so when n_B > 2 n_S some B clusters keep no partner (and its
training dies with a KeyError; docs/pgm.md, quirk 1). Its round 2 also pairs the assignment's
columns with the unmatched rows by position rather than by the assignment's row index
(`r2i[unmatched_row[idx]] = unmatched_col_ind[idx]`, train_regdb.py:712-714,736-738): identical
when |U| <= n_S, where the assignment covers every row in order, but when |U| > n_S the first n_S
rows of U take the columns chosen for other rows. Round 2 reproduces that exactly (so both
`rounds=2` and 'until_all' equal the reference on every pair it makes); rounds 3+ assign by row.
"""

from typing import Tuple, Union

import numpy as np
from scipy.optimize import linear_sum_assignment


def _normalize(centers: np.ndarray) -> np.ndarray:
  """Rows / max(|row|, 1e-12) in float32, as torch.nn.functional.normalize."""
  norms = np.sqrt(np.sum(centers * centers, axis=1, keepdims=True))
  return centers / np.maximum(norms, np.float32(1e-12))


def _match_big_to_small(big: np.ndarray, small: np.ndarray,
                        rounds: Union[int, str]) -> Tuple[np.ndarray, np.ndarray]:
  """The reference's matching with B = `big` (n_B >= n_S rows) and S = `small`.

  Returns:
    (big_to_small (n_B,) int64, small_to_big (n_S,) int64), -1 where no partner.
  """
  num_big, num_small = len(big), len(small)
  # float32 throughout, as the reference's torch tensors; scipy widens the finished costs to
  # float64 exactly, so the assignments see the same numbers.
  similarity = np.exp(big @ small.T)
  distance = np.float32(1) / similarity
  cost = np.concatenate([distance, np.zeros((num_big, num_big - num_small), np.float32)], axis=1)
  big_to_small = np.full(num_big, -1, np.int64)
  small_to_big = np.full(num_small, -1, np.int64)

  rows, cols = linear_sum_assignment(cost)
  matched = cols < num_small
  big_to_small[rows[matched]] = cols[matched]
  small_to_big[cols[matched]] = rows[matched]
  unmatched = rows[~matched]  # ascending: a square assignment returns rows in order

  round_ = 2
  while len(unmatched) and (rounds == 'until_all' or round_ <= rounds):
    rows, cols = linear_sum_assignment(cost[unmatched][:, :num_small])
    if round_ == 2:
      # The reference's pairing by position (see the module docstring).
      assigned = unmatched[:len(cols)]
    else:
      assigned = unmatched[rows]
    big_to_small[assigned] = cols
    unmatched = unmatched[big_to_small[unmatched] < 0]
    round_ += 1
  return big_to_small, small_to_big


def pgm_match(visible_centers: np.ndarray, infrared_centers: np.ndarray,
              rounds: Union[int, str] = 'until_all') -> Tuple[np.ndarray, np.ndarray]:
  """Progressive graph matching of the two modalities' cluster centres (train_regdb.py:683-739).

  Args:
    visible_centers: (K_v, C) visible cluster centres, un-normalised (normalised here, in
      float32, as the reference).
    infrared_centers: (K_i, C) infrared cluster centres, un-normalised.
    rounds: 2 = the reference's two rounds, whose leftovers (n_B > 2 n_S) get -1;
      'until_all' = repeat round 2 on the still-unmatched clusters until every cluster has a
      partner (identical to 2 whenever 2 leaves nothing unmatched); another int >= 1 = at most
      that many rounds.

  Returns:
    (visible_to_infrared (K_v,) int64, infrared_to_visible (K_i,) int64): the reference's r2i and
    i2r as arrays, -1 where a cluster has no partner. The smaller side is always matched one to
    one; the larger side is matched many to one (at most `rounds` clusters per partner).
  """
  valid_rounds = rounds == 'until_all' or (isinstance(rounds, (int, np.integer))
                                           and not isinstance(rounds, bool) and rounds >= 1)
  if not valid_rounds:
    raise ValueError(f"rounds must be 'until_all' or an int >= 1 (2 = the reference), "
                     f'got {rounds!r}')
  visible = np.asarray(visible_centers, np.float32)
  infrared = np.asarray(infrared_centers, np.float32)
  if visible.ndim != 2 or infrared.ndim != 2 or visible.shape[1] != infrared.shape[1]:
    raise ValueError(f'centres must be (K_v, C) and (K_i, C) with one C, got shapes '
                     f'{visible.shape} and {infrared.shape}')
  if not len(visible) or not len(infrared):
    raise ValueError(f'both modalities need at least one cluster to match, got K_v = '
                     f'{len(visible)}, K_i = {len(infrared)}')
  visible, infrared = _normalize(visible), _normalize(infrared)
  if len(visible) >= len(infrared):
    return _match_big_to_small(visible, infrared, rounds)
  infrared_to_visible, visible_to_infrared = _match_big_to_small(infrared, visible, rounds)
  return visible_to_infrared, infrared_to_visible
