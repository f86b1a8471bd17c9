"""CMC, mAP and mINP with the SYSU-MM01, LLCM and RegDB rules, vectorised over queries.

The rules are those of the reference's `eval_sysu` / `eval_regdb` (the dataset authors'
protocol; docs/mbccm.md, "Evaluation protocols") and of the LLCM authors' `eval_llcm`:

- SYSU-MM01: for a query from cam3, every gallery image from cam2 is dropped (the two cameras
  see the same place). CMC follows the dataset authors' code: after the drop, repeated
  identities are removed from the ranked list (each identity counts at its first occurrence),
  so Rank-k says "the true identity is among the first k distinct identities". mAP and mINP use
  the full ranked list after the drop.
- LLCM: every gallery image of the query's own identity AND camera is dropped (an LLCM camera
  records both modalities: visible by day, near-infrared by night); then CMC, mAP and mINP as
  for SYSU-MM01.
- RegDB: nothing is dropped; CMC is the standard one (first correct image within rank k).
- Both: a query with no correct match in its gallery is skipped; the averages are over the
  remaining ("valid") queries. AP = mean over correct matches of precision at their rank;
  INP = (number of correct matches) / (rank of the last correct match).

Ranking is `np.argsort(distmat, axis=1)` (default kind), the reference's own call, so even tied
distances are ordered as the reference orders them. `cmc[k - 1]` is the fraction of valid
queries whose first hit is at rank <= k, defined for every k up to `max_rank` (the reference
instead shortens the curve when the gallery is shorter than `max_rank`; beyond the end of a
list every valid query has been found, so the extra entries equal the last one).

Values are FRACTIONS in [0, 1], as in the reference; the protocol runners report percent.
"""

from typing import Callable, Optional, Tuple

import numpy as np

# SYSU-MM01's infrared cam3 and visible cam2 see the same place: a cam3 query never sees cam2
# gallery images.
SYSU_SAME_PLACE_QUERY_CAM = 3
SYSU_SAME_PLACE_GALLERY_CAM = 2

# Query rows ranked at once: bounds the (rows, G) temporaries to a few MB each.
_CHUNK_ELEMENTS = 1 << 20
# Which gallery images a query may not see, and whether CMC counts identities once.
RULES = ('sysu', 'llcm', 'regdb')
_DISTINCT_IDENTITY_CMC = {'sysu': True, 'llcm': True, 'regdb': False}


def eval_sysu(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
              q_cams: np.ndarray, g_cams: np.ndarray,
              max_rank: int = 20) -> Tuple[np.ndarray, float, float]:
  """SYSU-MM01 metrics: cam3/cam2 drop, identity-deduplicated CMC, mAP and mINP.

  Args:
    distmat: (Q, G) distances, smaller is more similar.
    q_pids: (Q,) query identities.
    g_pids: (G,) gallery identities.
    q_cams: (Q,) query cameras (SYSU numbering 1..6).
    g_cams: (G,) gallery cameras.
    max_rank: length of the CMC curve.

  Returns:
    (cmc (max_rank,) float64, mAP, mINP), all fractions in [0, 1].
  """
  return _evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, rules='sysu')


def eval_llcm(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
              q_cams: np.ndarray, g_cams: np.ndarray,
              max_rank: int = 20) -> Tuple[np.ndarray, float, float]:
  """LLCM metrics: same-identity-and-camera drop, identity-deduplicated CMC, mAP and mINP.

  Args:
    distmat: (Q, G) distances, smaller is more similar.
    q_pids: (Q,) query identities.
    g_pids: (G,) gallery identities.
    q_cams: (Q,) query cameras (LLCM numbering 1..9, shared by both modalities).
    g_cams: (G,) gallery cameras.
    max_rank: length of the CMC curve.

  Returns:
    (cmc (max_rank,) float64, mAP, mINP), all fractions in [0, 1].
  """
  return _evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, rules='llcm')


def eval_regdb(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
               max_rank: int = 20) -> Tuple[np.ndarray, float, float]:
  """RegDB metrics: standard CMC, mAP and mINP over the whole gallery.

  Args:
    distmat: (Q, G) distances, smaller is more similar.
    q_pids: (Q,) query identities.
    g_pids: (G,) gallery identities.
    max_rank: length of the CMC curve.

  Returns:
    (cmc (max_rank,) float64, mAP, mINP), all fractions in [0, 1].
  """
  return _evaluate(distmat, q_pids, g_pids, None, None, max_rank, rules='regdb')


def sysu_drop_mask(q_cams: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
  """(Q, G) bool: True where the SYSU rule drops gallery image g for query q."""
  q_cams = np.asarray(q_cams)
  g_cams = np.asarray(g_cams)
  return ((q_cams == SYSU_SAME_PLACE_QUERY_CAM)[:, None]
          & (g_cams == SYSU_SAME_PLACE_GALLERY_CAM)[None, :])


def llcm_drop_mask(q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray,
                   g_cams: np.ndarray) -> np.ndarray:
  """(Q, G) bool: True where the LLCM rule drops gallery image g for query q (same identity,
  same camera)."""
  return ((np.asarray(q_pids)[:, None] == np.asarray(g_pids)[None, :])
          & (np.asarray(q_cams)[:, None] == np.asarray(g_cams)[None, :]))


def drop_mask(rules: str, q_pids: np.ndarray, g_pids: np.ndarray,
              q_cams: Optional[np.ndarray], g_cams: Optional[np.ndarray]) -> np.ndarray:
  """(Q, G) bool: the gallery images each query may not see under `rules` (one of RULES)."""
  if rules == 'sysu':
    return sysu_drop_mask(q_cams, g_cams)
  if rules == 'llcm':
    return llcm_drop_mask(q_pids, g_pids, q_cams, g_cams)
  if rules == 'regdb':
    return np.zeros((len(q_pids), len(g_pids)), bool)
  raise ValueError(f'rules must be one of {RULES}, got {rules!r}')


def ranked_metrics(order: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                   q_cams: Optional[np.ndarray] = None, g_cams: Optional[np.ndarray] = None,
                   max_rank: int = 20, rules: str = 'regdb') -> Tuple[np.ndarray, float, float]:
  """`eval_sysu`, `eval_llcm` or `eval_regdb` (by `rules`) on an already ranked gallery.

  Lets a caller rank once and score many galleries: the protocol runner sorts the whole
  visible test set once and restricts that order to each trial's gallery.

  Args:
    order: (Q, G) int gallery indices per query, most similar first.
    q_pids, g_pids, q_cams, g_cams, max_rank: as in `eval_sysu`.
    rules: 'sysu', 'llcm' (their drop and identity-deduplicated CMC) or 'regdb'.

  Returns:
    (cmc (max_rank,) float64, mAP, mINP), all fractions in [0, 1].
  """
  order = np.asarray(order)
  q_pids, g_pids, q_cams, g_cams = _check_labels(
      order.shape, q_pids, g_pids, q_cams, g_cams, max_rank, rules)
  return _score(lambda start, stop: order[start:stop], order.shape, q_pids, g_pids, q_cams,
                g_cams, max_rank, rules)


def _evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, rules):
  distmat = np.asarray(distmat)
  q_pids, g_pids, q_cams, g_cams = _check_labels(
      distmat.shape, q_pids, g_pids, q_cams, g_cams, max_rank, rules)
  if np.isnan(distmat).any():
    raise ValueError('distmat contains NaN: the features are broken (a diverged model?)')
  # The reference's own call, so tied distances are ordered as the reference orders them.
  return _score(lambda start, stop: np.argsort(distmat[start:stop], axis=1), distmat.shape,
                q_pids, g_pids, q_cams, g_cams, max_rank, rules)


def _check_labels(shape, q_pids, g_pids, q_cams, g_cams, max_rank, rules):
  if rules not in RULES:
    raise ValueError(f'rules must be one of {RULES}, got {rules!r}')
  if len(shape) != 2:
    raise ValueError(f'distmat must be (num_query, num_gallery), got shape {shape}')
  if shape[0] == 0 or shape[1] == 0:
    raise ValueError(f'distmat is empty (shape {shape}): nothing to evaluate')
  q_pids = np.asarray(q_pids).reshape(-1)
  g_pids = np.asarray(g_pids).reshape(-1)
  if (len(q_pids), len(g_pids)) != tuple(shape):
    raise ValueError(f'distmat is {tuple(shape)} but there are {len(q_pids)} query and '
                     f'{len(g_pids)} gallery identities')
  if rules != 'regdb':
    if q_cams is None or g_cams is None:
      raise ValueError(f'The {rules} rules need query and gallery cameras')
    q_cams = np.asarray(q_cams).reshape(-1)
    g_cams = np.asarray(g_cams).reshape(-1)
    if (len(q_cams), len(g_cams)) != tuple(shape):
      raise ValueError(f'distmat is {tuple(shape)} but there are {len(q_cams)} query and '
                       f'{len(g_cams)} gallery cameras')
  if max_rank < 1:
    raise ValueError(f'max_rank must be >= 1, got {max_rank}')
  return q_pids, g_pids, q_cams, g_cams


def _score(order_of: Callable[[int, int], np.ndarray], shape, q_pids, g_pids, q_cams, g_cams,
           max_rank, rules):
  """The metrics, query chunk by query chunk; order_of(start, stop) ranks those queries."""
  num_query, num_gallery = shape
  # Dense identity codes: the gallery's identities are 0..K-1, a query identity absent from the
  # gallery gets -1 and so never matches.
  identities, g_codes = np.unique(g_pids, return_inverse=True)
  slot = np.clip(np.searchsorted(identities, q_pids), 0, len(identities) - 1)
  q_codes = np.where(identities[slot] == q_pids, slot, -1)
  g_codes = g_codes.astype(np.int32)

  distinct_identity_cmc = _DISTINCT_IDENTITY_CMC[rules]
  if rules == 'sysu':
    g_is_cam2 = g_cams == SYSU_SAME_PLACE_GALLERY_CAM
    q_is_cam3 = q_cams == SYSU_SAME_PLACE_QUERY_CAM
  if distinct_identity_cmc:
    # Columns grouped by identity, for the per-identity first occurrence of the CMC rule.
    by_identity = np.argsort(g_codes, kind='stable')
    group_starts = np.searchsorted(g_codes[by_identity], np.arange(len(identities)))

  first_rank = np.zeros(num_query, np.int64)  # rank of the first hit (0: no hit)
  average_precision = np.zeros(num_query)
  inverse_negative_penalty = np.zeros(num_query)
  chunk = max(1, _CHUNK_ELEMENTS // num_gallery)
  for start in range(0, num_query, chunk):
    stop = min(start + chunk, num_query)
    rows = stop - start
    order = order_of(start, stop)  # (rows, G), most similar first
    hits = g_codes[order] == q_codes[start:stop, None]
    dropped = None
    if rules == 'sysu':
      dropped = g_is_cam2[order] & q_is_cam3[start:stop, None]
    elif rules == 'llcm':  # hits are exactly the images of the query's identity
      dropped = hits & (g_cams[order] == q_cams[start:stop, None])
    if dropped is not None:
      hits &= ~dropped
      # 1-based position of each image in the list that remains after the drop.
      position = np.cumsum(~dropped, axis=1, dtype=np.int32)
    hit_row, hit_col = np.nonzero(hits)  # row-major: a row's hits come in rank order
    num_hits = np.bincount(hit_row, minlength=rows)
    if dropped is not None:
      hit_rank = position[hit_row, hit_col].astype(np.float64)
    else:
      hit_rank = hit_col + 1.0
    row_begin = np.cumsum(num_hits) - num_hits
    hits_so_far = np.arange(1, len(hit_row) + 1) - row_begin[hit_row]
    valid = num_hits > 0
    precision_sum = np.bincount(hit_row, weights=hits_so_far / hit_rank, minlength=rows)
    average_precision[start:stop][valid] = precision_sum[valid] / num_hits[valid]
    last_hit_rank = hit_rank[row_begin[valid] + num_hits[valid] - 1]
    inverse_negative_penalty[start:stop][valid] = num_hits[valid] / last_hit_rank
    if distinct_identity_cmc:
      first_rank[start:stop][valid] = _distinct_identity_rank(
          order, dropped, q_codes[start:stop], by_identity, group_starts)[valid]
    else:
      first_rank[start:stop][valid] = hit_rank[row_begin[valid]]

  valid = first_rank > 0
  if not valid.any():
    raise ValueError('No query has a correct match in its gallery: the query and gallery '
                     'identities do not overlap (wrong split or labels?)')
  ranks = np.arange(1, max_rank + 1)
  cmc = (first_rank[valid, None] <= ranks[None, :]).mean(axis=0)
  return cmc, float(average_precision[valid].mean()), float(
      inverse_negative_penalty[valid].mean())


def _distinct_identity_rank(order: np.ndarray, dropped: np.ndarray, q_codes: np.ndarray,
                            by_identity: np.ndarray, group_starts: np.ndarray) -> np.ndarray:
  """Rank of each query's identity in its ranked list with repeated identities removed.

  The first-occurrence trick: an identity's place in the de-duplicated list is decided by its
  best-ranked image, so the rank of the true identity is 1 + the number of identities whose
  best-ranked kept image comes before the true identity's best-ranked kept image.

  Args:
    order: (rows, G) gallery indices, most similar first.
    dropped: (rows, G) bool in the same sorted order: images removed by the drop rule.
    q_codes: (rows,) query identity codes (-1: not in the gallery).
    by_identity: (G,) gallery columns grouped by identity code.
    group_starts: (K,) where each identity's group starts in `by_identity`.

  Returns:
    (rows,) int64 ranks (1-based); meaningless for rows whose identity has no kept image.
  """
  rows, num_gallery = order.shape
  # position[r, g]: where image g sits in row r's ranked list; dropped images go past the end.
  sorted_position = np.where(dropped, num_gallery, np.arange(num_gallery, dtype=np.int32))
  position = np.empty(order.shape, np.int32)
  position[np.arange(rows)[:, None], order] = sorted_position
  # (rows, K): best (smallest) position of each identity.
  best_position = np.minimum.reduceat(position[:, by_identity], group_starts, axis=1)
  own = best_position[np.arange(rows), np.maximum(q_codes, 0)]
  return (best_position < own[:, None]).sum(axis=1) + 1
