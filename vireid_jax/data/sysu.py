"""SYSU-MM01 on disk: find the folder, tell its layout, list the files of a split.

Two layouts are read, and give the same lists in the same order:

* raw, as distributed: `SYSU-MM01/cam1..cam6/<pid as 4 digits>/<nnnn>.jpg` and
  `SYSU-MM01/exp/{train_id,val_id,test_id}.txt` (one line of comma-separated ids);
* Market-1501 style, as written by the `prepare_sysu.py` of ADCA (yangbincv/ADCA) that later
  USL-VI-ReID codebases (PGM, ...) reuse: `rgb_modify/` (visible) and `ir_modify/` (infrared),
  each with `bounding_box_train/` (train + val ids), `query/` and `bounding_box_test/` (test ids,
  split arbitrarily between the two), files named `<pid>_c<cam>_<n>.jpg`. A single Market-style
  folder holding `bounding_box_train/`, `query/`, `bounding_box_test/` with both modalities mixed
  is read too; the camera number tells the modality.

Visible cameras are cam1, cam2, cam4, cam5; infrared cameras cam3 and cam6. Training uses the
ids of train_id + val_id, testing those of test_id (docs/mbccm.md, "Data").
"""

import os
import re

from vireid_jax.data import filelist
from vireid_jax.data.errors import DatasetError
from vireid_jax.data.filelist import FileList, make_file_list
from vireid_jax.data.types import INFRARED, VISIBLE

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
CAMS = {VISIBLE: VISIBLE_CAMS, INFRARED: INFRARED_CAMS}
# Names the dataset folder goes by under `root`: the official one, and ADCA's `data/sysu`.
FOLDER_NAMES = ('SYSU-MM01', 'sysu')
ID_FILES = {'train': ('train_id.txt', 'val_id.txt'), 'test': ('test_id.txt',)}
# Market-style folders per split; `query` + `bounding_box_test` together hold the test ids.
MARKET_SPLIT_DIRS = {'train': ('bounding_box_train',), 'test': ('query', 'bounding_box_test')}
MARKET_MODALITY_DIRS = {VISIBLE: 'rgb_modify', INFRARED: 'ir_modify'}
_MARKET_NAME = re.compile(r'^(-?\d+)_c(\d+)')

RAW_EXPECTED = 'cam1..cam6 and exp/{train_id,val_id,test_id}.txt (raw layout)'
MARKET_EXPECTED = ('rgb_modify/ and ir_modify/ each with bounding_box_train/, query/, '
                   'bounding_box_test/ holding <pid>_c<cam>_<n>.jpg (Market-style layout)')


def _is_raw(folder: str) -> bool:
  return os.path.isdir(os.path.join(folder, 'exp')) or any(
      os.path.isdir(os.path.join(folder, f'cam{c}')) for c in range(1, 7))


def _is_market(folder: str) -> bool:
  split_modalities = all(
      os.path.isdir(os.path.join(folder, d)) for d in MARKET_MODALITY_DIRS.values())
  return split_modalities or os.path.isdir(os.path.join(folder, 'bounding_box_train'))


def locate(root: str, layout: str = 'auto') -> tuple[str, str]:
  """Finds the SYSU-MM01 folder and its layout.

  Args:
    root: a folder holding `SYSU-MM01/` (or ADCA's `sysu/`), or the dataset folder itself.
    layout: 'raw', 'market', or 'auto' (raw when both are present: ADCA converts in place).

  Returns:
    (dataset_dir, layout) with layout 'raw' or 'market'.

  Raises:
    DatasetError: no folder with the requested layout exists.
  """
  if layout not in ('auto', 'raw', 'market'):
    raise DatasetError(f"SYSU-MM01 layout {layout!r}: expected 'auto', 'raw' or 'market'")
  candidates = [os.path.join(root, name) for name in FOLDER_NAMES] + [root]
  for folder in candidates:
    if not os.path.isdir(folder):
      continue
    if layout in ('auto', 'raw') and _is_raw(folder):
      return folder, 'raw'
    if layout in ('auto', 'market') and _is_market(folder):
      return folder, 'market'
  wanted = {'auto': f'{RAW_EXPECTED}, or {MARKET_EXPECTED}', 'raw': RAW_EXPECTED,
            'market': MARKET_EXPECTED}[layout]
  raise DatasetError(
      f'SYSU-MM01 not found at {os.path.abspath(root)}: expected {root}/SYSU-MM01 (or {root} '
      f'itself) holding {wanted}; set --config.data.root to the folder that holds SYSU-MM01/ '
      '(or --config.data.synthetic=True to generate the synthetic stand-in there)')


def read_id_file(path: str) -> list[int]:
  """Reads an exp/*_id.txt file: comma-separated identity numbers (one line in the release)."""
  return filelist.read_id_file(path, 'SYSU-MM01')


def _list_raw(dataset_dir: str, split: str) -> dict[str, list[tuple[str, int, int]]]:
  for cam in range(1, 7):
    if not os.path.isdir(os.path.join(dataset_dir, f'cam{cam}')):
      raise DatasetError(f'SYSU-MM01 camera folder missing: {dataset_dir}/cam{cam}: expected '
                         'cam1..cam6, each holding one folder per identity (0001, 0002, ...)')
  pids = []
  for name in ID_FILES[split]:
    id_file = os.path.join(dataset_dir, 'exp', name)
    for pid in read_id_file(id_file):
      if not any(os.path.isdir(os.path.join(dataset_dir, f'cam{c}', f'{pid:04d}'))
                 for c in range(1, 7)):
        raise DatasetError(
            f'{id_file} names id {pid}, but no camera has a folder for it: expected at least '
            f'one of {dataset_dir}/cam1..cam6/{pid:04d}/')
      pids.append(pid)
  rows = {VISIBLE: [], INFRARED: []}
  for pid in sorted(set(pids)):
    for modality, cams in CAMS.items():
      for cam in cams:
        relative = f'cam{cam}/{pid:04d}'
        folder = os.path.join(dataset_dir, relative)
        if os.path.isdir(folder):  # not every identity passes every camera
          rows[modality].extend((f'{relative}/{n}', pid, cam)
                                for n in filelist.image_names(folder))
  return rows


def _list_market(dataset_dir: str, split: str) -> dict[str, list[tuple[str, int, int]]]:
  # ADCA writes one tree per modality; a single Market-style tree tells modality by camera.
  per_modality = all(
      os.path.isdir(os.path.join(dataset_dir, d)) for d in MARKET_MODALITY_DIRS.values())
  rows = {VISIBLE: [], INFRARED: []}
  for modality in rows:
    parent = MARKET_MODALITY_DIRS[modality] if per_modality else ''
    folders = [os.path.join(parent, d) if parent else d for d in MARKET_SPLIT_DIRS[split]]
    present = [f for f in folders if os.path.isdir(os.path.join(dataset_dir, f))]
    if not present:
      raise DatasetError(
          f'SYSU-MM01 Market-style folder missing: {os.path.join(dataset_dir, folders[0])}: '
          f'expected {" and/or ".join(folders)} under {dataset_dir} holding '
          '<pid>_c<cam>_<n>.jpg')
    for folder in present:
      for name in filelist.image_names(os.path.join(dataset_dir, folder)):
        match = _MARKET_NAME.match(name)
        if match is None:
          raise DatasetError(f'{os.path.join(dataset_dir, folder, name)}: expected a name '
                             'like <pid>_c<cam>_<n>.jpg (Market-1501 style)')
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid < 0:
          continue  # Market-1501 convention: pid -1 marks junk images
        if cam in CAMS[modality]:
          rows[modality].append((f'{folder}/{name}', pid, cam))
        elif per_modality:  # a file in the visible tree from an infrared camera, or the reverse
          raise DatasetError(f'{os.path.join(dataset_dir, folder, name)}: camera {cam} is not '
                             f'a {modality} camera (visible: {VISIBLE_CAMS}, infrared: '
                             f'{INFRARED_CAMS})')
  # The raw layout's order: identity, camera, file name.
  for modality in rows:
    rows[modality].sort(key=lambda r: (r[1], r[2], os.path.basename(r[0]), r[0]))
  return rows


def list_split(dataset_dir: str, layout: str, split: str) -> tuple[FileList, FileList]:
  """Lists the (visible, infrared) files of a split, ordered by identity, camera, file name.

  Args:
    dataset_dir: the SYSU-MM01 folder (from `locate`).
    layout: 'raw' or 'market'.
    split: 'train' (ids of train_id + val_id) or 'test' (ids of test_id).

  Returns:
    (visible, infrared) FileLists with paths relative to dataset_dir.
  """
  if split not in ID_FILES:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  lister = {'raw': _list_raw, 'market': _list_market}[layout]
  rows = lister(dataset_dir, split)
  for modality, modality_rows in rows.items():
    if not modality_rows:
      raise DatasetError(f'SYSU-MM01 at {dataset_dir} ({layout} layout) has no {modality} '
                         f'images for the {split} split: expected images from cameras '
                         f'{CAMS[modality]}')
  return (make_file_list(dataset_dir, rows[VISIBLE], VISIBLE),
          make_file_list(dataset_dir, rows[INFRARED], INFRARED))

