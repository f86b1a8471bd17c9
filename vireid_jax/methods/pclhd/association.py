"""PCLHD's matching of the two modalities' cluster centres, per dataset (its two variants).

Both start as PGM's (vireid_jax/methods/pgm/matching.py): centres L2-normalised, cost
D = 1 / exp(C_v . C_i^T) = exp(-cosine), visible rows B, infrared columns S, round 1 a square
Hungarian assignment on [D | 0] (K_v x K_v): every infrared cluster gets one visible partner
(both maps), the visible rows on a zero column form U (ascending).

'regdb' (train_regdb.py "TR":816-847) is PGM's code verbatim: round 2 = Hungarian on D[U]
(|U| x K_i), visible_to_infrared only, pairing columns with U's rows by position
(`pgm_match(rounds=2)`). It runs only `if K_v >= K_i`: with more infrared clusters both maps stay
empty and the epoch has no cross term (all -1 here).

'sysu' (train_sysu.py "TS":985-1034, the nested `PGM`):
  K_i > K_v:        `torch.zeros(K_v, K_v - K_i)` raises (TS:996): here `MoreInfraredClusters`.
  |U| < K_i:        round 2 as 'regdb' (TS:1008-1014); infrared_to_visible is round 1's.
  |U| >= K_i (K_v >= 2 K_i):
    round 2' = square Hungarian on [D[U] | 0] (|U| x |U|): the rows on a real column get it in
              BOTH maps, overwriting infrared_to_visible (TS:1016-1025); the others go on;
    round 3 = Hungarian on D[rest] (|rest| x K_i), again both maps, by position (TS:1027-1032).
  So infrared_to_visible is the partner of the last round that gave the infrared cluster one.
  With K_v > 3 K_i round 3 has more rows than columns: its by-position pairing shifts the
  columns onto the first K_i rows of the rest (as PGM's round 2 beyond 2x), and the last
  K_v - 3 K_i visible clusters keep no partner: the authors' next step dies with a KeyError
  (clustercontrast/trainers.py:155).

`rounds` = the most rounds run: 'until_all' repeats the last round on the still-unmatched
visible rows (rectangular Hungarian, paired by row, both maps overwritten as the sysu rounds
do; 'regdb': as `pgm_match`, visible_to_infrared only) until every cluster has a partner, so it
equals the authors' maps wherever their code runs (sysu: K_v <= 3 K_i; regdb: K_v <= 2 K_i)
and matches every cluster where it crashes. An int stops after that many rounds ('sysu': 3 is
the authors' code, -1 where they would crash; 'regdb': 2).
"""

from typing import Tuple, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

from vireid_jax import methods
from vireid_jax.methods.pgm.matching import pgm_match

VARIANTS = ('sysu', 'regdb')


class MoreInfraredClusters(methods.MethodStop):
  """SYSU's matching met more infrared than visible clusters, where the authors' code raises
  (TS:996). A training method turns this into a one-line stop, or (`pclhd.more_infrared=
  'skip'`) into an epoch without the cross term, as RegDB's code does."""


def _normalize(centers: np.ndarray) -> np.ndarray:
  """Rows / max(|row|, 1e-12) in float32, as torch.nn.functional.normalize (TS:991-992)."""
  norms = np.sqrt(np.sum(centers * centers, axis=1, keepdims=True))
  return centers / np.maximum(norms, np.float32(1e-12))


def _checked_rounds(rounds) -> Union[int, str]:
  if rounds == 'until_all' or (isinstance(rounds, (int, np.integer)) and
                               not isinstance(rounds, bool) and rounds >= 1):
    return rounds
  raise ValueError(f"rounds must be 'until_all' or an int >= 1, got {rounds!r}")


def _sysu_match(visible: np.ndarray, infrared: np.ndarray,
                rounds: Union[int, str]) -> Tuple[np.ndarray, np.ndarray]:
  """TS:985-1034 on normalised centres, K_v >= K_i; see the module docstring."""
  num_visible, num_infrared = len(visible), len(infrared)
  # float32 as the authors' torch tensors; scipy widens the finished costs exactly.
  distance = np.float32(1) / np.exp(visible @ infrared.T)
  cost = np.concatenate(
      [distance, np.zeros((num_visible, num_visible - num_infrared), np.float32)], axis=1)
  visible_to_infrared = np.full(num_visible, -1, np.int64)
  infrared_to_visible = np.full(num_infrared, -1, np.int64)

  def assign(rows, cols):  # both maps, as TS:1021-1023,1031-1032
    visible_to_infrared[rows] = cols
    infrared_to_visible[cols] = rows

  row, col = linear_sum_assignment(cost)
  real = col < num_infrared
  assign(row[real], col[real])
  unmatched = row[~real]  # ascending: a square assignment returns its rows in order
  more = lambda done: len(unmatched) and (rounds == 'until_all' or done < rounds)
  if not more(1):
    return visible_to_infrared, infrared_to_visible
  if len(unmatched) < num_infrared:  # TS:1008-1014: every row assigned, visible map only
    _, col = linear_sum_assignment(cost[unmatched][:, :num_infrared])
    visible_to_infrared[unmatched] = col
    return visible_to_infrared, infrared_to_visible
  # TS:1016-1025: square on [D[U] | 0]; the rows given a real column are matched.
  _, col = linear_sum_assignment(cost[unmatched][:, :len(unmatched)])
  real = col < num_infrared
  assign(unmatched[real], col[real])
  unmatched = unmatched[~real]
  done = 2
  while more(done):
    row, col = linear_sum_assignment(cost[unmatched][:, :num_infrared])
    # Round 3 pairs by position (TS:1029-1032: `unmatched[idx]`), identical to pairing by row
    # while the rows fit the columns; later rounds ('until_all') pair by row.
    assign(unmatched[:len(col)] if done == 2 else unmatched[row], col)
    unmatched = unmatched[visible_to_infrared[unmatched] < 0]
    done += 1
  return visible_to_infrared, infrared_to_visible


def pclhd_match(visible_centers: np.ndarray, infrared_centers: np.ndarray, *,
                variant: str = 'sysu',
                rounds: Union[int, str] = 'until_all') -> Tuple[np.ndarray, np.ndarray]:
  """PCLHD's matching of the stage-2 epoch (TS:985-1036 or TR:816-849).

  Args:
    visible_centers: (K_v, C) visible cluster centres (un-normalised; normalised here).
    infrared_centers: (K_i, C) infrared cluster centres.
    variant: 'sysu' (the 3-round variant with the overwritten infrared map) | 'regdb' (PGM's
      two rounds, nothing when K_i > K_v).
    rounds: 'until_all' (every cluster matched; the authors' maps wherever their code runs)
      or the most rounds to run (sysu 3 / regdb 2 = the authors'; -1 where they crash).

  Returns:
    (visible_to_infrared (K_v,) int64, infrared_to_visible (K_i,) int64), -1 where none.

  Raises:
    MoreInfraredClusters: variant 'sysu' with K_i > K_v (the authors' RuntimeError, TS:996).
  """
  if variant not in VARIANTS:
    raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')
  rounds = _checked_rounds(rounds)
  visible = np.asarray(visible_centers, np.float32)
  infrared = np.asarray(infrared_centers, np.float32)
  if visible.ndim != 2 or infrared.ndim != 2 or visible.shape[1] != infrared.shape[1]:
    raise ValueError(f'centres must be (K_v, C) and (K_i, C) with one C, got shapes '
                     f'{visible.shape} and {infrared.shape}')
  if not len(visible) or not len(infrared):
    raise ValueError(f'both modalities need at least one cluster to match, got K_v = '
                     f'{len(visible)}, K_i = {len(infrared)}')
  num_visible, num_infrared = len(visible), len(infrared)
  if num_infrared > num_visible:
    if variant == 'regdb':  # TR:822 has no else-branch: both maps stay empty
      return np.full(num_visible, -1, np.int64), np.full(num_infrared, -1, np.int64)
    raise MoreInfraredClusters(
        f'{num_infrared} infrared clusters outnumber the {num_visible} visible ones: SYSU-MM01\'s '
        f'matching (train_sysu.py:996) cannot run; pclhd.more_infrared=\'skip\' trains the epoch '
        f'without the cross term')
  if variant == 'regdb':
    return pgm_match(visible, infrared, rounds=rounds)
  return _sysu_match(_normalize(visible), _normalize(infrared), rounds)
