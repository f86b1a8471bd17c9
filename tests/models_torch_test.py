"""The Flax two-stream ResNet-50 against a PyTorch one with the reference's structure.

The PyTorch network below is written from the MBCCM reference (model/network.py with
non_local='off', gm_pool='on', and model/backbone/resnet.py with last_conv_stride=1) in plain
torch.nn, keeping the reference's module names, so its state dict maps into Flax with
`import_torch_state_dict` and the reference's prefixes. Both networks get the same random
weights (fixed seed) and must agree to float32 precision: eval features, train-mode features
and the running statistics a train-mode call leaves behind.

The same twin, small (basic blocks) and optionally with AGW's non-local blocks (transcribed from
PGM's clustercontrast/models/agw.py: `Non_local` and `embed_net_ori`'s interleaving), checks
`model.non_local` and `model.bn_groups`: the latter against what `nn.DataParallel` over k GPUs
computes, i.e. the same module run on chunk j of each input per GPU j, the per-modality outputs
gathered in chunk order, running statistics kept from GPU 0's replica.

torch is a test-only dependency (requirements-test.txt); without it this file is skipped with a
visible reason.
"""

import copy
import functools

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


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


class TorchStem(nn.Module):
  """The part of a torchvision ResNet the reference's visible_module / thermal_module use."""

  def __init__(self, width=64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

  def forward(self, x):
    return self.maxpool(F.relu(self.bn1(self.conv1(x))))


class TorchTrunk(nn.Module):
  """layer1..layer4 of ResNet-50 with layer4's stride 1 (the reference's base_resnet.base)."""

  def __init__(self, layers=(3, 4, 6, 3), last_stride=1, block=TorchBottleneck, width=64):
    super().__init__()
    self.block = block
    self.inplanes = width
    self.layer1 = self._make_layer(width, layers[0], 1)
    self.layer2 = self._make_layer(width * 2, layers[1], 2)
    self.layer3 = self._make_layer(width * 4, layers[2], 2)
    self.layer4 = self._make_layer(width * 8, layers[3], last_stride)

  def _make_layer(self, planes, blocks, stride):
    out = planes * self.block.expansion
    downsample = None
    if stride != 1 or self.inplanes != out:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
          nn.BatchNorm2d(out))
    layers = [self.block(self.inplanes, planes, stride, downsample)]
    self.inplanes = out
    layers += [self.block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Holder(nn.Module):
  """Keeps the reference's nesting (visible_module.visible.conv1, base_resnet.base.layer1)."""

  def __init__(self, **children):
    super().__init__()
    for name, child in children.items():
      setattr(self, name, child)


class TorchNonLocal(nn.Module):
  """AGW's Non_local (PGM: clustercontrast/models/agw.py:16-68), transcribed."""

  def __init__(self, in_channels, reduc_ratio=2):
    super().__init__()
    self.in_channels = in_channels
    self.inter_channels = reduc_ratio // reduc_ratio
    self.g = nn.Sequential(nn.Conv2d(self.in_channels, self.inter_channels, 1, 1, 0))
    self.W = nn.Sequential(nn.Conv2d(self.inter_channels, self.in_channels, 1, 1, 0),
                           nn.BatchNorm2d(self.in_channels))
    nn.init.constant_(self.W[1].weight, 0.0)
    nn.init.constant_(self.W[1].bias, 0.0)
    self.theta = nn.Conv2d(self.in_channels, self.inter_channels, 1, 1, 0)
    self.phi = nn.Conv2d(self.in_channels, self.inter_channels, 1, 1, 0)

  def forward(self, x):
    batch_size = x.size(0)
    g_x = self.g(x).view(batch_size, self.inter_channels, -1).permute(0, 2, 1)
    theta_x = self.theta(x).view(batch_size, self.inter_channels, -1).permute(0, 2, 1)
    phi_x = self.phi(x).view(batch_size, self.inter_channels, -1)
    f = torch.matmul(theta_x, phi_x)
    f_div_c = f / f.size(-1)
    y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous()
    y = y.view(batch_size, self.inter_channels, *x.size()[2:])
    return self.W(y) + x


class TorchTwoStream(nn.Module):
  """The reference's BaseResNet(non_local='off', gm_pool='on'), forward with mode=None.

  With `non_layers` (AGW's per-layer counts), AGW's embed_net_ori(no_local='on'): its non-local
  modules NL_1..NL_4 and their interleaving (agw.py:154-167, 197-232), with `layers` the twin's
  own block counts where AGW hard-codes ResNet-50's [3, 4, 6, 3].
  """

  def __init__(self, layers=(3, 4, 6, 3), block=TorchBottleneck, width=64, non_layers=None):
    super().__init__()
    self.visible_module = Holder(visible=TorchStem(width))
    self.thermal_module = Holder(thermal=TorchStem(width))
    self.base_resnet = Holder(base=TorchTrunk(layers, 1, block, width))
    pool_dim = width * 8 * block.expansion
    self.non_layers = non_layers
    if non_layers is not None:
      for k in range(4):
        channels = width * 2**k * block.expansion
        setattr(self, f'NL_{k + 1}',
                nn.ModuleList([TorchNonLocal(channels) for _ in range(non_layers[k])]))
        setattr(self, f'NL_{k + 1}_idx',
                sorted([layers[k] - (i + 1) for i in range(non_layers[k])]))
    self.bottleneck = nn.BatchNorm1d(pool_dim)
    self.bottleneck.bias.requires_grad_(False)
    nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
    nn.init.zeros_(self.bottleneck.bias)

  def _trunk_with_non_local(self, x):
    base = self.base_resnet.base
    for k, layer in enumerate((base.layer1, base.layer2, base.layer3, base.layer4), 1):
      modules, idx = getattr(self, f'NL_{k}'), getattr(self, f'NL_{k}_idx')
      if len(idx) == 0:
        idx = [-1]
      counter = 0
      for i in range(len(layer)):
        x = layer[i](x)
        if i == idx[counter]:
          x = modules[counter](x)
          counter += 1
    return x

  def forward(self, x_rgb, x_ir):
    x = torch.cat((self.visible_module.visible(x_rgb), self.thermal_module.thermal(x_ir)), 0)
    if self.non_layers is None:
      x = self.base_resnet.base(x)
    else:
      x = self._trunk_with_non_local(x)
    b, c = x.shape[:2]
    x_pool = (torch.mean(x.view(b, c, -1) ** 3.0, dim=-1) + 1e-12) ** (1 / 3.0)
    feat = self.bottleneck(x_pool)
    if self.training:
      return feat, x_pool
    return F.normalize(feat, dim=1, p=2)


REFERENCE_PREFIXES = dict(visible_prefix='visible_module.visible.',
                          infrared_prefix='thermal_module.thermal.',
                          trunk_prefix='base_resnet.base.', neck_prefix='bottleneck.')


def _random_torch_model(images, **twin):
  """A TorchTwoStream with random weights and realistic, non-trivial BN statistics.

  The non-local blocks keep PyTorch's default conv init (as in AGW); their W BatchNorm gets a
  random non-zero scale and shift like every other, so they are not the identity.
  """
  torch.manual_seed(0)
  net = TorchTwoStream(**twin)
  for name, module in net.named_modules():
    if isinstance(module, nn.Conv2d) and not name.startswith('NL_'):
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


def assert_float32_close(name, got, torch32, torch64, factor=4, floor=1e-6):
  """`got` is as close to the float64 answer as PyTorch's own float32 result, or closer.

  A randomly initialised ResNet-50 in train mode (batch statistics of 5 images) amplifies
  float32 rounding to ~1e-4 relative error in PyTorch itself, so a fixed tolerance would be
  either loose or flaky; the float64 run gives the exact answer to measure both against (in
  float64 the two implementations agree to 1e-11). `factor` and `floor` (relative to the
  largest value) bound our error by factor * PyTorch's + floor * scale.
  """
  got = np.asarray(got, np.float64)
  scale = np.abs(torch64).max()
  ours = np.abs(got - torch64).max()
  theirs = np.abs(torch32 - torch64).max()
  assert ours <= factor * theirs + floor * scale, (
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


# --------------------------------------------------------------------------------------------
# model.non_local and model.bn_groups, on a small twin

SMALL_IMAGE_SHAPE = (32, 16)
# Basic blocks, width 8. layer2 and layer3 have more blocks than AGW puts non-local blocks in
# (2 and 3), so "after the last n blocks" differs from "after every block".
SMALL = dict(stage_sizes=(1, 3, 4, 1), block='basic', width=8)
NON_LOCAL_BLOCKS = (0, 2, 3, 0)  # AGW's non_layers
BATCH = 4  # per step: visible 2 * BATCH rows (views A and B), infrared BATCH rows

_NON_LOCAL_CONVS = (('g.0', 'g'), ('theta', 'theta'), ('phi', 'phi'), ('W.0', 'W'))


def _non_local_variables(state, prefix):
  """One AGW Non_local's tensors (`prefix`: e.g. 'NL_2.0.') as a NonLocal's variables."""
  params = {ours: {'kernel': np.transpose(state[f'{prefix}{theirs}.weight'], (2, 3, 1, 0)),
                   'bias': state[f'{prefix}{theirs}.bias']} for theirs, ours in _NON_LOCAL_CONVS}
  params['W_bn'] = {'scale': state[f'{prefix}W.1.weight'], 'bias': state[f'{prefix}W.1.bias']}
  stats = {'W_bn': {'mean': state[f'{prefix}W.1.running_mean'],
                    'var': state[f'{prefix}W.1.running_var']}}
  return {'params': params, 'batch_stats': stats}


def _import_twin(state, shapes, net):
  """A TorchTwoStream state dict as the Flax network's variables, non-local blocks included:
  AGW's NL_k.c follows block NL_k_idx[c] of layer k, ours is layerk/non_local<that block>."""
  variables = models.import_torch_state_dict(state, shapes, ignore=('fc.', 'NL_'),
                                             **REFERENCE_PREFIXES)
  flat = flax.traverse_util.flatten_dict(variables)
  filled = set()
  for k in range(1, 5):
    for counter, block in enumerate(getattr(net, f'NL_{k}_idx', [])):
      nl = flax.traverse_util.flatten_dict(_non_local_variables(state, f'NL_{k}.{counter}.'))
      for (collection, *rest), value in nl.items():
        path = (collection, f'layer{k}', f'non_local{block}', *rest)
        assert flat[path].shape == value.shape, path
        flat[path] = jnp.asarray(value, jnp.float32)
        filled.add(path)
  assert filled == {p for p in flat if any(s.startswith('non_local') for s in p)}
  return flax.traverse_util.unflatten_dict(flat)


def _run_data_parallel(net, visible, infrared, gpus, dtype):
  """What `nn.DataParallel(net)` over `gpus` GPUs computes in one train-mode call.

  Replica j runs chunk j of the visible and of the infrared input (torch.chunk, as the
  scatter); the authors' forward returns the visible and the infrared features separately and
  the gather concatenates each over the replicas, so rows come back as [visible; infrared]. The
  replica on GPU 0 shares the module's buffers: its running statistics are the ones kept.
  """
  start = copy.deepcopy(net).to(dtype).train(True)
  nchw = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype)
  parts, state = [], None
  for j, (v, i) in enumerate(zip(torch.chunk(nchw(visible), gpus),
                                 torch.chunk(nchw(infrared), gpus))):
    replica = copy.deepcopy(start)
    with torch.no_grad():
      neck, pooled = replica(v, i)
    parts.append((neck[:len(v)], neck[len(v):], pooled[:len(v)], pooled[len(v):]))
    if j == 0:
      state = {k: t.detach().double().numpy() for k, t in replica.state_dict().items()}
  gather = lambda a, b: torch.cat([p[a] for p in parts] + [p[b] for p in parts]).double().numpy()
  return (gather(0, 1), gather(2, 3)), state


@pytest.fixture(scope='module')
def small():
  """Random small twins without and with non-local blocks, and one step's images."""
  rng = np.random.default_rng(1)
  visible = rng.standard_normal((2 * BATCH, *SMALL_IMAGE_SHAPE, 3)).astype(np.float32)
  infrared = rng.standard_normal((BATCH, *SMALL_IMAGE_SHAPE, 3)).astype(np.float32) + 0.5
  warmup = torch.from_numpy(rng.standard_normal((6, 3, *SMALL_IMAGE_SHAPE)).astype(np.float32))
  nets = {}
  for non_local in (False, True):
    nets[non_local] = _random_torch_model(
        (warmup[:4], warmup[4:]), layers=SMALL['stage_sizes'], block=TorchBasicBlock,
        width=SMALL['width'], non_layers=NON_LOCAL_BLOCKS if non_local else None)
  return dict(nets=nets, visible=visible, infrared=infrared)


@pytest.mark.parametrize('train', [False, True])
def test_non_local_block_matches_agw(train):
  torch.manual_seed(1)
  block = TorchNonLocal(16)
  with torch.no_grad():  # a W BatchNorm that is not the identity's, with its own statistics
    block.W[1].weight.uniform_(0.5, 1.5)
    block.W[1].bias.normal_(0.0, 0.1)
    block.W[1].running_mean.normal_(0.0, 0.5)
    block.W[1].running_var.uniform_(0.5, 2.0)
  x = np.random.default_rng(2).standard_normal((4, 6, 3, 16)).astype(np.float32)

  def run_torch(dtype):
    net = copy.deepcopy(block).to(dtype).train(train)
    with torch.no_grad():
      out = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dtype))
    state = {k: v.detach().double().numpy() for k, v in net.state_dict().items()}
    return out.double().numpy().transpose(0, 2, 3, 1), state

  (out32, state32), (out64, state64) = run_torch(torch.float32), run_torch(torch.float64)
  variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                           _non_local_variables(_numpy_state(block), ''))
  got, updates = models.NonLocal().apply(variables, x, train=train, mutable=['batch_stats'])
  assert got.shape == x.shape and got.dtype == jnp.float32
  assert not np.allclose(got, x, atol=1e-2)  # the block does something
  assert_float32_close('non-local output', got, out32, out64)
  for leaf, name in (('mean', 'running_mean'), ('var', 'running_var')):
    value = updates['batch_stats']['W_bn'][leaf]
    assert_float32_close(f'W_bn {leaf}', value, state32[f'W.1.{name}'], state64[f'W.1.{name}'])
    moved = not np.allclose(value, variables['batch_stats']['W_bn'][leaf])
    assert moved == train, leaf


@pytest.mark.parametrize('non_local', [False, True])
@pytest.mark.parametrize('groups', [1, 2, 4])
def test_bn_groups_match_data_parallel(small, non_local, groups):
  """Features and running statistics of one train-mode call = nn.DataParallel over k GPUs."""
  net, visible, infrared = small['nets'][non_local], small['visible'], small['infrared']
  model = models.TwoStreamResNet(**SMALL, bn_groups=groups, non_local=non_local,
                                 non_local_blocks=NON_LOCAL_BLOCKS, dtype=jnp.float32)
  dummy = jnp.zeros((1, *SMALL_IMAGE_SHAPE, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
  variables = _import_twin(_numpy_state(net), shapes, net)

  ((neck32, pooled32), state32), ((neck64, pooled64), state64) = (
      _run_data_parallel(net, visible, infrared, groups, torch.float32),
      _run_data_parallel(net, visible, infrared, groups, torch.float64))
  # Not jitted: the six variants share most ops, so op-by-op runs compile far less.
  (neck, pooled), updates = model.apply(variables, visible, infrared, train=True,
                                        mutable=['batch_stats'])
  assert neck.shape == pooled.shape == (3 * BATCH, model.num_features)
  # Groups of 3 images (k = 4) and non-local blocks (a different but equally exact summation
  # order) put our float32 error at up to ~5x PyTorch's in places; a wrong group or a wrong
  # running statistic is off by orders of magnitude more.
  close = functools.partial(assert_float32_close, factor=8, floor=1e-5)
  close('pooled features', pooled, pooled32, pooled64)
  close('neck features', neck, neck32, neck64)

  stats = lambda state: flax.traverse_util.flatten_dict(
      _import_twin(state, shapes, net)['batch_stats'])
  expected32, expected64 = stats(state32), stats(state64)
  got = flax.traverse_util.flatten_dict(updates['batch_stats'])
  before = flax.traverse_util.flatten_dict(variables['batch_stats'])
  assert got.keys() == expected64.keys()
  for path, value in got.items():
    close('/'.join(path), value, expected32[path], expected64[path])
    assert not np.allclose(value, before[path]), '/'.join(path)


def test_non_local_init_is_pytorch_default_in_distribution():
  """g, theta, phi, W: the distribution of a fresh torch Conv2d; W's BatchNorm zero."""
  stats = pytest.importorskip('scipy.stats')
  channels = 1024
  x = jnp.zeros((1, 2, 2, channels))
  variables = models.NonLocal().init(jax.random.key(3), x, train=False)
  params = variables['params']
  torch.manual_seed(3)
  embed, project = nn.Conv2d(channels, 1, 1), nn.Conv2d(1, channels, 1)  # C -> 1, 1 -> C
  samples = {'g': (params['g']['kernel'], embed.weight), 'W': (params['W']['kernel'],
                                                               project.weight),
             'W bias': (params['W']['bias'], project.bias)}
  for name, (ours, theirs) in samples.items():
    ours, theirs = np.ravel(ours), theirs.detach().numpy().ravel()
    assert ours.size == theirs.size == channels
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3, name
  bound = 1 / np.sqrt(channels)  # fan_in = C for g, theta, phi (kernels and biases)
  for name in ('g', 'theta', 'phi'):
    for leaf in ('kernel', 'bias'):
      value = np.asarray(params[name][leaf])
      assert np.all(np.abs(value) <= bound) and np.any(value != 0), (name, leaf)
    assert 0.85 < np.asarray(params[name]['kernel']).std() * np.sqrt(3) / bound < 1.15, name
  for leaf in ('kernel', 'bias'):  # W: fan_in 1
    value = np.asarray(params['W'][leaf])
    assert np.all(np.abs(value) <= 1) and 0.9 < value.std() * np.sqrt(3) < 1.1, leaf
  assert not np.any(params['W_bn']['scale']) and not np.any(params['W_bn']['bias'])
  np.testing.assert_array_equal(variables['batch_stats']['W_bn']['mean'], 0)
  np.testing.assert_array_equal(variables['batch_stats']['W_bn']['var'], 1)
