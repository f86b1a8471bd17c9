"""Which weights a run starts from: `config.model.pretrained` resolved to a file, or none.

  'imagenet'            torchvision's ImageNet ResNet-50, the paper's start: torch.hub's cache,
                        else downloaded into it (models/imagenet.py)
  'synthetic_imagenet'  the demo's stand-in, pretrained on first use (pretrain.py)
  a path                a torchvision ResNet state dict (.pth/.pt, .safetensors, .npz)
  'none' (or '')        random weights, announced by a warning

`main.py` resolves before any data is prepared (`resolved_config`), so a run that cannot get
its weights stops at once; `train_state.create_train_state` resolves again (a path is only
looked up) and prints the one line `describe` writes. A resumed run restores its weights from
its checkpoint and resolves nothing.
"""

import os

import ml_collections

from vireid_jax import config as config_lib
from vireid_jax.models import pretrain
from vireid_jax.models import imagenet

# What torchvision's ResNet-50 fits: the config's network must be this one to load it.
_RESNET50 = {'stage_sizes': (3, 4, 6, 3), 'block': 'bottleneck', 'width': 64}


def _check_resnet50(model_cfg: ml_collections.ConfigDict) -> None:
  network = {'stage_sizes': tuple(model_cfg.stage_sizes), 'block': model_cfg.block,
             'width': model_cfg.width}
  if network != _RESNET50:
    differs = ', '.join(f'{k}={v!r}' for k, v in network.items() if v != _RESNET50[k])
    raise config_lib.ConfigError(
        f"config.model.pretrained = 'imagenet' loads torchvision's ResNet-50, which needs "
        f"model.stage_sizes=(3, 4, 6, 3), block='bottleneck', width=64 (this config: {differs}); "
        f'pass --config.model.pretrained=none to start this network from random weights')


def resolve(config: ml_collections.ConfigDict) -> str:
  """The weights file the run starts from, fetched or made first if needed; '' for none.

  Every process of a run calls this (the ImageNet download and the stand-in's pretraining
  happen on process 0 first; the others wait).

  Raises:
    imagenet.WeightsUnavailable: 'imagenet' and no cached file nor network.
    FileNotFoundError: a path to no file.
    config.ConfigError: 'imagenet' for a network that is not a ResNet-50.
  """
  value = config.model.pretrained
  if value in (config_lib.PRETRAINED_NONE, ''):
    return ''
  if value == config_lib.PRETRAINED_IMAGENET:
    _check_resnet50(config.model)
    return imagenet.fetch_on_every_process(config.model.imagenet_url)
  if value == config_lib.PRETRAINED_SYNTHETIC:
    return pretrain.pretrain_on_main(config)
  path = os.path.expanduser(value)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'config.model.pretrained = {value!r}: no such file. Pass the path of a torchvision '
        f'ResNet-50 state dict, --config.model.pretrained=imagenet to find or download '
        f"torchvision's, or --config.model.pretrained=none for random weights")
  return path


def resolved_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose `model.pretrained` is the resolved file, or 'none'."""
  resolved = config.copy_and_resolve_references()
  resolved.model.pretrained = resolve(config) or config_lib.PRETRAINED_NONE
  return resolved


def describe(path: str) -> str:
  """The line a run prints about its start: the file it loads, or a warning for none."""
  if not path:
    return ("weights: random (config.model.pretrained=none). Warning: without torchvision's "
            "ImageNet start the results land far from the paper's numbers.")
  name = os.path.basename(path)
  if name in imagenet.TORCHVISION_RESNET50_FILES:
    return f'weights: ImageNet ResNet-50 (torchvision IMAGENET1K_V1) from {path}'
  if name.startswith(pretrain.SYNTHETIC_IMAGENET):
    return f'weights: the synthetic ImageNet stand-in from {path}'
  return f'weights: {path}'
