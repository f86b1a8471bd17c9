"""The torch-free reader of torch.save files, against torch.load on files torch itself wrote."""

import collections
import io
import os
import pickle
import types
import zipfile

import numpy as np
import pytest

from vireid_jax.models import torch_pickle

torch = pytest.importorskip('torch', reason='the reader is compared with torch.load')

LAYOUTS = {'zip': True, 'legacy': False}  # -> _use_new_zipfile_serialization


def _checkpoint():
  """A training checkpoint: views, shared storage, many dtypes, metrics, an optimiser state."""
  generator = torch.Generator().manual_seed(0)
  base = torch.randn(5, 6, generator=generator)
  conv = torch.randn(4, 3, 3, 3, generator=generator)
  state = collections.OrderedDict([
      ('conv1.weight', conv),
      ('conv1.weight_nhwc', conv.permute(0, 2, 3, 1)),  # non-contiguous, same storage
      ('fc.weight', base),
      ('fc.weight_t', base.t()),  # transposed view of the same storage
      ('fc.every_other', base[1:, ::2]),  # storage offset and a stride of 2
      ('fc.row', base[3]),  # offset into the storage
      ('bn1.weight', torch.nn.Parameter(torch.rand(4, generator=generator))),
      ('bn1.num_batches_tracked', torch.tensor(7)),  # 0-d int64
      ('half', torch.randn(2, 3, generator=generator).half()),
      ('bfloat', torch.randn(7, generator=generator).bfloat16()),
      ('double', torch.randn(3, generator=generator).double()),
      ('int32', torch.arange(-3, 3, dtype=torch.int32)),
      ('int8', torch.arange(-3, 3, dtype=torch.int8)),
      ('uint8', torch.arange(250, 256).to(torch.uint8)),
      ('mask', torch.tensor([True, False, True])),
      ('empty', torch.zeros(0, 3)),
  ])
  optimiser = {'state': {0: {'momentum_buffer': torch.ones(4) * 0.5}},
               'param_groups': [{'lr': 0.1, 'params': [0]}]}
  return {'state_dict': state, 'epoch': 3, 'best_mAP': np.float64(48.16),
          'optimizer': optimiser, 'names': ('a', b'bytes')}


def _torch_dtype_name(tensor) -> str:
  return str(tensor.dtype).replace('torch.', '')


def _assert_same(ours, theirs, name):
  assert isinstance(ours, np.ndarray), name
  assert str(ours.dtype) == _torch_dtype_name(theirs), name
  assert ours.shape == tuple(theirs.shape), name
  # bfloat16 and float8 have no numpy twin in torch: compare in float32 (exact for these).
  want = theirs.detach()
  want = want.float().numpy() if want.dtype in (torch.bfloat16, torch.float8_e4m3fn,
                                                torch.float8_e5m2) else want.numpy()
  np.testing.assert_array_equal(ours.astype(want.dtype), want, err_msg=name)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_reads_every_tensor_as_torch_load_does(tmp_path, layout):
  path = str(tmp_path / 'checkpoint.pth')
  torch.save(_checkpoint(), path, _use_new_zipfile_serialization=LAYOUTS[layout])
  if layout == 'zip':
    assert zipfile.is_zipfile(path)
  else:
    assert not zipfile.is_zipfile(path)
  theirs = torch.load(path, weights_only=False)  # numpy metrics need the full unpickler
  ours = torch_pickle.load(path)

  assert list(ours['state_dict']) == list(theirs['state_dict'])  # order kept (OrderedDict)
  for name, tensor in theirs['state_dict'].items():
    _assert_same(ours['state_dict'][name], tensor, name)
  _assert_same(ours['optimizer']['state'][0]['momentum_buffer'],
               theirs['optimizer']['state'][0]['momentum_buffer'], 'momentum')
  assert ours['optimizer']['param_groups'] == [{'lr': 0.1, 'params': [0]}]
  assert ours['epoch'] == 3 and ours['names'] == ('a', b'bytes')
  assert isinstance(ours['best_mAP'], np.float64) and ours['best_mAP'] == 48.16
  # Views come out as arrays of their own: writing one leaves the others alone.
  state = ours['state_dict']
  np.testing.assert_array_equal(state['fc.weight_t'], state['fc.weight'].T)
  assert not np.shares_memory(state['fc.weight'], state['fc.weight_t'])
  state['fc.weight'][:] = 0
  assert np.abs(state['fc.row']).sum() > 0


def test_reads_the_newer_dtypes_of_the_zip_layout(tmp_path):
  """uint16 and float8 tensors are rebuilt by _rebuild_tensor_v3 from an untyped storage."""
  path = str(tmp_path / 'new_dtypes.pth')
  values = torch.tensor([0.5, -1.5, 2.0, 448.0])
  saved = {'uint16': torch.tensor([0, 1, 65535]).to(torch.uint16),
           'e4m3': values.to(torch.float8_e4m3fn), 'e5m2': values.to(torch.float8_e5m2),
           'e4m3_view': values.to(torch.float8_e4m3fn)[1:3]}
  torch.save(saved, path)
  ours = torch_pickle.load(path)
  for name, tensor in torch.load(path, weights_only=True).items():
    _assert_same(ours[name], tensor, name)


def test_reads_the_rebuild_of_torch_before_0_4(tmp_path):
  """Files of torch < 0.4 (torchvision's resnet50-19c8e357.pth era) rebuild tensors with
  `_rebuild_tensor(storage, offset, size, stride)`; a pickler of that era is emulated."""

  class OldPickler(pickle.Pickler):

    def reducer_override(self, obj):
      if isinstance(obj, torch.Tensor):
        # pylint: disable-next=protected-access
        storage = obj._typed_storage()
        return (torch._utils._rebuild_tensor,  # pylint: disable=protected-access
                (storage, obj.storage_offset(), tuple(obj.size()), obj.stride()))
      return NotImplemented

  old_pickle = types.ModuleType('old_pickle')
  old_pickle.__dict__.update(Pickler=OldPickler, Unpickler=pickle.Unpickler, load=pickle.load,
                             dump=pickle.dump)
  base = torch.arange(12.0).reshape(3, 4)
  saved = collections.OrderedDict(weight=base, column=base[:, 1], bias=torch.ones(3).double())
  path = str(tmp_path / 'old.pth')
  torch.save(saved, path, pickle_module=old_pickle, _use_new_zipfile_serialization=False)
  with open(path, 'rb') as f:
    assert b'_rebuild_tensor\n' in f.read()  # the old rebuild, not _rebuild_tensor_v2
  ours = torch_pickle.load(path)
  for name, tensor in torch.load(path, weights_only=True).items():
    _assert_same(ours[name], tensor, name)


def test_reads_a_big_endian_zip(tmp_path):
  """The byteorder record says how the storages' bytes are laid out; torch.load byteswaps."""
  little = str(tmp_path / 'little.pth')
  torch.save({'w': torch.randn(3, 2).t(), 'i': torch.arange(4), 'h': torch.randn(3).half()},
             little)
  big = str(tmp_path / 'big.pth')
  with zipfile.ZipFile(little) as source, zipfile.ZipFile(big, 'w') as target:
    prefix = next(n for n in source.namelist() if n.endswith('/data.pkl'))[:-len('data.pkl')]
    pickled = source.read(prefix + 'data.pkl')
    for info in source.infolist():
      data = source.read(info)
      if info.filename == prefix + 'byteorder':
        data = b'big'
      elif info.filename.startswith(prefix + 'data/'):
        # Which storage holds which dtype: the order of the persistent ids in the pickle.
        key = info.filename.rsplit('/', 1)[1]
        itemsize = {b'FloatStorage': 4, b'LongStorage': 8, b'HalfStorage': 2}[
            _storage_type_of(pickled, key)]
        data = np.frombuffer(data, f'<u{itemsize}').astype(f'>u{itemsize}').tobytes()
      target.writestr(info, data)
  ours = torch_pickle.load(big)
  for name, tensor in torch.load(big, weights_only=True).items():
    _assert_same(ours[name], tensor, name)
  for name, tensor in torch.load(little, weights_only=True).items():
    _assert_same(ours[name], tensor, name)


def _storage_type_of(pickled: bytes, key: str) -> bytes:
  """The storage class the pickle names for storage `key` (`ctorch\\nFloatStorage` ... key)."""
  marker = pickled.index(b'X' + len(key).to_bytes(4, 'little') + key.encode())
  start = pickled.rindex(b'ctorch\n', 0, marker) + len(b'ctorch\n')
  return pickled[start:pickled.index(b'\n', start)]


class _Payload:
  """What a malicious pickle would do: create a file when unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


@pytest.mark.parametrize('layout', LAYOUTS)
def test_code_in_the_file_is_refused_before_it_runs(tmp_path, layout):
  marker = str(tmp_path / 'ran')
  path = str(tmp_path / 'evil.pth')
  torch.save({'weight': torch.ones(2), 'payload': _Payload(marker)}, path,
             _use_new_zipfile_serialization=LAYOUTS[layout])
  with pytest.raises(torch_pickle.WeightsFileError,
                     match=r'evil\.pth asks to run io\.open .* refused'):
    torch_pickle.load(path)
  assert not os.path.exists(marker)


def test_a_pickled_model_is_refused_with_what_to_do_instead(tmp_path):
  path = str(tmp_path / 'model.pth')
  torch.save(torch.nn.Linear(2, 2), path)
  with pytest.raises(torch_pickle.WeightsFileError,
                     match=r'torch\.nn\.modules\.linear\.Linear.*model\.state_dict\(\)'):
    torch_pickle.load(path)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_truncated_files_name_the_file_and_the_damage(tmp_path, layout):
  path = str(tmp_path / 'cut.pth')
  torch.save({'w': torch.randn(64, 64)}, path, _use_new_zipfile_serialization=LAYOUTS[layout])
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 100)
  damage = {'zip': 'is a truncated or damaged zip archive',
            'legacy': 'is truncated: storage .* needs 16384 bytes, 16284 are left'}[layout]
  with pytest.raises(torch_pickle.WeightsFileError, match=rf'cut\.pth {damage}'):
    torch_pickle.load(path)


def test_other_files_are_not_taken_for_pytorch_files(tmp_path):
  for name, content in (('empty.pth', b''), ('text.pth', b'hello, not weights\n' * 40),
                        ('numbers.pth', pickle.dumps([1, 2, 3]))):
    path = str(tmp_path / name)
    with open(path, 'wb') as f:
      f.write(content)
    with pytest.raises(torch_pickle.WeightsFileError, match=rf'{name} is not a PyTorch file'):
      torch_pickle.load(path)
  path = str(tmp_path / 'other.zip.pth')
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('readme.txt', 'hi')
  with pytest.raises(torch_pickle.WeightsFileError, match='without the data.pkl'):
    torch_pickle.load(path)
  buffer = io.BytesIO()
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
  path = str(tmp_path / 'scripted.pth')
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())
  with pytest.raises(torch_pickle.WeightsFileError, match='TorchScript'):
    torch_pickle.load(path)
