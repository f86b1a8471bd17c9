"""The train step and its pieces: optimiser semantics, schedule, sharding equivalence."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vireid_jax import config as config_lib
from vireid_jax.models import initial_weights
from vireid_jax import memory as memory_lib
from vireid_jax import models
from vireid_jax import sampling
from vireid_jax.runtime import sharding
from vireid_jax import train_state
from vireid_jax.methods.mbccm import association as mbccm_association
from vireid_jax.methods.mbccm import memories as mbccm_memories
from vireid_jax.methods.mbccm import sampler as mbccm_sampler
from vireid_jax.methods.mbccm import config as mbccm_config


def tiny_config() -> ml_collections.ConfigDict:
  config = mbccm_config.mbccm_config()
  config.data.image_height, config.data.image_width = 16, 8
  config.model.block, config.model.stage_sizes, config.model.width = 'basic', (1, 1, 1, 1), 4
  config.model.dtype = 'float32'
  config.model.pretrained = 'none'  # a tiny network: random weights, as before the default
  config.augment.pad = 1
  config.sampler.clusters_per_step, config.sampler.instances_per_cluster = 4, 2
  return config


def test_learning_rate_follows_the_reference_schedule():
  optim = config_lib.base_config().optim
  expected = {0: 3.5e-4, 19: 3.5e-4, 20: 3.5e-5, 49: 3.5e-5, 50: 3.5e-6, 69: 3.5e-6,
              70: 3.5e-7, 79: 3.5e-7}
  for epoch, lr in expected.items():
    assert train_state.learning_rate(optim, epoch) == pytest.approx(lr, rel=1e-9), epoch


def test_optimizer_is_pytorch_adam_with_l2_weight_decay():
  torch = pytest.importorskip('torch', reason='torch is needed to compare with torch.optim.Adam')
  optim = config_lib.base_config().optim
  rng = np.random.default_rng(0)
  param = rng.normal(size=(5,)).astype(np.float32)
  grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(4)]
  lrs = [3.5e-4, 3.5e-4, 3.5e-5, 3.5e-5]  # the lr changes between steps, state is kept

  torch_param = torch.nn.Parameter(torch.tensor(param))
  torch_opt = torch.optim.Adam([torch_param], lr=lrs[0], betas=(optim.b1, optim.b2),
                               eps=optim.eps, weight_decay=optim.weight_decay)
  tx = train_state.make_optimizer(optim)
  ours, state = jnp.asarray(param), tx.init(jnp.asarray(param))
  for grad, lr in zip(grads, lrs):
    torch_opt.param_groups[0]['lr'] = lr
    torch_param.grad = torch.tensor(grad)
    torch_opt.step()
    updates, state = tx.update(jnp.asarray(grad), state, ours)
    ours = optax.apply_updates(ours, -lr * updates)
  np.testing.assert_allclose(np.asarray(ours), torch_param.detach().numpy(), rtol=1e-6,
                             atol=1e-7)


def test_memory_capacity_is_a_power_of_two_covering_the_clusters():
  for k in (1, 15, 16, 17, 100, 512, 513):
    capacity = memory_lib.memory_capacity(k)
    assert capacity >= k and capacity >= 16 and capacity & (capacity - 1) == 0
    assert capacity < 2 * max(k, 16)


def _step_inputs(config, num_clusters=4, num_images=24, steps=2):
  rng = np.random.default_rng(1)
  h, w = config.data.image_height, config.data.image_width
  visible = rng.integers(0, 256, (num_images, h, w, 3), dtype=np.uint8)
  infrared = rng.integers(0, 256, (num_images, h, w, 3), dtype=np.uint8)
  labels = np.arange(num_images) % num_clusters
  plan = mbccm_sampler.stage2_plan(labels, labels, np.eye(num_clusters, dtype=bool) | np.eye(
      num_clusters, k=1, dtype=bool), steps, config.sampler.clusters_per_step,
                              config.sampler.instances_per_cluster, 0)
  centers = rng.normal(size=(num_clusters, 32)).astype(np.float32)
  return visible, infrared, plan, centers


@pytest.mark.parametrize('stage', [1, 2])
def test_sharded_step_equals_single_device_step(stage):
  assert jax.device_count() == 8, 'tests/conftest.py forces 8 virtual CPU devices'
  config = tiny_config()
  model = models.build_model(config.model)
  visible, infrared, plan, centers = _step_inputs(config)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    step_fn = train_state.make_train_step(model, config, mesh, stage)
    state = train_state.create_train_state(config, model, mesh)
    padded = memory_lib.pad_rows(centers, 16)
    memories = sharding.put_replicated(jax.device_get(mbccm_memories.Memories.from_centers(
        padded, padded, num_visible=4, num_infrared=4)), mesh)
    images_v = sharding.put_replicated(visible, mesh)
    images_i = sharding.put_replicated(infrared, mesh)
    inputs = train_state.put_epoch_inputs(plan, epoch=0, first_step=0, mesh=mesh)
    # Every input is on the devices already: no step may copy anything from the host.
    with jax.transfer_guard('disallow'):
      for _ in range(plan.visible_index.shape[0]):
        state, memories, metrics = step_fn(state, memories, {'visible': images_v,
                                                                'infrared': images_i}, inputs)
    assert int(jax.device_get(state.step)) == plan.visible_index.shape[0]
    assert np.isfinite(float(jax.device_get(metrics['total'])))
    results.append(jax.device_get((state, memories, metrics)))
  (state_1, memories_1, metrics_1), (state_8, memories_8, metrics_8) = results
  np.testing.assert_allclose(metrics_1['total'], metrics_8['total'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               state_1.params, state_8.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               state_1.batch_stats, state_8.batch_stats)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               memories_1, memories_8)
  # The step changed the parameters and, in stage 2, the agnostic memories too.
  initial = jax.device_get(train_state.create_train_state(config, model, sharding.make_mesh()))
  assert not np.allclose(state_1.params['neck']['scale'], initial.params['neck']['scale'])
  assert not np.allclose(memories_1.agnostic_visible[:4], centers / np.linalg.norm(
      centers, axis=1, keepdims=True)) == (stage == 2)


def test_abstract_train_state_matches_the_real_one():
  config = tiny_config()
  model = models.build_model(config.model)
  mesh = sharding.make_mesh()
  abstract = train_state.abstract_train_state(config, model, mesh)
  real = train_state.create_train_state(config, model, mesh)
  layout = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), tree)
  assert layout(abstract) == layout(real)


def test_the_initial_state_names_the_weights_it_starts_from(tmp_path):
  config = tiny_config()
  model = models.build_model(config.model)
  mesh = sharding.make_mesh()
  lines = []
  random_start = train_state.create_train_state(config, model, mesh, say=lines.append)
  assert lines == [initial_weights.describe('')] and 'Warning' in lines[0]
  # Another network's weights, as a torchvision state dict: both stems and the trunk take them.
  other = models.init_variables(model, jax.random.PRNGKey(7), (16, 8))
  path = str(tmp_path / 'start.npz')
  np.savez(path, **models.export_torch_state_dict(other))
  config.model.pretrained = path
  state = train_state.create_train_state(config, model, mesh, say=lines.append)
  assert lines[1:] == [f'weights: {path}']
  for stem in ('visible_stem', 'infrared_stem'):
    np.testing.assert_array_equal(state.params[stem]['conv1']['kernel'],
                                  other['params']['visible_stem']['conv1']['kernel'])
  assert not np.allclose(random_start.params['layer1']['block0']['conv1']['kernel'],
                         state.params['layer1']['block0']['conv1']['kernel'])


@pytest.mark.parametrize('identical', [True, False])
def test_identical_stems_give_both_modalities_one_feature_space(identical):
  config = tiny_config()
  config.model.identical_stems = identical
  model = models.build_model(config.model)
  state = train_state.create_train_state(config, model, sharding.make_mesh())
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  images = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 8, 3))
  as_visible = model.apply(variables, images, None, train=False)
  as_infrared = model.apply(variables, None, images, train=False)
  assert np.allclose(as_visible, as_infrared, atol=1e-6) == identical
  if identical:  # copies, not aliases: donating the state must not free one buffer twice
    assert (state.params['infrared_stem']['conv1']['kernel'] is not
            state.params['visible_stem']['conv1']['kernel'])


def test_oracle_match_pairs_clusters_of_the_same_identity():
  visible_pids = np.array([7, 3, 3, 9, 7])
  infrared_pids = np.array([9, 3, 7, 7])
  match = mbccm_association.oracle_match(visible_pids, infrared_pids)
  # Clusters are the sorted identities (3, 7, 9) on both sides, so the mask is the identity.
  np.testing.assert_array_equal(match.mask, np.eye(3, dtype=bool))
  assert match.mean_partners_infrared == match.mean_partners_visible == 1.0
  with pytest.raises(ValueError, match=r'\[5\]'):
    mbccm_association.oracle_match(np.array([3, 5]), np.array([3]))
