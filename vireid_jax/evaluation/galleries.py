"""Gallery draws: which test images form the gallery of one trial.

SYSU-MM01 and LLCM draw their galleries the same way, the SYSU-MM01 authors' way: for every
test identity (ascending) and every gallery camera (ascending), with that (identity, camera)'s
images ordered by file name, single-shot picks one with `random.Random(trial).choice`, exactly
the reference codes' `random.seed(trial)` + `random.choice(sorted files)`, so trial t gives
their gallery t on the raw folders. `one_per_identity_camera` is that draw;
`gallery_indices` is SYSU-MM01's (single- or multi-shot over its search mode's cameras).
"""

import os
import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

SYSU_GALLERY_CAMERAS = {
    'all': (1, 2, 4, 5),  # all-search: every visible camera
    'indoor': (1, 2),  # indoor-search: the two indoor visible cameras
}


def _check(pids: np.ndarray, cams: np.ndarray, paths: Optional[Sequence[str]], caller: str):
  pids = np.asarray(pids).reshape(-1)
  cams = np.asarray(cams).reshape(-1)
  if len(pids) == 0:
    raise ValueError(f'{caller} got an empty test set')
  if len(pids) != len(cams) or (paths is not None and len(paths) != len(pids)):
    raise ValueError(f'{caller}: {len(pids)} pids, {len(cams)} cams'
                     + ('' if paths is None else f', {len(paths)} paths'))
  return pids, cams


def _identity_camera_groups(pids: np.ndarray, cams: np.ndarray,
                            paths: Optional[Sequence[str]]) -> Dict[Tuple[int, int], np.ndarray]:
  """{(identity, camera): indices}, each group ordered by file name like the reference's sorted
  folder listing (and the data readers); without paths, by position in the ImageSet."""
  if paths is None:
    order = np.lexsort((cams, pids))
  else:
    paths = np.asarray([str(path) for path in paths])
    names = np.asarray([os.path.basename(path) for path in paths])
    order = np.lexsort((paths, names, cams, pids))
  keys = np.stack([pids[order], cams[order]], axis=1)
  starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
  return {(int(pids[order[start]]), int(cams[order[start]])): order[start:stop]
          for start, stop in zip(starts, np.r_[starts[1:], len(order)])}


def _draw(pids: np.ndarray, cams: np.ndarray, cameras: Sequence[int],
          paths: Optional[Sequence[str]],
          pick: Callable[[np.ndarray], List[int]]) -> np.ndarray:
  """Sorted indices `pick` chooses from each (identity, camera) group, visited in the order
  identity, then `cameras`; a missing group is skipped without a draw, as the reference skips
  a missing camera folder."""
  groups = _identity_camera_groups(pids, cams, paths)
  chosen: List[int] = []
  for pid in np.unique(pids):
    for cam in cameras:
      members = groups.get((int(pid), int(cam)))
      if members is not None:
        chosen.extend(pick(members))
  return np.sort(np.asarray(chosen, np.int64))


def one_per_identity_camera(pids: np.ndarray, cams: np.ndarray, trial: int,
                            cameras: Optional[Sequence[int]] = None,
                            paths: Optional[Sequence[str]] = None) -> np.ndarray:
  """The reference single-shot gallery: one random image per (identity, camera).

  Args:
    pids: (N,) identities of the test images to draw from.
    cams: (N,) their cameras.
    trial: the draw; `random.Random(trial)` makes it (the reference's `random.seed(trial)`).
    cameras: the gallery cameras, in the reference's order; None: every camera present,
      ascending.
    paths: (N,) image paths; order each group by file name like the reference. None keeps the
      given order.

  Returns:
    (M,) int64 sorted indices, one per (identity, camera) present.
  """
  pids, cams = _check(pids, cams, paths, 'one_per_identity_camera')
  cameras = np.unique(cams).tolist() if cameras is None else cameras
  rng = random.Random(int(trial))
  return _draw(pids, cams, cameras, paths, lambda members: [int(rng.choice(list(members)))])


def gallery_indices(pids: np.ndarray, cams: np.ndarray, mode: str = 'all', shots: int = 1,
                    trial: int = 0, paths: Optional[Sequence[str]] = None) -> np.ndarray:
  """Draws one SYSU-MM01 gallery out of the visible test images.

  Single-shot is `one_per_identity_camera` over the cameras of `mode` (in the order 1, 2, 4,
  5), so trial t gives the reference's gallery t on the raw SYSU-MM01 layout (a Market-style
  copy renames files, so its draws differ). Multi-shot picks `shots` images per (identity,
  camera) without replacement with `np.random.RandomState(trial).choice` (peer codebases use
  the unseeded global numpy generator here, so their multi-shot galleries are not
  reproducible; ours equal theirs after `np.random.seed(trial)`), or all of them when a camera
  has fewer.

  Args:
    pids: (N,) identities of the visible test ImageSet.
    cams: (N,) its cameras (1, 2, 4, 5; others are never picked).
    mode: 'all' (cameras 1, 2, 4, 5) or 'indoor' (cameras 1, 2).
    shots: images per (identity, camera): 1 single-shot, 10 multi-shot.
    trial: the gallery draw (the standard report averages trials 0-9).
    paths: (N,) image paths; orders each (identity, camera)'s images like the reference's
      sorted file list. None keeps the ImageSet's order.

  Returns:
    (M,) int64 sorted indices into the visible test set.
  """
  if mode not in SYSU_GALLERY_CAMERAS:
    raise ValueError(f'SYSU-MM01 search mode must be one of {sorted(SYSU_GALLERY_CAMERAS)}, '
                     f'got {mode!r}')
  if shots < 1:
    raise ValueError(f'shots must be >= 1 (1 single-shot, 10 multi-shot), got {shots}')
  pids, cams = _check(pids, cams, paths, 'gallery_indices')
  cameras = SYSU_GALLERY_CAMERAS[mode]
  if shots == 1:
    chosen = one_per_identity_camera(pids, cams, trial, cameras, paths)
  else:
    rng = np.random.RandomState(int(trial))

    def pick(members):
      if len(members) <= shots:
        return [int(i) for i in members]
      return [int(i) for i in members[rng.choice(len(members), shots, replace=False)]]

    chosen = _draw(pids, cams, cameras, paths, pick)
  if not len(chosen):
    raise ValueError(f'No visible test image from cameras {cameras} (cameras present: '
                     f'{sorted(set(cams.tolist()))}): is this the visible SYSU-MM01 test set?')
  return chosen
