"""Ranking a gallery for queries by the evaluation's distance, and scoring it when the file
names say who is who.

The distance is the evaluation's (evaluation/protocols.py): features are L2-normalised rows,
the similarity is `query @ gallery.T` in float32, and the distance is its negative, -cosine,
from -1 (the same direction) to 1; `evaluation.metrics` ranks it with `np.argsort`. Here each
query's top k is what a stable `np.argsort` of its distances begins with (ties go to the
earlier gallery image), found by `np.partition` without sorting whole rows, a block of queries
at a time, so a large gallery never needs a (queries x gallery) matrix.

Scoring (Rank-k, mAP, mINP) calls `evaluation.metrics` on the same distance matrix, with one
of its rules: 'none' (nothing dropped, the first correct image's rank: RegDB's), 'sysu' (no
cam2 gallery image for a cam3 query; each identity counted once) or 'llcm' (no gallery image of
the query's identity and camera, as in Market-1501; each identity counted once). The identities
(and cameras) come from the image paths through a pattern (`IDENTITY_PATTERNS` or a regular
expression with a group named `pid`, and `cam` when the rules need cameras).
"""

import csv
import dataclasses
import io
import re
from typing import Optional, Sequence

import numpy as np

from vireid_jax.evaluation import metrics
from vireid_jax.evaluation import protocols
from vireid_jax.inference.errors import InferenceError
from vireid_jax.runtime import files

# Rows of distances computed at a time: (rows x gallery) float32 stays near 64 MB.
_BLOCK_ELEMENTS = 1 << 24

# Named identity patterns, searched in each path with '/' separators.
IDENTITY_PATTERNS = {
    # SYSU-MM01 as released: cam<c>/<pid>/<n>.jpg
    'sysu': r'cam(?P<cam>\d+)/(?P<pid>\d+)/[^/]+$',
    # Market-1501 names (and SYSU-MM01's Market-style conversion): <pid>_c<cam>..., e.g.
    # 0001_c1s1_001051_00.jpg or 0005_c3_0012.jpg
    'market': r'(?:^|/)(?P<pid>-?\d+)_c(?P<cam>\d+)[^/]*$',
    # One folder per person: <pid>/<anything>.jpg (RegDB's layout, and most people's own)
    'folder': r'(?:^|/)(?P<pid>[^/]+)/[^/]+$',
}
# --id_rules -> evaluation.metrics' rules.
RULES = {'none': 'regdb', 'sysu': 'sysu', 'llcm': 'llcm'}
REPORTED_RANKS = protocols.REPORTED_RANKS


@dataclasses.dataclass
class SearchResult:
  """The top k of each query: `indices` (Q, k) gallery rows, best first; `distances` (Q, k)
  their distances (-cosine)."""
  indices: np.ndarray
  distances: np.ndarray


def _features(features, what: str) -> np.ndarray:
  features = np.asarray(features, np.float32)
  if features.ndim != 2:
    raise InferenceError(f'{what} features have shape {features.shape}: expected (N, C)')
  return features


def distances(query_features: np.ndarray, gallery_features: np.ndarray) -> np.ndarray:
  """(Q, G) float32 distances, -cosine: the evaluation's (protocols.evaluate_regdb)."""
  query = _features(query_features, 'query')
  gallery = _features(gallery_features, 'gallery')
  if query.shape[1] != gallery.shape[1]:
    raise InferenceError(f'query features have {query.shape[1]} dimensions and gallery '
                         f'features {gallery.shape[1]}: they come from different networks')
  similarity = query @ gallery.T
  if not np.isfinite(similarity).all():
    raise InferenceError('the features hold NaN or inf: the model diverged or the checkpoint '
                         'is broken')
  return -similarity


def _nearest(block: np.ndarray, k: int) -> np.ndarray:
  """(rows, k) column indices of each row's k smallest values, by value and then by column:
  what `np.argsort(block, kind='stable')[:, :k]` gives, without sorting whole rows."""
  if k == block.shape[1]:
    return np.argsort(block, axis=1, kind='stable')
  kth = np.partition(block, k - 1, axis=1)[:, k - 1:k]
  within = block <= kth  # the k smallest, and more where values tie with the k-th
  out = np.empty((len(block), k), np.int64)
  exact = within.sum(axis=1) == k
  if exact.any():
    # Rows without a tie at the k-th value: their k candidates, sorted by (value, column).
    columns = np.nonzero(within[exact])[1].reshape(-1, k)
    values = np.take_along_axis(block[exact], columns, axis=1)
    out[exact] = np.take_along_axis(columns, np.lexsort((columns, values), axis=1), axis=1)
  for row in np.flatnonzero(~exact):  # a tie across the k-th place: which of them is first
    out[row] = np.argsort(block[row], kind='stable')[:k]
  return out


def search(query_features: np.ndarray, gallery_features: np.ndarray,
           top_k: int = 10) -> SearchResult:
  """The `top_k` gallery rows nearest each query (fewer when the gallery is smaller).

  Args:
    query_features: (Q, C) L2-normalised features (`Model.embed`, an embeddings file).
    gallery_features: (G, C) the same network's features.
    top_k: how many per query, >= 1.
  """
  if int(top_k) < 1:
    raise InferenceError(f'top_k = {top_k}: expected at least 1')
  query = _features(query_features, 'query')
  gallery = _features(gallery_features, 'gallery')
  if not len(gallery):
    raise InferenceError('the gallery is empty: nothing to rank')
  k = min(int(top_k), len(gallery))
  indices = np.empty((len(query), k), np.int64)
  values = np.empty((len(query), k), np.float32)
  rows = max(1, _BLOCK_ELEMENTS // len(gallery))
  for start in range(0, len(query), rows):
    block = distances(query[start:start + rows], gallery)
    nearest = _nearest(block, k)
    indices[start:start + rows] = nearest
    values[start:start + rows] = np.take_along_axis(block, nearest, axis=1)
  return SearchResult(indices, values)


def write_csv(path: str, query_paths: Sequence[str], gallery_paths: Sequence[str],
              result: SearchResult) -> str:
  """query, rank (1 = nearest), gallery, distance: one row per query and rank."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(['query', 'rank', 'gallery', 'distance'])
  for q, (row, row_distances) in enumerate(zip(result.indices, result.distances)):
    for rank, (g, distance) in enumerate(zip(row, row_distances), start=1):
      writer.writerow([query_paths[q], rank, gallery_paths[g], f'{float(distance):.6f}'])
  return str(files.write_text(path, buffer.getvalue()))


# --- identities and scores ---------------------------------------------------------------------

def compile_pattern(pattern: str, rules: str = 'none') -> re.Pattern:
  """The regular expression of `--id_pattern` (a name of IDENTITY_PATTERNS or a regex)."""
  if rules not in RULES:
    raise InferenceError(f'--id_rules={rules}: expected one of {", ".join(RULES)}')
  text = IDENTITY_PATTERNS.get(pattern, pattern)
  try:
    compiled = re.compile(text)
  except re.error as error:
    raise InferenceError(f'--id_pattern {pattern!r} is not a regular expression ({error}); '
                         f'named patterns: {", ".join(IDENTITY_PATTERNS)}') from None
  if 'pid' not in compiled.groupindex:
    raise InferenceError(f'--id_pattern {pattern!r} has no group named pid: write '
                         f'(?P<pid>...) around the identity, or use one of '
                         f'{", ".join(IDENTITY_PATTERNS)}')
  if rules != 'none' and 'cam' not in compiled.groupindex:
    raise InferenceError(f'--id_rules={rules} needs cameras: --id_pattern {pattern!r} has no '
                         f'group named cam')
  return compiled


def identities(paths: Sequence[str], pattern: re.Pattern,
               what: str) -> tuple[list, Optional[np.ndarray]]:
  """(identity strings, cameras or None) of each path.

  Raises:
    InferenceError: a path the pattern does not match, naming it.
  """
  pids, cams = [], []
  has_cam = 'cam' in pattern.groupindex
  for path in paths:
    match = pattern.search(str(path).replace('\\', '/'))
    if match is None or match.group('pid') is None:
      raise InferenceError(f'{what} image {path} does not match the identity pattern '
                           f'{pattern.pattern!r}: every image needs an identity to score')
    pids.append(match.group('pid'))
    if has_cam:
      try:
        cams.append(int(match.group('cam')))
      except (TypeError, ValueError):
        raise InferenceError(f'{what} image {path}: camera {match.group("cam")!r} is not a '
                             f'number') from None
  return pids, (np.array(cams, np.int64) if has_cam else None)


def identity_codes(query_pids: Sequence[str], gallery_pids: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The same int for the same identity string on both sides (numbers keep their value, so
  '0001' and '1' are one person; other strings are numbered in sorted order)."""
  names = sorted(set(query_pids) | set(gallery_pids))
  if all(re.fullmatch(r'-?\d+', name) for name in names):
    code = {name: int(name) for name in names}
  else:
    code = {name: i for i, name in enumerate(names)}
  return (np.array([code[p] for p in query_pids], np.int64),
          np.array([code[p] for p in gallery_pids], np.int64))


@dataclasses.dataclass
class Scores:
  """Rank-k (ranks up to max_rank of 1, 5, 10, 20), mAP, mINP, in percent; the CMC curve."""
  values: dict
  cmc: list
  rules: str
  num_query: int
  num_gallery: int
  num_identities: int


def score(query_features, gallery_features, query_pids, gallery_pids, query_cams=None,
          gallery_cams=None, rules: str = 'none', max_rank: int = 20) -> Scores:
  """Rank-k, mAP and mINP of the gallery ranked for each query, by `evaluation.metrics`.

  Raises:
    InferenceError: no query has its identity in the gallery (nothing to score).
  """
  distmat = distances(query_features, gallery_features)
  try:
    if RULES[rules] == 'regdb':
      cmc, mean_ap, mean_inp = metrics.eval_regdb(distmat, query_pids, gallery_pids, max_rank)
    else:
      evaluate = metrics.eval_sysu if rules == 'sysu' else metrics.eval_llcm
      cmc, mean_ap, mean_inp = evaluate(distmat, query_pids, gallery_pids, query_cams,
                                        gallery_cams, max_rank)
  except ValueError as error:
    raise InferenceError(f'cannot score this search: {error}') from None
  values = {f'rank{k}': 100.0 * float(cmc[k - 1]) for k in REPORTED_RANKS if k <= max_rank}
  values.update(mAP=100.0 * mean_ap, mINP=100.0 * mean_inp)
  return Scores(values, [100.0 * float(v) for v in cmc], rules, len(query_pids),
                len(gallery_pids), len(set(np.asarray(gallery_pids).tolist())))


def format_scores(scores: Scores) -> str:
  shown = '  '.join(f'Rank-{key[4:]} {value:.2f}' if key.startswith('rank') else
                    f'{key} {value:.2f}' for key, value in scores.values.items())
  return (f'{shown}  (percent; {scores.num_query} queries, gallery of {scores.num_gallery} '
          f'images of {scores.num_identities} identities, rules {scores.rules})')
