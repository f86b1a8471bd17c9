"""Readers of SYSU-MM01 (raw and Market-style) and RegDB on generated folders."""

import os
import shutil

import numpy as np
import pytest

from vireid_jax.data import DatasetError
from vireid_jax.data import regdb
from vireid_jax.data import synthetic
from vireid_jax.data import sysu

SIZE = (32, 16)
NUM_IDS, PER_CAMERA = 7, 2  # 4 train + 1 val + 2 test ids


@pytest.fixture(scope='module')
def sysu_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('sysu'))
  synthetic.write_sysu(root, NUM_IDS, PER_CAMERA, image_size=SIZE)
  return root


@pytest.fixture(scope='module')
def regdb_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('regdb'))
  synthetic.write_regdb(root, 6, 3, image_size=SIZE)
  return root


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def _ids(folder, name):
  with open(os.path.join(folder, 'exp', name)) as f:
    return [int(t) for t in f.read().strip().split(',')]


def test_sysu_raw_split_counts_ids_cameras(sysu_root):
  folder, layout = sysu.locate(sysu_root)
  assert (folder, layout) == (os.path.join(sysu_root, 'SYSU-MM01'), 'raw')
  train_ids = sorted(_ids(folder, 'train_id.txt') + _ids(folder, 'val_id.txt'))
  test_ids = sorted(_ids(folder, 'test_id.txt'))
  for split, ids in (('train', train_ids), ('test', test_ids)):
    visible, infrared = sysu.list_split(folder, 'raw', split)
    assert (visible.modality, infrared.modality) == ('visible', 'infrared')
    assert len(visible) == len(ids) * 4 * PER_CAMERA
    assert len(infrared) == len(ids) * 2 * PER_CAMERA
    # Ordered by identity, then camera, then file, as the reference lists them.
    expected = [(pid, cam, f'cam{cam}/{pid:04d}/{n:04d}.jpg') for pid in ids
                for cam in (1, 2, 4, 5) for n in range(1, PER_CAMERA + 1)]
    assert list(zip(visible.pids.tolist(), visible.cams.tolist(), visible.paths)) == expected
    assert sorted(set(infrared.pids.tolist())) == ids
    assert set(infrared.cams.tolist()) == {3, 6}
    assert all(p.startswith(f'cam{c}/{i:04d}/') for p, c, i in
               zip(infrared.paths, infrared.cams, infrared.pids))


def test_sysu_root_may_be_the_dataset_folder_and_missing_cameras_are_skipped(sysu_root,
                                                                                tmp_path):
  folder = _copy(os.path.join(sysu_root, 'SYSU-MM01'), str(tmp_path / 'renamed'))
  assert sysu.locate(folder) == (folder, 'raw')
  pid = _ids(folder, 'test_id.txt')[0]
  shutil.rmtree(os.path.join(folder, 'cam5', f'{pid:04d}'))  # not everyone passes every camera
  visible, _ = sysu.list_split(folder, 'raw', 'test')
  assert len(visible) == (2 * 4 - 1) * PER_CAMERA
  assert 5 not in visible.cams[visible.pids == pid]


def _to_market(raw_folder, out, single_tree=False):
  """Independent ADCA-style conversion: <pid>_c<cam>_<name>; test ids split query/gallery."""
  test_ids = set(_ids(raw_folder, 'test_id.txt'))
  for cam in range(1, 7):
    tree = '' if single_tree else ('ir_modify' if cam in (3, 6) else 'rgb_modify')
    for person in os.listdir(os.path.join(raw_folder, f'cam{cam}')):
      for k, name in enumerate(sorted(os.listdir(os.path.join(raw_folder, f'cam{cam}', person)))):
        if int(person) in test_ids:
          split = 'query' if k == 0 else 'bounding_box_test'
        else:
          split = 'bounding_box_train'
        dst = os.path.join(out, tree, split)
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(raw_folder, f'cam{cam}', person, name),
                    os.path.join(dst, f'{person}_c{cam}_{name}'))
  return out


@pytest.mark.parametrize('single_tree', [False, True])
def test_market_layout_lists_the_same_images_as_raw(sysu_root, tmp_path, single_tree):
  raw = os.path.join(sysu_root, 'SYSU-MM01')
  market = _to_market(raw, str(tmp_path / 'SYSU-MM01'), single_tree)
  assert sysu.locate(str(tmp_path)) == (market, 'market')
  for split in ('train', 'test'):
    for raw_list, market_list in zip(sysu.list_split(raw, 'raw', split),
                                     sysu.list_split(market, 'market', split)):
      assert market_list.modality == raw_list.modality
      np.testing.assert_array_equal(market_list.pids, raw_list.pids)
      np.testing.assert_array_equal(market_list.cams, raw_list.cams)
      for raw_path, market_path in zip(raw_list.paths, market_list.paths):
        with open(os.path.join(raw, raw_path), 'rb') as a, open(
            os.path.join(market, market_path), 'rb') as b:
          assert a.read() == b.read()


def test_auto_prefers_raw_when_converted_in_place(sysu_root, tmp_path):
  folder = _copy(os.path.join(sysu_root, 'SYSU-MM01'), str(tmp_path / 'sysu'))  # ADCA's name
  _to_market(folder, folder)
  assert sysu.locate(str(tmp_path)) == (folder, 'raw')
  assert sysu.locate(str(tmp_path), 'market') == (folder, 'market')


def test_regdb_trials(regdb_root):
  folder = regdb.locate(regdb_root)
  assert folder == os.path.join(regdb_root, 'RegDB')
  for trial in (1, 7):
    persons = {}
    for split in ('train', 'test'):
      visible, thermal = regdb.list_split(folder, trial, split)
      assert len(visible) == len(thermal) == 3 * 3
      assert (set(visible.cams.tolist()), set(thermal.cams.tolist())) == ({1}, {2})
      assert (visible.modality, thermal.modality) == ('visible', 'infrared')
      np.testing.assert_array_equal(visible.pids, np.repeat(np.arange(3), 3))
      np.testing.assert_array_equal(thermal.pids, visible.pids)
      assert all(p.startswith('Thermal/') for p in thermal.paths)
      persons[split] = {p.split('/')[1] for p in visible.paths}
    expected = synthetic.regdb_trial_split(6, trial)
    assert persons == {s: {str(p) for p in expected[s]} for s in ('train', 'test')}


# --- bad input: one clear error naming the path and what was expected -------------------------


def test_missing_dataset_folders(tmp_path):
  with pytest.raises(DatasetError, match=r'SYSU-MM01 not found at .*empty.*cam1\.\.cam6.*'
                                         r'--config\.data\.root'):
    sysu.locate(str(tmp_path / 'empty'))
  with pytest.raises(DatasetError, match=r'RegDB not found at .*empty.*idx/'):
    regdb.locate(str(tmp_path / 'empty'))


def test_missing_split_files(sysu_root, regdb_root, tmp_path):
  folder = _copy(os.path.join(sysu_root, 'SYSU-MM01'), str(tmp_path / 'SYSU-MM01'))
  os.remove(os.path.join(folder, 'exp', 'val_id.txt'))
  with pytest.raises(DatasetError, match='split file missing: .*exp/val_id.txt'):
    sysu.list_split(folder, 'raw', 'train')
  sysu.list_split(folder, 'raw', 'test')  # the test split does not need it
  folder = _copy(os.path.join(regdb_root, 'RegDB'), str(tmp_path / 'RegDB'))
  os.remove(os.path.join(folder, 'idx', 'test_thermal_4.txt'))
  with pytest.raises(DatasetError, match='split file missing: .*idx/test_thermal_4.txt'):
    regdb.list_split(folder, 4, 'test')
  with pytest.raises(DatasetError, match='trial 11'):
    regdb.list_split(folder, 11, 'train')


def test_split_file_naming_what_does_not_exist(sysu_root, regdb_root, tmp_path):
  folder = _copy(os.path.join(sysu_root, 'SYSU-MM01'), str(tmp_path / 'SYSU-MM01'))
  with open(os.path.join(folder, 'exp', 'train_id.txt'), 'a') as f:
    f.write('999\n')
  with pytest.raises(DatasetError, match=r'train_id.txt names id 999.*cam1\.\.cam6/0999/'):
    sysu.list_split(folder, 'raw', 'train')
  with open(os.path.join(folder, 'exp', 'test_id.txt'), 'w') as f:
    f.write('3,x\n')
  with pytest.raises(DatasetError, match=r"test_id.txt.*'x'"):
    sysu.list_split(folder, 'raw', 'test')
  folder = _copy(os.path.join(regdb_root, 'RegDB'), str(tmp_path / 'RegDB'))
  with open(os.path.join(folder, 'idx', 'train_visible_2.txt'), 'a') as f:
    f.write('Visible/77/gone.bmp 5\n')
  with pytest.raises(DatasetError, match=r'train_visible_2.txt line 10 names '
                                         r'Visible/77/gone.bmp.*does not exist'):
    regdb.list_split(folder, 2, 'train')


def test_market_names_and_cameras_are_checked(sysu_root, tmp_path):
  market = _to_market(os.path.join(sysu_root, 'SYSU-MM01'), str(tmp_path / 'SYSU-MM01'))
  train = os.path.join(market, 'rgb_modify', 'bounding_box_train')
  bad = os.path.join(train, 'image_07.jpg')
  shutil.copy(os.path.join(train, sorted(os.listdir(train))[0]), bad)
  with pytest.raises(DatasetError, match=r'image_07.jpg: expected a name like <pid>_c<cam>'):
    sysu.list_split(market, 'market', 'train')
  os.rename(bad, os.path.join(train, '0001_c3_0009.jpg'))
  with pytest.raises(DatasetError, match=r'0001_c3_0009.jpg: camera 3 is not a visible camera'):
    sysu.list_split(market, 'market', 'train')
  os.remove(os.path.join(train, '0001_c3_0009.jpg'))
  shutil.rmtree(os.path.join(market, 'ir_modify', 'bounding_box_train'))
  with pytest.raises(DatasetError, match=r'ir_modify/bounding_box_train'):
    sysu.list_split(market, 'market', 'train')
