"""The Flax two-stream ResNet-50 against a PyTorch one with the reference's structure.

The PyTorch network below is written from the MBCCM reference (model/network.py with
non_local='off', gm_pool='on', and model/backbone/resnet.py with last_conv_stride=1) in plain
torch.nn, keeping the reference's module names, so its state dict maps into Flax with
`import_torch_state_dict` and the reference's prefixes. Both networks get the same random
weights (fixed seed) and must agree to float32 precision: eval features, train-mode features
and the running statistics a train-mode call leaves behind.

torch is a test-only dependency (requirements-test.txt); without it this file is skipped with a
visible reason.
"""

import copy

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed: the PyTorch numerics check '
                            'of the model needs it (pip install -r requirements-test.txt)')
from torch import nn  # pylint: disable=g-import-not-at-top
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

from vireid_jax import models  # pylint: disable=g-import-not-at-top

IMAGE_SHAPE = (64, 32)
NUM_VISIBLE, NUM_INFRARED = 3, 2


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


class TorchStem(nn.Module):
  """The part of a torchvision ResNet the reference's visible_module / thermal_module use."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

  def forward(self, x):
    return self.maxpool(F.relu(self.bn1(self.conv1(x))))


class TorchTrunk(nn.Module):
  """layer1..layer4 of ResNet-50 with layer4's stride 1 (the reference's base_resnet.base)."""

  def __init__(self, layers=(3, 4, 6, 3), last_stride=1):
    super().__init__()
    self.inplanes = 64
    self.layer1 = self._make_layer(64, layers[0], 1)
    self.layer2 = self._make_layer(128, layers[1], 2)
    self.layer3 = self._make_layer(256, layers[2], 2)
    self.layer4 = self._make_layer(512, layers[3], last_stride)

  def _make_layer(self, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * 4:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
          nn.BatchNorm2d(planes * 4))
    layers = [TorchBottleneck(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * 4
    layers += [TorchBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Holder(nn.Module):
  """Keeps the reference's nesting (visible_module.visible.conv1, base_resnet.base.layer1)."""

  def __init__(self, **children):
    super().__init__()
    for name, child in children.items():
      setattr(self, name, child)


class TorchTwoStream(nn.Module):
  """The reference's BaseResNet(non_local='off', gm_pool='on'), forward with mode=None."""

  def __init__(self):
    super().__init__()
    self.visible_module = Holder(visible=TorchStem())
    self.thermal_module = Holder(thermal=TorchStem())
    self.base_resnet = Holder(base=TorchTrunk())
    self.bottleneck = nn.BatchNorm1d(2048)
    self.bottleneck.bias.requires_grad_(False)
    nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
    nn.init.zeros_(self.bottleneck.bias)

  def forward(self, x_rgb, x_ir):
    x = torch.cat((self.visible_module.visible(x_rgb), self.thermal_module.thermal(x_ir)), 0)
    x = self.base_resnet.base(x)
    b, c = x.shape[:2]
    x_pool = (torch.mean(x.view(b, c, -1) ** 3.0, dim=-1) + 1e-12) ** (1 / 3.0)
    feat = self.bottleneck(x_pool)
    if self.training:
      return feat, x_pool
    return F.normalize(feat, dim=1, p=2)


REFERENCE_PREFIXES = dict(visible_prefix='visible_module.visible.',
                          infrared_prefix='thermal_module.thermal.',
                          trunk_prefix='base_resnet.base.', neck_prefix='bottleneck.')


def _random_torch_model(images):
  """A TorchTwoStream with random weights and realistic, non-trivial BN statistics."""
  torch.manual_seed(0)
  net = TorchTwoStream()
  for module in net.modules():
    if isinstance(module, nn.Conv2d):
      nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
  # One train-mode pass with a cumulative moving average sets every running statistic to the
  # statistics of real activations, so eval mode neither explodes nor uses trivial (0, 1) stats.
  bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
  for bn in bns:
    bn.momentum = None
  net.train()
  with torch.no_grad():
    net(*images)
    for bn in bns:
      bn.momentum = 0.1
      bn.weight.uniform_(0.5, 1.5)
      if bn is not net.bottleneck:  # the neck's bias stays frozen at zero
        bn.bias.normal_(0.0, 0.1)
  return net


def _numpy_state(net):
  return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _run_torch(net, visible, infrared, train, dtype):
  """Outputs and state dict after one call of a copy of `net` in `dtype` (NHWC numpy inputs)."""
  net = copy.deepcopy(net).to(dtype).train(train)
  nchw = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
  with torch.no_grad():
    out = net(nchw(visible), nchw(infrared))
  to_numpy = lambda t: t.detach().double().numpy()
  out = tuple(map(to_numpy, out)) if train else to_numpy(out)
  return out, {k: to_numpy(v) for k, v in net.state_dict().items()}


def assert_float32_close(name, got, torch32, torch64):
  """`got` is as close to the float64 answer as PyTorch's own float32 result, or closer.

  A randomly initialised ResNet-50 in train mode (batch statistics of 5 images) amplifies
  float32 rounding to ~1e-4 relative error in PyTorch itself, so a fixed tolerance would be
  either loose or flaky; the float64 run gives the exact answer to measure both against (in
  float64 the two implementations agree to 1e-11).
  """
  got = np.asarray(got, np.float64)
  scale = np.abs(torch64).max()
  ours = np.abs(got - torch64).max()
  theirs = np.abs(torch32 - torch64).max()
  assert ours <= 4 * theirs + 1e-6 * scale, (
      f'{name}: max error {ours:.3g} vs PyTorch float32 {theirs:.3g} (scale {scale:.3g})')
  np.testing.assert_allclose(got, torch64, rtol=1e-3, atol=1e-3 * scale, err_msg=name)


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  visible = rng.standard_normal((NUM_VISIBLE, *IMAGE_SHAPE, 3)).astype(np.float32)
  infrared = rng.standard_normal((NUM_INFRARED, *IMAGE_SHAPE, 3)).astype(np.float32)
  # Another batch sets the running statistics, so one call with this one moves every one of them.
  warmup = torch.from_numpy(rng.standard_normal((4, 3, *IMAGE_SHAPE)).astype(np.float32))
  net = _random_torch_model((warmup[:2], warmup[2:]))

  model = models.TwoStreamResNet(dtype=jnp.float32)  # ResNet-50 defaults
  dummy = jnp.zeros((1, *IMAGE_SHAPE, 3))
  # Shapes only: every variable (neck included) comes from the torch network.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
  variables = models.import_torch_state_dict(_numpy_state(net), shapes, **REFERENCE_PREFIXES)
  return dict(net=net, model=model, variables=variables, visible=visible, infrared=infrared)


def test_eval_features_match_pytorch(setup):
  args = (setup['net'], setup['visible'], setup['infrared'], False)
  (torch32, _), (torch64, _) = _run_torch(*args, torch.float32), _run_torch(*args, torch.float64)
  model = setup['model']
  got = jax.jit(lambda v, a, b: model.apply(v, a, b, train=False))(
      setup['variables'], setup['visible'], setup['infrared'])
  assert got.shape == (NUM_VISIBLE + NUM_INFRARED, 2048) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
  assert_float32_close('eval features', got, torch32, torch64)


def test_train_features_and_running_stats_match_pytorch(setup):
  args = (setup['net'], setup['visible'], setup['infrared'], True)
  ((neck32, pooled32), state32), ((neck64, pooled64), state64) = (
      _run_torch(*args, torch.float32), _run_torch(*args, torch.float64))
  model = setup['model']
  apply = jax.jit(lambda v, a, b: model.apply(v, a, b, train=True, mutable=['batch_stats']))
  (neck, pooled), updates = apply(setup['variables'], setup['visible'], setup['infrared'])
  assert neck.shape == pooled.shape == (NUM_VISIBLE + NUM_INFRARED, 2048)
  assert neck.dtype == pooled.dtype == jnp.float32
  assert_float32_close('pooled features', pooled, pooled32, pooled64)
  assert_float32_close('neck features', neck, neck32, neck64)

  # Running statistics after one train-mode call: torch's, mapped into the Flax tree.
  shapes = jax.eval_shape(lambda: setup['variables'])
  stats = lambda state: flax.traverse_util.flatten_dict(models.import_torch_state_dict(
      state, shapes, **REFERENCE_PREFIXES)['batch_stats'])
  expected32, expected64 = stats(state32), stats(state64)
  got = flax.traverse_util.flatten_dict(updates['batch_stats'])
  before = flax.traverse_util.flatten_dict(setup['variables']['batch_stats'])
  assert got.keys() == expected64.keys()
  for path, value in got.items():
    assert_float32_close('/'.join(path), value, np.asarray(expected32[path], np.float64),
                         np.asarray(expected64[path], np.float64))
    # Every statistic moved, so the comparison says something about the update.
    assert not np.allclose(value, before[path]), '/'.join(path)
