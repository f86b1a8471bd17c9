"""The list of image files of one modality of one split, before anything is decoded."""

import dataclasses

import numpy as np

from vireid_jax.data.types import MODALITIES


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
