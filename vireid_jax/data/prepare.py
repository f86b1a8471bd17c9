"""From `config.data` to arrays in memory: find (or generate) the dataset, prepare it once, load.

`prepare(data_cfg)` decodes and resizes every image of the dataset once into a TFDS dataset
under `cache_dir` (see tfds_builders.py); `load_train` / `load_test` read a split of it into
host memory as `ImageSet`s, preparing first when needed. The cache is keyed by dataset, layout
(SYSU-MM01) or trial (RegDB), image size, the training images' resize filter (`train_resize`,
named in the key unless Lanczos) and, for the synthetic set, its generation settings; changing
any of them prepares a new copy beside the old one. Preparation reads the dataset folder, not
the cache, so delete `cache_dir` to re-prepare after changing the files themselves.

A prepared copy found damaged (a file whose size changed since preparation, or a read error)
is moved aside to `<name>.damaged-<time>` with one line and prepared again from the dataset
folder; `load_split(prepare_missing=False)` (processes other than 0) raises
`DamagedPreparedCopy` instead, and data/shared.py has process 0 mend it.
"""

import os
import time

from absl import logging

from vireid_jax.data import llcm
from vireid_jax.data import regdb
from vireid_jax.data import synthetic
from vireid_jax.data import sysu
from vireid_jax.data.errors import DamagedPreparedCopy
from vireid_jax.data.errors import DatasetError
from vireid_jax.data.types import ImageSet
from vireid_jax.data.types import INFRARED
from vireid_jax.data.types import VISIBLE

DEFAULT_SYNTHETIC_ROOT = 'data/synthetic'  # where the synthetic set goes when root is ''
CACHE_FOLDER = 'vireid_jax_cache'  # under root when config.data.cache_dir is ''
DATASETS = ('sysu', 'regdb', 'llcm')
_NAMES = {'sysu': 'SYSU-MM01', 'regdb': 'RegDB', 'llcm': 'LLCM'}


def _root(data_cfg) -> str:
  root = data_cfg.root or (DEFAULT_SYNTHETIC_ROOT if data_cfg.synthetic else '')
  if not root:
    raise DatasetError('config.data.root is empty: set --config.data.root to the folder '
                       'holding SYSU-MM01/, RegDB/ or LLCM/ (or '
                       '--config.data.synthetic=True)')
  return os.path.abspath(os.path.expanduser(root))


def _locate(dataset: str, root: str, layout: str) -> tuple[str, str]:
  if dataset == 'sysu':
    return sysu.locate(root, layout)
  if dataset == 'llcm':
    return llcm.locate(root), 'llcm'
  return regdb.locate(root), 'regdb'


def _synthetic_settings(data_cfg) -> dict:
  """What the synthetic set of this config must have been generated with."""
  minimum = {'sysu': 3, 'regdb': 2, 'llcm': 2}[data_cfg.dataset]  # one id per split at least
  if 0 < data_cfg.synthetic_ids < minimum or data_cfg.synthetic_ids < 0:
    raise DatasetError(f'config.data.synthetic_ids = {data_cfg.synthetic_ids}: the synthetic '
                       f'{_NAMES[data_cfg.dataset]} needs at least {minimum} (0: the default)')
  if data_cfg.dataset == 'sysu':
    return {'dataset': 'sysu', 'num_ids': data_cfg.synthetic_ids or synthetic.SYSU_NUM_IDS,
            'images_per_camera': synthetic.SYSU_IMAGES_PER_CAMERA}
  if data_cfg.dataset == 'llcm':
    return {'dataset': 'llcm', 'num_ids': data_cfg.synthetic_ids or synthetic.LLCM_NUM_IDS,
            'images_per_camera': synthetic.LLCM_IMAGES_PER_CAMERA}
  return {'dataset': 'regdb', 'num_ids': data_cfg.synthetic_ids or synthetic.REGDB_NUM_IDS,
          'images_per_modality': synthetic.REGDB_IMAGES_PER_MODALITY}


def _generate(settings: dict, root: str, overwrite: bool) -> None:
  name = _NAMES[settings['dataset']]
  print(f'Writing the synthetic {name} ({settings["num_ids"]} identities) to {root}/{name}',
        flush=True)
  if settings['dataset'] == 'sysu':
    synthetic.write_sysu(root, settings['num_ids'], settings['images_per_camera'],
                         overwrite=overwrite)
  elif settings['dataset'] == 'llcm':
    synthetic.write_llcm(root, settings['num_ids'], settings['images_per_camera'],
                         overwrite=overwrite)
  else:
    synthetic.write_regdb(root, settings['num_ids'], settings['images_per_modality'],
                          overwrite=overwrite)


def find_dataset(data_cfg, generate: bool = True) -> tuple[str, str]:
  """The dataset folder and its layout, generating the synthetic set where the config asks.

  With `data_cfg.synthetic` (and `generate`), a missing dataset is generated under root (and a
  synthetic one generated with other settings is regenerated); a real dataset found there is
  used as is. The synthetic SYSU-MM01 is always in the raw layout.

  Returns:
    (dataset_dir, layout): layout 'raw' | 'market' for SYSU-MM01, 'regdb' for RegDB, 'llcm'
    for LLCM.
  """
  if data_cfg.dataset not in DATASETS:
    raise DatasetError(f'config.data.dataset = {data_cfg.dataset!r}: expected one of {DATASETS}')
  root = _root(data_cfg)
  try:
    dataset_dir, layout = _locate(data_cfg.dataset, root, data_cfg.layout)
  except DatasetError:
    if not (data_cfg.synthetic and generate):
      raise
    _generate(_synthetic_settings(data_cfg), root, overwrite=False)
    return _locate(data_cfg.dataset, root, 'auto')  # the synthetic set is in the raw layout
  marker = synthetic.read_marker(dataset_dir)
  if data_cfg.synthetic and generate and marker is not None:
    wanted = _synthetic_settings(data_cfg)
    if any(marker.get(k) != v for k, v in wanted.items()) or (
        marker.get('version') != synthetic.GENERATOR_VERSION):
      if os.path.basename(dataset_dir) != _NAMES[data_cfg.dataset]:
        raise DatasetError(f'{dataset_dir} is a synthetic set generated with {marker}, not '
                           f'{wanted}: delete it, or point --config.data.root elsewhere')
      _generate(wanted, os.path.dirname(dataset_dir), overwrite=True)
  return dataset_dir, layout


def train_resize(data_cfg) -> str:
  """config.data.train_resize ('lanczos' when a config predates it), checked."""
  from vireid_jax.data import decode  # pylint: disable=g-import-not-at-top
  name = data_cfg.get('train_resize', 'lanczos')
  if name not in decode.RESAMPLING:
    raise DatasetError(f'config.data.train_resize = {name!r}: expected one of '
                       f'{tuple(decode.RESAMPLING)} (bicubic: PGM, lanczos: MBCCM)')
  return name


def cache_key(data_cfg, dataset_dir: str, layout: str) -> str:
  """The name of the prepared copy: layout or trial, image size, training-image filter,
  synthetic settings."""
  size = f'{data_cfg.image_height}x{data_cfg.image_width}'
  key = f'trial{data_cfg.trial}_{size}' if data_cfg.dataset == 'regdb' else f'{layout}_{size}'
  resize = train_resize(data_cfg)
  if resize != 'lanczos':  # Lanczos copies keep the keys they had before this setting existed
    key += f'_train{resize}'
  marker = synthetic.read_marker(dataset_dir)
  if marker is not None:  # never mix up a synthetic set with a real one, or two synthetic sets
    key += f'_synthetic{marker["num_ids"]}ids_seed{marker["seed"]}_v{marker["version"]}'
  return key


def cache_dir(data_cfg) -> str:
  """config.data.cache_dir, or <root>/vireid_jax_cache."""
  if data_cfg.cache_dir:
    return os.path.abspath(os.path.expanduser(data_cfg.cache_dir))
  return os.path.join(_root(data_cfg), CACHE_FOLDER)


def _builder(data_cfg, generate: bool = True):
  # TFDS is imported here, not at module level: `import vireid_jax.data` stays light for the
  # decode workers and for modules that only need the types.
  from vireid_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  if not (data_cfg.image_height > 0 and data_cfg.image_width > 0):
    raise DatasetError(f'config.data.image_height/width = {data_cfg.image_height}x'
                       f'{data_cfg.image_width}: expected positive sizes')
  dataset_dir, layout = find_dataset(data_cfg, generate)
  if data_cfg.dataset == 'regdb' and data_cfg.trial not in regdb.TRIALS:
    raise DatasetError(f'config.data.trial = {data_cfg.trial}: RegDB trials are 1..10')
  config = tfds_builders.PreparedConfig(
      name=cache_key(data_cfg, dataset_dir, layout), image_height=data_cfg.image_height,
      image_width=data_cfg.image_width, layout=layout if data_cfg.dataset == 'sysu' else '',
      trial=data_cfg.trial, train_resize=train_resize(data_cfg))
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # TFDS warns that a custom config is in use: it is ours
  try:
    builder = tfds_builders.make_builder(data_cfg.dataset, config, cache_dir(data_cfg),
                                         data_cfg.num_workers)
  finally:
    logging.set_verbosity(verbosity)
  return builder, dataset_dir


def prepare(data_cfg, create: bool = True) -> str:
  """Decodes and resizes the dataset into the cache unless it is there already.

  Args:
    data_cfg: `config.data` (dataset, root, layout, cache_dir, synthetic, synthetic_ids,
      image_height, image_width, trial, num_workers).
    create: False only finds a prepared copy (raising DatasetError if there is none, and
      DamagedPreparedCopy if one of its files changed size): what the processes other than 0
      of a multi-process run do.

  Returns:
    The prepared dataset folder (a TFDS dataset: `tfds.builder_from_directory` reads it).

  Raises:
    DatasetError: missing dataset or split file, a split file naming a missing folder or file,
      an unreadable image; the message names the path and what was expected.
  """
  builder, dataset_dir = _builder(data_cfg, generate=create)
  from vireid_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  if tfds_builders.is_prepared(builder.data_dir):
    damage = tfds_builders.size_damage(os.fspath(builder.data_dir))
    if damage is None:
      return os.fspath(builder.data_dir)
    if not create:
      raise DamagedPreparedCopy(os.fspath(builder.data_dir), damage)
    return prepare_again(data_cfg, DamagedPreparedCopy(os.fspath(builder.data_dir), damage))
  if not create:
    raise DatasetError(
        f'{builder.data_dir} is not prepared, as seen from this process: with several '
        f'hosts, put config.data.cache_dir (and the dataset) on a path every host sees, or '
        f'run `python main.py --mode prepare ...` on every host first')
  return _prepare_new(data_cfg, builder, dataset_dir)


def _prepare_new(data_cfg, builder, dataset_dir: str) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from vireid_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  print(f'Preparing {_NAMES[data_cfg.dataset]} from {dataset_dir} into {builder.data_dir} '
        f'({builder.builder_config.name})', flush=True)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=dataset_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  tfds_builders.record_sizes(os.fspath(builder.data_dir))
  return os.fspath(builder.data_dir)


def prepare_again(data_cfg, damage: DamagedPreparedCopy) -> str:
  """Moves a damaged prepared copy aside (one line) and prepares it again from the dataset.

  The copy's configuration folder (`.../<builder>/<config>`, which holds its one version) is
  renamed to `<config>.damaged-<time>` and kept, so nothing is deleted.

  Returns:
    The new prepared folder.

  Raises:
    DatasetError: preparing again failed (the dataset folder is incomplete): one line naming
      the damaged copy, where it was moved and what the dataset folder lacks.
  """
  damaged = os.path.dirname(os.path.abspath(damage.prepared_dir))  # .../<builder>/<config>
  aside = f'{damaged}.damaged-{time.strftime("%Y%m%d-%H%M%S")}'
  copy = 1
  while os.path.exists(aside):
    copy += 1
    aside = f'{damaged}.damaged-{time.strftime("%Y%m%d-%H%M%S")}-{copy}'
  os.rename(damaged, aside)
  try:
    builder, dataset_dir = _builder(data_cfg)  # anew: TFDS notes what exists on creation
    print(f'The prepared copy {damaged} is damaged ({damage.reason}); moved it aside to '
          f'{os.path.basename(aside)}, preparing it again from {dataset_dir}.', flush=True)
    return _prepare_new(data_cfg, builder, dataset_dir)
  except DatasetError as error:
    raise DatasetError(
        f'the prepared copy {damaged} is damaged ({damage.reason}) and was moved aside to '
        f'{os.path.basename(aside)}; preparing it again failed: {error}') from error


def load_split(data_cfg, split: str, prepare_missing: bool = True) -> tuple[ImageSet, ImageSet]:
  """(visible, infrared) ImageSets of 'train' or 'test', preparing the cache if needed (and
  `prepare_missing`), and preparing it again if it is damaged (`prepare_missing`; else
  DamagedPreparedCopy is raised)."""
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  prepared = prepare(data_cfg, create=prepare_missing)
  try:
    return read_prepared(data_cfg, prepared, split)
  except DamagedPreparedCopy as damage:
    if not prepare_missing:
      raise
    return read_prepared(data_cfg, prepare_again(data_cfg, damage), split)


def read_prepared(data_cfg, prepared: str, split: str) -> tuple[ImageSet, ImageSet]:
  """(visible, infrared) of `split` from the prepared folder. Raises DamagedPreparedCopy."""
  from vireid_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  sets = []
  for modality in (VISIBLE, INFRARED):
    arrays = tfds_builders.read_split(prepared, f'{split}_{modality}',
                                      (data_cfg.image_height, data_cfg.image_width))
    sets.append(ImageSet(*arrays, modality=modality))
  return sets[0], sets[1]
def load_train(data_cfg) -> tuple[ImageSet, ImageSet]:
  """(visible, infrared) training images: SYSU ids of train + val, the RegDB trial's train, or
  LLCM's idx/train_vis.txt and idx/train_nir.txt.

  Images are (N, image_height, image_width, 3) uint8; pids and cams are for diagnostics only.
  """
  return load_split(data_cfg, 'train')


def load_test(data_cfg) -> tuple[ImageSet, ImageSet]:
  """(visible, infrared) test images: every SYSU test-id image of the visible cameras (1, 2, 4,
  5) and of the infrared cameras (3, 6), the RegDB trial's test visible and thermal images, or
  every LLCM test-id image of test_vis/ and test_nir/. The SYSU and LLCM query/gallery draws
  per trial are made from these by vireid_jax.evaluation."""
  return load_split(data_cfg, 'test')
