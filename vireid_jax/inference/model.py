"""`vireid_jax.Model`: a trained run in a notebook.

    import vireid_jax
    model = vireid_jax.Model.from_workdir('runs/demo', checkpoint='best')
    visible = model.embed('photos/', 'visible')              # (N, C) float32, unit rows
    infrared = model.embed(array_of_infrared_images, 'infrared')
    result = model.search(visible, infrared, top_k=5)         # .indices, .distances (-cosine)

Everything goes through the code of the command line (`--mode embed / search / export`), so
the API and the commands give the same features (tests/inference_api_test.py).
"""

import os
from typing import Optional, Sequence, Union

import numpy as np

from vireid_jax.inference import embedding
from vireid_jax.inference import export as export_lib
from vireid_jax.inference import images as images_lib
from vireid_jax.inference import run as run_lib
from vireid_jax.inference import search as search_lib
from vireid_jax.inference import store
from vireid_jax.inference.errors import BadImage
from vireid_jax.inference.errors import InferenceError

Images = Union[str, os.PathLike, np.ndarray, Sequence[Union[str, os.PathLike, np.ndarray]]]


def _is_path(item) -> bool:
  return isinstance(item, (str, os.PathLike))


class Model:
  """One checkpoint of a trained run, ready to embed images and rank galleries."""

  def __init__(self, run: run_lib.TrainedRun, batch_size: Optional[int] = None):
    self.run = run
    self._embedder = embedding.Embedder(run, batch_size)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = 'best',
                   batch_size: Optional[int] = None, config=None) -> 'Model':
    """Opens checkpoint 'best', 'latest' or a checkpoint folder of the run in `workdir`.

    `batch_size`: images per device call (default the run's `eval.batch_size`). `config`: see
    `inference.run.load_run` (None: the config the checkpoint records).
    """
    return cls(run_lib.load_run(workdir, checkpoint, config), batch_size)

  # --- what it is ------------------------------------------------------------------------------

  @property
  def config(self):
    return self.run.config

  @property
  def checkpoint(self) -> str:
    return self.run.checkpoint

  @property
  def epoch(self) -> int:
    return self.run.epoch

  @property
  def weights_sha256(self) -> str:
    return self.run.weights_sha256

  @property
  def image_size(self) -> tuple[int, int]:
    """(height, width) every image is resized to."""
    return self.run.image_size

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.run.modalities

  @property
  def num_features(self) -> int:
    return int(self.run.model.num_features)

  def __repr__(self) -> str:
    height, width = self.image_size
    return (f'Model({self.checkpoint}, epoch {self.epoch}, {self.config.method}, '
            f'{height}x{width}, {self.num_features} features, flip {bool(self.config.eval.flip)})')

  # --- embedding -------------------------------------------------------------------------------

  def embed(self, images: Images, modality: str, progress: bool = False) -> np.ndarray:
    """(N, C) float32 L2-normalised features, one row per image, in order.

    Args:
      images: arrays (one image (H, W, 3) / (H, W) uint8, a batch (N, H, W, 3), or a list of
        images of any sizes: resized as the test images are), or paths (an image file, a
        folder, searched recursively, or a list file; or a list of them).
      modality: 'visible' or 'infrared'.
    Raises:
      BadImage: an image that cannot be used, named (`embed_files` skips them instead).
    """
    self.run.check_modality(modality)
    height, width = self.image_size
    if _is_path(images) or (isinstance(images, (list, tuple)) and images and
                            all(_is_path(item) for item in images)):

      def stop(line):  # a path that cannot be used ends the call, as an array would
        raise BadImage(line.removeprefix('skipped: '))

      return self._embedder.to_memory(images_lib.list_images(images), modality,
                                      progress=progress, say=stop).features
    if isinstance(images, (list, tuple)) and any(_is_path(item) for item in images):
      raise InferenceError('images mixes paths and arrays: pass one kind')
    return self._embedder.arrays(images_lib.prepare_arrays(images, height, width), modality,
                                 progress=progress)

  def embed_files(self, sources, modality: str, progress: bool = True) -> store.Embeddings:
    """Embeds image files, folders or list files as `--mode embed` does, into memory: an
    `Embeddings` with `.features`, `.paths` (those embedded) and `.skipped` (one line each)."""
    return self._embedder.to_memory(images_lib.list_images(sources), modality,
                                    progress=progress)

  def embed_to_file(self, sources, modality: str, out: str,
                    progress: bool = True) -> embedding.StreamSummary:
    """`--mode embed`: streams the images into the embeddings file `out` (.npz)."""
    return self._embedder.to_file(images_lib.list_images(sources), modality, out,
                                  progress=progress)

  # --- search and export -----------------------------------------------------------------------

  @staticmethod
  def search(query_features, gallery_features, top_k: int = 10) -> search_lib.SearchResult:
    """The `top_k` nearest gallery rows of each query by the evaluation's distance (-cosine):
    `.indices` (Q, k), `.distances` (Q, k)."""
    return search_lib.search(query_features, gallery_features, top_k)

  def export(self, path: str = '') -> tuple[str, str]:
    """`--mode export`: (artifact, contract JSON) paths (inference/export.py)."""
    return export_lib.export_run(self.run, path)


def search(query_features, gallery_features, top_k: int = 10) -> search_lib.SearchResult:
  """`Model.search` without a model: features from `embed` or from embeddings files."""
  return search_lib.search(query_features, gallery_features, top_k)


def load_embeddings(path: str) -> store.Embeddings:
  """An embeddings file of `--mode embed` (`.features`, `.paths`, `.modality`, ...)."""
  return store.load(path)
