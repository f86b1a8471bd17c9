"""Every method's jitted steps and the extraction lower for TPU and for CUDA (jax.export).

No accelerator is needed: `jax.export` lowers for platforms that are not present. A change that
would break the pod or GPU build (an op without a lowering there, a host callback, a custom
call that exists only on the CPU) fails here, on the CPU, in CI. Every phase of every method
(`methods.available()`) is lowered with images resident on the devices and fed from the host.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from vireid_jax import config as config_lib
from vireid_jax import extract as extract_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax.runtime import sharding
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.data.types import INFRARED, VISIBLE, ImageSet
from vireid_jax.methods.pclhd import config as pclhd_config
from vireid_jax.methods.pgm import config as pgm_config
from vireid_jax.methods.mbccm import config as mbccm_config

from tests import capability_method

PLATFORMS = ('tpu', 'cuda')
NUM_IMAGES, NUM_CLUSTERS, HEIGHT, WIDTH = 64, 8, 32, 16
FEATURES = 32  # the tiny network's feature size (width 4 x 8)
PROBE = 'tests.capability_method'  # the test method that uses every capability


def tiny_config(method: str):
  if method == 'pgm':  # PGM's settings add their own fields (methods/pgm/config.py)
    config = pgm_config.pgm_config('sysu')
    config.sampler.visible_images, config.sampler.infrared_images = 8, 16
  elif method == 'pclhd':
    config = pclhd_config.pclhd_config('sysu')
    config.sampler.visible_images = config.sampler.visible_images_stage1 = 8
    config.sampler.infrared_images = 8
    config.pclhd.dynamic_instances = 2
  elif method == PROBE:  # a method outside the package, by its module path
    config = capability_method.probe_config()
  else:
    config = mbccm_config.mbccm_config()
  config.method = method
  config.data.root = 'unused'
  config.model.pretrained = 'none'
  config.data.image_height, config.data.image_width = HEIGHT, WIDTH
  config.model.block, config.model.stage_sizes, config.model.width = 'basic', (1, 1, 1, 1), 4
  config.augment.pad = 1
  config.augment.linear_transform_prob = 0.8  # the rectangles' loop is part of the graph
  config.sampler.clusters_per_step, config.sampler.instances_per_cluster = 4, 2
  config.sampler.steps_per_epoch = 2
  config.schedule.epochs, config.schedule.stage2_start = 4, 2
  config_lib.validate(config)
  return config


def _abstract(tree, sharding_of):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                     sharding=sharding_of), tree)


def _phases(method, config):
  """(schedule of the first epoch of each distinct phase) over the run."""
  seen = {}
  for epoch in range(config.schedule.epochs):
    schedule = method.schedule(config, epoch)
    seen.setdefault(schedule.phase, schedule)
  return list(seen.values())


def _epoch_inputs(method, config, schedule):
  """The epoch's plan and memories, through every hook the method has."""
  labels = np.arange(NUM_IMAGES) % NUM_CLUSTERS
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(NUM_CLUSTERS, FEATURES)).astype(np.float32)
  features = centers[labels] + 0.1 * rng.normal(size=(NUM_IMAGES, FEATURES)).astype(np.float32)
  epoch_features = methods.EpochFeatures(features, features, features, features)
  clusters = epoch_clustering.EpochClusters(
      labels, labels, centers, centers, joint_labels=np.concatenate([labels, labels]),
      joint_centers=centers)
  pids = (labels, labels)
  if method.refine is not None:
    clusters = methods.call_with_extras(method.refine, config, schedule, clusters, pids,
                                        features=epoch_features, rng=rng)
  clusters.association, _ = methods.call_with_extras(
      method.associate, config, schedule, clusters, pids, features=epoch_features)
  sets = tuple(ImageSet(np.zeros((NUM_IMAGES, 0, 0, 3), np.uint8), labels, labels % 2,
                        np.array([''] * NUM_IMAGES), modality)
               for modality in (VISIBLE, INFRARED))
  plan = methods.as_plan(method.plan_epoch(config, schedule, clusters, clusters.association,
                                           sets, rng))
  memories = jax.device_get(methods.call_with_extras(
      method.build_memories, config, schedule, clusters, clusters.association, previous=None,
      features=epoch_features, rng=rng))
  return plan, memories, dict(zip((VISIBLE, INFRARED), sets))


def _assert_portable(exported: export.Exported, what: str) -> None:
  assert set(exported.platforms) == set(PLATFORMS), what
  text = exported.mlir_module()
  # Sharding annotations are custom calls by name only; anything else would be a kernel that
  # exists on one platform (LAPACK, a host callback, ...).
  calls = {line.split('@')[1].split('(')[0] for line in text.splitlines()
           if 'stablehlo.custom_call' in line and '@' in line}
  assert calls <= {'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape'}, (what, calls)


@pytest.mark.parametrize('method_name', methods.available() + [PROBE])
@pytest.mark.parametrize('images_on_device', [True, False])
def test_every_phase_of_every_method_lowers_for_tpu_and_cuda(method_name, images_on_device):
  config = tiny_config(method_name)
  method = methods.load(method_name)
  model = models.build_model(config.model)
  mesh = sharding.make_mesh()
  replicated = sharding.replicated(mesh)
  state = train_state.abstract_train_state(config, model, mesh)
  for schedule in _phases(method, config):
    plan, memories, sets = _epoch_inputs(method, config, schedule)
    arrays = train_state.plan_arrays(plan, sets)
    modalities = tuple(sorted(plan.modalities.items()))
    inputs = train_state.EpochInputs(plan=arrays, epoch=np.int32(0), first_step=np.int32(0),
                                     lr_epoch=np.int32(0), modalities=modalities)
    inputs = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                            sharding=s),
                          inputs, train_state.epoch_sharding(mesh, arrays, modalities))
    if images_on_device:
      images = {modality: jax.ShapeDtypeStruct((NUM_IMAGES, HEIGHT, WIDTH, 3), jnp.uint8,
                                               sharding=replicated)
                for modality in (VISIBLE, INFRARED)}
    else:
      images = {stream: jax.ShapeDtypeStruct((stream_arrays['index'].shape[1], HEIGHT, WIDTH,
                                              3), jnp.uint8,
                                             sharding=sharding.batch_sharded(mesh))
                for stream, stream_arrays in arrays.items()}
    step = train_state.make_train_step(model, config, mesh, schedule.phase, images_on_device)
    exported = export.export(step, platforms=PLATFORMS)(
        state, _abstract(memories, replicated), images, inputs)
    _assert_portable(exported, f'{method_name} phase {schedule.phase}')


def test_extraction_lowers_for_tpu_and_cuda():
  config = tiny_config('mbccm')
  model = models.build_model(config.model)
  mesh = sharding.make_mesh()
  state = train_state.abstract_train_state(config, model, mesh)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  for flip, renormalize in ((False, True), (True, True), (True, False)):
    fns = extract_lib.make_extract_fn(model, tuple(config.data.mean), tuple(config.data.std),
                                      flip)
    batch = jax.ShapeDtypeStruct((16, HEIGHT, WIDTH, 3), jnp.uint8,
                                 sharding=sharding.batch_sharded(mesh))
    resident = jax.ShapeDtypeStruct((NUM_IMAGES, HEIGHT, WIDTH, 3), jnp.uint8,
                                    sharding=sharding.replicated(mesh))
    index = jax.ShapeDtypeStruct((16,), jnp.int32, sharding=sharding.batch_sharded(mesh))
    for modality in (VISIBLE, INFRARED):
      exported = export.export(fns.from_batch, platforms=PLATFORMS)(variables, batch,
                                                                     modality=modality)
      _assert_portable(exported, f'extract from batch {modality} flip {flip}')
      exported = export.export(fns.from_resident, platforms=PLATFORMS)(
          variables, resident, index, modality=modality)
      _assert_portable(exported, f'extract resident {modality} flip {flip}')
    del renormalize  # wired once extraction takes it (PGM's clustering features)
