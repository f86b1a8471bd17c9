"""The synthetic visible/infrared dataset, written in the real datasets' layouts.

`write_sysu` writes `<root>/SYSU-MM01/` exactly as SYSU-MM01 is distributed (cam1..cam6 with one
folder per identity, exp/{train_id,val_id,test_id}.txt), `write_regdb` writes `<root>/RegDB/`
(Visible/, Thermal/, idx/{train,test}_{visible,thermal}_{1..10}.txt) and `write_llcm` writes
`<root>/LLCM/` (idx/{train_vis,train_nir,test_id}.txt, vis/, nir/, test_vis/, test_nir/), so the
demo and the tests read it with the same code as the real data. The people are drawn by
`render.py`: colour tells identities apart only in visible images; shape, garment layout and
pattern cross modalities.

Defaults (seed 0), all images 128x64:

* SYSU-MM01: 72 identities, 5 images per identity per camera. exp/ splits them into 32 train,
  16 val and 24 test ids. Training (train + val, 48 ids): 960 visible images (cam1, 2, 4, 5) and
  480 infrared images (cam3, 6). Test (24 ids): 480 visible and 240 infrared images.
* RegDB: 48 identities, 10 visible and 10 thermal images each (a visible and a thermal image
  with the same number show the same moment). Each of the 10 trials splits the ids 24 / 24:
  240 visible + 240 thermal training images and as many test images.
* LLCM: 36 identities (24 train, 12 test), 9 cameras at night-time light levels: visible
  pictures are dark (exposure 0.25-0.45 of daylight) and noisy, infrared ones are not.
  Each identity passes 4 of the 9 cameras by day and 3 of the 8 infrared ones by night (camera
  3 records no infrared, as in LLCM's test set), 3 images per camera: 288 visible + 216
  infrared training images, 144 visible + 108 infrared test images.

The same seed writes byte-identical files. A marker file records what was generated, so a
folder is only ever replaced when it is synthetic; a folder is written under a temporary name
and renamed when complete.
"""

import json
import os
import shutil
from typing import Optional

import numpy as np
from PIL import Image

from vireid_jax.data import llcm
from vireid_jax.data import regdb
from vireid_jax.data import render
from vireid_jax.data import sysu
from vireid_jax.data.errors import DatasetError

MARKER = 'vireid_synthetic.json'
GENERATOR_VERSION = 2
# The population seed of the datasets written here (render.sample_identity(seed, pid)); the
# pretraining population (vireid_jax/models/pretrain.py) must use another one.
POPULATION_SEED = 0
SYSU_NUM_IDS = 72  # 48 train+val, 24 test
SYSU_IMAGES_PER_CAMERA = 5
REGDB_NUM_IDS = 48  # 24 train / 24 test per trial
REGDB_IMAGES_PER_MODALITY = 10  # as in the real RegDB
IMAGE_SIZE = (128, 64)  # (height, width) of the files; readers resize to the configured size
JPEG_QUALITY = 90

# SYSU-MM01's cameras: cam1/cam2 indoor visible, cam3 indoor infrared in cam2's room, cam4/cam5
# outdoor visible, cam6 outdoor infrared. The casts and gains make each camera look different.
SYSU_CAMERAS = {
    1: render.Camera(location=0, infrared=False, outdoor=False, cast=(1.08, 1.0, 0.86)),
    2: render.Camera(location=1, infrared=False, outdoor=False, cast=(0.94, 1.05, 1.0)),
    3: render.Camera(location=1, infrared=True, outdoor=False, gain=1.0, offset=0.0,
                     noise=0.03),
    4: render.Camera(location=2, infrared=False, outdoor=True, cast=(0.9, 0.98, 1.12)),
    5: render.Camera(location=3, infrared=False, outdoor=True, cast=(1.05, 1.03, 0.92)),
    6: render.Camera(location=4, infrared=True, outdoor=True, gain=0.85, offset=0.08,
                     noise=0.04),
}
# RegDB: one visible and one thermal camera side by side.
REGDB_VISIBLE = render.Camera(location=5, infrared=False, outdoor=True, cast=(1.0, 1.0, 1.0))
REGDB_THERMAL = render.Camera(location=5, infrared=True, outdoor=True, gain=1.0, offset=0.02,
                              noise=0.035)
LLCM_NUM_IDS = 36  # 24 train / 12 test
LLCM_IMAGES_PER_CAMERA = 3
LLCM_CAMS_PER_ID = {'visible': 4, 'infrared': 3}  # cameras each identity passes, per modality


def _llcm_camera(cam: int) -> dict[str, render.Camera]:
  """LLCM camera `cam` (1..9): visible by day, near-infrared by night, at one place.

  The visible pictures are taken in low light (a quarter to under half of daylight) with three
  times the daylight cameras' sensor noise (a sensor's gain is turned up in the dark), so they
  are dark and grainy. Camera 3 records no infrared, as in LLCM's test set.
  """
  outdoor = cam % 3 != 0
  cameras = {'visible': render.Camera(
      location=10 + cam, infrared=False, outdoor=outdoor,
      cast=(1.0 + 0.03 * (cam % 3), 1.0, 1.06 - 0.03 * (cam % 4)),
      exposure=0.25 + 0.025 * (cam - 1), noise=0.045)}
  if cam in llcm.TEST_CAMS['infrared']:
    cameras['infrared'] = render.Camera(location=10 + cam, infrared=True, outdoor=outdoor,
                                        gain=0.9 + 0.02 * cam, offset=0.03, noise=0.035)
  return cameras


LLCM_CAMERAS = {cam: _llcm_camera(cam) for cam in range(1, 10)}
_LLCM_FOLDERS = {'train': {'visible': 'vis', 'infrared': 'nir'}, 'test': llcm.TEST_FOLDERS}
_LLCM_TAGS = {'visible': 'vis', 'infrared': 'nir'}
_SPLIT_DRAW, _TRIAL_DRAW, _CAMERA_DRAW = 5, 6, 7  # draw tags (see render.rng_for)


def read_marker(dataset_dir: str) -> Optional[dict]:
  """What a synthetic folder was generated with, or None for a real dataset."""
  path = os.path.join(dataset_dir, MARKER)
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def sysu_id_split(num_ids: int, seed: int = 0) -> dict[str, list[int]]:
  """Ids 1..num_ids split into train / val / test (test = 1/3, val = 1/3 of the rest, >= 1)."""
  if num_ids < 3:
    raise ValueError(f'the synthetic SYSU-MM01 needs at least 3 identities, got {num_ids}')
  order = render.rng_for(seed, _SPLIT_DRAW).permutation(np.arange(1, num_ids + 1))
  num_test = max(num_ids // 3, 1)
  num_val = max((num_ids - num_test) // 3, 1)
  return {'test': sorted(order[:num_test].tolist()),
          'val': sorted(order[num_test:num_test + num_val].tolist()),
          'train': sorted(order[num_test + num_val:].tolist())}


def regdb_trial_split(num_ids: int, trial: int, seed: int = 0) -> dict[str, list[int]]:
  """Persons 1..num_ids split in halves (train, test) for one trial."""
  if num_ids < 2:
    raise ValueError(f'the synthetic RegDB needs at least 2 identities, got {num_ids}')
  order = render.rng_for(seed, _TRIAL_DRAW, trial).permutation(np.arange(1, num_ids + 1))
  return {'train': sorted(order[:num_ids // 2].tolist()),
          'test': sorted(order[num_ids // 2:].tolist())}


def llcm_id_split(num_ids: int, seed: int = 0) -> dict[str, list[int]]:
  """Ids 1..num_ids split into train / test (test = a third, at least one)."""
  if num_ids < 2:
    raise ValueError(f'the synthetic LLCM needs at least 2 identities, got {num_ids}')
  order = render.rng_for(seed, _SPLIT_DRAW, 1).permutation(np.arange(1, num_ids + 1))
  num_test = max(num_ids // 3, 1)
  return {'train': sorted(order[num_test:].tolist()), 'test': sorted(order[:num_test].tolist())}


def llcm_cameras(pid: int, seed: int = 0) -> dict[str, list[int]]:
  """The cameras that see identity `pid` by day (visible) and by night (infrared), ascending.

  At least 2 per modality, so that every query keeps a correct match after LLCM's rule drops
  the gallery images of its own identity and camera.
  """
  rng = render.rng_for(seed, _CAMERA_DRAW, pid)
  cams = {}
  for modality, count in LLCM_CAMS_PER_ID.items():
    available = [cam for cam, cameras in LLCM_CAMERAS.items() if modality in cameras]
    cams[modality] = sorted(rng.choice(available, count, replace=False).tolist())
  return cams


def _prepare_target(root: str, name: str, overwrite: bool) -> tuple[str, str]:
  target = os.path.join(root, name)
  if os.path.exists(target):
    if read_marker(target) is None:
      raise DatasetError(f'refusing to write the synthetic set over {target}: it exists and is '
                         f'not synthetic (no {MARKER}); choose another --config.data.root')
    if not overwrite:
      raise DatasetError(f'{target} exists; pass overwrite=True to regenerate it')
  os.makedirs(root, exist_ok=True)
  temporary = os.path.join(root, f'.{name}.incomplete-{os.getpid()}')
  shutil.rmtree(temporary, ignore_errors=True)
  return target, temporary


def _finish(target: str, temporary: str, marker: dict) -> str:
  with open(os.path.join(temporary, MARKER), 'w', encoding='utf-8') as f:
    json.dump(marker, f, indent=1, sort_keys=True)
  if os.path.exists(target):
    shutil.rmtree(target)
  os.rename(temporary, target)
  return target


def _save(image: np.ndarray, path: str) -> None:
  if path.endswith('.jpg'):
    Image.fromarray(image).save(path, quality=JPEG_QUALITY)
  else:
    Image.fromarray(image).save(path)


def write_sysu(root: str, num_ids: int = SYSU_NUM_IDS,
               images_per_camera: int = SYSU_IMAGES_PER_CAMERA, seed: int = POPULATION_SEED,
               image_size: tuple[int, int] = IMAGE_SIZE, overwrite: bool = False) -> str:
  """Writes the synthetic SYSU-MM01 to `<root>/SYSU-MM01` in the raw layout.

  Args:
    root: parent folder (created if missing).
    num_ids: identities 1..num_ids; a third are test ids, a third of the rest val ids.
    images_per_camera: images of every identity in every one of the six cameras.
    seed: population seed; the same seed gives byte-identical files.
    image_size: (height, width) of the JPEG files.
    overwrite: replace an existing synthetic folder (a real dataset is never replaced).

  Returns:
    The dataset folder.
  """
  target, temporary = _prepare_target(root, sysu.FOLDER_NAMES[0], overwrite)
  try:
    os.makedirs(os.path.join(temporary, 'exp'))
    for split, ids in sysu_id_split(num_ids, seed).items():
      with open(os.path.join(temporary, 'exp', f'{split}_id.txt'), 'w', encoding='utf-8') as f:
        f.write(','.join(str(i) for i in ids) + '\n')
    for pid in range(1, num_ids + 1):
      person = render.sample_identity(seed, pid)
      for cam, camera in SYSU_CAMERAS.items():
        folder = os.path.join(temporary, f'cam{cam}', f'{pid:04d}')
        os.makedirs(folder)
        for n in range(1, images_per_camera + 1):
          image = render.render(person, camera, seed, (pid, cam, n), image_size)
          _save(image, os.path.join(folder, f'{n:04d}.jpg'))
    return _finish(target, temporary, {
        'dataset': 'sysu', 'num_ids': num_ids, 'images_per_camera': images_per_camera,
        'seed': seed, 'image_size': list(image_size), 'version': GENERATOR_VERSION})
  finally:
    shutil.rmtree(temporary, ignore_errors=True)


def write_regdb(root: str, num_ids: int = REGDB_NUM_IDS,
                images_per_modality: int = REGDB_IMAGES_PER_MODALITY,
                seed: int = POPULATION_SEED, image_size: tuple[int, int] = IMAGE_SIZE,
                overwrite: bool = False) -> str:
  """Writes the synthetic RegDB to `<root>/RegDB` with all ten trials' idx files.

  Args:
    root: parent folder (created if missing).
    num_ids: persons 1..num_ids; every trial trains on half of them and tests on the rest.
    images_per_modality: visible and thermal images per person (pairs share the pose).
    seed: population seed; the same seed gives byte-identical files.
    image_size: (height, width) of the BMP files.
    overwrite: replace an existing synthetic folder (a real dataset is never replaced).

  Returns:
    The dataset folder.
  """
  target, temporary = _prepare_target(root, regdb.FOLDER_NAMES[0], overwrite)
  try:
    files = {'visible': {}, 'thermal': {}}  # person -> relative paths
    for pid in range(1, num_ids + 1):
      person = render.sample_identity(seed, pid)
      for modality, folder, camera in (('visible', 'Visible', REGDB_VISIBLE),
                                       ('thermal', 'Thermal', REGDB_THERMAL)):
        os.makedirs(os.path.join(temporary, folder, str(pid)))
        paths = files[modality].setdefault(pid, [])
        for n in range(images_per_modality):
          relative = f'{folder}/{pid}/{modality[0]}_{pid:04d}_{n:02d}.bmp'
          image = render.render(person, camera, seed, (pid, n), image_size)
          _save(image, os.path.join(temporary, relative))
          paths.append(relative)
    os.makedirs(os.path.join(temporary, 'idx'))
    for trial in regdb.TRIALS:
      for split, persons in regdb_trial_split(num_ids, trial, seed).items():
        for modality, person_files in files.items():
          lines = [f'{path} {label}' for label, pid in enumerate(persons)
                   for path in person_files[pid]]
          name = os.path.join(temporary, 'idx', f'{split}_{modality}_{trial}.txt')
          with open(name, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')
    return _finish(target, temporary, {
        'dataset': 'regdb', 'num_ids': num_ids, 'images_per_modality': images_per_modality,
        'seed': seed, 'image_size': list(image_size), 'version': GENERATOR_VERSION})
  finally:
    shutil.rmtree(temporary, ignore_errors=True)


def write_llcm(root: str, num_ids: int = LLCM_NUM_IDS,
               images_per_camera: int = LLCM_IMAGES_PER_CAMERA, seed: int = POPULATION_SEED,
               image_size: tuple[int, int] = IMAGE_SIZE, overwrite: bool = False) -> str:
  """Writes the synthetic LLCM to `<root>/LLCM` in the release's layout.

  Training images go to vis/<pid>/ and nir/<pid>/, named like the release's
  (`<pid>_c<cam>_s<session>_f<frame>_{vis,nir}.jpg`) and listed in idx/train_vis.txt and
  idx/train_nir.txt with labels 0..(training ids - 1); test images go to
  test_vis/cam<k>/<pid>/ and test_nir/cam<k>/<pid>/, their ids to idx/test_id.txt. A camera
  folder exists only where some identity passed that camera; test_nir/cam3 never does.

  Args:
    root: parent folder (created if missing).
    num_ids: identities 1..num_ids; a third are test ids.
    images_per_camera: images of every identity in every camera it passes.
    seed: population seed; the same seed gives byte-identical files.
    image_size: (height, width) of the JPEG files.
    overwrite: replace an existing synthetic folder (a real dataset is never replaced).

  Returns:
    The dataset folder.
  """
  target, temporary = _prepare_target(root, llcm.FOLDER_NAMES[0], overwrite)
  try:
    split = llcm_id_split(num_ids, seed)
    train_lines = {'visible': [], 'infrared': []}
    for part, pids in split.items():
      for label, pid in enumerate(pids):
        person = render.sample_identity(seed, pid)
        for modality, cams in llcm_cameras(pid, seed).items():
          for cam in cams:
            camera_folder = f'cam{cam}/' if part == 'test' else ''  # train: no camera folders
            folder = f'{_LLCM_FOLDERS[part][modality]}/{camera_folder}{pid:04d}'
            os.makedirs(os.path.join(temporary, folder), exist_ok=True)
            session = (185000 if modality == 'visible' else 200000) + 100 * cam
            for n in range(1, images_per_camera + 1):
              # Day and night are different moments: the modality is part of the picture.
              picture = (pid, cam, n, int(modality == 'infrared'))
              image = render.render(person, LLCM_CAMERAS[cam][modality], seed, picture,
                                    image_size)
              relative = (f'{folder}/{pid:04d}_c{cam:02d}_s{session:06d}_f{10 * n:04d}_'
                          f'{_LLCM_TAGS[modality]}.jpg')
              _save(image, os.path.join(temporary, relative))
              if part == 'train':
                train_lines[modality].append(f'{relative} {label}')
    os.makedirs(os.path.join(temporary, 'idx'))
    for modality, name in llcm.TRAIN_LISTS.items():
      with open(os.path.join(temporary, name), 'w', encoding='utf-8') as f:
        f.write('\n'.join(train_lines[modality]) + '\n')
    with open(os.path.join(temporary, llcm.TEST_ID_FILE), 'w', encoding='utf-8') as f:
      f.write(','.join(str(pid) for pid in split['test']) + '\n')
    return _finish(target, temporary, {
        'dataset': 'llcm', 'num_ids': num_ids, 'images_per_camera': images_per_camera,
        'seed': seed, 'image_size': list(image_size), 'version': GENERATOR_VERSION})
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
