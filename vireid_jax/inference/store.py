"""Embeddings files: `.npz` written batch by batch, and read back.

An embeddings file holds

  features          (N, C) float32, L2-normalised rows, in the order of `paths`
  paths             (N,) str, the images embedded (skipped ones are not there)
  skipped           (K,) str, the one-line reason of each image that could not be used
  modality          str, 'visible' or 'infrared'
  checkpoint        str, the checkpoint folder; checkpoint_epoch int, its epoch
  weights_sha256    str, what that checkpoint computes (inference/run.py)
  extraction        str (JSON): image size, resize filter, mean / std, flip, dtype / precision
  config            str (JSON): the run's config

and `np.load(path)` reads it (no pickles). `EmbeddingsWriter` never holds more than one batch:
rows go to temporary files beside the output as they come, and `close` assembles the `.npz`
from them in chunks (the `.npy` headers need the final row count), then renames it into place,
so an interrupted run leaves no half-written file under the output's name.
"""

import dataclasses
import json
import os
import zipfile
from typing import Optional, Sequence

import numpy as np

from vireid_jax.inference.errors import InferenceError

_CHUNK_ROWS = 65536  # rows copied at a time while assembling the file
SCALARS = ('modality', 'checkpoint', 'checkpoint_epoch', 'weights_sha256', 'extraction',
           'config')


@dataclasses.dataclass
class Embeddings:
  """Features and where they came from (the fields of an embeddings file)."""
  features: np.ndarray
  paths: np.ndarray
  modality: str
  checkpoint: str = ''
  checkpoint_epoch: int = -1
  weights_sha256: str = ''
  extraction: Optional[dict] = None
  config: str = ''
  skipped: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, str))

  def __len__(self) -> int:
    return len(self.features)


def _write_npy_header(stream, dtype: np.dtype, shape: tuple) -> None:
  header = {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
            'shape': tuple(shape)}
  np.lib.format.write_array_header_1_0(stream, header)


class EmbeddingsWriter:
  """Writes an embeddings file from batches: `write(features, paths)` as they come, then
  `close(skipped)`. Used as a context manager, an exception removes the temporary files."""

  def __init__(self, path: str, num_features: int, metadata: dict):
    self.path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, f'.{os.path.basename(self.path)}.partial-{os.getpid()}')
    self._features_file, self._paths_file, self._npz_file = (
        base + '.features', base + '.paths', base + '.npz')
    self._features = open(self._features_file, 'wb')
    self._paths = open(self._paths_file, 'w', encoding='utf-8')
    self.num_features = int(num_features)
    self.metadata = metadata
    self.rows = 0
    self._longest = 1

  def write(self, features: np.ndarray, paths: Sequence[str]) -> None:
    features = np.asarray(features, np.float32)
    if features.shape != (len(paths), self.num_features):
      raise ValueError(f'features {features.shape} for {len(paths)} paths of '
                       f'{self.num_features} features')
    self._features.write(np.ascontiguousarray(features).tobytes())
    for path in paths:
      # One JSON string per line: a path may hold any character, a newline included.
      self._paths.write(json.dumps(str(path)) + '\n')
      self._longest = max(self._longest, len(str(path)))
    self.rows += len(paths)

  def _member(self, archive: zipfile.ZipFile, name: str, dtype, shape, chunks) -> None:
    with archive.open(f'{name}.npy', 'w', force_zip64=True) as member:
      _write_npy_header(member, dtype, shape)
      for chunk in chunks:
        member.write(chunk)

  def _feature_chunks(self):
    size = _CHUNK_ROWS * self.num_features * 4
    with open(self._features_file, 'rb') as f:
      while True:
        chunk = f.read(size)
        if not chunk:
          return
        yield chunk

  def _path_chunks(self, dtype):
    with open(self._paths_file, encoding='utf-8') as f:
      rows = []
      for line in f:
        rows.append(json.loads(line))
        if len(rows) == _CHUNK_ROWS:
          yield np.array(rows, dtype).tobytes()
          rows = []
      if rows:
        yield np.array(rows, dtype).tobytes()

  def close(self, skipped: Sequence[str] = ()) -> str:
    """Assembles the file and puts it at `path`; returns `path`."""
    self._features.close()
    self._paths.close()
    path_dtype = np.dtype(f'<U{self._longest}')
    with zipfile.ZipFile(self._npz_file, 'w', zipfile.ZIP_STORED, allowZip64=True) as archive:
      self._member(archive, 'features', np.float32, (self.rows, self.num_features),
                   self._feature_chunks())
      self._member(archive, 'paths', path_dtype, (self.rows,), self._path_chunks(path_dtype))
      small = {'skipped': np.array(list(skipped), dtype=str)}
      small.update({key: np.array(value) for key, value in self.metadata.items()})
      for name, array in small.items():
        with archive.open(f'{name}.npy', 'w', force_zip64=True) as member:
          np.lib.format.write_array(member, array, allow_pickle=False)
    os.replace(self._npz_file, self.path)
    self._remove(self._features_file, self._paths_file)
    return self.path

  @staticmethod
  def _remove(*paths):
    for path in paths:
      try:
        os.remove(path)
      except FileNotFoundError:
        pass

  def abort(self) -> None:
    self._features.close()
    self._paths.close()
    self._remove(self._features_file, self._paths_file, self._npz_file)

  def __enter__(self):
    return self

  def __exit__(self, kind, value, traceback):
    if kind is not None:
      self.abort()


def metadata(run, modality: str) -> dict:
  """The fields that say where embeddings of `modality` by `run` came from."""
  return {'modality': modality, 'checkpoint': run.checkpoint,
          'checkpoint_epoch': np.int64(run.epoch), 'weights_sha256': run.weights_sha256,
          'extraction': json.dumps(run.extraction(), sort_keys=True),
          'config': run.config.to_json_best_effort()}


def is_embeddings_file(path: str) -> bool:
  return os.fspath(path).lower().endswith('.npz') and os.path.isfile(path)


def load(path: str) -> Embeddings:
  """An embeddings file (written by `EmbeddingsWriter`, i.e. `--mode embed`).

  Raises:
    InferenceError: not an embeddings file.
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      fields = {name: data[name] for name in data.files}
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise InferenceError(f'{path} cannot be read as an embeddings file ({error})') from None
  missing = [name for name in ('features', 'paths', 'modality') if name not in fields]
  if missing:
    raise InferenceError(f'{path} is not an embeddings file of --mode embed (it lacks '
                         f'{", ".join(missing)})')
  scalar = lambda name, default: fields[name].item() if name in fields else default
  extraction = scalar('extraction', '')
  return Embeddings(
      features=fields['features'].astype(np.float32, copy=False), paths=fields['paths'],
      modality=str(scalar('modality', '')), checkpoint=str(scalar('checkpoint', '')),
      checkpoint_epoch=int(scalar('checkpoint_epoch', -1)),
      weights_sha256=str(scalar('weights_sha256', '')),
      extraction=json.loads(extraction) if extraction else None,
      config=str(scalar('config', '')), skipped=fields.get('skipped', np.zeros(0, str)))


def check_same_model(embeddings: Embeddings, run, path: str, force: bool = False) -> None:
  """Refuses embeddings that another checkpoint (or another extraction) made: their distances
  to this checkpoint's features mean nothing. `force` lets them through.

  Raises:
    InferenceError: naming both checkpoints, unless `force`.
  """
  if force:
    return
  differences = []
  if embeddings.weights_sha256 != run.weights_sha256:
    differences.append(f'checkpoint {embeddings.checkpoint or "(unknown)"} (weights '
                       f'{embeddings.weights_sha256[:12] or "unknown"}) where this search '
                       f'uses {run.checkpoint} (weights {run.weights_sha256[:12]})')
  elif embeddings.extraction != run.extraction():
    theirs, ours = embeddings.extraction or {}, run.extraction()
    changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    differences.append('another extraction (' + ', '.join(
        f'{k} {theirs.get(k)!r} -> {ours.get(k)!r}' for k in changed) + ')')
  if differences:
    raise InferenceError(f'{path} was embedded by {differences[0]}: embed those images again '
                         f'with this checkpoint (--mode embed), or pass --force to rank them '
                         f'anyway')
