"""The two-stream ResNet of MBCCM (SPEC.md: Network).

A visible stem and an infrared stem (conv 7x7/2, BN, ReLU, max-pool 3/2) feed one shared trunk
(layer1..layer4, torchvision v1.5 layout: the stride sits on the 3x3 conv of a bottleneck), then
GeM pooling and a BatchNorm "neck" without bias. One call runs both stems, concatenates their
outputs [visible; infrared] and runs the trunk once, so in training every BatchNorm of the trunk
and the neck normalises over both modalities together, as the reference does.

Parameter tree (top level): `visible_stem`, `infrared_stem`, `layer1` .. `layer4` (each holding
`block0`, `block1`, ...), `neck`. Names inside a block follow torchvision (`conv1`, `bn1`, ...,
`downsample_conv`, `downsample_bn`) so weights.py maps them one to one.

Padding is explicit everywhere so the network matches PyTorch to float32 precision
(tests/models_torch_test.py).
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# PyTorch BatchNorm defaults: running = 0.9 * running + 0.1 * batch (torch momentum 0.1), eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPS = 1e-5

# The reference (and torchvision's original ResNet) draws conv weights from N(0, 2 / fan_out).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def compute_dtype(name: str) -> jnp.dtype:
  """Resolves config.model.dtype to the dtype the convolutions compute in.

  Args:
    name: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), 'float32' or 'bfloat16'.

  Returns:
    The compute dtype. Parameters, BatchNorm statistics and outputs stay float32 regardless.
  """
  if name == 'auto':
    return jnp.bfloat16 if jax.default_backend() in ('gpu', 'tpu') else jnp.float32
  if name in ('float32', 'bfloat16'):
    return jnp.dtype(name)
  raise ValueError(f"config.model.dtype must be 'auto', 'float32' or 'bfloat16', got {name!r}")


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last, with PyTorch's semantics.

  Differences from flax.linen.BatchNorm that matter for matching the reference: the running
  variance is updated with the UNBIASED batch variance (n / (n - 1)), as torch does, while the
  batch is normalised with the biased one. Statistics are computed in float32 whatever the
  compute dtype; the output is cast back to `dtype`.

  Attributes:
    momentum: running = momentum * running + (1 - momentum) * batch (torch momentum 0.1 -> 0.9).
    epsilon: added to the variance.
    use_bias: False drops the shift (the BN neck: a bias frozen at zero).
    scale_init: initialiser of the scale.
    dtype: dtype of the output.
  """
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPS
  use_bias: bool = True
  scale_init: Callable[..., Array] = nn.initializers.ones
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
            if self.use_bias else jnp.zeros((features,), jnp.float32))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      # One pass over the activations (E[x^2] - E[x]^2, as flax does): in float32 it matched
      # PyTorch as closely as the two-pass form in tests/models_torch_test.py, and saves a read.
      var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        count = x.size // features
        unbiased_var = var * (count / max(count - 1, 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = (self.momentum * running_var.value
                             + (1 - self.momentum) * unbiased_var)
    else:
      mean, var = running_mean.value, running_var.value
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    y = x32 * multiplier + (bias - mean * multiplier)
    return y.astype(self.dtype)


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str) -> nn.Conv:
  """A bias-free conv with PyTorch's symmetric padding (kernel // 2 on every side)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_init, name=name)


def _bn(dtype: Dtype, name: str) -> BatchNorm:
  return BatchNorm(dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34); `features` output channels."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    residual = x
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)
    y = nn.relu(_bn(self.dtype, 'bn1')(y, train))
    y = _conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    y = _bn(self.dtype, 'bn2')(y, train)
    if self.stride != 1 or x.shape[-1] != self.features:
      residual = _conv(self.features, 1, self.stride, self.dtype, 'downsample_conv')(x)
      residual = _bn(self.dtype, 'downsample_bn')(residual, train)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1, 3x3 (strided), 1x1 convs (ResNet-50); 4 * `features` output channels."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    out_features = self.features * self.expansion
    residual = x
    y = _conv(self.features, 1, 1, self.dtype, 'conv1')(x)
    y = nn.relu(_bn(self.dtype, 'bn1')(y, train))
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv2')(y)
    y = nn.relu(_bn(self.dtype, 'bn2')(y, train))
    y = _conv(out_features, 1, 1, self.dtype, 'conv3')(y)
    y = _bn(self.dtype, 'bn3')(y, train)
    if self.stride != 1 or x.shape[-1] != out_features:
      residual = _conv(out_features, 1, self.stride, self.dtype, 'downsample_conv')(x)
      residual = _bn(self.dtype, 'downsample_bn')(residual, train)
    return nn.relu(y + residual)


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


class Stage(nn.Module):
  """One of layer1..layer4: `num_blocks` blocks, the first one strided; children block0, ..."""
  block: str
  num_blocks: int
  features: int
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    block_cls = BLOCKS[self.block]
    for i in range(self.num_blocks):
      x = block_cls(self.features, self.stride if i == 0 else 1, self.dtype,
                    name=f'block{i}')(x, train)
    return x


class Stem(nn.Module):
  """conv1 (7x7/2) + bn1 + ReLU + max-pool (3/2): (B, H, W, 3) -> (B, H/4, W/4, width)."""
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = _conv(self.width, 7, 2, self.dtype, 'conv1')(x.astype(self.dtype))
    x = nn.relu(_bn(self.dtype, 'bn1')(x, train))
    # Padding with -inf, as torch's MaxPool2d(3, 2, padding=1) does.
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def gem_pool(x: Array, p: float, eps: float) -> Array:
  """Generalised-mean pooling as the reference computes it: (mean_hw x^p + eps)^(1/p).

  The reference (network.py, gm_pool='on') does NOT clamp x before the power; x is a ReLU
  output, so it is non-negative anyway. Computed in float32.

  Args:
    x: (B, H, W, C) trunk output, any float dtype.
    p: the exponent (3).
    eps: added to the mean before the root (1e-12).

  Returns:
    (B, C) float32.
  """
  x = x.astype(jnp.float32)
  return (jnp.mean(x ** p, axis=(1, 2)) + eps) ** (1.0 / p)


def l2_normalize(x: Array, eps: float = 1e-12, dtype=None) -> Array:
  """x / max(|x|, eps) row-wise, as torch.nn.functional.normalize.

  `dtype` casts first: the memories and losses compute in float32 whatever the network's
  compute dtype (`jnp.float32` there).
  """
  if dtype is not None:
    x = x.astype(dtype)
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class TwoStreamResNet(nn.Module):
  """Visible and infrared stems, one shared trunk, GeM pooling and a bias-free BN neck.

  Attributes:
    stage_sizes: blocks in layer1..layer4 ((3, 4, 6, 3) for ResNet-50).
    block: 'bottleneck' or 'basic'.
    width: stem channels; layer k (0-based) has width * 2**k planes (x4 for bottlenecks).
    last_stride: stride of layer4 (1 in MBCCM: an 18x9 map for 288x144 input).
    gem_p: GeM exponent.
    gem_eps: added inside the GeM mean.
    neck_init_std: the neck's scale starts at N(1, neck_init_std).
    dtype: compute dtype of the stems and trunk; params, statistics and outputs are float32.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  block: str = 'bottleneck'
  width: int = 64
  last_stride: int = 1
  gem_p: float = 3.0
  gem_eps: float = 1e-12
  neck_init_std: float = 0.01
  dtype: Dtype = jnp.float32

  def setup(self):
    if len(self.stage_sizes) != 4:
      raise ValueError(
          f'stage_sizes must name the blocks of layer1..layer4, got {self.stage_sizes}')
    if self.block not in BLOCKS:
      raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
    self.visible_stem = Stem(self.width, self.dtype)
    self.infrared_stem = Stem(self.width, self.dtype)
    strides = (1, 2, 2, self.last_stride)
    stages = [Stage(self.block, n, self.width * 2**k, s, self.dtype)
              for k, (n, s) in enumerate(zip(self.stage_sizes, strides))]
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    std = self.neck_init_std
    self.neck = BatchNorm(
        use_bias=False, dtype=jnp.float32,
        scale_init=lambda key, shape, dtype: 1.0 + std * jax.random.normal(key, shape, dtype))

  @property
  def num_features(self) -> int:
    """C, the size of the pooled and neck features (2048 for ResNet-50)."""
    return self.width * 8 * BLOCKS[self.block].expansion

  def stems(self, visible: Optional[Array], infrared: Optional[Array], train: bool) -> Array:
    """Runs each modality through its stem; (Bv + Bi, H/4, W/4, width), rows [visible; infrared]."""
    if visible is None and infrared is None:
      raise ValueError(
          'TwoStreamResNet needs a visible batch, an infrared batch or both; got neither')
    maps = []
    if visible is not None:
      maps.append(self.visible_stem(visible, train))
    if infrared is not None:
      maps.append(self.infrared_stem(infrared, train))
    return maps[0] if len(maps) == 1 else jnp.concatenate(maps, axis=0)

  def trunk(self, x: Array, train: bool) -> Array:
    """layer1..layer4 on the stem maps of both modalities at once.

    (B, h, w, width) -> (B, h', w', C), the compute dtype.
    """
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      x = stage(x, train)
    return x

  def head(self, x: Array, train: bool):
    """GeM + neck on a trunk map; see __call__ for what it returns."""
    pooled = gem_pool(x, self.gem_p, self.gem_eps)  # (B, C) float32
    neck = self.neck(pooled, train)  # (B, C) float32
    if train:
      return neck, pooled
    return l2_normalize(neck)

  def __call__(self, visible: Optional[Array], infrared: Optional[Array], train: bool):
    """Features of a visible batch and an infrared batch, rows [visible; infrared].

    Args:
      visible: (Bv, H, W, 3) float32 normalised images, or None.
      infrared: (Bi, H, W, 3) float32 normalised images, or None (not both None).
      train: True uses batch statistics over the whole concatenated batch and updates
        'batch_stats' (apply with mutable=['batch_stats']); False uses the running statistics.

    Returns:
      train=True: (neck_features, pooled_features), both (Bv + Bi, C) float32, the neck
        features not normalised. train=False: (Bv + Bi, C) float32 L2-normalised neck features.
    """
    return self.head(self.trunk(self.stems(visible, infrared, train), train), train)


def build_model(model_cfg) -> TwoStreamResNet:
  """The network described by config.model (see vireid_jax/config.py)."""
  return TwoStreamResNet(
      stage_sizes=tuple(model_cfg.stage_sizes),
      block=model_cfg.block,
      width=model_cfg.width,
      last_stride=model_cfg.last_stride,
      gem_p=model_cfg.gem_p,
      gem_eps=model_cfg.gem_eps,
      neck_init_std=model_cfg.neck_init_std,
      dtype=compute_dtype(model_cfg.dtype))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: TwoStreamResNet, seed: Array, image_shape: Tuple[int, int]) -> dict:
  images = jax.ShapeDtypeStruct((1, *image_shape, 3), jnp.float32)
  # lazy_init: shapes only, no forward computation on a dummy batch.
  return model.lazy_init(jax.random.key(seed, impl='rbg'), images, images, train=False)


def init_variables(model: TwoStreamResNet, rng: Array,
                   image_shape: Tuple[int, int] = (288, 144)) -> dict:
  """Random initial variables {'params', 'batch_stats'} for images of `image_shape` (H, W).

  Deterministic in `rng`. The parameters are drawn from an 'rbg' key seeded by `rng`: with
  threefry keys XLA compiles one generator per parameter tensor, which made this take 2-3x
  longer to compile on CPU (e.g. 12 s instead of 4 s for a tiny test network).
  """
  model = model.clone(stage_sizes=tuple(model.stage_sizes))  # a static jit argument: hashable
  variables = _init(model, jax.random.bits(rng, dtype=jnp.uint32), tuple(image_shape))
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}


def copy_visible_stem_to_infrared(variables: dict) -> dict:
  """Variables whose infrared stem (params and BN statistics) equals the visible stem.

  The paper initialises both stems from the same ImageNet weights; this gives a randomly
  initialised network the same property, so both modalities start in one feature space.
  """
  copied = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    if 'visible_stem' in tree:
      tree['infrared_stem'] = jax.tree.map(jnp.array, tree['visible_stem'])
    copied[collection] = tree
  return copied
