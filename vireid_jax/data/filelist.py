"""What the dataset readers share: the file list of a split, and the split files they read."""

import dataclasses
import os
import re

import numpy as np

from vireid_jax.data.errors import DatasetError
from vireid_jax.data.types import MODALITIES

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


@dataclasses.dataclass(frozen=True)
class FileList:
  """What a reader finds on disk: the files of one modality of one split, in a fixed order.

  Attributes:
    root: the dataset folder the paths are relative to.
    paths: (N,) str paths relative to `root`, '/'-separated.
    pids: (N,) int64 true identities.
    cams: (N,) int64 camera numbers.
    modality: 'visible' or 'infrared'.
  """

  root: str
  paths: np.ndarray
  pids: np.ndarray
  cams: np.ndarray
  modality: str

  def __post_init__(self):
    if not len(self.paths) == len(self.pids) == len(self.cams):
      raise ValueError(f'FileList fields disagree in length: paths {len(self.paths)}, '
                       f'pids {len(self.pids)}, cams {len(self.cams)}')
    if self.modality not in MODALITIES:
      raise ValueError(f'modality must be one of {MODALITIES}, got {self.modality!r}')

  def __len__(self) -> int:
    return len(self.paths)


def make_file_list(root: str, rows: list[tuple[str, int, int]], modality: str) -> FileList:
  """Builds a FileList from (relative path, pid, cam) rows, keeping their order."""
  paths = np.array([r[0] for r in rows], dtype=object).astype(str) if rows else np.zeros(
      0, dtype=str)
  pids = np.array([r[1] for r in rows], dtype=np.int64)
  cams = np.array([r[2] for r in rows], dtype=np.int64)
  return FileList(root, paths, pids, cams, modality)


def image_names(folder: str) -> list[str]:
  """The image files directly in `folder`, sorted by name (the reference codes' order)."""
  return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))


def read_id_file(path: str, dataset: str) -> list[int]:
  """Reads an id file: comma-separated identity numbers (one line in SYSU-MM01 and LLCM).

  Args:
    path: the file (SYSU-MM01 exp/*_id.txt, LLCM idx/test_id.txt).
    dataset: the dataset's name, for the error messages.
  """
  if not os.path.isfile(path):
    raise DatasetError(f'{dataset} split file missing: {path}: expected one line of '
                       'comma-separated ids, e.g. "1,2,4,5"')
  with open(path, encoding='utf-8') as f:
    text = f.read()
  tokens = [t for t in re.split(r'[,\s]+', text) if t]
  if not tokens:
    raise DatasetError(f'{dataset} split file {path} is empty: expected comma-separated ids')
  try:
    return [int(t) for t in tokens]
  except ValueError as error:
    raise DatasetError(f'{dataset} split file {path}: {error}; expected comma-separated '
                       'integer ids') from None


def read_labelled_list(dataset_dir: str, path: str, dataset: str,
                       example: str) -> list[tuple[str, int]]:
  """Reads `relative/path label` lines; every named image must exist under dataset_dir.

  Args:
    dataset_dir: the folder the listed paths are relative to.
    path: the list file (RegDB idx/*_{visible,thermal}_<trial>.txt, LLCM idx/train_*.txt).
    dataset: the dataset's name, for the error messages.
    example: an example line of the file, for the error messages.

  Returns:
    [(relative path with '/' separators, label)] in the file's order.
  """
  if not os.path.isfile(path):
    raise DatasetError(f'{dataset} split file missing: {path}: expected lines "{example}" '
                       '(one image per line)')
  rows = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      fields = line.split()
      if not fields:
        continue
      try:
        if len(fields) != 2:
          raise ValueError(f'{len(fields)} fields')
        relative, label = fields[0].replace('\\', '/'), int(fields[1])
      except ValueError as error:
        raise DatasetError(f'{path} line {number}: {line.strip()!r} ({error}): expected '
                           '"<relative image path> <integer label>"') from None
      if not os.path.isfile(os.path.join(dataset_dir, relative)):
        raise DatasetError(f'{path} line {number} names {relative}, but '
                           f'{os.path.join(dataset_dir, relative)} does not exist')
      rows.append((relative, label))
  if not rows:
    raise DatasetError(f'{dataset} split file {path} lists no images')
  return rows
