"""ImageNet initialisation: torchvision ResNet state dicts <-> the Flax two-stream network.

MBCCM starts both stems and the shared trunk from torchvision's ImageNet ResNet-50
(`resnet50-0676ba61.pth`, earlier `resnet50-19c8e357.pth`; models/imagenet.py finds or fetches
it). `load_imagenet_resnet` reads that state dict from a .pth (models/torch_pickle.py: no
PyTorch needed), a .safetensors or an .npz (read here with numpy), copies conv1/bn1 into BOTH
stems and layer1..layer4 into the trunk, drops the classifier (fc.*), carries BN running
statistics into 'batch_stats' and leaves the neck at its initialisation. The converted variables
are cached with orbax, keyed by the source file's name, size and mtime and by the model's
structure, so later runs skip the conversion.

Name mapping (torch -> Flax), for every block of every layer:
  conv1.weight (O, I, kh, kw)            -> params/{visible,infrared}_stem/conv1/kernel
                                            (kh, kw, I, O)
  bn1.{weight,bias}                      -> params/..._stem/bn1/{scale,bias}
  bn1.running_{mean,var}                 -> batch_stats/..._stem/bn1/{mean,var}
  layerK.J.convN / bnN                   -> layerK/blockJ/convN / bnN
  layerK.J.downsample.0 / downsample.1   -> layerK/blockJ/downsample_conv / downsample_bn
`num_batches_tracked` entries are ignored (they do not change the network). The non-local
blocks (`layerK/non_localJ`, model.non_local) have no torchvision source: they are neither
imported nor exported and keep their initialisation (in AGW too: they are modules of their own,
outside the ImageNet ResNets).
"""

import hashlib
import json
import logging
import os
import zipfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import flax.traverse_util
import jax.numpy as jnp
import numpy as np

from vireid_jax.models import imagenet
from vireid_jax.models import torch_pickle
from vireid_jax.models.torch_pickle import WeightsFileError

# Bump when the mapping below changes, so stale caches are not reused.
CACHE_VERSION = 1
# The files read_state_dict reads, by name.
TORCH_SUFFIXES = ('.pth', '.pt', '.pth.tar', '.bin')

FlatVariables = Dict[Tuple[str, ...], np.ndarray]

# --------------------------------------------------------------------------------------------
# Reading state dicts


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Reads a .safetensors file: u64 little-endian header size, JSON header, raw tensor bytes."""
  import ml_dtypes  # ships with jax; numpy has no bfloat16 of its own.
  dtypes = {
      'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
      'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
      'BOOL': np.bool_,
  }
  with open(path, 'rb') as f:
    blob = f.read()
  if len(blob) < 8:
    raise WeightsFileError(f'{path} is not a safetensors file: only {len(blob)} bytes')
  header_size = int.from_bytes(blob[:8], 'little')
  if 8 + header_size > len(blob):
    raise WeightsFileError(f'{path} is not a safetensors file: header of {header_size} bytes '
                           f'does not fit in a {len(blob)}-byte file')
  try:
    header = json.loads(blob[8:8 + header_size])
  except ValueError as e:
    raise WeightsFileError(f'{path} is not a safetensors file: its header is not JSON '
                           f'({e})') from e
  data = memoryview(blob)[8 + header_size:]
  tensors = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in dtypes:
      raise WeightsFileError(f'{path}: tensor {name} has dtype {info["dtype"]}, which this '
                             f'reader does not know ({sorted(dtypes)})')
    dtype = np.dtype(dtypes[info['dtype']])
    begin, end = info['data_offsets']
    shape = tuple(info['shape'])
    if end > len(data) or end - begin != dtype.itemsize * int(np.prod(shape)):
      raise WeightsFileError(f'{path}: tensor {name} (shape {shape}, {info["dtype"]}) has byte '
                             f'range [{begin}, {end}) that does not match its size; the file is '
                             f'corrupt')
    tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(shape)
  return tensors


def _read_torch(path: str) -> Dict[str, np.ndarray]:
  """A torch.save file's state dict, read without PyTorch (models/torch_pickle.py)."""
  state = torch_pickle.load(path)
  # Training checkpoints wrap the state dict; torchvision files are the state dict itself.
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise WeightsFileError(f'{path} holds a {type(state).__name__}, not a state dict (a dict of '
                           f'tensors by name)')
  tensors = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
  if not tensors:
    raise WeightsFileError(f'{path} holds no tensors: keys {sorted(map(str, state))[:10]}')
  return tensors


def _read_npz(path: str) -> Dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (ValueError, EOFError, zipfile.BadZipFile) as e:
    raise WeightsFileError(f'{path} is not a readable .npz file ({e})') from None


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a PyTorch state dict from .pth/.pt/.pth.tar/.bin, .safetensors or .npz (no torch).

  Args:
    path: the file.

  Returns:
    name -> numpy array, torch names, layouts and dtypes (conv weights OIHW).

  Raises:
    FileNotFoundError: no file at `path`.
    WeightsFileError: an unknown kind of file, or one that cannot be read (names the file and
      what is wrong).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'Pretrained weights not found at {path!r}. Pass the path of torchvision\'s ImageNet '
        f'ResNet-50 ({imagenet.TORCHVISION_RESNET50_URL}), --config.model.pretrained=imagenet '
        f'to find or download it, or --config.model.pretrained=none for random weights.')
  name = path.lower()
  if name.endswith('.safetensors'):
    return _read_safetensors(path)
  if name.endswith('.npz'):
    return _read_npz(path)
  if name.endswith(TORCH_SUFFIXES):
    return _read_torch(path)
  raise WeightsFileError(f'Do not know how to read {path!r}: expected a .pth/.pt (PyTorch), '
                         f'.safetensors or .npz file')


# --------------------------------------------------------------------------------------------
# Name mapping

_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
                  'mean': 'running_mean', 'var': 'running_var'}
_MODULE_TO_TORCH = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}


def _torch_name(path: Tuple[str, ...], prefixes: Dict[str, Optional[str]]) -> Optional[str]:
  """The torch name of a flattened Flax variable path, or None when it has no torch source.

  Args:
    path: (collection, top module, ..., leaf),
      e.g. ('params', 'layer1', 'block0', 'conv1', 'kernel').
    prefixes: top module -> torch prefix ('visible_stem': '', 'trunk': '', 'neck': None, ...);
      a None prefix leaves that module out.
  """
  top, inner, leaf = path[1], path[2:-1], path[-1]
  if any(part.startswith('non_local') for part in inner):
    return None  # not in a torchvision ResNet
  if top.startswith('layer'):
    prefix = prefixes['trunk']
    inner = (top,) + inner
  else:
    prefix = prefixes.get(top)
  if prefix is None:
    return None
  parts = [_MODULE_TO_TORCH.get(p, p[len('block'):] if p.startswith('block') else p)
           for p in inner]
  return prefix + '.'.join(parts + [_LEAF_TO_TORCH[leaf]])


def _to_torch_layout(path: Tuple[str, ...], array: np.ndarray) -> np.ndarray:
  """Flax conv kernels are (kh, kw, I, O); torch weights (O, I, kh, kw). Others are 1-D."""
  return np.transpose(array, (3, 2, 0, 1)) if path[-1] == 'kernel' else array


def _to_flax_layout(path: Tuple[str, ...], array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (2, 3, 1, 0)) if path[-1] == 'kernel' else array


def _torch_shape(path: Tuple[str, ...], shape: Sequence[int]) -> Tuple[int, ...]:
  return tuple(shape[i] for i in (3, 2, 0, 1)) if path[-1] == 'kernel' else tuple(shape)


def _flatten(variables) -> FlatVariables:
  return flax.traverse_util.flatten_dict(
      {k: variables[k] for k in variables if k in ('params', 'batch_stats')})


def _mapping(flat: FlatVariables, prefixes) -> Dict[str, List[Tuple[str, ...]]]:
  """torch name -> the Flax paths it fills (two for the stems of an ImageNet ResNet)."""
  mapping: Dict[str, List[Tuple[str, ...]]] = {}
  for path in flat:
    name = _torch_name(path, prefixes)
    if name is not None:
      mapping.setdefault(name, []).append(path)
  return mapping


def _listing(title: str, lines: List[str], limit: int = 20) -> str:
  shown = '\n'.join(f'    {line}' for line in lines[:limit])
  more = f'\n    ... and {len(lines) - limit} more' if len(lines) > limit else ''
  return f'  {title} ({len(lines)}):\n{shown}{more}'


class WeightsMismatchError(ValueError):
  """The state dict does not fit the network: missing, unexpected or mis-shaped tensors."""


def import_torch_state_dict(state_dict: Dict[str, np.ndarray], variables, *,
                            visible_prefix: str = '', infrared_prefix: str = '',
                            trunk_prefix: str = '', neck_prefix: Optional[str] = None,
                            ignore: Iterable[str] = ('fc.',), source: str = 'state dict'):
  """Copies a PyTorch state dict into the network's variables.

  The defaults read torchvision's ResNet: both stems from conv1/bn1, the trunk from
  layer1..layer4, the classifier (fc.*) ignored, the neck kept. Other layouts (e.g. the MBCCM
  reference's `visible_module.visible.conv1...`) only need other prefixes.

  Args:
    state_dict: torch name -> array (torch layouts). A leading 'module.' (DataParallel) on every
      key is stripped.
    variables: {'params', 'batch_stats'} of the TwoStreamResNet to fill (not modified).
    visible_prefix, infrared_prefix: prefix of the stem's conv1/bn1 in the state dict.
    trunk_prefix: prefix of layer1..layer4.
    neck_prefix: prefix of the neck's weight/running stats, or None to keep the neck as it is.
    ignore: prefixes of state-dict keys that are expected and not used.
    source: what to call the state dict in errors (usually its path).

  Returns:
    New variables (same structure) with every mapped tensor replaced, float32.

  Raises:
    WeightsMismatchError: listing missing keys, unexpected keys and shape mismatches.
  """
  if state_dict and all(k.startswith('module.') for k in state_dict):
    state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
  prefixes = {'visible_stem': visible_prefix, 'infrared_stem': infrared_prefix,
              'trunk': trunk_prefix, 'neck': neck_prefix}
  flat = _flatten(variables)
  mapping = _mapping(flat, prefixes)
  ignore = tuple(ignore)

  missing = sorted(k for k in mapping if k not in state_dict)
  # The reference's neck has a bias frozen at zero; ours has none, so only a zero bias fits.
  neck_bias = None if neck_prefix is None else neck_prefix + 'bias'
  unexpected = sorted(k for k in state_dict if k not in mapping and k != neck_bias
                      and not k.endswith('num_batches_tracked') and not k.startswith(ignore))
  mismatched = []
  if neck_bias in state_dict and np.any(np.asarray(state_dict[neck_bias]) != 0):
    mismatched.append(f'{neck_bias}: not zero, but the neck has no bias (frozen at 0)')
  for name, paths in sorted(mapping.items()):
    if name in state_dict:
      want = _torch_shape(paths[0], flat[paths[0]].shape)
      got = tuple(np.shape(state_dict[name]))
      if got != want:
        mismatched.append(f'{name}: file {got}, model {want}')
  if missing or unexpected or mismatched:
    parts = [f'The weights in {source} do not fit the network:']
    for title, lines in (('missing from the file', missing),
                         ('unexpected in the file', unexpected),
                         ('shape mismatches', mismatched)):
      if lines:
        parts.append(_listing(title, lines))
    parts.append('ImageNet ResNet-50 weights need config.model.stage_sizes=(3, 4, 6, 3), '
                 "block='bottleneck', width=64; pass a torchvision ResNet state dict.")
    raise WeightsMismatchError('\n'.join(parts))

  for name, paths in mapping.items():
    value = np.asarray(state_dict[name], np.float32)
    for path in paths:
      flat[path] = jnp.asarray(_to_flax_layout(path, value))
  return _unflatten_into(variables, flat)


def _unflatten_into(variables, flat: FlatVariables):
  tree = flax.traverse_util.unflatten_dict(flat)
  out = dict(variables)
  out.update(tree)
  return out


def export_torch_state_dict(variables, stem: str = 'visible') -> Dict[str, np.ndarray]:
  """The stems' and trunk's variables as a torchvision ResNet state dict.

  Args:
    variables: {'params', 'batch_stats'} of a TwoStreamResNet.
    stem: which stem becomes conv1/bn1 ('visible' or 'infrared'); torchvision has one.

  Returns:
    torchvision name -> float32 numpy array (conv weights OIHW); no fc, no neck.
  """
  if stem not in ('visible', 'infrared'):
    raise ValueError(f"stem must be 'visible' or 'infrared', got {stem!r}")
  prefixes = {f'{stem}_stem': '', 'trunk': ''}
  out = {}
  for path, value in _flatten(variables).items():
    name = _torch_name(path, prefixes)
    if name is not None:
      out[name] = _to_torch_layout(path, np.asarray(value, np.float32))
  return out


# --------------------------------------------------------------------------------------------
# Cached ImageNet import


def _cache_key(path: str, flat: FlatVariables) -> str:
  """Names the cache entry after the source file (name, size, mtime) and the model's layout."""
  stat = os.stat(path)
  digest = hashlib.sha1()
  digest.update(f'{CACHE_VERSION}|{os.path.basename(path)}|{stat.st_size}|{stat.st_mtime_ns}'
                .encode())
  for p in sorted(flat):
    digest.update(f'|{"/".join(p)}:{tuple(flat[p].shape)}'.encode())
  return digest.hexdigest()[:16]


def _converted_part(variables, prefixes) -> dict:
  """The sub-tree a torchvision state dict fills: everything but the neck."""
  flat = _flatten(variables)
  return flax.traverse_util.unflatten_dict(
      {p: np.asarray(v) for p, v in flat.items() if _torch_name(p, prefixes) is not None})


def load_imagenet_resnet(path: str, variables, cache_dir: Optional[str] = None):
  """Initialises both stems and the trunk from a torchvision ImageNet ResNet state dict.

  Args:
    path: `resnet50-0676ba61.pth` / `resnet50-19c8e357.pth` (no torch needed), or a
      .safetensors / .npz export of it.
    variables: {'params', 'batch_stats'} from init_variables (the neck keeps its values).
    cache_dir: where to keep the converted variables (orbax), so later runs skip reading and
      converting the source file; None disables the cache.

  Returns:
    New variables with the ImageNet weights and BN running statistics.

  Raises:
    FileNotFoundError: no file at `path`.
    WeightsFileError: the file cannot be read (names it and what is wrong).
    WeightsMismatchError: the file does not fit the network (lists what differs).
  """
  if not os.path.isfile(path):
    read_state_dict(path)  # raises the explanatory FileNotFoundError
  prefixes = {'visible_stem': '', 'infrared_stem': '', 'trunk': '', 'neck': None}
  cache_path = None
  if cache_dir:
    cache_path = os.path.abspath(
        os.path.join(cache_dir, f'imagenet_{_cache_key(path, _flatten(variables))}'))
    if os.path.isdir(cache_path):
      cached = _restore(cache_path, _converted_part(variables, prefixes))
      flat = _flatten(variables)
      flat.update({p: jnp.asarray(v) for p, v in flax.traverse_util.flatten_dict(cached).items()})
      return _unflatten_into(variables, flat)

  loaded = import_torch_state_dict(read_state_dict(path), variables, source=path)
  if cache_path is not None:
    try:
      _save(cache_path, _converted_part(loaded, prefixes))
    except OSError as e:  # the cache only saves time; an unwritable folder must not stop a run
      logging.warning('Could not cache the converted weights in %s: %s', cache_path, e)
  return loaded


def _save(cache_path: str, tree: dict) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(cache_path), exist_ok=True)
  # orbax writes into a temporary directory and renames it: a crash leaves no half cache.
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(cache_path, tree, force=True)


def _restore(cache_path: str, target: dict) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.PyTreeCheckpointer() as checkpointer:
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    return checkpointer.restore(cache_path, item=target, restore_args=restore_args)
