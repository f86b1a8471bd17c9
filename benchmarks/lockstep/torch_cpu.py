"""The authors' PyTorch code on a CPU: every patch the lockstep applies, in one place.

Their code is imported from the folder the user fetched (never copied here) and patched at
run time, by monkeypatching, only where it cannot run on a CPU or would read files that the
lockstep replaces with our data. The patches (docs/verification.md lists them with the
reference-specific ones):

  1. `.cuda()` on a module returns the module, on a tensor a copy of it (what moving a host
     tensor to the GPU gives; their memory tables rely on being separate copies).
  2. faiss is not installed (the authors use faiss-gpu / faiss-cpu): a module `faiss` whose
     `IndexFlatL2` is an exact search (float64 squared L2 distances, ties to the lower index)
     and `get_num_gpus()` is 0; only `compute_jaccard_distance(search_option=3)` (both
     methods' CPU branch) reaches it.
  3. `nn.DataParallel` over k GPUs becomes `EmulatedDataParallel`: k replicas run one after
     the other on the same module, replica j on chunk j (torch.chunk, as DataParallel's
     scatter) of every tensor argument, outputs concatenated per output as its gather does;
     the running BatchNorm statistics kept are replica 0's (DataParallel's replica 0 shares
     the module's buffers; the others' updates are discarded). Parameter gradients are the
     sum over replicas, as DataParallel's reduce. k = 1 is the module itself (DataParallel
     over one GPU calls it directly).
  4. Packages their imports name but the lockstep never uses: torchvision (installed with
     torch on their machines: its transforms only build the data pipelines the lockstep
     replaces, its model constructors are never called), easydict, infomap: empty stand-ins.
  5. The pretrained ResNet-50 file their constructors load (MBCCM `model_zoo.load_url`, PGM
     `torch.load('./examples/pretrained/resnet50-19c8e357.pth')`) is the project's initial
     weights exported to a torchvision state dict.

Also here: `to_tensor_normalize`, torchvision's `ToTensor()` + `Normalize(mean, std)` on uint8
HWC images, written out (3 lines of torchvision 0.9-0.14's functional code), which feeds their
feature extraction the same pixels our side extracts from.
"""

import contextlib
import importlib
import importlib.util
import math
import os
import sys
import types
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

# --- 1. no GPU ----------------------------------------------------------------------------------


def patch_cuda() -> None:
  """`module.cuda()` moves a module in place: the module itself. `tensor.cuda()` of a host
  tensor returns a new tensor on the GPU, and their code relies on it: the memories M_i and
  M_iv are `centers.cuda()` of the same host centres, two separate tables on a GPU (the
  identity here would make them one table, updated by both). So a copy (`clone()`, which
  autograd differentiates like the transfer); for tensors already on the GPU, where `.cuda()`
  is the identity, a copy computes the same values."""
  torch.Tensor.cuda = lambda self, *args, **kwargs: self.clone()
  nn.Module.cuda = lambda self, *args, **kwargs: self


# --- 2. faiss: an exact search ------------------------------------------------------------------


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int):
  """(distances (Q, k) float32 squared L2, indices (Q, k) int64) of the k nearest rows of
  `base` to each query: float64 distances, ties broken by the lower index."""
  base = np.asarray(base, np.float64)
  queries = np.asarray(queries, np.float64)
  sq = (np.sum(queries**2, 1)[:, None] + np.sum(base**2, 1)[None, :]
        - 2.0 * queries @ base.T)
  sq = np.maximum(sq, 0.0)
  order = np.argsort(sq, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(sq, order, 1).astype(np.float32), order.astype(np.int64)


# A neighbour table that IndexFlatL2.search returns instead of searching (see forced_neighbors).
_FORCED = []


@contextlib.contextmanager
def forced_neighbors(table: np.ndarray):
  """Within the block, the next search of the whole index returns `table` as its indices:
  their Jaccard code then runs on a given neighbour ranking (the lockstep's check of their
  clustering on our features and our neighbour search)."""
  _FORCED.append(np.asarray(table, np.int64))
  try:
    yield
  finally:
    _FORCED.clear()


class ExactIndexFlatL2:
  """faiss.IndexFlatL2, exactly: add() rows, search(queries, k) -> (D, I)."""

  def __init__(self, dim: int):
    self.d = dim
    self._rows = np.zeros((0, dim), np.float32)

  def add(self, rows) -> None:
    self._rows = np.concatenate([self._rows, np.asarray(rows, np.float32)])

  @property
  def ntotal(self) -> int:
    return len(self._rows)

  def search(self, queries, k: int):
    distances, index = exact_knn(self._rows, queries, k)
    if _FORCED:
      table = _FORCED[0]
      if table.shape != index.shape:
        raise ValueError(f'the forced neighbour table is {table.shape}, the search {index.shape}')
      index = table
    return distances, index


def _faiss_module() -> types.ModuleType:
  faiss = types.ModuleType('faiss')
  faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT = 1, 0
  faiss.IndexFlatL2 = ExactIndexFlatL2
  faiss.get_num_gpus = lambda: 0

  def unavailable(*args, **kwargs):
    raise RuntimeError('the lockstep has no faiss-gpu: only search_option=3 (CPU) runs')
  for name in ('StandardGpuResources', 'GpuIndexFlatL2', 'GpuIndexFlatConfig',
               'index_cpu_to_gpu', 'swig_ptr', 'cast_integer_to_float_ptr',
               'cast_integer_to_long_ptr', 'bruteForceKnn'):
    setattr(faiss, name, unavailable)
  return faiss


# --- 3. nn.DataParallel over k GPUs, on one CPU -------------------------------------------------


def _first_rows(obj):
  if isinstance(obj, torch.Tensor):
    return obj.shape[0]
  if isinstance(obj, (tuple, list)):
    obj = list(obj)
  elif isinstance(obj, dict):
    obj = list(obj.values())
  else:
    return None
  for x in obj:
    rows = _first_rows(x)
    if rows is not None:
      return rows
  return None


def _scatter(obj, k: int):
  """k chunks of every tensor in `obj` (torch.chunk along dim 0, as DataParallel's scatter;
  tuples, lists, dicts recursed; anything else replicated)."""
  if isinstance(obj, torch.Tensor):
    chunks = obj.chunk(k, 0)
    if len(chunks) != k:
      raise ValueError(f'{obj.shape[0]} rows do not split into the {k} chunks of the others')
    return list(chunks)
  if isinstance(obj, (tuple, list)) and obj:
    parts = [_scatter(x, k) for x in obj]
    return [type(obj)(p[j] for p in parts) for j in range(k)]
  if isinstance(obj, dict) and obj:
    parts = {key: _scatter(value, k) for key, value in obj.items()}
    return [{key: parts[key][j] for key in obj} for j in range(k)]
  return [obj] * k


def _gather(outputs):
  """DataParallel's gather: tensors concatenated along dim 0, containers per element."""
  first = outputs[0]
  if isinstance(first, torch.Tensor):
    return torch.cat(outputs, 0)
  if first is None:
    return None
  if isinstance(first, (tuple, list)):
    return type(first)(_gather([o[i] for o in outputs]) for i in range(len(first)))
  if isinstance(first, dict):
    return type(first)((key, _gather([o[key] for o in outputs])) for key in first)
  return first


class EmulatedDataParallel(nn.Module):
  """`nn.DataParallel(module)` over `replicas` GPUs, computed on one CPU (patch 3)."""

  replicas = 1  # set by `patch_data_parallel`

  def __init__(self, module, device_ids=None, output_device=None, dim=0):
    super().__init__()
    del device_ids, output_device
    if dim != 0:
      raise ValueError('EmulatedDataParallel scatters along dim 0 only')
    self.module = module

  def forward(self, *inputs, **kwargs):
    k = type(self).replicas
    if k == 1:
      return self.module(*inputs, **kwargs)
    rows = _first_rows((inputs, kwargs))
    if rows is not None:  # DataParallel uses as many GPUs as torch.chunk makes chunks
      k = len(torch.empty(rows).chunk(k))
    inputs_j = _scatter(inputs, k)
    kwargs_j = _scatter(kwargs, k)
    # Replica 0 uses the module's own buffers; every other replica gets copies, which its
    # BatchNorm updates and which are then dropped, as DataParallel's replicas' are. (One set
    # shared by all would also trip autograd: a BatchNorm saves its running statistics for
    # its backward pass, and a later replica's update would modify them in place.)
    owners = [(m, name, b) for m in self.module.modules()
              for name, b in m._buffers.items() if b is not None]  # pylint: disable=protected-access
    outputs = []
    for j in range(k):
      copies = j > 0 and self.module.training
      if copies:
        for m, name, b in owners:
          m._buffers[name] = b.clone()  # pylint: disable=protected-access
      outputs.append(self.module(*inputs_j[j], **kwargs_j[j]))
      if copies:
        for m, name, b in owners:
          m._buffers[name] = b  # pylint: disable=protected-access
    return _gather(outputs)


def patch_data_parallel(replicas: int) -> None:
  EmulatedDataParallel.replicas = replicas
  nn.DataParallel = EmulatedDataParallel
  torch.nn.parallel.DataParallel = EmulatedDataParallel


# --- 4. stand-ins for packages their imports name ------------------------------------------------


class _UnusedTransform:
  """A torchvision transform the lockstep builds (their pipelines are replaced) but never runs."""

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs

  def __call__(self, *args, **kwargs):
    raise RuntimeError('a torchvision transform ran: the lockstep feeds the network inputs '
                       'itself and never runs the authors\' pipelines')


_TRANSFORMS = ('Compose', 'ToTensor', 'ToPILImage', 'Normalize', 'Resize', 'Pad', 'RandomCrop',
               'RandomHorizontalFlip', 'ColorJitter', 'RandomGrayscale', 'RandomErasing',
               'RandomResizedCrop', 'CenterCrop', 'Lambda', 'Grayscale')


def _stub_modules() -> Dict[str, types.ModuleType]:
  torchvision = types.ModuleType('torchvision')
  transforms = types.ModuleType('torchvision.transforms')
  for name in _TRANSFORMS:
    setattr(transforms, name, type(name, (_UnusedTransform,), {}))
  transforms.__all__ = list(_TRANSFORMS)
  models = types.ModuleType('torchvision.models')
  for depth in (18, 34, 50, 101, 152):
    setattr(models, f'resnet{depth}', _UnusedTransform)
  torchvision.transforms, torchvision.models = transforms, models
  easydict = types.ModuleType('easydict')
  easydict.EasyDict = dict
  infomap = types.ModuleType('infomap')
  infomap.Infomap = _UnusedTransform
  return {'torchvision': torchvision, 'torchvision.transforms': transforms,
          'torchvision.models': models, 'easydict': easydict, 'infomap': infomap}


def install_stubs() -> None:
  sys.modules['faiss'] = _faiss_module()
  stubs = _stub_modules()
  missing = {name for name in stubs if '.' not in name and name not in sys.modules
             and importlib.util.find_spec(name) is None}
  for name, module in stubs.items():
    if name.split('.')[0] in missing:
      sys.modules[name] = module


# --- 5. the pretrained file -----------------------------------------------------------------------


def as_torch_state(state: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
  return {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}


# --- feeding their extraction ---------------------------------------------------------------------


def to_tensor_normalize(images: np.ndarray, mean, std) -> torch.Tensor:
  """torchvision's ToTensor() then Normalize(mean, std) of (N, H, W, 3) uint8 images:
  `img.permute(2, 0, 1).float().div(255)`, then `tensor.sub_(mean[:, None, None])
  .div_(std[:, None, None])` in float32 (torchvision 0.9-0.14 functional code)."""
  x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
  x = x.float().div(255)
  mean = torch.as_tensor(mean, dtype=torch.float32)
  std = torch.as_tensor(std, dtype=torch.float32)
  return x.sub_(mean[None, :, None, None]).div_(std[None, :, None, None])


# --- setting up ------------------------------------------------------------------------------------


def setup(replicas: int, dtype=torch.float32) -> None:
  """Every CPU patch, the precision and determinism of the reference process."""
  install_stubs()
  patch_cuda()
  patch_data_parallel(replicas)
  torch.set_default_dtype(dtype)
  torch.set_float32_matmul_precision('highest')
  torch.use_deterministic_algorithms(True)


def add_path(directory: str) -> None:
  if directory not in sys.path:
    sys.path.insert(0, directory)


def find_folder(root: str, marker: str) -> Optional[str]:
  """The folder under `root` (itself included) holding the file `marker`."""
  for folder, _, files in os.walk(root):
    if marker in files:
      return folder
  return None


def step_norm(parameters) -> float:
  """The L2 norm of every gradient (float64 sum of squares)."""
  total = 0.0
  for p in parameters:
    if p.grad is not None:
      total += float(torch.sum(p.grad.detach().double()**2))
  return math.sqrt(total)
