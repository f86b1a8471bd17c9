"""The synthetic generator: layouts, counts, determinism, and what crosses modalities."""

import dataclasses
import hashlib
import json
import os

import numpy as np
from PIL import Image
import pytest

from vireid_jax.data import DatasetError
from vireid_jax.data import render
from vireid_jax.data import synthetic

SIZE = (48, 24)  # small files keep the tests fast; the layout does not depend on it


def _digests(folder):
  """{relative path: sha256} of every file under folder."""
  out = {}
  for parent, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_sysu_layout_and_counts(tmp_path):
  folder = synthetic.write_sysu(str(tmp_path), num_ids=7, images_per_camera=2, image_size=SIZE)
  assert folder == os.path.join(str(tmp_path), 'SYSU-MM01')
  assert sorted(os.listdir(tmp_path)) == ['SYSU-MM01']  # no temporary folder left
  splits = {}
  for split in ('train', 'val', 'test'):
    with open(os.path.join(folder, 'exp', f'{split}_id.txt')) as f:
      lines = f.read().splitlines()
    assert len(lines) == 1  # one comma-separated line, as in the release
    splits[split] = [int(t) for t in lines[0].split(',')]
  # test = 7 // 3 = 2 ids, val = (7 - 2) // 3 = 1, train = the other 4; together 1..7.
  assert [len(splits[s]) for s in ('train', 'val', 'test')] == [4, 1, 2]
  assert sorted(sum(splits.values(), [])) == list(range(1, 8))
  for cam in range(1, 7):
    assert sorted(os.listdir(os.path.join(folder, f'cam{cam}'))) == [
        f'{pid:04d}' for pid in range(1, 8)]
    for pid in range(1, 8):
      names = sorted(os.listdir(os.path.join(folder, f'cam{cam}', f'{pid:04d}')))
      assert names == ['0001.jpg', '0002.jpg']
  visible = np.asarray(Image.open(os.path.join(folder, 'cam1', '0003', '0001.jpg')))
  infrared = np.asarray(Image.open(os.path.join(folder, 'cam6', '0003', '0002.jpg')))
  assert visible.shape == infrared.shape == (*SIZE, 3)
  # Infrared files are grey stored in 3 channels (JPEG chroma may round by a level or two).
  assert np.abs(infrared.astype(int) - infrared[..., :1]).max() <= 3
  assert np.abs(visible.astype(int) - visible[..., :1]).max() > 30
  with open(os.path.join(folder, synthetic.MARKER)) as f:
    marker = json.load(f)
  assert marker['num_ids'] == 7 and marker['images_per_camera'] == 2 and marker['seed'] == 0


def test_default_sysu_counts_match_the_documentation():
  split = synthetic.sysu_id_split(synthetic.SYSU_NUM_IDS)
  assert [len(split[s]) for s in ('train', 'val', 'test')] == [32, 16, 24]
  train_ids = len(split['train']) + len(split['val'])
  per_camera = synthetic.SYSU_IMAGES_PER_CAMERA
  assert (train_ids * 4 * per_camera, train_ids * 2 * per_camera) == (960, 480)
  assert (24 * 4 * per_camera, 24 * 2 * per_camera) == (480, 240)
  trial = synthetic.regdb_trial_split(synthetic.REGDB_NUM_IDS, 1)
  assert len(trial['train']) == len(trial['test']) == 24


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
  a = _digests(synthetic.write_sysu(str(tmp_path / 'a'), 4, 1, seed=3, image_size=SIZE))
  b = _digests(synthetic.write_sysu(str(tmp_path / 'b'), 4, 1, seed=3, image_size=SIZE))
  c = _digests(synthetic.write_sysu(str(tmp_path / 'c'), 4, 1, seed=4, image_size=SIZE))
  assert a == b
  images = [k for k in a if k.endswith('.jpg')]
  assert len(images) == 4 * 6
  assert all(a[k] != c[k] for k in images)
  a = _digests(synthetic.write_regdb(str(tmp_path / 'a'), 4, 2, seed=3, image_size=SIZE))
  b = _digests(synthetic.write_regdb(str(tmp_path / 'b'), 4, 2, seed=3, image_size=SIZE))
  assert a == b


def test_regdb_layout_and_trials(tmp_path):
  folder = synthetic.write_regdb(str(tmp_path), num_ids=6, images_per_modality=3,
                                 image_size=SIZE)
  assert sorted(os.listdir(folder)) == ['Thermal', 'Visible', 'idx', synthetic.MARKER]
  assert len(os.listdir(os.path.join(folder, 'idx'))) == 40
  splits = []
  for trial in range(1, 11):
    persons = {}
    for split in ('train', 'test'):
      lines = {m: open(os.path.join(folder, 'idx', f'{split}_{m}_{trial}.txt')).read().split(
          '\n')[:-1] for m in ('visible', 'thermal')}
      for modality, rows in lines.items():
        assert len(rows) == 3 * 3  # 3 persons x 3 images
        paths, labels = zip(*(r.split(' ') for r in rows))
        assert sorted(set(map(int, labels))) == [0, 1, 2]
        prefix = 'Visible/' if modality == 'visible' else 'Thermal/'
        assert all(p.startswith(prefix) and os.path.isfile(os.path.join(folder, p))
                   for p in paths)
      # The same label is the same person in both modalities.
      folders = {m: [(r.split(' ')[1], r.split('/')[1]) for r in rows]
                 for m, rows in lines.items()}
      assert folders['visible'] == folders['thermal']
      persons[split] = {int(person) for _, person in folders['visible']}
    assert persons['train'].isdisjoint(persons['test'])
    assert persons['train'] | persons['test'] == set(range(1, 7))
    splits.append(frozenset(persons['train']))
  assert len(set(splits)) > 1  # trials are different splits


def test_infrared_follows_material_not_colour():
  person = render.sample_identity(0, 5)
  camera = synthetic.SYSU_CAMERAS[3]
  recoloured = dataclasses.replace(
      person, upper=1 - person.upper, upper_second=1 - person.upper_second,
      lower_colour=1 - person.lower_colour, lower_second=1 - person.lower_second,
      bag_colour=1 - person.bag_colour,
      cap_colour=1 - person.cap_colour, shoes=1 - person.shoes)
  picture = (5, 3, 1)
  infrared = render.render(person, camera, 0, picture)
  assert np.array_equal(infrared, render.render(recoloured, camera, 0, picture))
  visible_camera = dataclasses.replace(camera, infrared=False)
  assert not np.array_equal(render.render(person, visible_camera, 0, picture),
                            render.render(recoloured, visible_camera, 0, picture))
  rematerialised = dataclasses.replace(person, upper_heat=person.upper_heat + 0.3)
  brighter = render.render(rematerialised, camera, 0, picture).astype(int)
  assert (brighter - infrared).sum() > 0  # a warmer garment is brighter in infrared


def test_refuses_to_replace_a_real_dataset(tmp_path):
  os.makedirs(tmp_path / 'SYSU-MM01' / 'cam1')
  with pytest.raises(DatasetError, match='not synthetic'):
    synthetic.write_sysu(str(tmp_path), 3, 1, image_size=SIZE)
  assert os.listdir(tmp_path / 'SYSU-MM01') == ['cam1']
  synthetic.write_regdb(str(tmp_path), 2, 1, image_size=SIZE)
  with pytest.raises(DatasetError, match='overwrite=True'):
    synthetic.write_regdb(str(tmp_path), 4, 1, image_size=SIZE)
  synthetic.write_regdb(str(tmp_path), 4, 1, image_size=SIZE, overwrite=True)
  assert synthetic.read_marker(str(tmp_path / 'RegDB'))['num_ids'] == 4
  assert sorted(os.listdir(tmp_path)) == ['RegDB', 'SYSU-MM01']


def test_llcm_layout_low_light_and_determinism(tmp_path):
  folder = synthetic.write_llcm(str(tmp_path / 'a'), num_ids=4, images_per_camera=1, seed=3,
                                image_size=SIZE)
  assert folder == os.path.join(str(tmp_path / 'a'), 'LLCM')
  assert sorted(os.listdir(folder)) == sorted(['idx', 'nir', 'test_nir', 'test_vis', 'vis',
                                               synthetic.MARKER])
  assert sorted(os.listdir(os.path.join(folder, 'idx'))) == ['test_id.txt', 'train_nir.txt',
                                                             'train_vis.txt']
  assert 'cam3' not in os.listdir(os.path.join(folder, 'test_nir'))  # no infrared camera 3
  split = synthetic.llcm_id_split(4, seed=3)
  with open(os.path.join(folder, 'idx', 'test_id.txt')) as f:
    assert f.read() == ','.join(map(str, split['test'])) + '\n'  # one comma-separated line
  for modality, tag in (('vis', 'visible'), ('nir', 'infrared')):
    with open(os.path.join(folder, 'idx', f'train_{modality}.txt')) as f:
      rows = [line.split(' ') for line in f.read().splitlines()]
    assert len(rows) == sum(len(synthetic.llcm_cameras(pid, 3)[tag]) for pid in split['train'])
    for path, label in rows:
      pid = split['train'][int(label)]
      assert path.startswith(f'{modality}/{pid:04d}/{pid:04d}_c0') and path.endswith(
          f'_{modality}.jpg')
      assert os.path.isfile(os.path.join(folder, path))
  # The same seed writes the same bytes; another seed other pictures.
  a = _digests(folder)
  assert a == _digests(synthetic.write_llcm(str(tmp_path / 'b'), 4, 1, seed=3, image_size=SIZE))
  c = _digests(synthetic.write_llcm(str(tmp_path / 'c'), 4, 1, seed=4, image_size=SIZE))
  assert sum(k in c and a[k] != c[k] for k in a if k.endswith('.jpg')) > 0
  assert sorted(os.listdir(tmp_path / 'a')) == ['LLCM']  # no temporary folder left


def test_llcm_visible_pictures_are_low_light():
  # The same people by day (SYSU-MM01's visible cameras) and at LLCM's night-time light.
  day, night = [], []
  for pid in range(1, 5):
    person = render.sample_identity(0, pid)
    for cam in synthetic.llcm_cameras(pid)['visible']:
      night.append(render.render(person, synthetic.LLCM_CAMERAS[cam]['visible'], 0,
                                 (pid, cam, 1, 0), SIZE).mean())
    for cam in (1, 2, 4, 5):
      day.append(render.render(person, synthetic.SYSU_CAMERAS[cam], 0, (pid, cam, 1),
                               SIZE).mean())
  assert max(night) < np.mean(day) and np.mean(night) < 0.5 * np.mean(day)


def test_default_llcm_counts_match_the_documentation():
  split = synthetic.llcm_id_split(synthetic.LLCM_NUM_IDS)
  assert (len(split['train']), len(split['test'])) == (24, 12)
  per_camera = synthetic.LLCM_IMAGES_PER_CAMERA
  counts = {part: [sum(len(synthetic.llcm_cameras(pid)[m]) * per_camera for pid in pids)
                   for m in ('visible', 'infrared')] for part, pids in split.items()}
  assert counts == {'train': [288, 216], 'test': [144, 108]}
  assert all(3 not in synthetic.llcm_cameras(pid)['infrared']
             for pid in range(1, synthetic.LLCM_NUM_IDS + 1))
