"""RegDB on disk: find the folder and list the files of one trial's split.

Layout (as distributed with the idx files of Ye et al.'s cross-modal re-id code):
`RegDB/Visible/<person>/*.bmp`, `RegDB/Thermal/<person>/*.bmp` and
`RegDB/idx/{train,test}_{visible,thermal}_{1..10}.txt`, each line `relative/path label`.
Trial t (1..10) is the split of those ten files; each is its own training run (docs/mbccm.md,
"Data").
The label of the idx file is the identity; visible images carry camera 1, thermal camera 2.
"""

import os

from vireid_jax.data import filelist
from vireid_jax.data.errors import DatasetError
from vireid_jax.data.filelist import FileList, make_file_list
from vireid_jax.data.types import INFRARED, VISIBLE

TRIALS = tuple(range(1, 11))
VISIBLE_CAM, THERMAL_CAM = 1, 2
# Names the dataset folder goes by under `root`: the official one, and ADCA's `data/regdb`.
FOLDER_NAMES = ('RegDB', 'regdb')
_FILE_MODALITY = {VISIBLE: 'visible', INFRARED: 'thermal'}
_CAM = {VISIBLE: VISIBLE_CAM, INFRARED: THERMAL_CAM}

EXPECTED = ('Visible/, Thermal/ and idx/{train,test}_{visible,thermal}_{1..10}.txt '
            '(lines "Visible/<person>/<file>.bmp <label>")')


def locate(root: str) -> str:
  """Finds the RegDB folder: `root/RegDB` (or ADCA's `root/regdb`) or `root` itself."""
  for folder in [os.path.join(root, name) for name in FOLDER_NAMES] + [root]:
    if os.path.isdir(os.path.join(folder, 'idx')):
      return folder
  raise DatasetError(
      f'RegDB not found at {os.path.abspath(root)}: expected {root}/RegDB (or {root} itself) '
      f'holding {EXPECTED}; set --config.data.root to the folder that holds RegDB/ '
      '(or --config.data.synthetic=True to generate the synthetic stand-in there)')


def split_file(dataset_dir: str, split: str, modality: str, trial: int) -> str:
  """Path of idx/{split}_{visible|thermal}_{trial}.txt."""
  return os.path.join(dataset_dir, 'idx', f'{split}_{_FILE_MODALITY[modality]}_{trial}.txt')


def read_split_file(dataset_dir: str, path: str) -> list[tuple[str, int]]:
  """Reads `relative/path label` lines; every named image must exist under dataset_dir."""
  return filelist.read_labelled_list(dataset_dir, path, 'RegDB',
                                     'Visible/<person>/<file>.bmp <label>')


def list_split(dataset_dir: str, trial: int, split: str) -> tuple[FileList, FileList]:
  """Lists the (visible, thermal) files of one trial's split in the idx files' order.

  Args:
    dataset_dir: the RegDB folder (from `locate`).
    trial: 1..10.
    split: 'train' or 'test'.

  Returns:
    (visible, infrared) FileLists; pids are the idx labels, cams 1 (visible) / 2 (thermal).
  """
  if trial not in TRIALS:
    raise DatasetError(f'RegDB trial {trial}: expected one of 1..10 (--config.data.trial)')
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  lists = []
  for modality in (VISIBLE, INFRARED):
    rows = read_split_file(dataset_dir, split_file(dataset_dir, split, modality, trial))
    lists.append(make_file_list(
        dataset_dir, [(path, label, _CAM[modality]) for path, label in rows], modality))
  return lists[0], lists[1]
