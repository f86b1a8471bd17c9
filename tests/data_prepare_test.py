"""Preparation and loading: TFDS round trip, cache keys, synthetic generation, bad images."""

import os

import numpy as np
from PIL import Image
import pytest

from vireid_jax import config as config_lib
from vireid_jax import data
from vireid_jax.data import decode
from vireid_jax.data.prepare import load_split
from vireid_jax.data import llcm
from vireid_jax.data import regdb
from vireid_jax.data import synthetic
from vireid_jax.data import sysu


def _data_cfg(root, **overrides):
  cfg = config_lib.base_config().data
  cfg.root = str(root)
  cfg.image_height, cfg.image_width = 24, 12
  cfg.num_workers = 2
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def _decode_independently(path, height, width):
  """The reference's resize: PIL Lanczos (ANTIALIAS) to (width, height), as RGB uint8."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB').resize((width, height), Image.LANCZOS))


def _torchvision_bicubic(path, height, width):
  """PGM's training resize: PIL `.convert('RGB')` (PP:30,56), then torchvision 0.9.2
  `Resize((height, width), interpolation=3)`, which on a PIL image is `img.resize(size[::-1],
  interpolation)` with PIL's filter 3 = BICUBIC."""
  with Image.open(path) as image:
    size = (height, width)
    return np.asarray(image.convert('RGB').resize(size[::-1], 3))


def _prepared_dirs(cache):
  return sorted(os.path.relpath(parent, cache) for parent, _, names in os.walk(cache)
                if 'dataset_info.json' in names)


def test_sysu_round_trip_gives_identical_pixels_and_labels(tmp_path):
  synthetic.write_sysu(str(tmp_path), num_ids=6, images_per_camera=2, image_size=(40, 20))
  cfg = _data_cfg(tmp_path)
  path = data.prepare(cfg)
  assert path.startswith(str(tmp_path / 'vireid_jax_cache'))
  folder = str(tmp_path / 'SYSU-MM01')
  loaded = {'train': data.load_train(cfg), 'test': data.load_test(cfg)}
  for split, sets in loaded.items():
    for image_set, listed in zip(sets, sysu.list_split(folder, 'raw', split)):
      assert image_set.modality == listed.modality
      assert image_set.images.shape == (len(listed), 24, 12, 3)
      assert image_set.images.dtype == np.uint8
      np.testing.assert_array_equal(image_set.pids, listed.pids)
      np.testing.assert_array_equal(image_set.cams, listed.cams)
      np.testing.assert_array_equal(image_set.paths, listed.paths)
      expected = np.stack([_decode_independently(os.path.join(folder, p), 24, 12)
                           for p in listed.paths])
      np.testing.assert_array_equal(image_set.images, expected)
  visible, infrared = loaded['train']
  assert set(visible.cams.tolist()) == {1, 2, 4, 5} and set(infrared.cams.tolist()) == {3, 6}
  # A second call finds the prepared copy instead of preparing again.
  info = os.path.join(path, 'dataset_info.json')
  mtime = os.path.getmtime(info)
  assert data.prepare(cfg) == path and os.path.getmtime(info) == mtime


def test_bicubic_training_cache_lives_beside_the_lanczos_one(tmp_path):
  synthetic.write_sysu(str(tmp_path), num_ids=6, images_per_camera=2, image_size=(40, 20))
  folder = str(tmp_path / 'SYSU-MM01')
  lanczos_cfg, bicubic_cfg = _data_cfg(tmp_path), _data_cfg(tmp_path, train_resize='bicubic')
  lanczos_path = data.prepare(lanczos_cfg)
  bicubic_path = data.prepare(bicubic_cfg)
  assert lanczos_path != bicubic_path
  names = [p.split(os.sep)[1] for p in _prepared_dirs(str(tmp_path / 'vireid_jax_cache'))]
  assert len(names) == 2 and names[0].startswith('raw_24x12_synthetic')  # the key it always had
  assert names[1] == names[0].replace('raw_24x12', 'raw_24x12_trainbicubic')
  for split, resize in (('train', _torchvision_bicubic), ('test', _decode_independently)):
    load = data.load_train if split == 'train' else data.load_test
    bicubic_sets, lanczos_sets = load(bicubic_cfg), load(lanczos_cfg)
    for bicubic, lanczos, listed in zip(bicubic_sets, lanczos_sets,
                                        sysu.list_split(folder, 'raw', split)):
      np.testing.assert_array_equal(bicubic.paths, listed.paths)
      np.testing.assert_array_equal(bicubic.pids, listed.pids)
      expected = np.stack([resize(os.path.join(folder, p), 24, 12) for p in listed.paths])
      np.testing.assert_array_equal(bicubic.images, expected)
      lanczos_expected = np.stack([_decode_independently(os.path.join(folder, p), 24, 12)
                                   for p in listed.paths])
      np.testing.assert_array_equal(lanczos.images, lanczos_expected)
      if split == 'train':  # the filters differ on these images: the test can tell them apart
        assert not np.array_equal(bicubic.images, lanczos.images)
      else:  # test images are Lanczos in both copies
        np.testing.assert_array_equal(bicubic.images, lanczos.images)
  # Both copies stay: asking again prepares neither.
  assert data.prepare(lanczos_cfg) == lanczos_path and data.prepare(bicubic_cfg) == bicubic_path
  with pytest.raises(data.DatasetError, match=r'train_resize = .bilinear.*lanczos.*bicubic'):
    data.prepare(_data_cfg(tmp_path, train_resize='bilinear'))


@pytest.mark.parametrize('mode', ['L', 'P', 'RGB'])
def test_bicubic_decode_equals_pil_on_the_rgb_image(tmp_path, mode):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (37, 19, 3), dtype=np.uint8)
  image = Image.fromarray(pixels).convert(mode) if mode != 'P' else Image.fromarray(
      pixels).quantize(16)
  path = str(tmp_path / f'image_{mode}.png')
  image.save(path)
  decoded = decode.decode_resize(path, 24, 12, resample='bicubic')
  np.testing.assert_array_equal(decoded, _torchvision_bicubic(path, 24, 12))
  assert decoded.shape == (24, 12, 3) and decoded.dtype == np.uint8
  same_size = decode.decode_resize(path, 37, 19, resample='bicubic')  # no resize: PIL copies
  np.testing.assert_array_equal(same_size, _torchvision_bicubic(path, 37, 19))
  with pytest.raises(ValueError, match='resample'):
    decode.decode_resize(path, 24, 12, resample='cubic')


def test_regdb_cache_is_keyed_by_trial_and_size(tmp_path):
  synthetic.write_regdb(str(tmp_path), num_ids=4, images_per_modality=2, image_size=(40, 20))
  trial1 = data.prepare(_data_cfg(tmp_path, dataset='regdb', trial=1))
  trial2 = data.prepare(_data_cfg(tmp_path, dataset='regdb', trial=2))
  bigger = data.prepare(_data_cfg(tmp_path, dataset='regdb', trial=2, image_height=32,
                                  image_width=16))
  assert len({trial1, trial2, bigger}) == 3
  assert len(_prepared_dirs(str(tmp_path / 'vireid_jax_cache'))) == 3
  cfg = _data_cfg(tmp_path, dataset='regdb', trial=2)
  visible, thermal = data.load_test(cfg)
  listed = regdb.list_split(str(tmp_path / 'RegDB'), 2, 'test')
  for image_set, file_list in zip((visible, thermal), listed):
    np.testing.assert_array_equal(image_set.paths, file_list.paths)
    np.testing.assert_array_equal(image_set.pids, file_list.pids)
    expected = np.stack([_decode_independently(os.path.join(file_list.root, p), 24, 12)
                         for p in file_list.paths])
    np.testing.assert_array_equal(image_set.images, expected)
  assert (set(visible.cams.tolist()), set(thermal.cams.tolist())) == ({1}, {2})
  bigger_cfg = _data_cfg(tmp_path, dataset='regdb', trial=2, image_height=32, image_width=16)
  assert data.load_train(bigger_cfg)[0].images.shape == (2 * 2, 32, 16, 3)


def test_llcm_is_generated_prepared_and_loaded_as_the_reader_lists_it(tmp_path):
  cfg = _data_cfg(tmp_path, dataset='llcm', synthetic=True, synthetic_ids=3)
  loaded = {'train': data.load_train(cfg), 'test': data.load_test(cfg)}
  assert synthetic.read_marker(str(tmp_path / 'LLCM'))['dataset'] == 'llcm'
  for split, sets in loaded.items():
    for image_set, listed in zip(sets, llcm.list_split(str(tmp_path / 'LLCM'), split)):
      assert image_set.modality == listed.modality
      assert image_set.images.shape == (len(listed), 24, 12, 3)
      np.testing.assert_array_equal(image_set.paths, listed.paths)
      np.testing.assert_array_equal(image_set.pids, listed.pids)
      np.testing.assert_array_equal(image_set.cams, listed.cams)
      np.testing.assert_array_equal(
          image_set.images[-1], _decode_independently(
              os.path.join(listed.root, listed.paths[-1]), 24, 12))
  assert [p.split(os.sep)[0] for p in _prepared_dirs(str(tmp_path / 'vireid_jax_cache'))] == [
      'vireid_llcm']


def test_synthetic_set_is_generated_when_missing_and_regenerated_when_settings_change(tmp_path):
  cfg = _data_cfg(tmp_path / 'generated', synthetic=True, synthetic_ids=6)
  visible, infrared = data.load_train(cfg)
  marker = synthetic.read_marker(str(tmp_path / 'generated' / 'SYSU-MM01'))
  assert marker['num_ids'] == 6
  train_ids = 6 - 6 // 3  # train + val
  per_camera = synthetic.SYSU_IMAGES_PER_CAMERA
  assert (len(visible), len(infrared)) == (train_ids * 4 * per_camera, train_ids * 2 * per_camera)
  cfg.synthetic_ids = 9
  visible, _ = data.load_train(cfg)
  assert synthetic.read_marker(str(tmp_path / 'generated' / 'SYSU-MM01'))['num_ids'] == 9
  assert len(visible) == (9 - 3) * 4 * per_camera
  # Both preparations stay cached under their own keys.
  assert len(_prepared_dirs(str(tmp_path / 'generated' / 'vireid_jax_cache'))) == 2


def test_missing_dataset_names_the_root_and_the_flag(tmp_path):
  with pytest.raises(data.DatasetError, match=r'SYSU-MM01 not found at .*nothing.*'
                                              r'--config\.data\.root'):
    data.prepare(_data_cfg(tmp_path / 'nothing'))
  with pytest.raises(data.DatasetError, match='RegDB not found'):
    data.load_train(_data_cfg(tmp_path / 'nothing', dataset='regdb'))
  with pytest.raises(data.DatasetError, match='LLCM not found'):
    data.load_test(_data_cfg(tmp_path / 'nothing', dataset='llcm'))
  assert not os.path.exists(tmp_path / 'nothing')  # nothing written for a missing dataset
  with pytest.raises(data.DatasetError, match=r'synthetic_ids = 2: .* at least 3'):
    data.prepare(_data_cfg(tmp_path / 'nothing', synthetic=True, synthetic_ids=2))


def test_truncated_image_names_the_file_and_leaves_no_complete_cache(tmp_path):
  folder = synthetic.write_sysu(str(tmp_path), num_ids=3, images_per_camera=1,
                                image_size=(40, 20))
  victim = os.path.join(folder, 'cam3', '0002', '0001.jpg')
  with open(victim, 'rb') as f:
    content = f.read()
  with open(victim, 'wb') as f:
    f.write(content[:len(content) // 2])
  cfg = _data_cfg(tmp_path)
  with pytest.raises(data.DatasetError, match=r'cannot read image .*cam3/0002/0001.jpg'):
    data.prepare(cfg)
  cache = str(tmp_path / 'vireid_jax_cache')
  assert _prepared_dirs(cache) == []
  leftovers = [n for _, dirs, _ in os.walk(cache) for n in dirs if n.startswith('incomplete')]
  assert leftovers == []
  with open(victim, 'wb') as f:  # repaired: prepares normally
    f.write(content)
  assert len(data.load_train(cfg)[1]) == 2 * 2


def test_unreadable_and_missing_images(tmp_path):
  not_an_image = tmp_path / 'notes.jpg'
  not_an_image.write_text('hello')
  with pytest.raises(data.DatasetError, match=r'cannot read image .*notes.jpg'):
    decode.decode_resize(str(not_an_image), 8, 4)
  with pytest.raises(data.DatasetError, match=r'cannot read image .*absent.jpg'):
    decode.decode_resize(str(tmp_path / 'absent.jpg'), 8, 4)


def test_parallel_decoding_matches_serial(tmp_path):
  folder = synthetic.write_sysu(str(tmp_path), num_ids=3, images_per_camera=3,
                                image_size=(40, 20))
  visible, _ = sysu.list_split(folder, 'raw', 'train')
  paths = [os.path.join(folder, p) for p in visible.paths]
  serial = list(decode.decode_images(paths, 24, 12, num_workers=1))
  parallel = list(decode.decode_images(paths, 24, 12, num_workers=3))
  assert len(parallel) == len(paths)
  np.testing.assert_array_equal(np.stack(parallel), np.stack(serial))
  bad = paths[:5] + [str(tmp_path / 'missing.jpg')] + paths[5:]
  with pytest.raises(data.DatasetError, match='missing.jpg'):
    list(decode.decode_images(bad, 24, 12, num_workers=3))


def _damage(prepared, split, how):
  """Truncates (`how`='truncate') or flips one byte in the middle of (`how`='flip') the
  array_record file of `split`: a half-copied cache, bit rot."""
  name, = [n for n in os.listdir(prepared) if f'-{split}.array_record' in n]
  path = os.path.join(prepared, name)
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    if how == 'truncate':
      f.truncate(size // 2)
    else:
      f.seek(size // 2)
      byte = f.read(1)
      f.seek(size // 2)
      f.write(bytes([byte[0] ^ 0xFF]))
  return name


def _asides(prepared):
  config_dir = os.path.dirname(prepared)
  return sorted(n for n in os.listdir(os.path.dirname(config_dir))
                if n.startswith(os.path.basename(config_dir) + '.damaged-'))


@pytest.mark.parametrize('how,split,sizes_noted', [
    ('truncate', 'train_visible', True),  # seen from the sizes noted at preparation
    ('flip', 'test_infrared', True),  # same size: seen by Riegeli's hashes on reading
    ('truncate', 'train_infrared', False),  # a copy prepared before sizes were noted
])
def test_a_damaged_prepared_copy_is_set_aside_and_prepared_again(tmp_path, capsys, how, split,
                                                                 sizes_noted):
  from vireid_jax.data import tfds_builders
  synthetic.write_sysu(str(tmp_path), num_ids=6, images_per_camera=2, image_size=(40, 20))
  cfg = _data_cfg(tmp_path)
  prepared = data.prepare(cfg)
  assert os.path.isfile(os.path.join(prepared, tfds_builders.SIZES_NAME))
  intact = {'train': data.load_train(cfg), 'test': data.load_test(cfg)}
  if not sizes_noted:
    os.remove(os.path.join(prepared, tfds_builders.SIZES_NAME))
  name = _damage(prepared, split, how)
  capsys.readouterr()
  loaded = {'train': data.load_train(cfg), 'test': data.load_test(cfg)}
  out = capsys.readouterr().out
  moved = [line for line in out.splitlines() if 'is damaged' in line]
  assert len(moved) == 1 and moved[0].startswith(f'The prepared copy {os.path.dirname(prepared)}')
  assert 'moved it aside to' in moved[0] and str(tmp_path / 'SYSU-MM01') in moved[0]
  assert split in moved[0]  # the file (size check) or the split (read error)
  for part in ('train', 'test'):
    for again, before in zip(loaded[part], intact[part]):
      np.testing.assert_array_equal(again.images, before.images)
      np.testing.assert_array_equal(again.paths, before.paths)
  aside, = _asides(prepared)  # kept, damaged as it was
  kept = os.path.join(os.path.dirname(os.path.dirname(prepared)), aside,
                      os.path.basename(prepared), name)
  assert os.path.getsize(kept) != os.path.getsize(os.path.join(prepared, name)) or how == 'flip'
  assert tfds_builders.size_damage(prepared) is None  # the new copy, sizes noted


def test_a_damaged_copy_is_left_alone_where_this_process_may_not_prepare(tmp_path):
  synthetic.write_sysu(str(tmp_path), num_ids=6, images_per_camera=2, image_size=(40, 20))
  cfg = _data_cfg(tmp_path)
  prepared = data.prepare(cfg)
  _damage(prepared, 'test_visible', 'flip')
  with pytest.raises(data.DatasetError, match=r'prepared copy .* is damaged \(test_visible: '
                                              r'Corrupted Riegeli'):
    load_split(cfg, 'test', prepare_missing=False)
  _damage(prepared, 'train_visible', 'truncate')
  with pytest.raises(data.DatasetError, match=r'is damaged \(.*train_visible.* bytes'):
    load_split(cfg, 'test', prepare_missing=False)
  assert _asides(prepared) == []


def test_damage_without_the_images_to_prepare_again_ends_in_one_line(tmp_path):
  """(Without the dataset folder at all, nothing reaches the prepared copy: the usual 'not
  found' line names the folder.)"""
  folder = synthetic.write_sysu(str(tmp_path), num_ids=6, images_per_camera=2,
                                image_size=(40, 20))
  cfg = _data_cfg(tmp_path)
  prepared = data.prepare(cfg)
  _damage(prepared, 'train_visible', 'truncate')
  victim = os.path.join(folder, 'cam1', '0001', '0001.jpg')
  with open(victim, 'r+b') as f:  # the dataset folder went bad too
    f.truncate(10)
  with pytest.raises(data.DatasetError) as error:
    data.load_train(cfg)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'the prepared copy {os.path.dirname(prepared)} is damaged (')
  assert 'was moved aside to ' in message and victim in message


def test_every_process_loads_after_process_0_mends_the_copy(tmp_path, capsys):
  """data.shared's path (here with one process): damage seen while loading, mended once."""
  from vireid_jax.data import shared
  synthetic.write_sysu(str(tmp_path), num_ids=6, images_per_camera=2, image_size=(40, 20))
  cfg = _data_cfg(tmp_path)
  prepared = data.prepare(cfg)
  intact = data.load_test(cfg)
  _damage(prepared, 'test_infrared', 'flip')
  visible, infrared = shared.load_test_on_every_process(cfg)
  np.testing.assert_array_equal(infrared.images, intact[1].images)
  np.testing.assert_array_equal(visible.images, intact[0].images)
  assert len(_asides(prepared)) == 1 and 'is damaged' in capsys.readouterr().out


def test_main_prepares_a_damaged_copy_again_with_one_line(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, os.path.join(repo, 'main.py'), '--mode', 'prepare', '--config',
             os.path.join(repo, 'configs', 'demo.py'), f'--config.data.root={tmp_path}',
             '--config.data.synthetic_ids=6', '--config.data.image_height=24',
             '--config.data.image_width=12']
  first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=repo)
  assert first.returncode == 0, first.stderr[-3000:]
  prepared = first.stdout.splitlines()[-1].removeprefix('prepared: ')
  sizes = {n: os.path.getsize(os.path.join(prepared, n)) for n in os.listdir(prepared)}
  name = _damage(prepared, 'train_visible', 'truncate')
  again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=repo)
  assert again.returncode == 0 and 'Traceback' not in again.stderr, again.stderr[-3000:]
  lines = again.stdout.splitlines()
  aside, = _asides(prepared)
  assert lines[1] == (
      f'The prepared copy {os.path.dirname(prepared)} is damaged ({name} has '
      f'{sizes[name] // 2} bytes, {sizes[name]} when it was prepared); moved it aside to '
      f'{aside}, preparing it again from {tmp_path / "SYSU-MM01"}.')
  assert lines[2].startswith('Preparing SYSU-MM01 ') and lines[-1] == f'prepared: {prepared}'
  assert {n: os.path.getsize(os.path.join(prepared, n)) for n in os.listdir(prepared)} == sizes
