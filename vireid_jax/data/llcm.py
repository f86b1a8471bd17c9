"""LLCM on disk: find the folder and list the files of the train or test split.

LLCM (Zhang and Wang, CVPR 2023, "Diverse Embedding Expansion Network and Low-Light
Cross-Modality Benchmark"): 1,064 identities seen by 9 cameras, each switching between visible
light by day and near-infrared (NIR) by night, about 46.7k images; 713 identities train (the
class count of the authors' test.py), the other 351 test. The layout, as the dataset authors'
code (ZYK100/LLCM, DEEN/data_loader.py and data_manager.py) reads it:

    LLCM/idx/train_vis.txt, idx/train_nir.txt   lines "vis/0001/0001_c01_s..._vis.jpg <label>"
    LLCM/idx/test_id.txt                        one line of comma-separated test ids
    LLCM/vis/<pid>/..., LLCM/nir/<pid>/...      the training images the lists name
    LLCM/test_vis/cam1..cam9/<pid %04d>/*.jpg   visible test images
    LLCM/test_nir/cam1..cam9/<pid %04d>/*.jpg   infrared test images (no cam3: see below)

What we take from the authors' code, and where we differ:

* Training: paths in the list files are relative to the LLCM folder; the label is the identity
  (the authors train a classifier on it, so it is the same number in both lists). Labels are
  kept only for diagnostics, as SYSU-MM01's ids are: the unsupervised trainer never reads them.
  The authors' loader only joins the listed paths to the root; the paths themselves
  (`nir/0351/0351_c06_s200656_f4830_nir.jpg`: the camera is in the file name, not in a folder)
  are as peer codebases quote them.
* Test: ids come from idx/test_id.txt; for each id (ascending) and camera (in the authors'
  order), the files of `test_{vis,nir}/cam<k>/<pid>/` sorted by name. The authors list visible
  cameras 1-9 and infrared cameras 1, 2, 4-9 (no test_nir/cam3); a missing camera folder is
  skipped, as theirs is. (Peer codebases also read idx/test_vis.txt and idx/test_nir.txt; the
  authors' test code does not, nor do we.)
* Camera and identity come from the path's components relative to the LLCM folder: the
  `cam<k>` folder and the `<pid>` folder below it for test images, the `_c<k>_` field of the
  file name for training images. The authors' test parser reads both after the first "cam"
  anywhere in the absolute path, so with a root like /data/camera_ready/LLCM every test image's
  camera and identity come out wrong, or the parse fails.
"""

import os
import re

from vireid_jax.data import filelist
from vireid_jax.data.errors import DatasetError
from vireid_jax.data.filelist import FileList, make_file_list
from vireid_jax.data.types import INFRARED, VISIBLE

# Names the dataset folder goes by under `root`: the release's, and peer codebases' `data/llcm`.
FOLDER_NAMES = ('LLCM', 'llcm')
# Test cameras per modality, as the authors' process_query_llcm / process_gallery_llcm list them.
TEST_CAMS = {VISIBLE: (1, 2, 3, 4, 5, 6, 7, 8, 9), INFRARED: (1, 2, 4, 5, 6, 7, 8, 9)}
TEST_FOLDERS = {VISIBLE: 'test_vis', INFRARED: 'test_nir'}
TRAIN_LISTS = {VISIBLE: 'idx/train_vis.txt', INFRARED: 'idx/train_nir.txt'}
TEST_ID_FILE = 'idx/test_id.txt'
TRAIN_EXAMPLE = {VISIBLE: 'vis/0001/0001_c01_s185535_f7010_vis.jpg <label>',
                 INFRARED: 'nir/0001/0001_c01_s185535_f7010_nir.jpg <label>'}
_CAMERA_FOLDER = re.compile(r'^cam(\d+)$')
_FILE_NAME = re.compile(r'^(\d+)_c(\d+)_')  # <pid>_c<cam>_s<..>_f<..>_{vis,nir}.jpg

EXPECTED = ('idx/{train_vis,train_nir,test_id}.txt, the training folders they name (vis/, '
            'nir/) and test_vis/, test_nir/ holding cam<k>/<pid>/*.jpg')


def locate(root: str) -> str:
  """Finds the LLCM folder: `root/LLCM` (or `root/llcm`) or `root` itself."""
  for folder in [os.path.join(root, name) for name in FOLDER_NAMES] + [root]:
    if os.path.isdir(os.path.join(folder, 'idx')) and any(
        os.path.exists(os.path.join(folder, name))
        for name in (*TEST_FOLDERS.values(), *TRAIN_LISTS.values())):
      return folder
  raise DatasetError(
      f'LLCM not found at {os.path.abspath(root)}: expected {root}/LLCM (or {root} itself) '
      f'holding {EXPECTED}; set --config.data.root to the folder that holds LLCM/ '
      '(or --config.data.synthetic=True to generate the synthetic stand-in there)')


def camera_of(relative_path: str) -> int:
  """The camera of an image path relative to the LLCM folder.

  The `cam<k>` folder of a test path (`test_nir/cam2/0005/x.jpg`), else the `_c<k>_` field of
  the file name (`nir/0005/0005_c02_s193520_f2410_nir.jpg`). Only the path below the dataset
  folder is looked at, so the folders above it may be named anything.

  Raises:
    DatasetError: neither is there.
  """
  parts = relative_path.replace('\\', '/').split('/')
  for part in parts[:-1]:
    match = _CAMERA_FOLDER.match(part)
    if match:
      return int(match.group(1))
  match = _FILE_NAME.match(parts[-1])
  if match is None:
    raise DatasetError(f'LLCM image {relative_path}: cannot tell its camera: expected a '
                       'cam<k>/ folder or a file name like <pid>_c<cam>_s<n>_f<n>_vis.jpg')
  return int(match.group(2))


def _list_train(dataset_dir: str) -> dict[str, list[tuple[str, int, int]]]:
  rows = {}
  for modality, name in TRAIN_LISTS.items():
    path = os.path.join(dataset_dir, name)
    listed = filelist.read_labelled_list(dataset_dir, path, 'LLCM', TRAIN_EXAMPLE[modality])
    rows[modality] = [(relative, label, camera_of(relative)) for relative, label in listed]
  # Every training identity has images of both modalities (the authors' identity sampler
  # draws both for each); a label in one list only means a truncated or mismatched list.
  labels = {modality: {row[1] for row in modality_rows} for modality, modality_rows in
            rows.items()}
  for modality, other in ((VISIBLE, INFRARED), (INFRARED, VISIBLE)):
    missing = sorted(labels[other] - labels[modality])
    if missing:
      raise DatasetError(
          f'{os.path.join(dataset_dir, TRAIN_LISTS[modality])} has no image of label(s) '
          f'{missing[:10]}{" ..." if len(missing) > 10 else ""}, which '
          f'{TRAIN_LISTS[other]} lists: every LLCM training identity has visible and '
          'infrared images; check that the two list files belong together')
  return rows


def _list_test(dataset_dir: str) -> dict[str, list[tuple[str, int, int]]]:
  for folder in TEST_FOLDERS.values():
    if not os.path.isdir(os.path.join(dataset_dir, folder)):
      raise DatasetError(f'LLCM test folder missing: {os.path.join(dataset_dir, folder)}: '
                         'expected cam1..cam9, each holding one folder per test identity '
                         '(0001, 0002, ...)')
  id_file = os.path.join(dataset_dir, TEST_ID_FILE)
  pids = sorted(set(filelist.read_id_file(id_file, 'LLCM')))
  rows = {VISIBLE: [], INFRARED: []}
  for pid in pids:
    for modality, cams in TEST_CAMS.items():
      found = 0
      for cam in cams:
        relative = f'{TEST_FOLDERS[modality]}/cam{cam}/{pid:04d}'
        folder = os.path.join(dataset_dir, relative)
        if os.path.isdir(folder):  # not every identity passes every camera
          names = filelist.image_names(folder)
          rows[modality].extend((f'{relative}/{name}', pid, cam) for name in names)
          found += len(names)
      if not found:
        raise DatasetError(
            f'{id_file} names id {pid}, but it has no {modality} test image: expected '
            f'images in at least one of {dataset_dir}/{TEST_FOLDERS[modality]}/'
            f'cam{{{",".join(map(str, cams))}}}/{pid:04d}/')
  return rows


def list_split(dataset_dir: str, split: str) -> tuple[FileList, FileList]:
  """Lists the (visible, infrared) files of a split.

  Args:
    dataset_dir: the LLCM folder (from `locate`).
    split: 'train' (the list files' order; pids are their labels) or 'test' (ordered by
      identity, camera, file name, as the authors' code lists them).

  Returns:
    (visible, infrared) FileLists with paths relative to dataset_dir; cams 1..9 in both
    modalities (a camera records visible light by day and NIR by night).
  """
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  rows = _list_train(dataset_dir) if split == 'train' else _list_test(dataset_dir)
  return (make_file_list(dataset_dir, rows[VISIBLE], VISIBLE),
          make_file_list(dataset_dir, rows[INFRARED], INFRARED))
