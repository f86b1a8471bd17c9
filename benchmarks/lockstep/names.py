"""Our network's variables under the authors' state-dict names, in PyTorch layouts.

Both reference networks (MBCCM's `BaseResNet`, PGM's AGW `embed_net_ori`) name their tensors
the same way, and these names are the key space every comparison uses:

  visible_module.visible.{conv1,bn1}.*     our visible_stem
  thermal_module.thermal.{conv1,bn1}.*     our infrared_stem
  base_resnet.base.layer1..4.*             our layer1..layer4 (torchvision names)
  bottleneck.{weight,running_mean,running_var}   our neck (its bias is frozen at 0 there; ours
                                           has none)
  NL_k.c.{g.0,theta,phi,W.0,W.1}.*         our layerk/non_local<b>: the c-th non-local block of
                                           layer k, after block b

The stems and the trunk go through the project's own export (`export_torch_state_dict`, the
inverse of its ImageNet import); the neck and the non-local blocks, which a torchvision ResNet
lacks, are mapped here. Conv kernels are OIHW, everything float32 numpy.
"""

from typing import Dict

import flax.traverse_util
import numpy as np

from vireid_jax.models import weights

VISIBLE_PREFIX = 'visible_module.visible.'
INFRARED_PREFIX = 'thermal_module.thermal.'
TRUNK_PREFIX = 'base_resnet.base.'
NECK_PREFIX = 'bottleneck.'
_NON_LOCAL_CHILD = {'g': 'g.0', 'theta': 'theta', 'phi': 'phi', 'W': 'W.0', 'W_bn': 'W.1'}
_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
         'var': 'running_var'}
RUNNING = ('running_mean', 'running_var')


def is_running_stat(name: str) -> bool:
  """Whether a state-dict name is a BatchNorm running statistic (not a parameter)."""
  return name.endswith(RUNNING)


def _stem_and_trunk(variables) -> Dict[str, np.ndarray]:
  out = {}
  for stem, prefix in (('visible', VISIBLE_PREFIX), ('infrared', INFRARED_PREFIX)):
    for name, value in weights.export_torch_state_dict(variables, stem=stem).items():
      if name.startswith('layer'):
        out[TRUNK_PREFIX + name] = value
      else:
        out[prefix + name] = value
  return out


def reference_state(variables) -> Dict[str, np.ndarray]:
  """{'params', 'batch_stats'} of a TwoStreamResNet -> {authors' name: array}.

  Every parameter and running statistic of ours appears exactly once (a KeyError-free
  inverse is checked by `tests/lockstep_test.py`).
  """
  out = _stem_and_trunk(variables)
  flat = flax.traverse_util.flatten_dict(
      {k: variables[k] for k in ('params', 'batch_stats')})
  counters: Dict[str, list] = {}
  for path in sorted(flat):
    collection, top, *inner = path
    if top == 'neck':
      out[NECK_PREFIX + _LEAF[inner[-1]]] = np.asarray(flat[path], np.float32)
    elif any(part.startswith('non_local') for part in inner):
      block = int(inner[0][len('non_local'):])
      counters.setdefault(top, [])
      if block not in counters[top]:
        counters[top].append(block)
  for top, blocks in counters.items():
    for counter, block in enumerate(sorted(blocks)):
      for path, value in flat.items():
        if path[1] == top and path[2] == f'non_local{block}':
          child, leaf = path[3], path[4]
          array = np.asarray(value, np.float32)
          if leaf == 'kernel':
            array = np.transpose(array, (3, 2, 0, 1))
          out[f'NL_{top[len("layer"):]}.{counter}.{_NON_LOCAL_CHILD[child]}.{_LEAF[leaf]}'] = array
  return out


def imagenet_state(variables) -> Dict[str, np.ndarray]:
  """The torchvision ResNet-50 state dict the reference's `resnet50(pretrained=True)` loads:
  our visible stem (both stems start equal, `model.identical_stems`) and trunk, no fc."""
  return weights.export_torch_state_dict(variables, stem='visible')
