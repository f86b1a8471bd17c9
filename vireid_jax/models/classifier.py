"""A plain one-stream ResNet classifier built from the two-stream network's own pieces.

The ImageNet stand-in (vireid_jax/models/pretrain.py) trains this network as torchvision trains
ResNets on ImageNet: stem, layer1..layer4, global average pooling and a linear layer `fc`.
Its stem is a `Stem` named `visible_stem` and its layers are the `Stage`s of `TwoStreamResNet`,
so `weights.export_torch_state_dict` writes it under torchvision's names (conv1, bn1,
layer1..layer4) and `weights.load_imagenet_resnet` reads it back into both stems and the trunk
of the two-stream network, exactly as it reads `resnet50-19c8e357.pth`.

It stands for torchvision's ImageNet training, not for the authors' runs: its BatchNorms
normalise the whole batch whatever `model.bn_groups` says, and it has no non-local blocks
(`model.non_local`; an ImageNet ResNet has none, and the import leaves them at their init).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vireid_jax.models.resnet import BLOCKS, Stage, Stem, compute_dtype

Array = jax.Array


class ResNetClassifier(nn.Module):
  """Stem + layer1..layer4 + global average pooling + `fc`, torchvision's ImageNet ResNet.

  Attributes:
    num_classes: outputs of the linear head.
    stage_sizes, block, width: as in `TwoStreamResNet` (the trunk must be the same to transfer).
    last_stride: stride of layer4; 2 as in torchvision's ImageNet ResNets (MBCCM sets it to 1
      only after loading, which changes no weight).
    dtype: compute dtype; parameters and logits are float32.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  block: str = 'bottleneck'
  width: int = 64
  last_stride: int = 2
  dtype: Any = jnp.float32

  def setup(self):
    if len(self.stage_sizes) != 4 or self.block not in BLOCKS:
      raise ValueError(f'stage_sizes must name 4 layers and block one of {sorted(BLOCKS)}; got '
                       f'{self.stage_sizes}, {self.block!r}')
    # Named as the two-stream network's visible stem, so the export maps it to conv1/bn1.
    self.visible_stem = Stem(self.width, self.dtype)
    strides = (1, 2, 2, self.last_stride)
    stages = [Stage(self.block, n, self.width * 2**k, s, self.dtype)
              for k, (n, s) in enumerate(zip(self.stage_sizes, strides))]
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.fc = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32)

  def features(self, images: Array, train: bool) -> Array:
    """(B, H, W, 3) normalised images -> (B, C) float32 average-pooled trunk features."""
    x = self.visible_stem(images, train)
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      x = stage(x, train)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, images: Array, train: bool) -> Array:
    """(B, H, W, 3) normalised images -> (B, num_classes) float32 logits."""
    return self.fc(self.features(images, train))


def build_classifier(model_cfg, num_classes: int, last_stride: int) -> ResNetClassifier:
  """The classifier whose stem and trunk fit `TwoStreamResNet` built from `model_cfg`."""
  return ResNetClassifier(num_classes=num_classes, stage_sizes=tuple(model_cfg.stage_sizes),
                          block=model_cfg.block, width=model_cfg.width, last_stride=last_stride,
                          dtype=compute_dtype(model_cfg.dtype))
