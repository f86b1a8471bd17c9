"""Features of images by a trained run: the evaluation's extraction, fed from a stream.

The features are the evaluation's: `extract.for_config(model, config)` (the network in
`model.extract_dtype` at `model.extract_precision`, flip-averaged and renormalised when
`eval.flip` is set), on batches padded as `extract.extract_features` pads them (the last
batch repeats its final image) and split over the local devices. Arrays in memory go through
`extract_features` itself; a stream of files goes batch by batch through the same compiled
function, so a file gives the features the evaluation gives its decoded pixels
(tests/inference_embed_test.py).

Streaming overlaps three things: threads decode the next batches (inference/images.py) while
the device computes this one (JAX dispatches asynchronously), and the host copies out and
writes the features of the batch before while both run.
"""

import dataclasses
import sys
from typing import Callable, Optional, Sequence

import numpy as np
import tqdm

from vireid_jax import extract as extract_lib
from vireid_jax.inference import images as images_lib
from vireid_jax.inference import store
from vireid_jax.runtime import console
from vireid_jax.runtime import sharding


@dataclasses.dataclass
class StreamSummary:
  """What a stream embedded: counts, and the reasons of the images skipped."""
  embedded: int
  skipped: list


class Embedder:
  """The run's extraction at a fixed batch size (one compilation per modality)."""

  def __init__(self, run, batch_size: Optional[int] = None):
    self.run = run
    self.fns = extract_lib.for_config(run.model, run.config)
    size = int(batch_size or run.config.eval.batch_size)
    # As extract_features rounds it: every device gets the same share of a batch.
    self.batch_size = -(-size // run.mesh.size) * run.mesh.size

  def arrays(self, images: np.ndarray, modality: str, progress: bool = False) -> np.ndarray:
    """(N, C) features of (N, H, W, 3) uint8 images already at the run's size."""
    self.run.check_modality(modality)
    if not len(images):
      return np.zeros((0, self.run.model.num_features), np.float32)
    return extract_lib.extract_features(self.fns, self.run.variables, images, modality,
                                        self.batch_size, self.run.mesh,
                                        desc=f'embed {modality}', progress=progress)

  def dispatch(self, images: np.ndarray, modality: str):
    """Starts the features of up to `batch_size` images (n, H, W, 3) on the devices; returns
    the (batch_size, C) device array at once (rows past n are padding)."""
    count = len(images)
    if not 0 < count <= self.batch_size:
      raise ValueError(f'{count} images for a batch of {self.batch_size}')
    # extract_features' padding: the final image repeated to a full batch.
    index = np.minimum(np.arange(self.batch_size), count - 1)
    batch = sharding.gather_rows(images, index, self.run.mesh)
    return self.fns.from_batch(self.run.variables, batch, modality)

  def stream(self, paths: Sequence[str], modality: str,
             sink: Callable[[np.ndarray, list], None], workers: int = 0,
             progress: bool = True, say: Optional[Callable[[str], None]] = None
             ) -> StreamSummary:
    """Embeds the images of `paths` in order, handing each batch's features to
    `sink(features (n, C), paths)`; an image that cannot be used is named through `say` in one
    line and skipped.

    Memory holds a few batches of images and two of features, whatever the number of paths.
    """
    self.run.check_modality(modality)
    height, width = self.run.image_size
    skipped, embedded = [], 0
    bar = console.bar(desc=f'embed {modality}', total=len(paths), unit='img', leave=True,
                      enabled=progress)
    if say is None:
      if isinstance(bar, tqdm.tqdm):  # a line above the bar on a terminal, not through it
        say = lambda line: bar.write(line, file=sys.stderr)
      else:
        say = lambda line: console.line(line, file=sys.stderr)
    in_flight = None  # (device features, count, paths) of the batch dispatched last

    def finish(flight):
      features, count, kept = flight
      sink(sharding.to_host(features)[:count].astype(np.float32), kept)

    try:
      for batch in images_lib.read_batches(paths, height, width, self.batch_size, workers):
        for reason in batch.skipped:
          say(f'skipped: {reason}')
        skipped += batch.skipped
        if len(batch.paths):
          dispatched = (self.dispatch(batch.images, modality), len(batch.paths), batch.paths)
          if in_flight is not None:
            finish(in_flight)  # the device already works on `dispatched`
          in_flight = dispatched
          embedded += len(batch.paths)
        bar.update(batch.consumed)
      if in_flight is not None:
        finish(in_flight)
    finally:
      bar.close()
    return StreamSummary(embedded, skipped)

  def to_file(self, paths: Sequence[str], modality: str, out: str, workers: int = 0,
              progress: bool = True, say=None) -> StreamSummary:
    """`stream` into an embeddings file (inference/store.py) at `out`."""
    self.run.check_modality(modality)
    with store.EmbeddingsWriter(out, self.run.model.num_features,
                                store.metadata(self.run, modality)) as writer:
      summary = self.stream(paths, modality, writer.write, workers, progress, say)
      writer.close(summary.skipped)
    return summary

  def to_memory(self, paths: Sequence[str], modality: str, workers: int = 0,
                progress: bool = True, say=None) -> store.Embeddings:
    """`stream` into memory: an `Embeddings` with the run's metadata."""
    features, kept = [], []

    def keep(batch_features, batch_paths):
      features.append(batch_features)
      kept.extend(batch_paths)

    summary = self.stream(paths, modality, keep, workers, progress, say)
    meta = store.metadata(self.run, modality)
    stacked = (np.concatenate(features) if features else
               np.zeros((0, self.run.model.num_features), np.float32))
    return store.Embeddings(
        features=stacked, paths=np.array(kept, dtype=str), modality=modality,
        checkpoint=meta['checkpoint'], checkpoint_epoch=int(meta['checkpoint_epoch']),
        weights_sha256=meta['weights_sha256'], extraction=self.run.extraction(),
        config=meta['config'], skipped=np.array(summary.skipped, dtype=str))
