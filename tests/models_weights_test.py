"""Weight import: torchvision state dicts into the two-stream network, and clear errors."""

import json
import os
import sys

import flax.traverse_util
import jax
import numpy as np
import pytest

from vireid_jax import models
from vireid_jax.models import weights

IMAGE_SHAPE = (32, 16)
# Bottleneck blocks (conv3/bn3, downsample) and a second block in layer2 (index 1), tiny widths.
TINY = dict(stage_sizes=(1, 2, 1, 1), block='bottleneck', width=4)


def _flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope='module')
def source():
  """Variables whose every tensor (BN running statistics too) is random, and another init."""
  model = models.TwoStreamResNet(**TINY)
  variables = models.init_variables(model, jax.random.key(0), IMAGE_SHAPE)
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32),
                       variables['batch_stats'])
  variables = {'params': variables['params'], 'batch_stats': stats}
  target = models.init_variables(model, jax.random.key(1), IMAGE_SHAPE)
  return variables, target


def _torchvision_state(variables):
  """What a torchvision file holds besides the network: the classifier and BN counters."""
  state = models.export_torch_state_dict(variables)
  c = state['layer4.0.conv3.weight'].shape[0]
  state['fc.weight'] = np.ones((1000, c), np.float32)
  state['fc.bias'] = np.zeros((1000,), np.float32)
  state['bn1.num_batches_tracked'] = np.array(7, np.int64)
  return state


def write_safetensors(path, tensors):
  """An independent writer of the format: u64 header length, JSON header, raw bytes."""
  names = {np.dtype(np.float32): 'F32', np.dtype(np.float16): 'F16', np.dtype(np.int64): 'I64'}
  header, blobs, offset = {'__metadata__': {'format': 'pt'}}, [], 0
  for name, array in tensors.items():
    data = np.ascontiguousarray(array).tobytes()
    header[name] = {'dtype': names[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  encoded = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(len(encoded).to_bytes(8, 'little') + encoded + b''.join(blobs))


def _write(path, state):
  if path.endswith('.npz'):
    np.savez(path, **state)
  elif path.endswith('.safetensors'):
    write_safetensors(path, state)
  else:
    torch = pytest.importorskip('torch', reason='torch is not installed: .pth import not tested')
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)


def test_export_uses_torchvision_names_and_layouts(source):
  variables, _ = source
  state = models.export_torch_state_dict(variables)
  params = variables['params']
  # OIHW against HWIO, one element checked by hand.
  kernel = np.asarray(params['visible_stem']['conv1']['kernel'])
  assert kernel.shape == (7, 7, 3, 4) and state['conv1.weight'].shape == (4, 3, 7, 7)
  assert state['conv1.weight'][2, 1, 5, 3] == kernel[5, 3, 1, 2]
  np.testing.assert_array_equal(
      state['layer2.1.bn3.running_var'], variables['batch_stats']['layer2']['block1']['bn3']['var'])
  np.testing.assert_array_equal(
      state['layer1.0.downsample.1.weight'],
      params['layer1']['block0']['downsample_bn']['scale'])
  assert state['layer3.0.downsample.0.weight'].shape == (64, 32, 1, 1)
  assert not any(k.startswith(('fc.', 'neck')) for k in state)
  infrared = models.export_torch_state_dict(variables, stem='infrared')
  np.testing.assert_array_equal(
      infrared['conv1.weight'],
      np.transpose(params['infrared_stem']['conv1']['kernel'], (3, 2, 0, 1)))


@pytest.mark.parametrize('suffix', ['.npz', '.safetensors', '.pth'])
def test_round_trip_fills_both_stems_and_trunk_keeps_neck(source, tmp_path, suffix):
  variables, target = source
  path = str(tmp_path / f'resnet{suffix}')
  _write(path, _torchvision_state(variables))

  loaded = models.load_imagenet_resnet(path, target)

  want, init, got = _flat(variables), _flat(target), _flat(loaded)
  assert got.keys() == init.keys()
  for name, value in got.items():
    if name.split('/')[1] == 'neck':
      expected = init[name]  # the neck keeps its initialisation
    elif name.split('/')[1] == 'infrared_stem':
      expected = want[name.replace('infrared_stem', 'visible_stem')]  # both stems from conv1/bn1
    else:
      expected = want[name]
    assert value.dtype == np.float32, name
    np.testing.assert_array_equal(value, expected, err_msg=name)
  # The stems really started different, so "both stems equal" is the import's doing.
  assert not np.allclose(want['params/infrared_stem/conv1/kernel'],
                         want['params/visible_stem/conv1/kernel'])


def test_cache_skips_reading_and_tracks_the_source(source, tmp_path, monkeypatch):
  variables, target = source
  path = str(tmp_path / 'resnet.npz')
  _write(path, _torchvision_state(variables))
  cache_dir = str(tmp_path / 'cache')
  first = models.load_imagenet_resnet(path, target, cache_dir=cache_dir)
  assert len(os.listdir(cache_dir)) == 1

  def no_read(path):
    raise AssertionError(f'read {path} although it is cached')
  monkeypatch.setattr(weights, 'read_state_dict', no_read)
  cached = models.load_imagenet_resnet(path, target, cache_dir=cache_dir)
  jax.tree.map(np.testing.assert_array_equal, cached, first)
  monkeypatch.undo()

  # A changed source file (new size and mtime) is converted again.
  changed = _torchvision_state(variables)
  changed['conv1.weight'] = changed['conv1.weight'] + 1
  np.savez(path, **changed)
  os.utime(path, ns=(1, 1))
  reloaded = models.load_imagenet_resnet(path, target, cache_dir=cache_dir)
  np.testing.assert_array_equal(
      np.transpose(reloaded['params']['infrared_stem']['conv1']['kernel'], (3, 2, 0, 1)),
      changed['conv1.weight'])
  assert len(os.listdir(cache_dir)) == 2


def test_import_into_a_network_with_non_local_blocks_leaves_them_at_init(source, tmp_path):
  """The file of a plain ResNet fills everything but the non-local blocks, with and without the
  cache; exporting that network writes the plain network's names only."""
  variables, _ = source
  model = models.TwoStreamResNet(**TINY, non_local=True)
  target = models.init_variables(model, jax.random.key(1), IMAGE_SHAPE)
  init = _flat(target)
  assert {'params/layer2/non_local0/g/kernel', 'params/layer2/non_local1/W_bn/scale',
          'params/layer3/non_local0/W/bias', 'batch_stats/layer3/non_local0/W_bn/var'} <= set(init)
  path = str(tmp_path / 'resnet.npz')
  _write(path, _torchvision_state(variables))
  want = _flat(variables)
  for cache_dir in (None, str(tmp_path / 'cache'), str(tmp_path / 'cache')):  # convert, cached
    got = _flat(models.load_imagenet_resnet(path, target, cache_dir=cache_dir))
    assert got.keys() == init.keys()
    for name, value in got.items():
      if '/non_local' in name or name.split('/')[1] == 'neck':
        expected = init[name]
      else:
        expected = want[name.replace('infrared_stem', 'visible_stem')]
      np.testing.assert_array_equal(value, expected, err_msg=name)
  exported = models.export_torch_state_dict(target)
  assert exported.keys() == models.export_torch_state_dict(variables).keys()


def test_missing_file_says_where_to_get_weights(source):
  with pytest.raises(FileNotFoundError,
                     match=r'(?s)/nowhere/r50.pth.*resnet50-0676ba61.*pretrained=none'):
    models.load_imagenet_resnet('/nowhere/r50.pth', source[1])


def test_mismatch_lists_missing_unexpected_and_shapes(source, tmp_path):
  variables, target = source
  state = _torchvision_state(variables)
  del state['layer1.0.conv2.weight']
  del state['bn1.running_mean']
  state['layer9.0.conv1.weight'] = np.zeros((1,), np.float32)
  state['layer2.1.bn1.weight'] = np.zeros((5,), np.float32)
  path = str(tmp_path / 'bad.npz')
  np.savez(path, **state)
  with pytest.raises(weights.WeightsMismatchError) as info:
    models.load_imagenet_resnet(path, target)
  message = str(info.value)
  assert path in message
  assert 'missing from the file (2)' in message
  assert 'layer1.0.conv2.weight' in message and 'bn1.running_mean' in message
  assert 'unexpected in the file (1)' in message and 'layer9.0.conv1.weight' in message
  assert 'layer2.1.bn1.weight: file (5,), model (8,)' in message
  assert 'fc.weight' not in message and 'num_batches_tracked' not in message


def test_weights_of_another_architecture_are_refused(source, tmp_path):
  """A basic-block net's weights into a bottleneck net: every difference is listed."""
  basic = models.TwoStreamResNet(stage_sizes=(1, 2, 1, 1), block='basic', width=4)
  dummy = np.zeros((1, *IMAGE_SHAPE, 3), np.float32)
  shapes = jax.eval_shape(lambda: basic.init(jax.random.key(0), dummy, dummy, train=False))
  other = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  path = str(tmp_path / 'basic.safetensors')
  write_safetensors(path, models.export_torch_state_dict(other))
  with pytest.raises(weights.WeightsMismatchError,
                     match=r"(?s)missing from the file.*layer1.0.conv3.weight.*"
                           r"shape mismatches.*layer4.0.conv1.weight: file \(32, 16, 3, 3\), "
                           r"model \(32, 64, 1, 1\).*stage_sizes=\(3, 4, 6, 3\)"):
    models.load_imagenet_resnet(path, source[1])


@pytest.mark.parametrize('zip_layout', [True, False], ids=['zip', 'legacy'])
def test_pth_reads_without_torch_and_unwraps_training_checkpoints(source, tmp_path, monkeypatch,
                                                                  zip_layout):
  """torch.save files (both layouts) load with torch unimportable, as on a TPU VM; a training
  checkpoint's 'state_dict' and DataParallel's 'module.' prefix are taken off."""
  torch = pytest.importorskip('torch', reason='torch writes the file read here without it')
  variables, target = source
  state = {'module.' + k: torch.from_numpy(np.array(v))
           for k, v in _torchvision_state(variables).items()}
  path = str(tmp_path / 'checkpoint.pth.tar')
  torch.save({'state_dict': state, 'epoch': 40, 'best_mAP': np.float64(0.48)}, path,
             _use_new_zipfile_serialization=zip_layout)
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError
  loaded = _flat(models.load_imagenet_resnet(path, target))
  want = _flat(variables)
  for name, value in loaded.items():
    if name.split('/')[1] != 'neck':
      np.testing.assert_array_equal(value, want[name.replace('infrared_stem', 'visible_stem')],
                                    err_msg=name)


def test_unreadable_files_are_one_line_naming_the_file(source, tmp_path):
  for name, content in (('resnet50.pth', b'<html>404 Not Found</html>'),
                        ('resnet50.npz', b'PK\x03\x04 not really a zip')):
    path = str(tmp_path / name)
    with open(path, 'wb') as f:
      f.write(content)
    with pytest.raises(weights.WeightsFileError) as info:
      models.load_imagenet_resnet(path, source[1])
    assert str(info.value).startswith(path) and '\n' not in str(info.value)


def test_unknown_and_corrupt_files(tmp_path, source):
  path = str(tmp_path / 'weights.h5')
  open(path, 'wb').close()
  with pytest.raises(ValueError, match=r'\.pth/\.pt \(PyTorch\), \.safetensors or \.npz'):
    models.load_imagenet_resnet(path, source[1])
  path = str(tmp_path / 'short.safetensors')
  write_safetensors(path, {'a': np.zeros((4,), np.float32)})
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 4)
  with pytest.raises(ValueError, match='tensor a .* corrupt'):
    weights.read_state_dict(path)


def test_safetensors_reader_reads_half_precision_and_integers(tmp_path):
  tensors = {'half': np.arange(6, dtype=np.float16).reshape(2, 3) / 4,
             'count': np.array([3, -1], np.int64)}
  path = str(tmp_path / 't.safetensors')
  write_safetensors(path, tensors)
  read = weights.read_state_dict(path)
  assert read.keys() == tensors.keys()
  for name, value in tensors.items():
    assert read[name].dtype == value.dtype
    np.testing.assert_array_equal(read[name], value)


def test_reference_layout_with_neck(source):
  """Prefixed (DataParallel 'module.') two-stream checkpoints import stems and neck separately."""
  variables, target = source
  flat = _flat(variables)
  state = {}
  for stem, prefix in (('visible', 'visible_module.visible.'),
                       ('infrared', 'thermal_module.thermal.')):
    for name, value in models.export_torch_state_dict(variables, stem=stem).items():
      if name.startswith(('conv1', 'bn1')):
        state['module.' + prefix + name] = value
      else:
        state['module.base_resnet.base.' + name] = value
  state['module.bottleneck.weight'] = flat['params/neck/scale'] + 1
  state['module.bottleneck.running_mean'] = flat['batch_stats/neck/mean']
  state['module.bottleneck.running_var'] = flat['batch_stats/neck/var']
  state['module.bottleneck.bias'] = np.zeros_like(state['module.bottleneck.weight'])
  prefixes = dict(visible_prefix='visible_module.visible.',
                  infrared_prefix='thermal_module.thermal.',
                  trunk_prefix='base_resnet.base.', neck_prefix='bottleneck.')
  loaded = _flat(models.import_torch_state_dict(state, target, **prefixes))
  for name, value in loaded.items():
    expected = flat[name] + 1 if name == 'params/neck/scale' else flat[name]
    np.testing.assert_array_equal(value, expected, err_msg=name)

  state['module.bottleneck.bias'] = state['module.bottleneck.bias'] + 0.5
  with pytest.raises(weights.WeightsMismatchError, match='bottleneck.bias: not zero'):
    models.import_torch_state_dict(state, target, **prefixes)
