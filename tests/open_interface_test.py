"""The opened method interface: methods outside the package, plan streams and cameras, epoch
hooks with their optional keywords, joint clustering, several slots per cluster, several
updates per step, the method's own state, and a method that uses all of it at once
(tests/capability_method.py) trained through main.py and resumed after SIGTERM."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax import clustering
from vireid_jax import config as config_lib
from vireid_jax import launch
from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax import sampling
from vireid_jax import train
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.data.types import INFRARED, VISIBLE, ImageSet
from vireid_jax.methods.mbccm import config as mbccm_config
from vireid_jax.runtime import checkpoint
from vireid_jax.runtime import sharding

import export_test
from end_to_end_test import REPO

PROBE = 'tests.capability_method'


def test_a_method_outside_the_package_loads_by_its_module_path():
  from tests import capability_method  # pylint: disable=import-outside-toplevel
  assert methods.load(PROBE) is capability_method.METHOD
  with pytest.raises(methods.UnknownMethodError, match=r"no module 'no_such_lab' can be "
                     r"imported.*built-in methods: \[.*'mbccm'"):
    methods.load('no_such_lab.my_method')
  with pytest.raises(methods.UnknownMethodError, match='tests.conftest defines no METHOD'):
    methods.load('tests.conftest')
  with pytest.raises(methods.UnknownMethodError, match='not a method name'):
    methods.load('my-lab.method')


def test_epoch_hooks_get_only_the_keywords_they_declare():
  seen = {}

  def plain(a, b):
    return a + b

  def wants_previous(a, b, *, previous):
    seen['previous'] = previous
    return a * b

  def wants_everything(a, **extras):
    seen.update(extras)
    return a

  extras = dict(previous='tables', features='f', rng='r')
  assert methods.call_with_extras(plain, 2, 3, **extras) == 5
  assert methods.call_with_extras(wants_previous, 2, 3, **extras) == 6
  assert seen == {'previous': 'tables'}
  assert methods.call_with_extras(wants_everything, 7, **extras) == 7
  assert seen == extras


def _image_set(modality, cams):
  n = len(cams)
  return ImageSet(np.zeros((n, 0, 0, 3), np.uint8), np.arange(n), np.asarray(cams),
                  np.array([''] * n), modality)


def test_plan_streams_reach_the_step_with_their_cameras_and_arrays():
  labels = np.arange(12) % 3
  epoch_plan = sampling.stage1_plan(labels, labels, steps=2, clusters_per_step=2,
                                    instances_per_cluster=2, rng=0)
  weight = np.random.default_rng(0).random(epoch_plan.visible_index.shape)
  plan = methods.Plan.of(epoch_plan, visible={'weight': weight})
  plan = methods.Plan(dict(plan.streams, extra={'index': epoch_plan.visible_index[:, :2],
                                                'label': epoch_plan.visible_label[:, :2]}),
                      modalities={'extra': INFRARED})
  cams = {VISIBLE: _image_set(VISIBLE, 10 + np.arange(12)),
          INFRARED: _image_set(INFRARED, 30 + np.arange(12))}
  arrays = train_state.plan_arrays(plan, cams)
  np.testing.assert_array_equal(arrays[VISIBLE]['camera'], 10 + epoch_plan.visible_index)
  np.testing.assert_array_equal(arrays[INFRARED]['camera'], 30 + epoch_plan.infrared_index)
  # A stream takes the cameras of its modality, whatever its name.
  np.testing.assert_array_equal(arrays['extra']['camera'],
                                30 + epoch_plan.visible_index[:, :2])
  assert arrays[VISIBLE]['weight'].dtype == np.float32
  np.testing.assert_allclose(arrays[VISIBLE]['weight'], weight.astype(np.float32))
  assert all(a.dtype == np.int32 for s in arrays.values() for k, a in s.items()
             if k != 'weight')
  with pytest.raises(ValueError, match="plan stream 'nameless' names no modality"):
    methods.Plan({'nameless': {}}).modality('nameless')


def test_label_repeats_are_bounded_per_stream():
  config = mbccm_config.mbccm_config()
  config.memory.update_method = 'by_rank'
  visible = np.array([[0, 0, 1, 1], [2, 2, 2, 2]])  # a cluster fills 4 positions in step 2
  infrared = np.array([[0, 0, 1, 1], [1, 1, 3, 3]])
  plan = methods.Plan({VISIBLE: {'index': visible, 'label': visible},
                       INFRARED: {'index': infrared, 'label': infrared}}, repeat_unit=2)
  repeats = train_state.step_label_repeats(config, plan)
  assert (repeats[VISIBLE], repeats[INFRARED]) == (4, 2)
  assert repeats == train_state.step_label_repeats(config, plan)  # hashable, a static key
  config.memory.update_method = 'sequential'
  assert train_state.step_label_repeats(config, plan) is None


def test_slot_logits_score_every_slot_and_mask_padded_clusters():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(5, 6)).astype(np.float32)
  table = rng.normal(size=(2, 4, 6)).astype(np.float32)
  logits = np.asarray(memory_lib.slot_logits(features, table, 0.05, num_valid=3))
  unit = features / np.linalg.norm(features, axis=1, keepdims=True)
  expected = np.einsum('nc,skc->nsk', unit, table) / 0.05
  np.testing.assert_allclose(logits[:, :, :3], expected[:, :, :3], rtol=1e-5, atol=1e-5)
  assert np.all(np.isneginf(logits[:, :, 3]))


def _blobs(rng, centres, per_blob, spread=0.05):
  rows = [c + spread * rng.normal(size=(per_blob, len(c))) for c in centres]
  return np.concatenate(rows).astype(np.float32), np.repeat(np.arange(len(centres)), per_blob)


def test_joint_clusters_are_dbscan_of_the_methods_distance_over_both_modalities():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(4, 16))
  visible, visible_ids = _blobs(rng, centres, 6)
  # The infrared images of the same people, shifted by a modality offset that a plain distance
  # would keep apart and the probe's modality-aware distance removes.
  infrared, infrared_ids = _blobs(rng, centres, 6)
  infrared += 3.0 * rng.normal(size=(1, 16)).astype(np.float32)
  config = mbccm_config.mbccm_config()
  config.cluster.k1, config.cluster.k2, config.cluster.eps = 6, 2, 0.6
  config.cluster.order = 'reader'  # blobs have no paths to sort by
  method = methods.load(PROBE)
  clusters = epoch_clustering.cluster_epoch(config, visible, infrared, visible_ids, infrared_ids,
                                            method=method)
  features = np.concatenate([visible, infrared])
  is_infrared = np.arange(len(features)) >= len(visible)
  distance = method.clustering.joint_distance(config, features, is_infrared)
  np.testing.assert_array_equal(
      clusters.joint_labels, clustering.dbscan(distance, eps=0.6, min_samples=4))
  # Each identity's visible and infrared images share one joint cluster.
  ids = np.concatenate([visible_ids, infrared_ids])
  joint = clusters.joint_labels
  assert np.mean(joint >= 0) > 0.75
  for pid in range(4):
    (label,) = set(joint[ids == pid]) - {-1}
    assert label in joint[:len(visible)] and label in joint[len(visible):]
  assert clusters.stats['joint/mixed_share'] == 1.0
  # Without the modality-aware distance the offset keeps the modalities apart.
  plain = clustering.dbscan(clustering.jaccard_distance(
      features / np.linalg.norm(features, axis=1, keepdims=True), k1=6, k2=2, max_distance=0.6),
      eps=0.6, min_samples=4)
  assert not set(plain[:len(visible)]) & set(plain[len(visible):])
  np.testing.assert_allclose(
      clusters.joint_centers, clustering.cluster_centers(features, clusters.joint_labels))


def _toy_step(config, updates, mesh):
  """A step over a tiny network whose augmentation is plain normalisation (no randomness)."""
  model = models.build_model(config.model)
  mean, std = tuple(config.data.mean), tuple(config.data.std)

  def augment_fn(rng, images, batch):
    del rng, batch
    to_input = lambda x: (x.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)
    return {VISIBLE: to_input(images[VISIBLE]), INFRARED: to_input(images[INFRARED])}

  step_fns = methods.StepFns(augment=augment_fn, updates=updates)
  return model, train_state.make_train_step(model, config, mesh, 1, step_fns=step_fns)


def test_two_updates_in_one_step_are_two_optimiser_steps_in_sequence():
  config = mbccm_config.mbccm_config()
  config.data.image_height, config.data.image_width = 16, 8
  config.model.block, config.model.stage_sizes, config.model.width = 'basic', (1, 1, 1, 1), 4
  config.model.dtype, config.model.pretrained = 'float32', 'none'
  mesh = sharding.make_mesh(jax.devices()[:1])

  def first(outputs, batch, memories, ctx):
    del ctx
    f = outputs[VISIBLE]['neck'] * memories['scale']
    return jnp.mean(f**2) + jnp.mean(batch[VISIBLE]['label'].astype(jnp.float32)), {}

  def second(outputs, batch, memories, ctx):
    del batch, memories, ctx
    return -jnp.mean(jnp.abs(outputs[INFRARED]['pooled'])), {'pooled': 1.0}

  bump = lambda memories, outputs, batch, ctx: dict(memories, scale=memories['scale'] + 1.0)
  both = (methods.Update(first, bump), methods.Update(second, bump, name='second'))
  rng = np.random.default_rng(0)
  images = {m: sharding.put_replicated(rng.integers(0, 255, (8, 16, 8, 3), np.uint8), mesh)
            for m in (VISIBLE, INFRARED)}
  # Two identical plan rows: the sequence of single-update steps reads the same batch twice.
  index = np.tile(np.arange(4), (2, 1))
  plan = methods.Plan({VISIBLE: {'index': index, 'label': index},
                       INFRARED: {'index': index + 4, 'label': index}})
  inputs = train_state.put_epoch_inputs(plan, 0, 0, mesh)
  model, step_both = _toy_step(config, both, mesh)
  state = train_state.create_train_state(config, model, mesh)
  memories = sharding.put_replicated({'scale': np.float32(2.0)}, mesh)
  after_both, memories_both, metrics = step_both(jax.tree.map(jnp.copy, state),
                                                 jax.tree.map(jnp.copy, memories), images,
                                                 inputs)
  assert set(metrics) == {'total', 'grad_norm', 'second/total', 'second/pooled',
                          'second/grad_norm'}
  _, step_first = _toy_step(config, both[:1], mesh)
  _, step_second = _toy_step(config, both[1:], mesh)
  middle, memories_seq, metrics_first = step_first(state, memories, images, inputs)
  after_seq, memories_seq, metrics_second = step_second(middle, memories_seq, images, inputs)
  assert float(memories_both['scale']) == float(memories_seq['scale']) == 4.0
  np.testing.assert_allclose(metrics['total'], metrics_first['total'], rtol=1e-6)
  np.testing.assert_allclose(metrics['second/total'], metrics_second['second/total'],
                             rtol=1e-6)
  # The optimiser took two steps on one state; the step counter counts iterations.
  assert int(after_both.step) == 1 and int(after_seq.step) == 2
  for got, want in ((after_both.params, after_seq.params),
                    (after_both.batch_stats, after_seq.batch_stats),
                    (after_both.opt_state, after_seq.opt_state)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got,
                 want)


def test_the_nearest_centre_example_of_the_docs_is_a_working_method_under_100_lines(
    tmp_path, monkeypatch):
  text = open(os.path.join(REPO, 'docs', 'new_method.md')).read()
  start = text.index('<!-- nearest-centre-example')
  code = text[text.index('```python\n', start) + len('```python\n'):]
  code = code[:code.index('```')]
  assert len(code.splitlines()) < 100
  package = tmp_path / 'my_lab'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'nearest_centre.py').write_text(code)
  monkeypatch.syspath_prepend(str(tmp_path))
  method = methods.load('my_lab.nearest_centre')
  config = export_test.tiny_config('cluster_contrast')
  config.method = 'my_lab.nearest_centre'
  config.nearest = {'weight': 0.5}
  config_lib.validate(config)
  schedule = method.schedule(config, 0)
  plan, memories, _ = export_test._epoch_inputs(method, config, schedule)  # pylint: disable=protected-access
  assert memories['partner'].shape == (memories['tables'].infrared.shape[0],)
  model = models.build_model(config.model)
  mesh = sharding.make_mesh(jax.devices()[:1])
  step = train_state.make_train_step(model, config, mesh, schedule.phase)
  images = np.zeros((export_test.NUM_IMAGES, export_test.HEIGHT, export_test.WIDTH, 3), np.uint8)
  inputs = train_state.put_epoch_inputs(plan, 0, 0, mesh)
  state = train_state.abstract_train_state(config, model, mesh)
  text = step.lower(state, memories, {VISIBLE: images, INFRARED: images}, inputs).as_text()
  assert 'dot_general' in text


# --- the capability probe through main.py ---------------------------------------------------

# Tiny sizes of tests/capability_method.py's config, as flags.
PROBE_TINY = {
    'data.synthetic_ids': 12, 'data.image_height': 32, 'data.image_width': 16,
    'model.width': 4, 'sampler.clusters_per_step': 4, 'sampler.instances_per_cluster': 2,
    'sampler.steps_per_epoch': 4, 'schedule.epochs': 3, 'eval.batch_size': 64,
    'augment.pad': 1, 'augment.linear_transform_prob': 0.0, 'eval.at_start': False,
    'pretrain.num_ids': 4, 'pretrain.images_per_id': 2, 'pretrain.epochs': 1,
    'pretrain.batch_size': 8,
}


def probe_args(workdir, data_root):
  return ['--config', os.path.join(REPO, 'tests', 'capability_method.py'), '--workdir',
          str(workdir), f'--config.data.root={data_root}',
          f'--config.pretrain.output_dir={os.path.join(data_root, "pretrained")}',
          *[f'--config.{k}={v}' for k, v in PROBE_TINY.items()]]


def _probe_config(data_root):
  from tests import capability_method  # pylint: disable=import-outside-toplevel
  config = capability_method.get_config()
  config.data.root = data_root
  config.pretrain.output_dir = os.path.join(data_root, 'pretrained')
  for dotted, value in PROBE_TINY.items():
    group, field = dotted.split('.')
    config[group][field] = value
  return config


def _final(workdir, config):
  model = models.build_model(config.model)
  abstract = train_state.abstract_train_state(config, model, sharding.make_mesh())
  state, record = checkpoint.restore(workdir, checkpoint.LATEST, abstract)
  memories = checkpoint.read_memories(workdir, checkpoint.LATEST, record['epoch'],
                                      sharding.replicated(sharding.make_mesh()))
  return jax.device_get(state), memories, record


@pytest.mark.slow
def test_the_capability_probe_trains_through_main_and_resumes_after_sigterm(tmp_path_factory):
  data_root = str(tmp_path_factory.mktemp('probe_data'))
  config = _probe_config(data_root)
  config_lib.validate(config)
  reference = str(tmp_path_factory.mktemp('probe_uninterrupted'))
  result = train.train_and_evaluate(config, reference)
  history = [e for e in result['history'] if e['epoch'] >= 0]
  assert len(history) == 3
  for entry in history:
    for key in ('loss/total', 'loss/joint/total', 'loss/visible', 'loss/infrared_head'):
      assert np.isfinite(entry[key]), key
    assert entry['loss/teacher_updates'] > 0 and entry['joint/clusters'] >= 1
    assert entry['visible/clusters'] >= 1
  state, memories, _ = _final(reference, config)
  assert int(state.method_state['updates']) == 3 * PROBE_TINY['sampler.steps_per_epoch']
  # The teacher moved towards the student and kept its own BatchNorm statistics.
  assert not np.allclose(state.method_state['teacher']['params']['neck']['scale'],
                         state.params['neck']['scale'])
  assert set(memories) >= {'visible', 'infrared', 'joint'}
  assert np.asarray(memories['visible']).shape[0] == 2  # two slots

  workdir = tmp_path_factory.mktemp('probe_interrupted')
  args = probe_args(workdir, data_root)
  run = launch.start(args, num_processes=1)
  assert run.wait_for(0, 'epoch   1/3', 600), run.text(0)[-3000:]
  run.send(0, signal.SIGTERM)
  assert run.wait(600) == [143], run.text(0)[-3000:]
  assert 'stopped by SIGTERM during epoch 2' in run.text(0)
  resumed = launch.start(args, num_processes=1)
  assert resumed.wait(600) == [0], resumed.text(0)[-3000:]
  assert 'Resuming' in resumed.text(0)
  state_b, memories_b, record_b = _final(str(workdir), config)
  assert record_b['epoch'] == 3
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, (state.params, state.batch_stats, state.method_params,
                       state.method_state, state.opt_state),
               (state_b.params, state_b.batch_stats, state_b.method_params,
                state_b.method_state, state_b.opt_state))
  jax.tree.map(close, memories, memories_b)
  losses = lambda h: [e['loss/total'] for e in h if e['epoch'] >= 0]
  np.testing.assert_allclose(losses(record_b['history']), losses(result['history']), rtol=1e-5)
