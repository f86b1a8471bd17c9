"""Reads files written by `torch.save` without PyTorch: every tensor becomes a numpy array.

TPU VMs rarely have PyTorch, and torchvision's ImageNet weights are `torch.save` files. Two
layouts exist, and torchvision's ResNet-50 ships in both:

  * zip (torch >= 1.6, `resnet50-0676ba61.pth`): `<name>/data.pkl` holds the pickled object,
    `<name>/data/<key>` each storage's raw bytes, `<name>/byteorder` their byte order;
  * legacy (`_use_new_zipfile_serialization=False`, `resnet50-19c8e357.pth`): five pickles in a
    row (magic number, protocol 1001, system info, the object, the sorted storage keys), then
    each storage as an int64 element count and its raw little-endian bytes.

In both the object pickle names a storage by a persistent id ('storage', storage type, key,
location, element count[, view]) and rebuilds a tensor with `torch._utils._rebuild_tensor_v2
(storage, offset, size, stride, ...)`: a strided view, so several tensors may share one storage.

The unpickler is restricted: it resolves only PyTorch's tensor rebuilders, storage classes and
dtypes (mapped to numpy here), OrderedDict, a few builtins and numpy scalars and arrays
(training checkpoints store metrics as numpy scalars). Any other global, e.g. a pickled model
class, is refused with a `WeightsFileError` before anything runs, as
`torch.load(weights_only=True)` refuses it: a weights file cannot run code here.
"""

import collections
import dataclasses
import io
import os
import pickle
import tarfile
import zipfile
from typing import Any, Callable, Dict, Optional

import ml_dtypes  # ships with jax; numpy has no bfloat16 or float8 of its own
import numpy as np

# The first two pickles of a legacy file (torch/serialization.py).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> the element type of its data.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'ComplexFloatStorage': np.complex64,
    'ComplexDoubleStorage': np.complex128, 'UntypedStorage': np.uint8,
}
# torch.<dtype> (pickled as a global, e.g. by _rebuild_tensor_v3) -> numpy.
_TORCH_DTYPES = {
    'float64': np.float64, 'float32': np.float32, 'float16': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'int32': np.int32, 'int16': np.int16,
    'int8': np.int8, 'uint8': np.uint8, 'uint16': np.uint16, 'uint32': np.uint32,
    'uint64': np.uint64, 'bool': np.bool_, 'complex64': np.complex64,
    'complex128': np.complex128, 'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
    'float8_e5m2': ml_dtypes.float8_e5m2, 'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
    'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
}


class WeightsFileError(ValueError):
  """A weights file that cannot be read: not a PyTorch file, corrupt, or asking to run code."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _TorchDType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
  """A storage named in the pickle: `key`'s bytes, from element `offset` on (legacy views)."""
  key: str
  dtype: np.dtype
  offset: int = 0


@dataclasses.dataclass(eq=False)
class _Tensor:
  """A tensor to build once the storages' bytes are known (legacy files store them last)."""
  storage: _Storage
  offset: int  # in elements of `dtype`
  size: tuple
  stride: tuple
  dtype: np.dtype
  metadata: Optional[dict] = None


class _TensorClass:
  """Stands for torch.Tensor / nn.Parameter where `_rebuild_from_type_v2` names the type."""


def _rebuild_tensor(storage, storage_offset, size, stride):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f'a tensor rebuilt from {type(storage).__name__}, not a storage')
  return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride), storage.dtype)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
  del requires_grad, backward_hooks
  tensor = _rebuild_tensor(storage, storage_offset, size, stride)
  tensor.metadata = metadata
  return tensor


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  """Newer dtypes (uint16, float8, ...): an untyped storage and the tensor's dtype."""
  tensor = _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                              backward_hooks, metadata)
  if not isinstance(dtype, _TorchDType):
    raise pickle.UnpicklingError(f'a tensor of dtype {dtype!r}')
  tensor.dtype = dtype.dtype
  return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  del requires_grad, backward_hooks, state  # a Parameter is its data here
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del state
  if not isinstance(new_type, _TensorClass):
    raise pickle.UnpicklingError(f'a tensor subclass {new_type!r}')
  return func(*args)


def _encode(text: str, encoding: str = 'utf-8') -> bytes:
  """`_codecs.encode`: protocol-2 pickles write bytes as (str, 'latin1')."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(f'_codecs.encode of {type(text).__name__} as {encoding!r}')
  return text.encode('latin1')


def _numpy_scalar(dtype, data: bytes = b''):
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise pickle.UnpicklingError(f'a numpy scalar of {dtype!r}')
  return np.frombuffer(data, dtype)[0]


def _device(*args) -> str:
  return ':'.join(str(a) for a in args)


def _allowed_globals() -> Dict[tuple, Any]:
  allowed = {
      ('collections', 'OrderedDict'): collections.OrderedDict,
      ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
      ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
      ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
      ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
      ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
      ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
      ('torch.tensor', '_rebuild_from_type_v2'): _rebuild_from_type_v2,
      ('torch', 'Tensor'): _TensorClass(),
      ('torch.nn.parameter', 'Parameter'): _TensorClass(),
      ('torch', 'Size'): tuple,
      ('torch', 'device'): _device,
      ('_codecs', 'encode'): _encode,
      ('builtins', 'set'): set,
      ('builtins', 'frozenset'): frozenset,
      ('builtins', 'bytearray'): bytearray,
      ('builtins', 'complex'): complex,
      ('numpy', 'dtype'): np.dtype,
      ('numpy', 'ndarray'): np.ndarray,
  }
  for core in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    allowed[(core, 'scalar')] = _numpy_scalar
    allowed[(core, '_reconstruct')] = np.ndarray.__new__  # an empty array; BUILD fills it
  for name, dtype in _STORAGE_DTYPES.items():
    for module in ('torch', 'torch.cuda', 'torch.storage'):
      allowed[(module, name)] = _StorageType(np.dtype(dtype))
  allowed[('torch.storage', 'TypedStorage')] = _StorageType(np.dtype(np.uint8))
  for name, dtype in _TORCH_DTYPES.items():
    allowed[('torch', name)] = _TorchDType(np.dtype(dtype))
  return allowed


_ALLOWED = _allowed_globals()


class _Unpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED`; storages come from `storage(saved_id)`."""

  def __init__(self, data: io.BytesIO, storage: Callable[[tuple], _Storage]):
    super().__init__(data, encoding='utf-8')
    self._storage = storage

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise _Refused(f'{module}.{name}') from None

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != 'storage':
      raise pickle.UnpicklingError(f'unknown persistent id {pid!r:.80}')
    return self._storage(pid[1:])


class _Refused(pickle.UnpicklingError):
  """The pickle names a global outside `_ALLOWED`."""


def _ascii(value) -> str:
  return value.decode('ascii') if isinstance(value, bytes) else value


def _storage_type(storage_type) -> np.dtype:
  if not isinstance(storage_type, _StorageType):
    raise pickle.UnpicklingError(f'a storage of type {storage_type!r}')
  return storage_type.dtype


# --------------------------------------------------------------------------------------------
# The two layouts


def _load_zip(path: str, archive: zipfile.ZipFile) -> Any:
  names = archive.namelist()
  if any(n.endswith('/constants.pkl') and n.count('/') == 1 for n in names):
    raise WeightsFileError(f'{path} is a TorchScript archive (torch.jit.save), not a saved state '
                           f'dict: save its state_dict() with torch.save instead')
  pickles = [n for n in names if n.endswith('/data.pkl') and n.count('/') == 1]
  if not pickles:
    raise WeightsFileError(f'{path} is a zip file without the data.pkl of a torch.save file')
  prefix = pickles[0][:-len('data.pkl')]
  order = 'little'
  if prefix + 'byteorder' in names:
    order = archive.read(prefix + 'byteorder').decode('ascii').strip()
  if order not in ('little', 'big'):
    raise WeightsFileError(f'{path}: unknown byte order {order!r}')
  storages: Dict[str, np.ndarray] = {}

  def storage(pid: tuple) -> _Storage:
    storage_type, key, _, numel = pid[:4]
    key, dtype = _ascii(key), _storage_type(storage_type)
    if key not in storages:
      record = f'{prefix}data/{key}'
      try:
        blob = archive.read(record)
      except KeyError:
        raise WeightsFileError(f'{path} is corrupt: storage {record} is missing') from None
      if len(blob) < numel * dtype.itemsize:
        raise WeightsFileError(f'{path} is corrupt: storage {record} holds {len(blob)} bytes, '
                               f'{numel} elements of {dtype} need {numel * dtype.itemsize}')
      storages[key] = np.frombuffer(blob, np.uint8)
    return _Storage(key, dtype)

  result = _unpickle(path, archive.read(pickles[0]), storage)
  return _guarded(path, lambda: _materialise(path, result, storages, order))


def _no_storage(pid: tuple) -> _Storage:
  raise pickle.UnpicklingError(f'a storage {pid!r:.80} outside the object pickle')


def _load_legacy(path: str, blob: bytes) -> Any:
  stream = io.BytesIO(blob)
  try:
    magic = _Unpickler(stream, _no_storage).load()
  except Exception:  # pylint: disable=broad-except  (any failure means: not this format)
    magic = None
  if magic != LEGACY_MAGIC_NUMBER:
    raise WeightsFileError(f'{path} is not a PyTorch file (torch.save writes a zip archive or '
                           f'a pickle starting with its magic number): the file is corrupt, '
                           f'truncated or of another kind')
  protocol = _guarded(path, _Unpickler(stream, _no_storage).load)
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise WeightsFileError(f'{path}: PyTorch file of protocol {protocol!r}, this reader knows '
                           f'{LEGACY_PROTOCOL_VERSION}')
  # System info; the storages are little-endian whatever it says (torch writes them so).
  _guarded(path, _Unpickler(stream, _no_storage).load)
  dtypes: Dict[str, np.dtype] = {}

  def storage(pid: tuple) -> _Storage:
    storage_type, key, _, _, view = pid[:5] if len(pid) >= 5 else (*pid, None)
    key, dtype = _ascii(key), _storage_type(storage_type)
    dtypes.setdefault(key, dtype)
    if view is not None:  # (view key, offset, size): a slice of the root storage
      return _Storage(key, dtype, int(view[1]))
    return _Storage(key, dtype)

  unpickler = _Unpickler(stream, storage)
  result = _guarded(path, unpickler.load)
  keys = _guarded(path, _Unpickler(stream, _no_storage).load)
  if not isinstance(keys, list):
    raise WeightsFileError(f'{path} is corrupt: no list of storages after the object')
  storages, position = {}, stream.tell()
  for key in keys:
    key = _ascii(key)
    if key not in dtypes or position + 8 > len(blob):
      raise WeightsFileError(f'{path} is corrupt or truncated: storage {key} is missing')
    numel = int.from_bytes(blob[position:position + 8], 'little', signed=True)
    nbytes = numel * dtypes[key].itemsize
    start, position = position + 8, position + 8 + nbytes
    if numel < 0 or position > len(blob):
      raise WeightsFileError(f'{path} is truncated: storage {key} needs {nbytes} bytes, '
                             f'{len(blob) - start} are left')
    storages[key] = np.frombuffer(blob, np.uint8, nbytes, start)
  return _guarded(path, lambda: _materialise(path, result, storages, 'little'))


def _unpickle(path: str, data: bytes, storage: Callable[[tuple], _Storage]) -> Any:
  return _guarded(path, _Unpickler(io.BytesIO(data), storage).load)


def _guarded(path: str, load: Callable[[], Any]) -> Any:
  """Runs an unpickling step; its failures become one WeightsFileError naming the file."""
  try:
    return load()
  except WeightsFileError:
    raise
  except _Refused as e:
    raise WeightsFileError(
        f'{path} asks to run {e} while loading, which a file of tensors does not need, so it '
        f'is refused (a weights file cannot run code here). If it holds a whole pickled model, '
        f'save its model.state_dict() instead where PyTorch is installed') from None
  except Exception as e:  # pylint: disable=broad-except  (a corrupt pickle fails in many ways)
    raise WeightsFileError(f'{path} is corrupt or not a PyTorch state dict ({type(e).__name__}: '
                           f'{e})') from None


def _materialise(path: str, tree: Any, storages: Dict[str, np.ndarray], order: str) -> Any:
  """Replaces every `_Tensor` in dicts, lists and tuples by its numpy array."""
  built: Dict[int, np.ndarray] = {}

  def array(tensor: _Tensor) -> np.ndarray:
    if id(tensor) not in built:
      built[id(tensor)] = _array(path, tensor, storages, order)
    return built[id(tensor)]

  def walk(node):
    if isinstance(node, _Tensor):
      return array(node)
    if isinstance(node, dict):
      out = type(node)() if type(node) in (dict, collections.OrderedDict) else {}
      for key, value in node.items():
        out[key] = walk(value)
      return out
    if isinstance(node, (list, tuple)):
      return type(node)(walk(v) for v in node)
    return node

  return walk(tree)


def _array(path: str, tensor: _Tensor, storages: Dict[str, np.ndarray],
           order: str) -> np.ndarray:
  """The tensor's elements as a contiguous array of its own (views copied out of storage)."""
  raw = storages.get(tensor.storage.key)
  if raw is None:
    raise WeightsFileError(f'{path} is corrupt: storage {tensor.storage.key} is missing')
  itemsize = tensor.dtype.itemsize
  # Strided access on opaque items of the element's size: numpy cannot stride ml_dtypes' types.
  elements = raw[:len(raw) - len(raw) % itemsize].view(np.dtype((np.void, itemsize)))
  start = tensor.storage.offset + tensor.offset
  size, stride = tensor.size, tensor.stride
  if len(size) != len(stride) or any(n < 0 for n in size) or start < 0:
    raise WeightsFileError(f'{path} is corrupt: a tensor of size {size} and stride {stride}')
  if 0 in size:
    return np.zeros(size, tensor.dtype)
  last = start + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= len(elements) or any(s < 0 for s in stride):
    raise WeightsFileError(f'{path} is corrupt: a tensor of size {size} reaches element {last} '
                           f'of a storage of {len(elements)}')
  view = np.lib.stride_tricks.as_strided(elements[start:], size,
                                         [s * itemsize for s in stride], writeable=False)
  out = np.array(view, order='C')  # its own memory, still opaque items
  if order == 'big':
    out = out.view(tensor.dtype.newbyteorder('>')).astype(tensor.dtype)
  else:
    out = out.view(tensor.dtype)
  metadata = tensor.metadata or {}
  if metadata.get('neg'):
    out = np.negative(out)
  if metadata.get('conj'):
    out = np.conj(out)
  return out


def load(path: str) -> Any:
  """The object `torch.save` wrote to `path`, with every tensor a numpy array.

  Args:
    path: a file written by `torch.save`, zip or legacy layout.

  Returns:
    The saved object (dicts, lists, tuples, numbers, ...); each tensor becomes a numpy array of
    its own (not a view of another), of its torch dtype (bfloat16 and float8 from ml_dtypes),
    with the tensor's shape. Tensors that shared storage in torch share values, not memory.

  Raises:
    WeightsFileError: the file is not a PyTorch file, is corrupt or truncated, or names code to
      run (anything but tensors, OrderedDict, plain values and numpy scalars/arrays).
    OSError: the file cannot be opened.
  """
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as archive:
        return _load_zip(path, archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
      raise WeightsFileError(f'{path} is a damaged zip archive ({e})') from None
  if os.path.getsize(path) >= 512 and tarfile.is_tarfile(path):
    raise WeightsFileError(f'{path} is in the tar layout of the earliest PyTorch releases, '
                           f'which this reader does not read: load it with torch and save it '
                           f'again')
  with open(path, 'rb') as f:
    blob = f.read()
  if blob.startswith(b'PK\x03\x04'):  # a zip's first entry, but no readable directory at its end
    raise WeightsFileError(f'{path} is a truncated or damaged zip archive (its directory at the '
                           f'end is missing): copy or download it again')
  return _load_legacy(path, blob)
