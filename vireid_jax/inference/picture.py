"""The rank-list picture of a search: a few queries, each beside its nearest gallery images.

Drawn as the evaluation's rank lists are (evaluation/ranklist.py): one row per query, the query
first, then its top k, each titled with its rank and distance. When the paths give identities,
correct matches are framed green and wrong ones red, as there; without identities every frame
is grey. Images are read again from their paths at the network's input size (an embeddings
file keeps the paths, not the pixels); one that cannot be read any more is left blank.
"""

from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vireid_jax.evaluation import ranklist
from vireid_jax.inference import images as images_lib
from vireid_jax.runtime import files

_CORRECT = '#1a9850'  # evaluation/ranklist.py's colours
_WRONG = '#d73027'
_QUERY = '#2b2b2b'
_UNKNOWN = '#8c8c8c'
MAX_COLUMNS = 10  # gallery images per row, whatever top_k the CSV has


def choose(count: int, num_query: int, query_ids: Optional[np.ndarray] = None,
           seed: int = 0) -> np.ndarray:
  """Which queries to draw: with identities, `count` of distinct identities as the evaluation
  chooses them (ranklist.choose_queries); without, `count` spread evenly over the queries."""
  if query_ids is not None:
    return ranklist.choose_queries(np.asarray(query_ids), count, seed=seed)
  return np.unique(np.linspace(0, num_query - 1, min(count, num_query)).round().astype(np.int64))


def save(path: str, query_paths: Sequence[str], gallery_paths: Sequence[str],
         indices: np.ndarray, distances: np.ndarray, height: int, width: int,
         chosen: Sequence[int], query_ids: Optional[Sequence] = None,
         gallery_ids: Optional[Sequence] = None) -> str:
  """Writes the PNG of the queries `chosen` and their top (at most MAX_COLUMNS) images."""
  count = len(chosen)
  if count == 0:
    raise ValueError('no query to draw')
  columns = min(MAX_COLUMNS, indices.shape[1]) + 1
  cell = 1.3  # inches per image column, as the evaluation's
  figure = Figure(figsize=(columns * cell, count * cell * height / width + 0.4 * count),
                  dpi=100)
  FigureCanvasAgg(figure)
  grid = figure.add_gridspec(count, columns, wspace=0.08, hspace=0.3)
  blank = np.full((height, width, 3), 255, np.uint8)

  def draw(row, column, image_path, title, colour):
    image = images_lib.optional_image(image_path, height, width)
    axes = figure.add_subplot(grid[row, column])
    axes.imshow(blank if image is None else image)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
      spine.set_edgecolor(colour)
      spine.set_linewidth(4)
    axes.set_title(title if image is not None else f'{title}\n(unreadable)', fontsize=7,
                   color=colour)

  known = query_ids is not None and gallery_ids is not None
  for row, q in enumerate(chosen):
    who = f' {query_ids[q]}' if known else ''
    draw(row, 0, query_paths[q], f'query{who}', _QUERY)
    for rank in range(1, columns):
      g = int(indices[q, rank - 1])
      if known:
        colour = _CORRECT if gallery_ids[g] == query_ids[q] else _WRONG
        title = f'{rank}: {gallery_ids[g]} ({distances[q, rank - 1]:.3f})'
      else:
        colour, title = _UNKNOWN, f'{rank}: {distances[q, rank - 1]:.3f}'
      draw(row, rank, gallery_paths[g], title, colour)
  files.save_figure(figure, path, bbox_inches='tight')
  return path
