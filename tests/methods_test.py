"""Methods as plug-ins: found by name, the core imports none, the baseline is MBCCM's stage 1."""

import ast
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vireid_jax import config as config_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax import sampling
from vireid_jax.runtime import sharding
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.methods.mbccm import config as mbccm_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'vireid_jax')


def test_every_method_package_is_found_by_its_name():
  names = methods.available()
  assert {'mbccm', 'cluster_contrast'} <= set(names)
  for name in names:
    method = methods.load(name)
    assert isinstance(method, methods.Method) and method.name == name
  config = config_lib.base_config()
  config.data.root = 'x'
  config.method = 'no_such_method'
  with pytest.raises(config_lib.ConfigError, match=r"config.method = 'no_such_method'.*mbccm"):
    config_lib.validate(config)


def _method_imports(path: str) -> list[str]:
  """Modules under vireid_jax.methods.<name> that the file at `path` imports."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
    elif isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    else:
      continue
    found += [n for n in names if n.startswith('vireid_jax.methods.')]
  return found


def test_the_core_imports_no_method():
  core_files = []
  for folder, _, files in os.walk(PACKAGE):
    if os.path.join(PACKAGE, 'methods') in folder:
      continue
    core_files += [os.path.join(folder, f) for f in files if f.endswith('.py')]
  assert len(core_files) > 30
  offenders = {os.path.relpath(p, REPO): _method_imports(p) for p in core_files}
  assert {p: m for p, m in offenders.items() if m} == {}
  # And at run time: building the trainer's modules loads no method until a config asks.
  code = ('import sys, vireid_jax.train, vireid_jax.evaluation.driver, vireid_jax.reporting.run_report; '
          'print([m for m in sys.modules if m.startswith("vireid_jax.methods.")])')
  loaded = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), check=True)
  assert loaded.stdout.strip() == '[]'


def tiny_config(method: str):
  config = mbccm_config.mbccm_config()
  config.method = method
  config.data.image_height, config.data.image_width = 16, 8
  config.model.block, config.model.stage_sizes, config.model.width = 'basic', (1, 1, 1, 1), 4
  config.model.dtype, config.model.pretrained = 'float32', 'none'
  config.augment.pad = 1
  config.sampler.clusters_per_step, config.sampler.instances_per_cluster = 4, 2
  return config


def test_cluster_contrast_trains_exactly_as_mbccm_stage_1():
  """The baseline is MBCCM's stage 1 (without the reference's in-place-backward quirk, which a
  plain ClusterContrast does not have): same parameters and the same two memories after the
  same steps, computed by two independent implementations."""
  results = []
  rng = np.random.default_rng(3)
  num_images, num_clusters = 24, 4
  visible = rng.integers(0, 256, (num_images, 16, 8, 3), dtype=np.uint8)
  infrared = rng.integers(0, 256, (num_images, 16, 8, 3), dtype=np.uint8)
  labels = np.arange(num_images) % num_clusters
  centers = rng.normal(size=(num_clusters, 32)).astype(np.float32)
  clusters = epoch_clustering.EpochClusters(labels, labels, centers, centers)
  plan = sampling.stage1_plan(labels, labels, 3, 4, 2, 0)
  mesh = sharding.make_mesh()
  for name in ('mbccm', 'cluster_contrast'):
    config = tiny_config(name)
    config.loss.reference_memory_gradients = False
    method = methods.load(name)
    schedule = method.schedule(config, 0)
    assert schedule.stage == 1
    model = models.build_model(config.model)
    state = train_state.create_train_state(config, model, mesh)
    memories = sharding.put_replicated(jax.device_get(
        method.build_memories(config, schedule, clusters, {})), mesh)
    step = train_state.make_train_step(model, config, mesh, schedule.phase)
    images = {'visible': sharding.put_replicated(visible, mesh),
              'infrared': sharding.put_replicated(infrared, mesh)}
    inputs = train_state.put_epoch_inputs(plan, 0, 0, mesh)
    for _ in range(3):
      state, memories, metrics = step(state, memories, images, inputs)
    results.append(jax.device_get((state.params, memories.visible, memories.infrared,
                                   metrics['total'])))
  (params_m, visible_m, infrared_m, loss_m), (params_c, visible_c, infrared_c, loss_c) = results
  np.testing.assert_allclose(loss_c, loss_m, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_m, params_c)
  np.testing.assert_allclose(visible_c, visible_m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(infrared_c, infrared_m, rtol=1e-5, atol=1e-6)


def test_cluster_contrast_has_one_stage_and_no_association():
  config = tiny_config('cluster_contrast')
  method = methods.load('cluster_contrast')
  schedules = [method.schedule(config, e) for e in range(config.schedule.epochs)]
  assert {s.stage for s in schedules} == {1} and not any(s.restart for s in schedules)
  assert [s.epoch for s in schedules if s.evaluate] == list(
      range(config.schedule.eval_every - 1, config.schedule.epochs,
            config.schedule.eval_every))
  labels = np.arange(8) % 2
  clusters = epoch_clustering.EpochClusters(labels, labels, np.eye(2, 4, dtype=np.float32),
                                            np.eye(2, 4, dtype=np.float32))
  assert method.associate(config, schedules[0], clusters, (labels, labels)) == ({}, {})
