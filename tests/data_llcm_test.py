"""The LLCM reader on the synthetic LLCM layout: counts, ids, cameras, bad input."""

import os
import shutil

import numpy as np
import pytest

from vireid_jax.data import DatasetError
from vireid_jax.data import llcm
from vireid_jax.data import synthetic

SIZE = (32, 16)
NUM_IDS, PER_CAMERA = 6, 2  # 4 train + 2 test ids


@pytest.fixture(scope='module')
def llcm_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('llcm'))
  synthetic.write_llcm(root, NUM_IDS, PER_CAMERA, image_size=SIZE)
  return root


@pytest.fixture
def copy(llcm_root, tmp_path):
  """A private copy of the synthetic LLCM folder, to damage."""
  return shutil.copytree(os.path.join(llcm_root, 'LLCM'), str(tmp_path / 'LLCM'))


def _expected_rows(pids, modality):
  """(pid, cam) of every image the generator wrote, in identity, camera, file order."""
  rows = []
  for pid in pids:
    for cam in synthetic.llcm_cameras(pid)[modality]:
      rows.extend([(pid, cam)] * PER_CAMERA)
  return rows


def test_train_split_counts_labels_cameras_modalities(llcm_root):
  folder = llcm.locate(llcm_root)
  assert folder == os.path.join(llcm_root, 'LLCM')
  train_ids = synthetic.llcm_id_split(NUM_IDS)['train']
  visible, infrared = llcm.list_split(folder, 'train')
  assert (visible.modality, infrared.modality) == ('visible', 'infrared')
  for file_list, modality in ((visible, 'visible'), (infrared, 'infrared')):
    expected = _expected_rows(train_ids, modality)
    assert len(file_list) == len(expected)
    # Labels are the list files' (0..3 in the order of the sorted training ids); cameras come
    # from the file names.
    labels = [train_ids.index(pid) for pid, _ in expected]
    assert file_list.pids.tolist() == labels
    assert file_list.cams.tolist() == [cam for _, cam in expected]
    folder_name = {'visible': 'vis', 'infrared': 'nir'}[modality]
    assert all(path.startswith(f'{folder_name}/{train_ids[label]:04d}/')
               for path, label in zip(file_list.paths, file_list.pids))
  assert set(visible.pids.tolist()) == set(infrared.pids.tolist()) == set(range(4))
  assert 3 not in infrared.cams  # camera 3 records no infrared


def test_test_split_ids_cameras_and_order(llcm_root):
  folder = llcm.locate(llcm_root)
  test_ids = synthetic.llcm_id_split(NUM_IDS)['test']
  visible, infrared = llcm.list_split(folder, 'test')
  for file_list, modality in ((visible, 'visible'), (infrared, 'infrared')):
    expected = _expected_rows(test_ids, modality)
    assert list(zip(file_list.pids.tolist(), file_list.cams.tolist())) == expected
    prefix = llcm.TEST_FOLDERS[modality]
    assert all(path.startswith(f'{prefix}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_')
               for path, pid, cam in zip(file_list.paths, file_list.pids, file_list.cams))
    names = [os.path.basename(path) for path in file_list.paths]
    keys = list(zip(file_list.pids.tolist(), file_list.cams.tolist(), names))
    assert keys == sorted(keys)  # identity, camera, file name: the authors' order


def test_a_root_path_containing_cam_reads_the_same(llcm_root, tmp_path):
  # The authors' parser reads the camera after the first "cam" of the absolute path.
  moved = shutil.copytree(os.path.join(llcm_root, 'LLCM'),
                          str(tmp_path / 'cam7_camera_ready' / 'LLCM'))
  assert llcm.locate(str(tmp_path / 'cam7_camera_ready')) == moved
  for split in ('train', 'test'):
    for original, relocated in zip(llcm.list_split(os.path.join(llcm_root, 'LLCM'), split),
                                   llcm.list_split(moved, split)):
      np.testing.assert_array_equal(relocated.paths, original.paths)
      np.testing.assert_array_equal(relocated.pids, original.pids)
      np.testing.assert_array_equal(relocated.cams, original.cams)


def test_camera_of_reads_the_folder_or_the_file_name():
  assert llcm.camera_of('test_nir/cam2/0005/0005_c02_s1_f1_nir.jpg') == 2
  assert llcm.camera_of('nir/0005/0005_c07_s193520_f2410_nir.jpg') == 7
  assert llcm.camera_of('vis\\0012\\0012_c09_s1_f1_vis.jpg') == 9
  with pytest.raises(DatasetError, match=r'vis/0005/photo.jpg: cannot tell its camera'):
    llcm.camera_of('vis/0005/photo.jpg')


def test_missing_or_empty_camera_folders_are_normal(copy):
  pid = synthetic.llcm_id_split(NUM_IDS)['test'][0]
  cams = synthetic.llcm_cameras(pid)['infrared']
  shutil.rmtree(os.path.join(copy, 'test_nir', f'cam{cams[0]}'))  # a whole camera missing
  shutil.rmtree(os.path.join(copy, 'test_nir', f'cam{cams[1]}', f'{pid:04d}'))
  os.makedirs(os.path.join(copy, 'test_nir', f'cam{cams[1]}', f'{pid:04d}'))  # an empty folder
  _, infrared = llcm.list_split(copy, 'test')
  assert infrared.cams[infrared.pids == pid].tolist() == [cams[2]] * PER_CAMERA


# --- bad input: one clear error naming the path and what was expected -------------------------


def test_missing_dataset_and_list_files(copy, tmp_path):
  with pytest.raises(DatasetError, match=r'LLCM not found at .*nothing.*idx/.*test_vis/.*'
                                         r'--config\.data\.root'):
    llcm.locate(str(tmp_path / 'nothing'))
  os.remove(os.path.join(copy, 'idx', 'train_nir.txt'))
  with pytest.raises(DatasetError, match=r'LLCM split file missing: .*idx/train_nir.txt: '
                                         r'expected lines "nir/0001/'):
    llcm.list_split(copy, 'train')
  llcm.list_split(copy, 'test')  # the test split does not need it
  os.remove(os.path.join(copy, 'idx', 'test_id.txt'))
  with pytest.raises(DatasetError, match=r'LLCM split file missing: .*idx/test_id.txt'):
    llcm.list_split(copy, 'test')


def test_a_list_naming_a_missing_image(copy):
  with open(os.path.join(copy, 'idx', 'train_vis.txt'), 'a') as f:
    f.write('vis/0077/0077_c01_s1_f1_vis.jpg 3\n')
  count = len(open(os.path.join(copy, 'idx', 'train_vis.txt')).read().splitlines())
  with pytest.raises(DatasetError, match=rf'train_vis.txt line {count} names '
                                         r'vis/0077/0077_c01_s1_f1_vis.jpg.*does not exist'):
    llcm.list_split(copy, 'train')


def test_an_id_without_images_of_one_modality(copy):
  # A test id whose infrared folders are all gone.
  pid = synthetic.llcm_id_split(NUM_IDS)['test'][1]
  for cam in synthetic.llcm_cameras(pid)['infrared']:
    shutil.rmtree(os.path.join(copy, 'test_nir', f'cam{cam}', f'{pid:04d}'))
  with pytest.raises(DatasetError, match=rf'test_id.txt names id {pid}, but it has no infrared '
                                         rf'test image: .*test_nir/cam\{{1,2,4,5,6,7,8,9\}}/'
                                         rf'{pid:04d}/'):
    llcm.list_split(copy, 'test')
  # A training label that only the visible list has.
  path = os.path.join(copy, 'idx', 'train_nir.txt')
  lines = open(path).read().splitlines()
  with open(path, 'w') as f:
    f.write('\n'.join(line for line in lines if not line.endswith(' 2')) + '\n')
  with pytest.raises(DatasetError, match=r'idx/train_nir.txt has no image of label\(s\) \[2\], '
                                         r'which idx/train_vis.txt lists'):
    llcm.list_split(copy, 'train')
