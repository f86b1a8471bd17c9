"""Rank-list images: each query beside its top-k gallery images, correct matches in green.

Looking at a few rank lists shows what the numbers hide: whether the model matches people by
clothing colour, pose or background, and which identities it confuses.
"""

from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vireid_jax.runtime import files
from vireid_jax.evaluation import metrics

_CORRECT = '#1a9850'
_WRONG = '#d73027'
_QUERY = '#2b2b2b'


def ranked_gallery(distmat_row: np.ndarray, dropped_row: np.ndarray, top_k: int) -> np.ndarray:
  """(<= top_k,) gallery indices of one query, best first, without the images its protocol
  drops (`dropped_row`: (G,) bool, a row of `metrics.drop_mask`)."""
  order = np.argsort(distmat_row)
  return order[~np.asarray(dropped_row)[order]][:top_k]


def choose_queries(q_pids: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
  """(<= count,) sorted query indices of distinct identities, the same for the same seed."""
  q_pids = np.asarray(q_pids)
  rng = np.random.RandomState(seed)
  identities = rng.permutation(np.unique(q_pids))[:count]
  return np.sort([rng.choice(np.flatnonzero(q_pids == pid)) for pid in identities]).astype(
      np.int64)


def save_ranklist(query_images: np.ndarray, gallery_images: np.ndarray, distmat: np.ndarray,
                  q_pids: np.ndarray, g_pids: np.ndarray, q_cams: Optional[np.ndarray],
                  g_cams: Optional[np.ndarray], path: str, top_k: int = 10,
                  rules: str = 'sysu', is_similarity: bool = False) -> str:
  """Saves a PNG with one row per query: the query, then its top-k gallery images.

  Correct matches get a green border, wrong ones red; every image is titled with its identity
  and camera.

  Args:
    query_images: (Q, H, W, 3) uint8 images of the queries to show.
    gallery_images: (G, H, W, 3) uint8 gallery images.
    distmat: (Q, G) distances (smaller is better), or similarities with is_similarity=True.
    q_pids: (Q,) query identities.
    g_pids: (G,) gallery identities.
    q_cams: (Q,) query cameras (None allowed with rules='regdb').
    g_cams: (G,) gallery cameras (idem).
    path: where to write the PNG.
    top_k: gallery images per row.
    rules: the protocol's drop rule, one of `metrics.RULES`: 'sysu' (no cam2 gallery image
      for a cam3 query), 'llcm' (none of the query's identity and camera) or 'regdb' (none).
    is_similarity: `distmat` holds similarities (larger is better).

  Returns:
    The path written.
  """
  distmat = np.asarray(distmat, np.float64)
  if is_similarity:
    distmat = -distmat
  num_query = len(query_images)
  if distmat.shape != (num_query, len(gallery_images)):
    raise ValueError(f'distmat is {distmat.shape}, expected (num_query, num_gallery) = '
                     f'({num_query}, {len(gallery_images)})')
  if rules != 'regdb' and (q_cams is None or g_cams is None):
    raise ValueError(f'rules={rules!r} needs q_cams and g_cams (or pass rules=\'regdb\')')
  if num_query == 0:
    raise ValueError('save_ranklist got no query to draw')

  columns = top_k + 1
  height, width = query_images.shape[1:3]
  cell = 1.3  # inches per image column
  figure = Figure(figsize=(columns * cell, num_query * cell * height / width + 0.4 * num_query),
                  dpi=100)
  FigureCanvasAgg(figure)
  grid = figure.add_gridspec(num_query, columns, wspace=0.08, hspace=0.25)

  def draw(row, column, image, title, colour):
    axes = figure.add_subplot(grid[row, column])
    axes.imshow(image)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
      spine.set_edgecolor(colour)
      spine.set_linewidth(4)
    axes.set_title(title, fontsize=7, color=colour)

  def camera(cams, index):
    return '' if cams is None else f' c{int(cams[index])}'

  dropped = metrics.drop_mask(rules, np.asarray(q_pids), np.asarray(g_pids), q_cams, g_cams)
  for row in range(num_query):
    draw(row, 0, query_images[row], f'query {int(q_pids[row])}{camera(q_cams, row)}', _QUERY)
    for rank, index in enumerate(ranked_gallery(distmat[row], dropped[row], top_k), start=1):
      correct = g_pids[index] == q_pids[row]
      draw(row, rank, gallery_images[index],
           f'{rank}: {int(g_pids[index])}{camera(g_cams, index)}',
           _CORRECT if correct else _WRONG)
  files.save_figure(figure, path, bbox_inches='tight')
  return path
