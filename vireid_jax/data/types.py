"""The in-memory form of a dataset split that every other module consumes."""

import dataclasses

import numpy as np

VISIBLE = 'visible'
INFRARED = 'infrared'
MODALITIES = (VISIBLE, INFRARED)


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """One modality of one split, images already resized to the configured size.

  Attributes:
    images: (N, H, W, 3) uint8 RGB (infrared images are stored as 3 channels, as on disk).
    pids: (N,) int64 true identities; used only to score and for diagnostics, never to train.
    cams: (N,) int64 camera numbers (SYSU-MM01: 1..6; RegDB: 1 visible, 2 thermal; LLCM: 1..9
      in both modalities, each camera filming visible light by day and near-infrared by night).
    paths: (N,) str source paths relative to the dataset root.
    modality: VISIBLE or INFRARED.
  """

  images: np.ndarray
  pids: np.ndarray
  cams: np.ndarray
  paths: np.ndarray
  modality: str

  def __post_init__(self):
    n = len(self.images)
    if not (len(self.pids) == len(self.cams) == len(self.paths) == n):
      raise ValueError(
          f'ImageSet fields disagree in length: images {n}, pids {len(self.pids)}, '
          f'cams {len(self.cams)}, paths {len(self.paths)}')
    if self.modality not in MODALITIES:
      raise ValueError(f'modality must be one of {MODALITIES}, got {self.modality!r}')

  def __len__(self) -> int:
    return len(self.images)

  def without_images(self) -> 'ImageSet':
    """The same labels with a (N, 0, 0, 3) placeholder, once the pixels live elsewhere."""
    return ImageSet(np.zeros((len(self), 0, 0, 3), np.uint8), self.pids, self.cams, self.paths,
                    self.modality)

  def subset(self, index: np.ndarray) -> 'ImageSet':
    return ImageSet(self.images[index], self.pids[index], self.cams[index], self.paths[index],
                    self.modality)
