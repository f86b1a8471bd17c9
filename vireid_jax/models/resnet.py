"""The two-stream ResNet of MBCCM and PGM (docs/mbccm.md, "Network"; docs/pgm.md, "Network").

A visible stem and an infrared stem (conv 7x7/2, BN, ReLU, max-pool 3/2) feed one shared trunk
(layer1..layer4, torchvision v1.5 layout: the stride sits on the 3x3 conv of a bottleneck), then
GeM pooling and a BatchNorm "neck" without bias. One call runs both stems, concatenates their
outputs [visible; infrared] and runs the trunk once, so in training every BatchNorm of the trunk
and the neck normalises over both modalities together, as the reference does.

Two options reproduce how the authors ran it:
- `bn_groups` = k > 1: the BatchNorm groups of `nn.DataParallel` over k GPUs (`BatchGroups`).
- `non_local`: AGW's non-local blocks after the last blocks of layer2 and layer3 (PGM).

Parameter tree (top level): `visible_stem`, `infrared_stem`, `layer1` .. `layer4` (each holding
`block0`, `block1`, ... and, with `non_local`, `non_local<i>` after `block<i>`), `neck`. Names
inside a block follow torchvision (`conv1`, `bn1`, ..., `downsample_conv`, `downsample_bn`) so
weights.py maps them one to one; it leaves the non-local blocks alone (ImageNet has none).

Padding is explicit everywhere so the network matches PyTorch to float32 precision
(tests/models_torch_test.py).
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


@dataclasses.dataclass(frozen=True)
class BatchGroups:
  """The BatchNorm groups of a train-mode batch: what `nn.DataParallel` over k GPUs computes.

  DataParallel splits each input (the visible batch, the infrared batch) into k consecutive
  chunks and GPU j runs chunk j of each, so every BatchNorm normalises over group j only, and
  the running statistics that survive are GPU 0's. Here the rows of a batch are the
  concatenation of `segments` (a stem: its modality's rows; the trunk and neck: (visible rows,
  infrared rows)); each segment splits into `count` equal consecutive chunks and group j is
  chunk j of every segment. Static: everything is a reshape, so under jit the result is the
  same however the batch is sharded over devices.

  Attributes:
    count: k, the number of groups (GPUs).
    segments: rows of each concatenated part, in row order; each divisible by `count`.
  """
  count: int
  segments: Tuple[int, ...]


class BatchNorm(nn.Module):
  """BatchNorm over every axis but the last, with PyTorch's semantics.

  Differences from flax.linen.BatchNorm that matter for matching the reference: the running
  variance is updated with the UNBIASED batch variance (n / (n - 1)), as torch does, while the
  batch is normalised with the biased one. Statistics are computed in float32 whatever the
  compute dtype; the output is cast back to `dtype`. In training, `groups` normalises each
  DataParallel group with its own statistics and keeps group 0's as the running ones.

  Attributes:
    momentum: running = momentum * running + (1 - momentum) * batch (torch momentum 0.1 -> 0.9).
    epsilon: added to the variance.
    use_bias: False drops the shift (the BN neck: a bias frozen at zero).
    scale_init: initialiser of the scale.
    dtype: dtype of the output.
    two_pass: the batch variance as mean((x - mean)^2) rather than E[x^2] - E[x]^2. For inputs
      whose mean dwarfs their spread (a conv with bias in front, as in `NonLocal`), where the
      one-pass form cancels in float32.
  """
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPS
  use_bias: bool = True
  scale_init: Callable[..., Array] = nn.initializers.ones
  dtype: Dtype = jnp.float32
  two_pass: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool, groups: Optional[BatchGroups] = None) -> Array:
    """(N, ..., C) -> (N, ..., C) `dtype`; `groups` (train only): None = the whole batch."""
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,), jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
            if self.use_bias else jnp.zeros((features,), jnp.float32))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    x32 = x.astype(jnp.float32)
    if train and groups is not None and groups.count > 1:
      return self._grouped(x32, scale, bias, running_mean, running_var, groups)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      # One pass over the activations (E[x^2] - E[x]^2, as flax does): in float32 it matched
      # PyTorch as closely as the two-pass form in tests/models_torch_test.py, and saves a read.
      if self.two_pass:
        var = jnp.mean(jnp.square(x32 - mean), axes)
      else:
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

  def _grouped(self, x32: Array, scale: Array, bias: Array, running_mean, running_var,
               groups: BatchGroups) -> Array:
    """Train mode with one set of statistics per group; running statistics from group 0."""
    k, features = groups.count, x32.shape[-1]
    if sum(groups.segments) != x32.shape[0] or any(n % k for n in groups.segments):
      raise ValueError(
          f'model.bn_groups = {k} must divide each part of the batch; got parts of '
          f'{groups.segments} rows (batch of {x32.shape[0]}): choose a bn_groups that divides '
          f'the visible and the infrared batch')
    # Each part (N_s, ..., C) -> (k, rows of its chunk x spatial, C): chunk j is row j.
    bounds = [int(b) for b in np.cumsum((0,) + tuple(groups.segments))]
    chunks = [x32[begin:end].reshape(k, -1, features)
              for begin, end in zip(bounds[:-1], bounds[1:])]
    count = sum(c.shape[1] for c in chunks)  # values per channel in one group
    mean = sum(jnp.sum(c, axis=1) for c in chunks) / count  # (k, C)
    if self.two_pass:
      var = sum(jnp.sum(jnp.square(c - mean[:, None]), axis=1) for c in chunks) / count
    else:  # one pass, as the whole-batch path
      var = jnp.maximum(sum(jnp.sum(jnp.square(c), axis=1) for c in chunks) / count
                        - jnp.square(mean), 0.0)
    if not self.is_initializing():
      unbiased_var = var[0] * (count / max(count - 1, 1))
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean[0]
      running_var.value = (self.momentum * running_var.value
                           + (1 - self.momentum) * unbiased_var)
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)  # (k, C)
    shift = bias - mean * multiplier
    parts = [(c * multiplier[:, None] + shift[:, None]).reshape(
        (end - begin,) + x32.shape[1:]) for c, begin, end in zip(chunks, bounds[:-1], bounds[1:])]
    y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
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
  def __call__(self, x: Array, train: bool, groups: Optional[BatchGroups] = None) -> Array:
    residual = x
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)
    y = nn.relu(_bn(self.dtype, 'bn1')(y, train, groups))
    y = _conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    y = _bn(self.dtype, 'bn2')(y, train, groups)
    if self.stride != 1 or x.shape[-1] != self.features:
      residual = _conv(self.features, 1, self.stride, self.dtype, 'downsample_conv')(x)
      residual = _bn(self.dtype, 'downsample_bn')(residual, train, groups)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1, 3x3 (strided), 1x1 convs (ResNet-50); 4 * `features` output channels."""
  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: Array, train: bool, groups: Optional[BatchGroups] = None) -> Array:
    out_features = self.features * self.expansion
    residual = x
    y = _conv(self.features, 1, 1, self.dtype, 'conv1')(x)
    y = nn.relu(_bn(self.dtype, 'bn1')(y, train, groups))
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv2')(y)
    y = nn.relu(_bn(self.dtype, 'bn2')(y, train, groups))
    y = _conv(out_features, 1, 1, self.dtype, 'conv3')(y)
    y = _bn(self.dtype, 'bn3')(y, train, groups)
    if self.stride != 1 or x.shape[-1] != out_features:
      residual = _conv(out_features, 1, self.stride, self.dtype, 'downsample_conv')(x)
      residual = _bn(self.dtype, 'downsample_bn')(residual, train, groups)
    return nn.relu(y + residual)


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


def _torch_default_uniform(fan_in: int) -> Callable[..., Array]:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what torch's Conv2d draws its bias from, and its
  weight too (kaiming_uniform with a = sqrt(5) gives that bound)."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class NonLocal(nn.Module):
  """AGW's non-local block (docs/pgm.md, "Network"), the identity at initialisation.

  g, theta, phi: 1x1 convs C -> 1 with bias; y = (theta^T phi / N) g over the N = H*W
  positions, no softmax; z = BN(W y) + x with W a 1x1 conv 1 -> C with bias and the BN's scale
  and bias zero at first. With one inter channel, y_p = theta_p * mean_q(phi_q g_q): the same
  sum as the authors' N x N matrix product, in O(N). Parameters start as PyTorch's defaults
  (the ImageNet file has none): U(+-1/sqrt(fan_in)) for conv weights and biases.

  Children `g`, `theta`, `phi`, `W` (the conv) and `W_bn`, after AGW's `g.0`, `theta`, `phi`,
  `W.0`, `W.1`.
  """
  dtype: Dtype = jnp.float32

  def _conv(self, features: int, fan_in: int, name: str) -> nn.Conv:
    init = _torch_default_uniform(fan_in)
    return nn.Conv(features, (1, 1), use_bias=True, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=init, bias_init=init, name=name)

  @nn.compact
  def __call__(self, x: Array, train: bool, groups: Optional[BatchGroups] = None) -> Array:
    """(B, H, W, C) -> (B, H, W, C) in the compute dtype."""
    channels = x.shape[-1]
    g = self._conv(1, channels, 'g')(x)  # (B, H, W, 1)
    theta = self._conv(1, channels, 'theta')(x)
    phi = self._conv(1, channels, 'phi')(x)
    context = jnp.mean((phi * g).astype(jnp.float32), axis=(1, 2), keepdims=True)  # (B, 1, 1, 1)
    y = (theta.astype(jnp.float32) * context).astype(self.dtype)
    w_y = self._conv(channels, 1, 'W')(y)
    # W's bias shifts every channel's mean far from its spread: two-pass variance (BatchNorm).
    w_y = BatchNorm(scale_init=nn.initializers.zeros, dtype=self.dtype, two_pass=True,
                    name='W_bn')(w_y, train, groups)
    return w_y + x


def non_local_positions(num_blocks: int, count: int) -> Tuple[int, ...]:
  """The blocks of a layer that a non-local block follows: the last `count` (all if fewer).

  AGW places `count` blocks after blocks num_blocks - count .. num_blocks - 1 (`NL_k_idx`):
  layer2 (4 blocks, 2 non-local) after blocks 2, 3; layer3 (6, 3) after 3, 4, 5. Smaller test
  networks keep the rule; with fewer blocks than `count` every block gets one.
  """
  return tuple(range(max(num_blocks - count, 0), num_blocks))


class Stage(nn.Module):
  """One of layer1..layer4: `num_blocks` blocks, the first one strided; children block0, ...

  `non_local_after` lists the blocks a `NonLocal` child (`non_local<i>`) follows.
  """
  block: str
  num_blocks: int
  features: int
  stride: int
  dtype: Dtype = jnp.float32
  non_local_after: Tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x: Array, train: bool, groups: Optional[BatchGroups] = None) -> Array:
    block_cls = BLOCKS[self.block]
    for i in range(self.num_blocks):
      x = block_cls(self.features, self.stride if i == 0 else 1, self.dtype,
                    name=f'block{i}')(x, train, groups)
      if i in self.non_local_after:
        x = NonLocal(self.dtype, name=f'non_local{i}')(x, train, groups)
    return x


class Stem(nn.Module):
  """conv1 (7x7/2) + bn1 + ReLU + max-pool (3/2): (B, H, W, 3) -> (B, H/4, W/4, width)."""
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, groups: Optional[BatchGroups] = None) -> Array:
    x = _conv(self.width, 7, 2, self.dtype, 'conv1')(x.astype(self.dtype))
    x = nn.relu(_bn(self.dtype, 'bn1')(x, train, groups))
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
    bn_groups: k; in training every BatchNorm normalises over one of k groups, as the authors'
      `nn.DataParallel` over k GPUs does (`BatchGroups`); 1 = the whole batch. Each modality's
      batch must be divisible by k.
    non_local: AGW's non-local blocks (`NonLocal`) in the trunk (PGM).
    non_local_blocks: non-local blocks in layer1..layer4 with `non_local` (AGW: (0, 2, 3, 0)),
      after the last blocks of each layer (`non_local_positions`).
    neck_two_pass: the neck's training variance in two passes, mean((x - mean)^2), as PyTorch
      computes it; False: one pass, E[x^2] - E[x]^2, which cancels in float32 where the pooled
      features' means dwarf their spread (benchmarks/neck_variance.py).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  block: str = 'bottleneck'
  width: int = 64
  last_stride: int = 1
  gem_p: float = 3.0
  gem_eps: float = 1e-12
  neck_init_std: float = 0.01
  dtype: Dtype = jnp.float32
  bn_groups: int = 1
  non_local: bool = False
  non_local_blocks: Sequence[int] = (0, 2, 3, 0)
  neck_two_pass: bool = True

  def setup(self):
    if len(self.stage_sizes) != 4:
      raise ValueError(
          f'stage_sizes must name the blocks of layer1..layer4, got {self.stage_sizes}')
    if self.block not in BLOCKS:
      raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
    if not isinstance(self.bn_groups, int) or self.bn_groups < 1:
      raise ValueError(f'bn_groups must be a positive int, got {self.bn_groups!r}')
    if len(self.non_local_blocks) != 4 or min(self.non_local_blocks) < 0:
      raise ValueError('non_local_blocks must count the non-local blocks of layer1..layer4, got '
                       f'{self.non_local_blocks}')
    self.visible_stem = Stem(self.width, self.dtype)
    self.infrared_stem = Stem(self.width, self.dtype)
    strides = (1, 2, 2, self.last_stride)
    non_local = self.non_local_blocks if self.non_local else (0, 0, 0, 0)
    stages = [Stage(self.block, n, self.width * 2**k, s, self.dtype,
                    non_local_positions(n, count))
              for k, (n, s, count) in enumerate(zip(self.stage_sizes, strides, non_local))]
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    std = self.neck_init_std
    self.neck = BatchNorm(
        use_bias=False, dtype=jnp.float32, two_pass=self.neck_two_pass,
        scale_init=lambda key, shape, dtype: 1.0 + std * jax.random.normal(key, shape, dtype))

  @property
  def num_features(self) -> int:
    """C, the size of the pooled and neck features (2048 for ResNet-50)."""
    return self.width * 8 * BLOCKS[self.block].expansion

  def _groups(self, segments: Sequence[int], train: bool) -> Optional[BatchGroups]:
    """The BatchNorm groups of a batch made of `segments` rows; None = the whole batch."""
    if not train or self.bn_groups == 1:
      return None
    for n in segments:
      if n % self.bn_groups:
        raise ValueError(
            f'model.bn_groups = {self.bn_groups} does not divide a batch of {n} rows: the '
            f'visible and the infrared batch must each split into {self.bn_groups} equal '
            f'groups (choose a bn_groups that divides both)')
    return BatchGroups(self.bn_groups, tuple(segments))

  def stems(self, visible: Optional[Array], infrared: Optional[Array], train: bool) -> Array:
    """Runs each modality through its stem; (Bv + Bi, H/4, W/4, width), rows [visible; infrared]."""
    if visible is None and infrared is None:
      raise ValueError(
          'TwoStreamResNet needs a visible batch, an infrared batch or both; got neither')
    maps = []
    if visible is not None:
      maps.append(self.visible_stem(visible, train, self._groups((visible.shape[0],), train)))
    if infrared is not None:
      maps.append(self.infrared_stem(infrared, train, self._groups((infrared.shape[0],), train)))
    return maps[0] if len(maps) == 1 else jnp.concatenate(maps, axis=0)

  def trunk(self, x: Array, train: bool, segments: Optional[Sequence[int]] = None) -> Array:
    """layer1..layer4 on the stem maps of both modalities at once.

    (B, h, w, width) -> (B, h', w', C), the compute dtype. `segments`: the rows of each
    modality in x, (Bv, Bi) (None: one, all B rows), which `bn_groups` splits into groups.
    """
    groups = self._groups(segments or (x.shape[0],), train)
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      x = stage(x, train, groups)
    return x

  def head(self, x: Array, train: bool, segments: Optional[Sequence[int]] = None):
    """GeM + neck on a trunk map (`segments` as in `trunk`); see __call__ for what it returns."""
    pooled = gem_pool(x, self.gem_p, self.gem_eps)  # (B, C) float32
    neck = self.neck(pooled, train, self._groups(segments or (x.shape[0],), train))  # (B, C) f32
    if train:
      return neck, pooled
    return l2_normalize(neck)

  def __call__(self, visible: Optional[Array], infrared: Optional[Array], train: bool):
    """Features of a visible batch and an infrared batch, rows [visible; infrared].

    Args:
      visible: (Bv, H, W, 3) float32 normalised images, or None.
      infrared: (Bi, H, W, 3) float32 normalised images, or None (not both None).
      train: True uses batch statistics over the whole concatenated batch (with `bn_groups`
        k > 1: over group j = visible chunk j and infrared chunk j, each BatchNorm of a stem
        over its modality's chunk j) and updates 'batch_stats' (apply with
        mutable=['batch_stats']; with k > 1 from group 0); False uses the running statistics.

    Returns:
      train=True: (neck_features, pooled_features), both (Bv + Bi, C) float32, the neck
        features not normalised. train=False: (Bv + Bi, C) float32 L2-normalised neck features.
    """
    segments = tuple(x.shape[0] for x in (visible, infrared) if x is not None)
    x = self.trunk(self.stems(visible, infrared, train), train, segments)
    return self.head(x, train, segments)


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
      dtype=compute_dtype(model_cfg.dtype),
      bn_groups=model_cfg.bn_groups,
      non_local=model_cfg.non_local,
      non_local_blocks=tuple(model_cfg.non_local_blocks),
      neck_two_pass=model_cfg.neck_two_pass)


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
  # A static jit argument: hashable.
  model = model.clone(stage_sizes=tuple(model.stage_sizes),
                      non_local_blocks=tuple(model.non_local_blocks))
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
