"""Images from anywhere, made into what the network reads, exactly as the test protocol makes
them; and a stream of them in batches, read ahead by threads.

The test images of every dataset are decoded once by `data.decode.decode_resize`: converted to
RGB (greyscale replicated into 3 channels, alpha dropped) and resized to
`config.data.image_height x image_width` with PIL's Lanczos filter, kept as uint8; the network
normalises them with `config.data.mean / std` itself. `read_image` and `prepare_array` do the
same to a user's files and arrays (tests/inference_embed_test.py compares them with
`decode_resize`), and refuse, in one line each, what the model cannot read sensibly:

* a file that is missing, not an image or truncated;
* an image neither RGB nor greyscale (CMYK, 16-bit or floating-point greyscale, ...), which
  `convert('RGB')` would turn into something else than what the camera saw;
* an image smaller than a quarter of the network's input in height or width (72 x 36 for
  288 x 144), which the resize would blow up into a few blurred blocks.

`read_batches` streams paths as batches of decoded images: a thread pool decodes ahead (PIL
releases the GIL while it decodes and resizes; data/decode.py says why threads), at most
`prefetch_batches + 1` batches in flight, so memory does not grow with the number of images
and the decoding of the next batches overlaps the device's work on this one.
"""

import collections
import concurrent.futures
import dataclasses
import os
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from vireid_jax.data import decode
from vireid_jax.data import filelist
from vireid_jax.inference.errors import BadImage
from vireid_jax.inference.errors import InferenceError

IMAGE_EXTENSIONS = filelist.IMAGE_EXTENSIONS  # .jpg .jpeg .png .bmp, any case
# PIL modes that are RGB or greyscale (with or without alpha, palette-coded or bilevel):
# `convert('RGB')` keeps what they show. Anything else (CMYK, I;16, I, F, LAB, HSV) is refused.
RGB_OR_GREY_MODES = ('1', 'L', 'LA', 'La', 'P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX')
# The smallest image accepted, as a fraction of the network's input height and width.
MIN_SIZE_FRACTION = 0.25
# The filter of every test image (data/decode.py, data/tfds_builders.py).
RESIZE = 'lanczos'


def min_size(height: int, width: int) -> tuple[int, int]:
  """(min height, min width) of an image the model accepts, for an input of height x width."""
  return (max(1, int(np.ceil(MIN_SIZE_FRACTION * height))),
          max(1, int(np.ceil(MIN_SIZE_FRACTION * width))))


def _check_size(what: str, image_height: int, image_width: int, height: int, width: int):
  low_h, low_w = min_size(height, width)
  if image_height < low_h or image_width < low_w:
    raise BadImage(f'{what} is too small ({image_width}x{image_height} pixels, width x '
                   f'height): this model reads {width}x{height} and needs at least '
                   f'{low_w}x{low_h} (a quarter of each side)')


def _resize(image: Image.Image, height: int, width: int) -> np.ndarray:
  """`data.decode.decode_resize`'s steps on an open image: RGB, Lanczos to the size, uint8."""
  if image.mode != 'RGB':  # converting RGB to RGB is a copy: the same pixels, time spent
    image = image.convert('RGB')
  if image.size != (width, height):  # PIL's resize to the same size is a copy
    image = image.resize((width, height), decode.RESAMPLING[RESIZE])
  return np.asarray(image, dtype=np.uint8)


def read_image(path: str, height: int, width: int) -> np.ndarray:
  """(height, width, 3) uint8 RGB of the image file `path`, as the test protocol reads it.

  Raises:
    BadImage: unreadable, neither RGB nor greyscale, or too small (the message names `path`).
  """
  try:
    with Image.open(path) as image:
      image.load()  # decode now: a truncated file raises here, not later
      if image.mode not in RGB_OR_GREY_MODES:
        raise BadImage(f'{path} is neither RGB nor greyscale (PIL mode {image.mode}: e.g. CMYK '
                       f'or 16-bit): save it as 8-bit RGB or greyscale')
      _check_size(path, image.height, image.width, height, width)
      return _resize(image, height, width)
  except BadImage:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    reason = ' '.join(str(error).split()) or type(error).__name__
    raise BadImage(f'{path} cannot be read as an image ({reason})') from None


def prepare_array(image: np.ndarray, height: int, width: int, what: str = 'image') -> np.ndarray:
  """One image given as an array -> (height, width, 3) uint8, as `read_image` makes a file.

  Args:
    image: (H, W, 3) RGB or (H, W) / (H, W, 1) greyscale, uint8 (0-255).
    what: how the message of an error names the image.
  Raises:
    BadImage: another dtype or shape, or too small.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise BadImage(f'{what} has pixels of dtype {image.dtype}: expected uint8 (0-255), as an '
                   f'image file decodes (e.g. np.asarray(PIL.Image.open(path).convert("RGB")))')
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[:, :, 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
    raise BadImage(f'{what} has shape {image.shape}: expected an RGB (H, W, 3) or a '
                   f'greyscale (H, W) image')
  _check_size(what, image.shape[0], image.shape[1], height, width)
  if image.shape[:2] == (height, width) and image.ndim == 3:
    return image  # what `_resize` returns for it: the same pixels
  return _resize(Image.fromarray(image), height, width)


def prepare_arrays(images: Union[np.ndarray, Sequence[np.ndarray]], height: int,
                   width: int) -> np.ndarray:
  """Arrays -> (N, height, width, 3) uint8.

  `images` is one image ((H, W, 3) or (H, W)), a batch ((N, H, W, 3) or (N, H, W)) or a list
  of images of any sizes.
  """
  if isinstance(images, np.ndarray) and (images.ndim == 4 or (
      images.ndim == 3 and images.shape[2] not in (1, 3))):
    images = list(images)  # a batch
  elif isinstance(images, np.ndarray):
    images = [images]
  out = np.empty((len(images), height, width, 3), np.uint8)
  for i, image in enumerate(images):
    out[i] = prepare_array(image, height, width, what=f'image {i}')
  return out


# --- which files -------------------------------------------------------------------------------

def is_image_file(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


def _folder_images(folder: str) -> list[str]:
  """The image files in `folder` and below, sorted by their path under it."""
  found = []
  for parent, folders, names in os.walk(folder):
    folders.sort()
    found += [os.path.join(parent, name) for name in names if is_image_file(name)]
  return sorted(found, key=lambda p: os.path.relpath(p, folder).split(os.sep))


def _list_file_images(list_file: str) -> list[str]:
  """The images a list file names: one per line, relative to the list file's folder unless
  absolute; blank lines and lines starting with '#' are skipped; a line `path label` (RegDB's
  and LLCM's idx files) gives its path."""
  folder = os.path.dirname(list_file)
  try:
    with open(list_file, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as error:
    raise InferenceError(f'{list_file} cannot be read as a list of image paths '
                         f'({error})') from None
  paths = []
  for line in lines:
    entry = line.strip()
    if not entry or entry.startswith('#'):
      continue
    candidate = os.path.join(folder, entry)
    fields = entry.split()
    if not os.path.exists(candidate) and len(fields) > 1:
      candidate = os.path.join(folder, fields[0])  # `path label`
    paths.append(candidate)
  return paths


def list_images(sources: Union[str, Sequence[str]]) -> list[str]:
  """The image paths of `sources`, in order: each an image file, a folder (every JPEG / PNG /
  BMP in it and below, sorted) or a list file (any other file: one image path per line).

  A missing file named in a list file is kept: reading it fails, and the stream names and
  skips it like any unreadable image.

  Raises:
    InferenceError: a source that does not exist, a folder with no images, a list file that
      names none, or no source at all.
  """
  if isinstance(sources, (str, os.PathLike)):
    sources = [sources]
  sources = [os.fspath(s) for s in sources if os.fspath(s)]
  if not sources:
    raise InferenceError('no images given: name image files, folders or list files')
  paths = []
  for source in sources:
    if os.path.isdir(source):
      found = _folder_images(source)
      if not found:
        raise InferenceError(f'{source} is a folder with no images: expected JPEG, PNG or BMP '
                             f'files ({", ".join(IMAGE_EXTENSIONS)}) in it or below it')
    elif os.path.isfile(source):
      if is_image_file(source):
        found = [source]
      else:
        found = _list_file_images(source)
        if not found:
          raise InferenceError(f'{source} names no images: a list file holds one image path '
                               f'per line (relative to its folder)')
    else:
      raise InferenceError(f'{source} does not exist: expected an image file, a folder of '
                           f'images or a list file')
    paths += found
  return paths


# --- a stream of batches -----------------------------------------------------------------------

@dataclasses.dataclass
class Batch:
  """Up to `batch_size` decoded images and what was skipped while reading them.

  Attributes:
    images: (n, H, W, 3) uint8, n >= 0.
    paths: their n paths.
    skipped: the one-line reasons of the images skipped since the previous batch, in order.
    consumed: the paths this batch used up (n + len(skipped)), for a progress bar.
  """
  images: np.ndarray
  paths: list
  skipped: list
  consumed: int


def _read_or_reason(path: str, height: int, width: int):
  try:
    return read_image(path, height, width)
  except BadImage as error:
    return error


def read_batches(paths: Sequence[str], height: int, width: int, batch_size: int,
                 workers: int = 0, prefetch_batches: int = 2) -> Iterator[Batch]:
  """Yields the readable images of `paths` in order, `batch_size` at a time (the last batch may
  be smaller), each batch with the reasons of the images skipped before it.

  Args:
    workers: decoding threads; 0 = one per core.
    prefetch_batches: batches decoded ahead of the one being used: the device works on one
      batch while the threads decode the next ones.
  """
  workers = decode.resolve_workers(workers)
  limit = max(1, (prefetch_batches + 1) * batch_size)

  def flush(images, kept, skipped, consumed):
    stacked = np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8)
    return Batch(stacked, kept, skipped, consumed)

  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='embed-read') as pool:
    pending = collections.deque()
    remaining = iter(paths)
    images, kept, skipped, consumed = [], [], [], 0
    try:
      while True:
        while len(pending) < limit:
          path = next(remaining, None)
          if path is None:
            break
          pending.append((path, pool.submit(_read_or_reason, path, height, width)))
        if not pending:
          break
        path, future = pending.popleft()
        result = future.result()
        consumed += 1
        if isinstance(result, BadImage):
          skipped.append(str(result))
        else:
          images.append(result)
          kept.append(path)
        if len(images) == batch_size:
          yield flush(images, kept, skipped, consumed)
          images, kept, skipped, consumed = [], [], [], 0
      if consumed:
        yield flush(images, kept, skipped, consumed)
    finally:
      for _, future in pending:  # an error or an abandoned generator: drop queued work
        future.cancel()


def read_all(paths: Sequence[str], height: int, width: int,
             workers: int = 0) -> tuple[np.ndarray, list, list]:
  """(images, kept paths, skipped reasons) of every path, in memory (for small sets)."""
  images, kept, skipped = [], [], []
  for batch in read_batches(paths, height, width, batch_size=64, workers=workers):
    images.append(batch.images)
    kept += batch.paths
    skipped += batch.skipped
  return (np.concatenate(images) if images else np.zeros((0, height, width, 3), np.uint8),
          kept, skipped)


def optional_image(path: str, height: int, width: int) -> Optional[np.ndarray]:
  """The image, or None when it cannot be read (a picture shows a blank in its place)."""
  try:
    return read_image(path, height, width)
  except BadImage:
    return None
