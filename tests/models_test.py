"""The two-stream ResNet: shapes, the trunk run once over both modalities, BN, GeM, precision."""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax import config as config_lib
from vireid_jax import models

IMAGE_SHAPE = (32, 16)
TINY = dict(stage_sizes=(1, 1, 1, 1), block='basic', width=8)  # C = 8 * 8 = 64
NUM_VISIBLE, NUM_INFRARED = 3, 2


@pytest.fixture(scope='module')
def tiny():
  model = models.TwoStreamResNet(**TINY)
  variables = models.init_variables(model, jax.random.key(0), IMAGE_SHAPE)
  rng = np.random.default_rng(0)
  visible = rng.standard_normal((NUM_VISIBLE, *IMAGE_SHAPE, 3)).astype(np.float32)
  infrared = rng.standard_normal((NUM_INFRARED, *IMAGE_SHAPE, 3)).astype(np.float32) + 0.5
  train = jax.jit(lambda v, a, b: model.apply(v, a, b, train=True, mutable=['batch_stats']))
  evaluate = jax.jit(lambda v, a, b: model.apply(v, a, b, train=False))
  return dict(model=model, variables=variables, visible=visible, infrared=infrared, train=train,
              eval=evaluate)


def test_outputs_for_both_modalities(tiny):
  model, variables = tiny['model'], tiny['variables']
  visible, infrared = tiny['visible'], tiny['infrared']
  (neck, pooled), updates = tiny['train'](variables, visible, infrared)
  assert neck.shape == pooled.shape == (NUM_VISIBLE + NUM_INFRARED, 64)
  assert neck.dtype == pooled.dtype == jnp.float32
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])
  assert np.all(np.asarray(pooled) > 0)  # GeM of ReLU maps (+ eps) is positive

  features = tiny['eval'](variables, visible, infrared)
  assert features.shape == (NUM_VISIBLE + NUM_INFRARED, 64) and features.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
  # Rows are [visible; infrared], and in eval mode each row depends on its own image only.
  only_visible = tiny['eval'](variables, visible, None)
  only_infrared = tiny['eval'](variables, None, infrared)
  assert only_visible.shape == (NUM_VISIBLE, 64) and only_infrared.shape == (NUM_INFRARED, 64)
  np.testing.assert_allclose(features, np.concatenate([only_visible, only_infrared]), atol=1e-6)
  with pytest.raises(ValueError, match='got neither'):
    model.apply(variables, None, None, train=False)


def test_stems_are_separate_and_maps_have_resnet_strides(tiny):
  model, variables, visible = tiny['model'], tiny['variables'], tiny['visible']
  assert not np.allclose(tiny['eval'](variables, visible, None),
                         tiny['eval'](variables, None, visible), atol=1e-3)
  stems = model.apply(variables, visible, None, False, method='stems')
  assert stems.shape == (NUM_VISIBLE, 8, 4, 8)  # conv 7x7/2 then max-pool 3/2
  trunk = model.apply(variables, stems, False, method='trunk')
  assert trunk.shape == (NUM_VISIBLE, 2, 1, 64)  # layer2, layer3 halve; layer4 stride 1
  strided = model.clone(last_stride=2)
  assert strided.apply(variables, stems, False, method='trunk').shape == (NUM_VISIBLE, 1, 1, 64)


def test_trunk_runs_once_on_the_concatenated_batch(tiny):
  """layer1's first BN and the neck see the statistics of [visible; infrared] together."""
  model, variables = tiny['model'], tiny['variables']
  visible, infrared = tiny['visible'], tiny['infrared']
  (neck, pooled), updates = tiny['train'](variables, visible, infrared)
  stats = updates['batch_stats']

  # Independent computation of layer1.block0.bn1's batch statistics from the stem outputs.
  stems, _ = model.apply(variables, visible, infrared, True, method='stems',
                         mutable=['batch_stats'])
  kernel = variables['params']['layer1']['block0']['conv1']['kernel']
  conv = np.asarray(jax.lax.conv_general_dilated(
      stems, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  samples = conv.reshape(-1, conv.shape[-1])
  bn = stats['layer1']['block0']['bn1']
  np.testing.assert_allclose(bn['mean'], 0.1 * samples.mean(0), atol=1e-6)
  np.testing.assert_allclose(bn['var'], 0.9 + 0.1 * samples.var(0, ddof=1), rtol=1e-5)
  visible_only = conv[:NUM_VISIBLE].reshape(-1, conv.shape[-1]).mean(0)
  assert not np.allclose(bn['mean'], 0.1 * visible_only, atol=1e-3)

  # The neck normalises pooled features over all rows of both modalities.
  pooled = np.asarray(pooled)
  np.testing.assert_allclose(stats['neck']['mean'], 0.1 * pooled.mean(0), rtol=1e-5, atol=1e-7)
  scale = np.asarray(variables['params']['neck']['scale'])
  expected = (pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-5) * scale
  np.testing.assert_allclose(neck, expected, atol=1e-4)

  # So a visible image's training features depend on the infrared images in its batch.
  (alone, _), _ = tiny['train'](variables, visible, None)
  assert not np.allclose(alone, np.asarray(neck)[:NUM_VISIBLE], atol=1e-3)


def test_parameter_tree_and_neck_init(tiny):
  params, stats = tiny['variables']['params'], tiny['variables']['batch_stats']
  assert set(params) == {'visible_stem', 'infrared_stem', 'layer1', 'layer2', 'layer3', 'layer4',
                         'neck'}
  assert set(params['visible_stem']) == {'conv1', 'bn1'}
  assert set(params['layer2']['block0']) == {'conv1', 'bn1', 'conv2', 'bn2', 'downsample_conv',
                                             'downsample_bn'}
  assert set(params['neck']) == {'scale'}  # no bias: a shift frozen at zero
  assert set(stats['neck']) == {'mean', 'var'}
  scale = np.asarray(params['neck']['scale'])
  assert abs(scale.mean() - 1) < 0.005 and 0.006 < scale.std() < 0.014
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(tiny['variables']))
  again = models.init_variables(tiny['model'], jax.random.key(0), IMAGE_SHAPE)
  jax.tree.map(np.testing.assert_array_equal, again, tiny['variables'])
  other = models.init_variables(tiny['model'], jax.random.key(1), IMAGE_SHAPE)
  assert not np.allclose(other['params']['layer1']['block0']['conv1']['kernel'],
                         params['layer1']['block0']['conv1']['kernel'])


def test_gradients_reach_both_stems_trunk_and_neck(tiny):
  model, variables = tiny['model'], tiny['variables']
  weights = np.random.default_rng(1).standard_normal((NUM_VISIBLE + NUM_INFRARED, 64))

  def loss(params):
    (neck, _), _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                               tiny['visible'], tiny['infrared'], train=True,
                               mutable=['batch_stats'])
    return jnp.sum(neck * weights)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  for name, grad in flax.traverse_util.flatten_dict(grads).items():
    assert np.abs(np.asarray(grad)).max() > 0, '/'.join(name)


def test_batchnorm_has_pytorch_semantics():
  """Normalise with the biased batch variance, track the unbiased one (torch.nn.BatchNorm2d)."""
  x = np.random.default_rng(2).standard_normal((4, 3, 2, 5)).astype(np.float32) * 3 + 1
  bn = models.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=False)
  params = {'scale': np.full(5, 2.0, np.float32), 'bias': np.full(5, 0.5, np.float32)}
  variables = {'params': params, 'batch_stats': variables['batch_stats']}
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  flat = x.reshape(-1, 5)
  np.testing.assert_allclose(y, (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * 2 + 0.5,
                             atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * flat.mean(0), atol=1e-6)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 + 0.1 * flat.var(0, ddof=1),
                             rtol=1e-6)
  stats = {'mean': np.arange(5, dtype=np.float32), 'var': np.full(5, 4.0, np.float32)}
  y = bn.apply({'params': variables['params'], 'batch_stats': stats}, x, train=False)
  np.testing.assert_allclose(y, (x - stats['mean']) / np.sqrt(4 + 1e-5) * 2 + 0.5, atol=1e-5)


def test_the_neck_normalises_pooled_features_as_exactly_as_pytorch_does():
  """Pooled features whose means dwarf their spread (mean / std = 60, as GeM-pooled ReLU
  features can have): the neck's two-pass variance stays within float32's resolution of the
  float64 one (PyTorch's BatchNorm1d: 8e-8 here; 1.8e-7 read back through the running
  statistics), the one-pass form (E[x^2] - E[x]^2) loses three digits (4.5e-4)."""
  rng = np.random.default_rng(4)
  x = (60 + rng.standard_normal((96, 256))).astype(np.float32) * rng.uniform(0.5, 2, 256)
  x = x.astype(np.float32)
  exact = x.astype(np.float64).var(0)

  def relative_error(two_pass):
    bn = models.BatchNorm(use_bias=False, two_pass=two_pass)
    variables = bn.init(jax.random.key(0), x, train=False)
    _, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
    # running var = 0.9 * 1 + 0.1 * unbiased batch variance
    var = (np.asarray(updates['batch_stats']['var'], np.float64) - 0.9) / 0.1 * 95 / 96
    return np.linalg.norm(var - exact) / np.linalg.norm(exact)

  two_pass, one_pass = relative_error(True), relative_error(False)
  assert two_pass < 1e-6, two_pass
  assert one_pass > 100 * two_pass, (one_pass, two_pass)
  network = models.build_model(config_lib.base_config().model)
  assert network.neck_two_pass  # the default


def test_gem_pool():
  x = np.abs(np.random.default_rng(3).standard_normal((2, 3, 4, 5))).astype(np.float32)
  expected = (np.mean(x.astype(np.float64) ** 3, axis=(1, 2)) + 1e-12) ** (1 / 3)
  np.testing.assert_allclose(models.gem_pool(x, 3.0, 1e-12), expected, rtol=1e-5)
  np.testing.assert_allclose(models.gem_pool(x, 1.0, 0.0), x.mean(axis=(1, 2)), rtol=1e-6)
  # An all-zero map pools to eps^(1/p) and keeps finite gradients.
  zeros = np.zeros((1, 2, 2, 1), np.float32)
  np.testing.assert_allclose(models.gem_pool(zeros, 3.0, 1e-12), [[1e-4]], rtol=1e-4)
  assert np.isfinite(jax.grad(lambda z: models.gem_pool(z, 3.0, 1e-12).sum())(zeros)).all()


def test_compute_dtype():
  assert models.compute_dtype('float32') == jnp.float32
  assert models.compute_dtype('bfloat16') == jnp.bfloat16
  expected = jnp.bfloat16 if jax.default_backend() in ('gpu', 'tpu') else jnp.float32
  assert models.compute_dtype('auto') == expected
  with pytest.raises(ValueError, match='config.model.dtype'):
    models.compute_dtype('float16')


def test_build_model_from_configs():
  config = config_lib.base_config()
  model = models.build_model(config.model)
  assert model.dtype == models.compute_dtype('auto') and model.num_features == 2048
  images = jax.ShapeDtypeStruct((2, 288, 144, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, x, train=False), images)
  params = variables['params']
  assert params['neck']['scale'].shape == (2048,)
  assert params['layer4']['block2']['conv3']['kernel'].shape == (1, 1, 512, 2048)
  assert params['layer3']['block5']['conv2']['kernel'].shape == (3, 3, 256, 256)
  trunk = jax.eval_shape(
      lambda v, x: model.apply(v, model.apply(v, x, x, False, method='stems'), False,
                               method='trunk'), variables, images)
  # docs/mbccm.md, "Network": an 18x9 map for a 288x144 input.
  assert trunk.shape == (4, 18, 9, 2048)

  import importlib.util, os  # pylint: disable=g-import-not-at-top,multiple-imports
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'demo.py')
  spec = importlib.util.spec_from_file_location('demo_config', path)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  small = models.build_model(demo.get_config().model)
  assert small.block == 'basic' and small.num_features == 16 * 8 and small.dtype == jnp.float32


def _cosine(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _bf16_agreement(model_kwargs, image_shape, batch):
  """Cosine of bf16 and fp32 eval features with the same (trained BN statistics) variables."""
  f32 = models.TwoStreamResNet(**model_kwargs, dtype=jnp.float32)
  bf16 = f32.clone(dtype=jnp.bfloat16)
  variables = models.init_variables(f32, jax.random.key(0), image_shape)
  rng = np.random.default_rng(4)
  visible = rng.standard_normal((batch, *image_shape, 3)).astype(np.float32)
  infrared = rng.standard_normal((batch, *image_shape, 3)).astype(np.float32)
  # Realistic running statistics: a few fp32 train-mode passes.
  step = jax.jit(lambda v: f32.apply(v, visible, infrared, train=True, mutable=['batch_stats']))
  for _ in range(3):
    _, updates = step(variables)
    variables = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
  ref = jax.jit(lambda v: f32.apply(v, visible, infrared, train=False))(variables)
  low = jax.jit(lambda v: bf16.apply(v, visible, infrared, train=False))(variables)
  (neck, pooled), updates = jax.jit(lambda v: bf16.apply(
      v, visible, infrared, train=True, mutable=['batch_stats']))(variables)
  assert low.dtype == neck.dtype == pooled.dtype == jnp.float32
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(updates))
  stems = bf16.apply(variables, visible, None, False, method='stems')
  assert stems.dtype == jnp.bfloat16  # the convolutions really run in bf16
  return _cosine(low, ref)


def test_bfloat16_compute_agrees_with_float32_tiny():
  cosine = _bf16_agreement(TINY, IMAGE_SHAPE, batch=4)
  assert cosine.min() > 0.999, cosine


@pytest.mark.skipif(jax.default_backend() not in ('gpu', 'tpu'),
                    reason='bf16 ResNet-50 check needs a GPU/TPU (run with JAX_PLATFORMS=cuda)')
def test_bfloat16_resnet50_agrees_with_float32_on_accelerator():
  cosine = _bf16_agreement({}, (288, 144), batch=16)
  assert cosine.min() > 0.999, cosine


# --------------------------------------------------------------------------------------------
# model.non_local (AGW's non-local blocks, PGM) and model.bn_groups (DataParallel BatchNorm)


def test_non_local_blocks_sit_where_agw_puts_them():
  """After layer2 blocks 2, 3 and layer3 blocks 3, 4, 5 of ResNet-50 (AGW's NL_k_idx)."""
  for layers, counts in (((3, 4, 6, 3), (0, 2, 3, 0)), ((1, 3, 4, 1), (0, 2, 3, 0)),
                         ((2, 2, 2, 2), (1, 1, 2, 1))):
    for n, count in zip(layers, counts):
      agw = sorted([n - (i + 1) for i in range(count)])  # agw.py:154-167
      assert models.non_local_positions(n, count) == tuple(agw)
  assert models.non_local_positions(1, 3) == (0,)  # fewer blocks than count: after every block

  config = config_lib.base_config()
  config.model.non_local = True
  model = models.build_model(config.model)
  images = jax.ShapeDtypeStruct((1, 288, 144, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, x, train=False), images)
  params = variables['params']
  non_local = lambda layer: sorted(k for k in params[layer] if k.startswith('non_local'))
  assert [non_local(f'layer{k}') for k in (1, 2, 3, 4)] == [
      [], ['non_local2', 'non_local3'], ['non_local3', 'non_local4', 'non_local5'], []]
  block = params['layer3']['non_local4']
  assert block['g']['kernel'].shape == (1, 1, 1024, 1) and block['W']['kernel'].shape == (
      1, 1, 1, 1024)
  assert set(block) == {'g', 'theta', 'phi', 'W', 'W_bn'}
  assert set(variables['batch_stats']['layer2']['non_local2']) == {'W_bn'}


def test_non_local_blocks_start_as_the_identity(tiny):
  """W's BatchNorm starts with scale = bias = 0, so the network computes what it did without."""
  model = tiny['model'].clone(non_local=True)
  variables = models.init_variables(model, jax.random.key(0), IMAGE_SHAPE)
  assert 'non_local0' in variables['params']['layer2']  # one block per layer: after it
  for layer in ('layer2', 'layer3'):
    bn = variables['params'][layer]['non_local0']['W_bn']
    assert not np.any(bn['scale']) and not np.any(bn['bias'])
  plain = tiny['variables']
  for collection in ('params', 'batch_stats'):  # the same weights everywhere else
    for layer in ('layer2', 'layer3'):
      variables[collection][layer] = dict(variables[collection][layer],
                                          block0=plain[collection][layer]['block0'])
    for name in plain[collection]:
      if name not in ('layer2', 'layer3'):
        variables[collection][name] = plain[collection][name]
  visible, infrared = tiny['visible'], tiny['infrared']
  (neck, pooled), _ = jax.jit(lambda v: model.apply(
      v, visible, infrared, train=True, mutable=['batch_stats']))(variables)
  (plain_neck, plain_pooled), _ = tiny['train'](plain, visible, infrared)
  # Equal up to float32 rounding (XLA fuses the two programs differently).
  np.testing.assert_allclose(pooled, plain_pooled, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(neck, plain_neck, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(model.apply(variables, visible, infrared, train=False),
                             tiny['eval'](plain, visible, infrared), atol=1e-5)


def test_bn_groups_leave_eval_mode_alone_and_need_divisible_training_batches(tiny):
  grouped = tiny['model'].clone(bn_groups=3)
  variables, visible, infrared = tiny['variables'], tiny['visible'], tiny['infrared']
  # Eval mode uses the running statistics: any batch size, the same features as bn_groups=1.
  np.testing.assert_allclose(grouped.apply(variables, visible[:2], infrared, train=False),
                             tiny['eval'](variables, visible[:2], infrared), rtol=1e-5, atol=1e-7)
  (neck, _), _ = grouped.apply(variables, visible, infrared[:1].repeat(3, 0), train=True,
                               mutable=['batch_stats'])
  assert neck.shape == (6, 64)
  with pytest.raises(ValueError, match=r'bn_groups = 3 does not divide a batch of 2 rows'):
    grouped.apply(variables, visible, infrared, train=True, mutable=['batch_stats'])
  for bad in (0, 2.0):
    with pytest.raises(ValueError, match='bn_groups must be a positive int'):
      tiny['model'].clone(bn_groups=bad).apply(variables, visible, None, train=False)


def test_bn_groups_give_the_same_numbers_however_the_batch_is_sharded(tiny):
  """k = 4 groups: on one device, two groups per device (2 devices), a group over 2 of 8.

  The train step's own equality across meshes is tests/train_test.py's; this is the model's.
  """
  from vireid_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8, 'tests/conftest.py forces 8 virtual CPU devices'
  model = tiny['model'].clone(bn_groups=4)
  variables = tiny['variables']
  rng = np.random.default_rng(5)
  visible = rng.standard_normal((16, *IMAGE_SHAPE, 3)).astype(np.float32)
  infrared = rng.standard_normal((8, *IMAGE_SHAPE, 3)).astype(np.float32) + 0.5
  step = lambda v, a, b: model.apply(v, a, b, train=True, mutable=['batch_stats'])
  results = []
  for count in (1, 2, 8):
    mesh = sharding.make_mesh(jax.devices()[:count])
    batch, replicated = sharding.batch_sharded(mesh), sharding.replicated(mesh)
    fn = jax.jit(step, in_shardings=(replicated, batch, batch), out_shardings=replicated)
    results.append(jax.device_get(fn(sharding.put_replicated(variables, mesh),
                                     sharding.put_global(visible, batch),
                                     sharding.put_global(infrared, batch))))
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
  for other in results[1:]:
    jax.tree.map(close, other, results[0])
  # And the groups matter: whole-batch BatchNorm gives other features.
  (whole, _), _ = tiny['train'](variables, visible, infrared)
  assert not np.allclose(whole, results[0][0][0], atol=1e-2)
