"""Decode and resize image files, in parallel, with a progress bar.

Every image is converted to RGB and resized once to the configured size, then kept as uint8;
infrared images are stored as 3-channel files and greyscale files are expanded to 3 channels.
The filter is Lanczos (PIL's former ANTIALIAS: MBCCM's filter, and PGM's for test images,
TS:138) unless the caller asks for bicubic (PGM's training and clustering images:
torchvision 0.9.2 `Resize((288, 144), interpolation=3)` on the `.convert('RGB')` PIL image is
`img.resize((144, 288), Image.BICUBIC)`, TS:106,408, PP:30,56).

The parallelism is a thread pool: PIL releases the GIL while it decodes and resizes, so threads
use every core (1.7x on 2 cores, where a process pool gave 1.4x), and they avoid what processes
would bring: 'spawn' re-imports the caller's main module (a script without a
`if __name__ == '__main__'` guard would recurse), and 'fork' after JAX has started its threads
can deadlock.
"""

import collections
import concurrent.futures
import os
from typing import Iterable, Iterator, Optional

import numpy as np
from PIL import Image

from vireid_jax.runtime import console
from vireid_jax.data.errors import DatasetError

_IN_FLIGHT_PER_WORKER = 8  # bounds memory when the consumer is slower than decoding

# PIL filters by name (config.data.train_resize).
RESAMPLING = {'lanczos': Image.Resampling.LANCZOS, 'bicubic': Image.Resampling.BICUBIC}


def resolve_workers(num_workers: int) -> int:
  """config.data.num_workers: 0 means every core."""
  return num_workers if num_workers > 0 else (os.cpu_count() or 1)


def decode_resize(path: str, height: int, width: int, resample: str = 'lanczos') -> np.ndarray:
  """Reads one image file, converts it to RGB and resizes it.

  Args:
    path: image file (JPEG, PNG, BMP, ...).
    height, width: output size.
    resample: 'lanczos' or 'bicubic' (a key of RESAMPLING).

  Returns:
    (height, width, 3) uint8 RGB.

  Raises:
    DatasetError: the file is missing, not an image, or truncated.
  """
  if resample not in RESAMPLING:
    raise ValueError(f'resample must be one of {tuple(RESAMPLING)}, got {resample!r}')
  try:
    with Image.open(path) as image:
      image.load()  # decode now: a truncated file raises here, not later
      image = image.convert('RGB')
      if image.size != (width, height):  # PIL's resize to the same size is a copy
        image = image.resize((width, height), RESAMPLING[resample])
      return np.asarray(image, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    raise DatasetError(f'cannot read image {path}: {error}; expected a complete JPEG/PNG/BMP '
                       'file (re-extract the dataset, or remove the file and its split '
                       'entry)') from None


def _decoded(paths: Iterable[str], height: int, width: int, workers: int,
             resample: str) -> Iterator[np.ndarray]:
  if workers <= 1:
    for path in paths:
      yield decode_resize(path, height, width, resample)
    return
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='decode') as pool:
    pending = collections.deque()
    try:
      for path in paths:
        pending.append(pool.submit(decode_resize, path, height, width, resample))
        if len(pending) >= workers * _IN_FLIGHT_PER_WORKER:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:  # an error or an abandoned generator: drop queued work
        future.cancel()


def decode_images(paths: Iterable[str], height: int, width: int, *, num_workers: int = 1,
                  desc: str = 'decoding', total: Optional[int] = None,
                  resample: str = 'lanczos') -> Iterator[np.ndarray]:
  """Yields (height, width, 3) uint8 images of `paths` in order, showing progress.

  Args:
    paths: image paths.
    height, width: output size.
    num_workers: decoding threads; 0 means one per core.
    resample: the resize filter, 'lanczos' or 'bicubic'.
    desc: progress-bar label.
    total: number of paths, for the progress bar.

  Raises:
    DatasetError: naming the first file that cannot be read.
  """
  images = _decoded(paths, height, width, resolve_workers(num_workers), resample)
  yield from console.bar(images, total=total, desc=desc, unit='img', leave=True)
