"""TFDS builders that store SYSU-MM01, RegDB and LLCM already decoded and resized.

Each builder reads the dataset folder the user downloaded (TFDS "manual download"), decodes and
resizes every image once in parallel, and writes four splits, `train_visible`, `train_infrared`,
`test_visible`, `test_infrared`, as array_record files of uncompressed uint8 pixels plus pid,
camera, modality and source path. Examples keep the readers' order (shuffling disabled), so the
i-th example of a split is the i-th file the reader listed.

This needs no TensorFlow: tensorflow-datasets 4.9 builds array_record datasets and reads them
back with `as_data_source` in pure Python + NumPy. A BuilderConfig per (layout or trial, image
size, training-image filter) keeps differently prepared copies apart: test images are always
resized with Lanczos, training images with `train_resize` (Lanczos for MBCCM, bicubic for PGM).
TFDS writes into an `incomplete.*` folder and renames it when every split is written, so an
interrupted preparation is never read.

A prepared copy can still be damaged later (bit rot, a truncated copy). `record_sizes` notes
the size of every file once it is prepared, and `size_damage` compares them, at no cost, each
time the copy is used; `read_split` reads every record, and Riegeli's per-chunk hashes catch
damaged content, so no checksum of the whole copy (4.3 GB for SYSU-MM01 at 288x144) is needed.
Both report damage as `DamagedPreparedCopy`.
"""

import dataclasses
import inspect
import json
import os
from typing import Optional

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from vireid_jax.data import decode
from vireid_jax.data import llcm
from vireid_jax.data import regdb
from vireid_jax.data import sysu
from vireid_jax.data.errors import DamagedPreparedCopy
from vireid_jax.data.errors import DatasetError
from vireid_jax.data.filelist import FileList

SPLITS = ('train_visible', 'train_infrared', 'test_visible', 'test_infrared')
SIZES_NAME = 'vireid_jax_file_sizes.json'  # beside TFDS's files: {file name: bytes}


@dataclasses.dataclass(eq=False)
class PreparedConfig(tfds.core.BuilderConfig):
  """How a dataset is prepared: the cache key besides the dataset itself.

  Attributes:
    image_height, image_width: every image is resized to this.
    layout: SYSU-MM01 folder layout ('raw' | 'market'); unused for RegDB and LLCM.
    trial: RegDB split 1..10; unused for SYSU-MM01 and LLCM.
    train_resize: the filter of the training splits, 'lanczos' | 'bicubic' (decode.RESAMPLING);
      the test splits are always Lanczos.
  """
  image_height: int = 288
  image_width: int = 144
  layout: str = 'raw'
  trial: int = 1
  train_resize: str = 'lanczos'


class _PreparedReidDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What both builders share: features, splits, parallel decoding."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Images resized with Lanczos, stored as uint8 with labels.'}
  DISPLAY_NAME = ''

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. TFDS's own lookup needs the `importlib_resources` backport on Python >= 3.9
    (tensorflow-datasets 4.9.10 declares it only for < 3.9) when a builder lives in a package."""
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, num_workers: int = 0, **kwargs):
    """num_workers: decoding threads (0: one per core). Other arguments go to TFDS."""
    self._num_workers = num_workers
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    shape = (config.image_height, config.image_width, 3)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.DISPLAY_NAME}, every image resized to {shape[0]}x{shape[1]}.',
        features=tfds.features.FeaturesDict({
            # Raw bytes: 30x faster to write than TFDS's default per-value encoding.
            'image': tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            'pid': np.int64,
            'camera': np.int64,
            'modality': tfds.features.Text(),
            'path': tfds.features.Text(),
        }),
        disable_shuffling=True,  # example i of a split = file i of the reader's list
    )

  def _list_split(self, dataset_dir: str, split: str) -> tuple[FileList, FileList]:
    """(visible, infrared) files of 'train' or 'test', from the dataset's reader."""
    raise NotImplementedError

  def _list_files(self, dataset_dir: str) -> dict[str, FileList]:
    files = {}
    for split in ('train', 'test'):
      visible, infrared = self._list_split(dataset_dir, split)
      files[f'{split}_visible'], files[f'{split}_infrared'] = visible, infrared
    return files

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self._list_files(os.fspath(dl_manager.manual_dir))
    return {split: self._generate_examples(split, file_list)
            for split, file_list in files.items()}

  def _generate_examples(self, split: str, file_list: FileList):
    config = self.builder_config
    paths = (os.path.join(file_list.root, p) for p in file_list.paths)
    images = decode.decode_images(
        paths, config.image_height, config.image_width, num_workers=self._num_workers,
        desc=f'{self.DISPLAY_NAME} {split}', total=len(file_list),
        resample=config.train_resize if split.startswith('train') else 'lanczos')
    for index, image in enumerate(images):
      yield index, {'image': image, 'pid': int(file_list.pids[index]),
                    'camera': int(file_list.cams[index]), 'modality': file_list.modality,
                    'path': str(file_list.paths[index])}

  def _log_download_bytes(self) -> None:
    pass  # TFDS would announce a download of unknown size; prepare() says what happens

  def _log_download_done(self) -> None:
    pass

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's preparation, with its own progress bars off: ours count images."""
    active = tfds.core.utils.tqdm_utils._active  # pylint: disable=protected-access
    tfds.display_progress_bar(False)
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      tfds.display_progress_bar(active)


class VireidSysuMm01(_PreparedReidDataset):
  """SYSU-MM01: train = ids of exp/train_id + val_id, test = ids of exp/test_id."""

  name = 'vireid_sysu_mm01'
  DISPLAY_NAME = 'SYSU-MM01'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request SYSU-MM01 from its authors (https://github.com/wuancong/SYSU-MM01), extract it so that
  <root>/SYSU-MM01/ holds cam1..cam6 and exp/ (or the Market-style conversion: rgb_modify/ and
  ir_modify/ with bounding_box_train/, query/, bounding_box_test/), then run
    python main.py --mode prepare --config configs/sysu.py --config.data.root=<root>
  """

  def _list_split(self, dataset_dir: str, split: str) -> tuple[FileList, FileList]:
    return sysu.list_split(dataset_dir, self.builder_config.layout, split)


class VireidRegdb(_PreparedReidDataset):
  """RegDB, one trial: the split of idx/{train,test}_{visible,thermal}_<trial>.txt."""

  name = 'vireid_regdb'
  DISPLAY_NAME = 'RegDB'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request RegDB ("Dongguk Body-based Person Recognition Database (DBPerson-Recog-DB1)") at
  http://dm.dongguk.edu/link.html, extract it so that <root>/RegDB/ holds Visible/, Thermal/ and
  idx/{train,test}_{visible,thermal}_{1..10}.txt, then run
    python main.py --mode prepare --config configs/regdb.py --config.data.root=<root> \\
        --config.data.trial=<1..10>
  """

  def _list_split(self, dataset_dir: str, split: str) -> tuple[FileList, FileList]:
    return regdb.list_split(dataset_dir, self.builder_config.trial, split)


class VireidLlcm(_PreparedReidDataset):
  """LLCM: train = idx/train_vis.txt + idx/train_nir.txt, test = ids of idx/test_id.txt."""

  name = 'vireid_llcm'
  DISPLAY_NAME = 'LLCM'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request LLCM from its authors (a signed release agreement, see
  https://github.com/ZYK100/LLCM), extract it so that <root>/LLCM/ holds idx/, vis/, nir/,
  test_vis/ and test_nir/, then run
    python main.py --mode prepare --config configs/llcm.py --config.data.root=<root>
  """

  def _list_split(self, dataset_dir: str, split: str) -> tuple[FileList, FileList]:
    return llcm.list_split(dataset_dir, split)


BUILDERS = {'sysu': VireidSysuMm01, 'regdb': VireidRegdb, 'llcm': VireidLlcm}


def make_builder(dataset: str, config: PreparedConfig, data_dir: str,
                 num_workers: int = 0) -> _PreparedReidDataset:
  """The builder of `dataset` ('sysu' | 'regdb' | 'llcm') for `config`, storing under
  data_dir."""
  return BUILDERS[dataset](config=config, data_dir=data_dir, file_format='array_record',
                           num_workers=num_workers)


def is_prepared(prepared_dir: str) -> bool:
  """Whether a complete prepared copy is there (TFDS renames the folder into place last)."""
  return all(os.path.isfile(os.path.join(prepared_dir, name))
             for name in ('dataset_info.json', 'features.json'))


def record_sizes(prepared_dir: str) -> None:
  """Notes the size of every file of a freshly prepared copy (for `size_damage`)."""
  sizes = {name: os.path.getsize(os.path.join(prepared_dir, name))
           for name in sorted(os.listdir(prepared_dir))
           if name != SIZES_NAME and os.path.isfile(os.path.join(prepared_dir, name))}
  temporary = os.path.join(prepared_dir, f'.{SIZES_NAME}.tmp-{os.getpid()}')
  with open(temporary, 'w') as f:
    json.dump(sizes, f, indent=1)
  os.replace(temporary, os.path.join(prepared_dir, SIZES_NAME))


def size_damage(prepared_dir: str) -> Optional[str]:
  """What differs from the sizes noted at preparation (a missing or resized file), or None.

  A copy prepared before sizes were noted has nothing to compare: None (its reads still
  catch damage)."""
  try:
    with open(os.path.join(prepared_dir, SIZES_NAME)) as f:
      sizes = json.load(f)
  except FileNotFoundError:
    return None
  except ValueError:
    return f'{SIZES_NAME} cannot be read'
  for name, size in sizes.items():
    path = os.path.join(prepared_dir, name)
    if not os.path.exists(path):
      return f'{name} is missing'
    if os.path.getsize(path) != size:
      return f'{name} has {os.path.getsize(path)} bytes, {size} when it was prepared'
  return None


def _short(error: BaseException) -> str:
  text = ' '.join(str(error).split()) or type(error).__name__
  return (text[:200] + '...') if len(text) > 200 else text


def _is_damage(error: Exception) -> bool:
  """Whether failing to read a prepared copy says that the copy is damaged: anything but our
  own checks, a permission problem (the files are fine) or a lack of memory."""
  return not (isinstance(error, (DatasetError, PermissionError, MemoryError)) or
              'Permission denied' in str(error))


def read_split(prepared_dir: str, split: str, expected_shape: Optional[tuple[int, int]] = None):
  """Loads one prepared split into host memory.

  Args:
    prepared_dir: a prepared dataset version folder (what `builder.data_dir` names).
    split: one of SPLITS.
    expected_shape: (height, width) to check the stored images against.

  Returns:
    (images (N, H, W, 3) uint8, pids (N,) int64, cams (N,) int64, paths (N,) str).

  Raises:
    DamagedPreparedCopy: a file of the copy cannot be read (Riegeli's hashes, a truncated or
      missing file, unreadable metadata).
  """
  try:
    return _read_split(prepared_dir, split, expected_shape)
  except Exception as error:  # pylint: disable=broad-except
    if not _is_damage(error):
      raise
    raise DamagedPreparedCopy(prepared_dir, f'{split}: {_short(error)}') from error


def _read_split(prepared_dir: str, split: str, expected_shape: Optional[tuple[int, int]]):
  builder = tfds.builder_from_directory(prepared_dir)
  shape = builder.info.features['image'].shape
  if expected_shape is not None and tuple(shape[:2]) != tuple(expected_shape):
    raise DatasetError(f'{prepared_dir} holds {shape[0]}x{shape[1]} images, expected '
                       f'{expected_shape[0]}x{expected_shape[1]}: delete it to prepare again')
  source = builder.as_data_source(split=split)
  count = len(source)
  images = np.empty((count, *shape), np.uint8)  # filled in place: no second copy of the split
  pids = np.empty(count, np.int64)
  cams = np.empty(count, np.int64)
  paths = []
  for index in range(count):
    example = source[index]
    images[index] = example['image']
    pids[index] = example['pid']
    cams[index] = example['camera']
    path = example['path']
    paths.append(path.decode('utf-8') if isinstance(path, bytes) else str(path))
  return images, pids, cams, np.array(paths, dtype=str)
