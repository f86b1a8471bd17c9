"""PCLHD as a method: its schedule, association, plans, memories and stage-2 step, and its
training through main.py on the synthetic layouts, resumed to the same end.

The numerical pieces (hybrid memories, joint Jaccard, joint centres, matching, EMA, the losses)
are checked against a transcription of the authors' code in tests/pclhd_*_test.py; here, that
the method wires them as the authors' training loop does (train_sysu.py "TS", trainers.py
"TRN" at 8a376cd).
"""

import functools
import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vireid_jax import config as config_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax import optim
from vireid_jax import train
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.data.types import INFRARED, VISIBLE, ImageSet
from vireid_jax.methods.pclhd import association
from vireid_jax.methods.pclhd import clustering as pclhd_clustering
from vireid_jax.methods.pclhd import losses
from vireid_jax.methods.pclhd import memory as hybrid
from vireid_jax.methods.pclhd import method as pclhd_method
from vireid_jax.methods.pclhd import teacher as teacher_lib
from vireid_jax.runtime import checkpoint
from vireid_jax.runtime import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PCLHD = methods.load('pclhd')


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _override(config, overrides):
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.mark.parametrize('dataset', ['sysu', 'regdb'])
def test_schedule_is_the_authors_two_runs(dataset):
  """Each stage `for epoch in range(50)`, evaluated `if epoch >= 0` (TS:569,1102), StepLR(20,
  0.1) stepped after every epoch in both stages and both datasets (TS:641,1174; TR:580,967),
  stage 2 from stage 1's best with a fresh Adam; the cross term's direction by parity."""
  config = load(f'pclhd_{dataset}')
  assert (config.schedule.epochs, config.schedule.stage2_start) == (100, 50)
  for epoch in range(config.schedule.epochs):
    stage, stage_epoch = (1, epoch) if epoch < 50 else (2, epoch - 50)
    s = PCLHD.schedule(config, epoch)
    assert (s.stage, s.stage_epoch, s.evaluate, s.restart) == (
        stage, stage_epoch, True, stage == 2 and stage_epoch == 0)
    assert s.phase == ((1,) if stage == 1 else (2, stage_epoch % 2))
    assert train_state.learning_rate(config.optim, s.lr_epoch) == pytest.approx(
        3.5e-4 * 0.1**(stage_epoch // 20), rel=1e-12)
  assert config.eval.select_by == 'rank1' and config.model.bn_groups == 2


def _image_sets(visible_labels, infrared_labels):
  return tuple(ImageSet(np.zeros((len(labels), 0, 0, 3), np.uint8), labels, np.arange(
      len(labels)) % 3, np.array([''] * len(labels)), modality)
               for labels, modality in ((visible_labels, VISIBLE),
                                        (infrared_labels, INFRARED)))


def tiny_config(**overrides):
  config = load('pclhd_sysu')
  return _override(config, {
      'data.root': 'unused', 'model.pretrained': 'none', 'data.image_height': 32,
      'data.image_width': 16, 'model.block': 'basic', 'model.stage_sizes': (1, 1, 1, 1),
      'model.width': 4, 'model.dtype': 'float32', 'sampler.instances_per_cluster': 2,
      'sampler.visible_images': 8, 'sampler.visible_images_stage1': 8,
      'sampler.infrared_images': 8, 'sampler.steps_per_epoch': 2, 'augment.pad': 1,
      'pclhd.dynamic_instances': 2, **overrides})


def _stage2_clusters(num_clusters=6, per_cluster=4, dim=16, seed=0, single=()):
  """Per-modality clusters and a joint clustering whose `single` clusters hold one modality."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num_clusters * per_cluster) % num_clusters
  joint = np.concatenate([labels, labels])
  for cluster in single:  # its infrared images drop out of the joint cluster
    joint[len(labels):][labels == cluster] = -1
  return epoch_clustering.EpochClusters(
      labels, labels, rng.normal(size=(num_clusters, dim)).astype(np.float32),
      rng.normal(size=(num_clusters, dim)).astype(np.float32), joint_labels=joint)


def test_stage_2_plans_draw_the_joint_streams_from_clusters_with_both_modalities():
  config = tiny_config()
  schedule = PCLHD.schedule(config, 50)
  clusters = _stage2_clusters(num_clusters=8, single=(2, 5))
  sets = _image_sets(clusters.visible_labels, clusters.infrared_labels)
  config.sampler.infrared_images = 8  # 4 clusters x 2: six mixed joint clusters suffice
  plan = PCLHD.plan_epoch(config, schedule, clusters, {}, sets, np.random.default_rng(0))
  assert set(plan.streams) == {VISIBLE, INFRARED, 'joint_visible', 'joint_infrared'}
  assert plan.modality('joint_visible') == VISIBLE
  split = len(clusters.visible_labels)
  for stream, offset in (('joint_visible', 0), ('joint_infrared', split)):
    arrays = plan.streams[stream]
    # Labels are the joint clusters' ids (not renumbered), never a single-modality cluster.
    np.testing.assert_array_equal(arrays['label'], clusters.joint_labels[offset + arrays['index']])
    assert not set(arrays['label'].ravel()) & {2, 5}
  # Fewer mixed joint clusters than one joint batch needs: one line (the authors' StopIteration).
  config.sampler.infrared_images = 16  # 8 clusters per batch, 6 mixed
  with pytest.raises(methods.MethodStop, match=r'epoch 51: only 6 joint clusters hold both '
                     r'modalities, fewer than the 8 clusters of one joint batch'):
    PCLHD.plan_epoch(config, schedule, clusters, {}, sets, np.random.default_rng(0))
  # Stage 1: the two per-modality streams, RegDB's smaller visible batch.
  config.sampler.visible_images_stage1 = 4
  plan = PCLHD.plan_epoch(config, PCLHD.schedule(config, 0), clusters, {}, sets,
                          np.random.default_rng(0))
  assert set(plan.streams) == {VISIBLE, INFRARED}
  assert plan.streams[VISIBLE]['index'].shape[1] == 4


def test_association_is_pclhd_match_and_stops_or_skips_where_the_authors_crash():
  config = tiny_config()
  stage2 = PCLHD.schedule(config, 51)
  clusters = _stage2_clusters(num_clusters=6)
  pids = (clusters.visible_labels, clusters.infrared_labels)
  assert PCLHD.associate(config, PCLHD.schedule(config, 0), clusters, pids)[0] == {}
  arrays, stats = PCLHD.associate(config, stage2, clusters, pids)
  expected = association.pclhd_match(clusters.visible_centers, clusters.infrared_centers,
                                     variant='sysu')
  np.testing.assert_array_equal(arrays['visible_to_infrared'], expected[0])
  np.testing.assert_array_equal(arrays['infrared_to_visible'], expected[1])
  assert stats['match/skipped'] == 0.0 and stats['joint/mixed_clusters'] == 6.0
  more_infrared = epoch_clustering.EpochClusters(
      clusters.visible_labels % 3, clusters.infrared_labels, clusters.visible_centers[:3],
      clusters.infrared_centers)
  arrays, stats = PCLHD.associate(config, stage2, more_infrared, pids)
  assert arrays == {} and stats['match/skipped'] == 1.0
  config.pclhd.more_infrared = 'stop'
  with pytest.raises(methods.MethodStop, match=r'epoch 52: .*more_infrared=skip'):
    PCLHD.associate(config, stage2, more_infrared, pids)


def test_stage_2_memories_are_the_authors_tables():
  config = tiny_config()
  schedule = PCLHD.schedule(config, 50)
  clusters = _stage2_clusters(num_clusters=6, dim=8)
  rng = np.random.default_rng(0)
  features = methods.EpochFeatures(
      *(rng.normal(size=(24, 8)).astype(np.float32) for _ in range(4)))
  arrays, _ = PCLHD.associate(config, schedule, clusters, (clusters.visible_labels,) * 2)
  memories = PCLHD.build_memories(config, schedule, clusters, arrays, features=features,
                                  rng=np.random.RandomState(3))
  np.testing.assert_allclose(memories['visible'],
                             hybrid.hybrid_table(clusters.visible_centers, 16), rtol=1e-6)
  all_features = np.concatenate([features.visible, features.infrared])
  is_infrared = np.arange(48) >= 24
  centers, mixed = pclhd_clustering.joint_clusters(all_features, is_infrared,
                                                   clusters.joint_labels)
  assert mixed.all()
  np.testing.assert_allclose(memories['joint'], hybrid.hybrid_table(centers, 16), rtol=1e-6)
  assert memories['num_joint'] == 6
  np.testing.assert_array_equal(memories['visible_to_infrared'][:6],
                                arrays['visible_to_infrared'])
  assert (memories['visible_to_infrared'][6:] == -1).all()
  # The teacher's instance tables (TS:891-902): two instances of each of the 6 clusters.
  assert memories['instances_visible'].shape == (2 * 16, 8)
  norms = np.linalg.norm(memories['instances_visible'], axis=1)
  np.testing.assert_allclose(norms[[c + 16 * k for c in range(6) for k in range(2)]], 1.0,
                             rtol=1e-5)


def test_a_stage_2_step_is_the_authors_iteration():
  """One trainer step of stage 2 equals TRN:136-211 composed by hand from the pieces: the main
  loss on the student's features (with the teacher's constant term), an Adam step, a second
  forward and Adam step on the joint batch, the teacher's BatchNorm statistics from its own
  train-mode forward, and the EMA of its parameters after both steps."""
  config = tiny_config(**{'model.bn_groups': 2})
  config_lib.validate(config)
  epoch = 51  # stage-2 epoch 1: odd, the cross term scores infrared features on M_v
  schedule = PCLHD.schedule(config, epoch)
  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  rng = np.random.default_rng(7)
  num_images = 24
  images = {m: rng.integers(0, 256, (num_images, 32, 16, 3), dtype=np.uint8)
            for m in (VISIBLE, INFRARED)}
  clusters = _stage2_clusters(num_clusters=6, dim=model.num_features)
  pids = (clusters.visible_labels, clusters.infrared_labels)
  clusters.association, _ = PCLHD.associate(config, schedule, clusters, pids)
  features = methods.EpochFeatures(
      *(rng.normal(size=(num_images, model.num_features)).astype(np.float32)
        for _ in range(4)))
  memories = jax.device_get(PCLHD.build_memories(
      config, schedule, clusters, clusters.association, features=features,
      rng=np.random.RandomState(0)))
  plan = PCLHD.plan_epoch(config, schedule, clusters, clusters.association,
                          _image_sets(*pids), np.random.default_rng(1))
  state = train_state.create_train_state(config, model, mesh)
  # A teacher that differs from the student, as in the middle of stage 2.
  teacher = jax.tree.map(lambda x: x * 0.9 + 0.01, jax.device_get(state.method_state['teacher']))
  state = state.replace(method_state={'teacher': sharding.put_replicated(teacher, mesh)})
  before = jax.device_get(state)
  step = train_state.make_train_step(model, config, mesh, schedule.phase)
  inputs = train_state.put_epoch_inputs(plan, epoch, 0, mesh, lr_epoch=schedule.lr_epoch)
  after, tables, metrics = step(state, sharding.put_replicated(memories, mesh),
                                {m: sharding.put_replicated(x, mesh) for m, x in images.items()},
                                inputs)

  # By hand, from the pieces.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch), 0)
  batch = {s: {k: v[0] for k, v in a.items()} for s, a in plan.streams.items()}
  gathered = {s: images[plan.modality(s)][batch[s]['index']] for s in plan.streams}
  net_inputs = jax.jit(PCLHD.step_fns(config, schedule.phase).augment)(key, gathered, batch)
  network = jax.jit(train_state.network_fn(model))
  teacher_out, teacher_stats = network(before.method_state['teacher'], net_inputs[VISIBLE],
                                       net_inputs[INFRARED])
  maps = (memories['visible_to_infrared'], memories['infrared_to_visible'])
  counts = dict(num_visible=memories['num_visible'], num_infrared=memories['num_infrared'])
  tx = optim.make_optimizer(config.optim)
  rate = optim.learning_rate(config.optim, schedule.lr_epoch)

  def main_loss(params, batch_stats):
    out, stats = network({'params': params, 'batch_stats': batch_stats}, net_inputs[VISIBLE],
                         net_inputs[INFRARED])
    terms, tables_ = losses.main_terms(
        out[VISIBLE]['neck'], out[INFRARED]['neck'], batch[VISIBLE]['label'],
        batch[INFRARED]['label'], (memories['visible'], memories['infrared']), *maps, 1,
        teacher=(teacher_out[VISIBLE]['neck'], teacher_out[INFRARED]['neck'],
                 (memories['instances_visible'], memories['instances_infrared'])),
        **counts)
    return terms['total'], (stats, tables_, terms)

  def joint_loss(params, batch_stats):
    out, stats = network({'params': params, 'batch_stats': batch_stats},
                         net_inputs['joint_visible'], net_inputs['joint_infrared'])
    terms, table = losses.joint_terms(
        out[VISIBLE]['neck'], out[INFRARED]['neck'], batch['joint_visible']['label'],
        batch['joint_infrared']['label'], memories['joint'], num_joint=memories['num_joint'])
    return terms['total'], (stats, table)

  def adam(params, grads, opt_state):
    trainable = {'network': params, 'method': {}}
    updates, opt_state = tx.update({'network': grads, 'method': {}}, opt_state, trainable)
    updates = jax.tree.map(lambda u: -rate * u, updates)
    return optax.apply_updates(trainable, updates)['network'], opt_state

  (loss_1, (stats_1, (visible, infrared), terms)), grads = jax.jit(jax.value_and_grad(
      main_loss, has_aux=True))(before.params, before.batch_stats)
  params_1, opt_state = jax.jit(adam)(before.params, grads, before.opt_state)
  (loss_2, (stats_2, joint)), grads = jax.jit(jax.value_and_grad(joint_loss, has_aux=True))(
      params_1, stats_1)
  params_2, opt_state = jax.jit(adam)(params_1, grads, opt_state)
  teacher_params = teacher_lib.ema_update(before.method_state['teacher']['params'], params_2,
                                          config.pclhd.ema_momentum)

  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  # Adam's first steps move a parameter by about the rate (3.5e-4) whatever its gradient's
  # size, so float32 sums in another order (8 devices) show at 1e-6 there; a wrong update
  # order or a missing step moves parameters by the rate.
  close_params = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  close(metrics['total'], loss_1)
  close(metrics['joint/total'], loss_2)
  assert float(metrics['dynamic']) == pytest.approx(float(terms['dynamic']), rel=1e-5)
  assert float(metrics['cross']) > 0
  jax.tree.map(close_params, jax.device_get(after.params), params_2)
  jax.tree.map(close, jax.device_get(after.batch_stats), stats_2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(b)))), jax.device_get(after.opt_state),
      opt_state)
  jax.tree.map(close_params, after.method_state['teacher']['params'], teacher_params)
  jax.tree.map(close, after.method_state['teacher']['batch_stats'], teacher_stats)
  close(tables['visible'], visible)
  close(tables['infrared'], infrared)
  close(tables['joint'], joint)
  # The instance tables never change within an epoch (quirk 1).
  np.testing.assert_array_equal(tables['instances_visible'], memories['instances_visible'])


def test_stage_2_evaluates_the_teacher():
  config = tiny_config()
  network, state = {'params': 'student'}, {'teacher': {'params': 'teacher'}}
  assert PCLHD.eval_variables(config, 49, network, state) is network
  assert PCLHD.eval_variables(config, 50, network, state) is state['teacher']


# --- training through main.py ---------------------------------------------------------------

# The tiny runs cluster by the true identities (cluster.oracle): a 12-person set with a tiny
# network finds no joint cluster holding both modalities after one epoch, where PCLHD stops as
# its authors' loader does; the joint clustering itself is tested on its own
# (tests/pclhd_clustering_test.py), the step's use of it above.
TINY = {
    'cluster.oracle': True,
    'data.synthetic_ids': 12, 'data.image_height': 32, 'data.image_width': 16,
    'model.width': 4, 'sampler.instances_per_cluster': 2, 'sampler.visible_images': 8,
    'sampler.visible_images_stage1': 8, 'sampler.infrared_images': 8,
    'sampler.steps_per_epoch': 2, 'schedule.epochs': 3, 'schedule.stage2_start': 1,
    'schedule.eval_from': 0, 'eval.batch_size': 64, 'augment.pad': 1, 'cluster.k1': 10,
    'cluster.k2': 3, 'pclhd.joint_k1': 12, 'pclhd.joint_k2': 9, 'pclhd.dynamic_instances': 2,
    'sampler.joint_visible_images': 8, 'sampler.joint_infrared_images': 8,
    'pretrain.num_ids': 4, 'pretrain.images_per_id': 2, 'pretrain.epochs': 1,
    'pretrain.batch_size': 8, 'eval.at_start': False,
}


def demo_config(root, **overrides):
  config = load('pclhd_demo')
  config.data.root = root
  config.pretrain.output_dir = os.path.join(root, 'pretrained')
  return _override(config, {**TINY, **overrides})


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def _final(workdir, config):
  mesh = sharding.make_mesh()
  abstract = train_state.abstract_train_state(config, models.build_model(config.model), mesh)
  state, record = checkpoint.restore(workdir, checkpoint.LATEST, abstract)
  memories = checkpoint.read_memories(workdir, checkpoint.LATEST, record['epoch'],
                                      sharding.replicated(mesh))
  return jax.device_get(state), memories, record


@pytest.mark.slow
def test_pclhd_trains_both_stages_and_resumes_in_stage_2_to_the_same_end(data_root,
                                                                         tmp_path_factory):
  config = demo_config(data_root)
  reference = str(tmp_path_factory.mktemp('pclhd'))
  result = train.train_and_evaluate(config, reference)
  history = [e for e in result['history'] if e['epoch'] >= 0]
  assert [(e['stage'], 'restarted_from' in e) for e in history] == [
      (1, False), (2, True), (2, False)]
  for entry in history[1:]:
    assert entry['joint/clusters'] >= 1 and np.isfinite(entry['loss/joint/total'])
    assert 'match/pairs' in entry or entry['match/skipped'] == 1.0
  # Stage 2 chooses its best by Rank-1 among its own epochs.
  assert result['best']['epoch'] in (1, 2)
  assert result['best']['rank1'] == max(e['headline']['rank1'] for e in history[1:])
  state, memories, _ = _final(reference, config)
  assert set(memories) >= {'visible', 'infrared', 'joint', 'instances_visible'}
  # Stopped after stage 2's first epoch, then resumed: the same teacher, memories, optimiser.
  workdir = str(tmp_path_factory.mktemp('pclhd_resumed'))
  train.train_and_evaluate(config, workdir, max_epochs=2)
  trainer = train.Trainer(config, workdir)
  assert trainer.start_epoch == 2
  trainer.run()
  resumed, resumed_memories, _ = _final(workdir, config)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, (state.params, state.method_state, state.opt_state),
               (resumed.params, resumed.method_state, resumed.opt_state))
  jax.tree.map(close, memories, resumed_memories)


@pytest.mark.slow
@pytest.mark.parametrize('dataset', ['sysu', 'regdb', 'llcm'])
def test_pclhd_trains_and_evaluates_from_the_command_line(dataset, data_root, tmp_path):
  """configs/pclhd_demo.py through main.py on each synthetic layout: stage 1, then stage 2
  (teacher, joint clustering, two updates) evaluated with the layout's protocol; on SYSU-MM01
  then `--mode eval`, which evaluates the teacher of the best and latest checkpoints."""
  workdir, root = str(tmp_path / 'run'), str(tmp_path / 'data')
  overrides = {**TINY, 'data.dataset': dataset, 'schedule.epochs': 2,
               'eval.ranklist_queries': 2,
               'pretrain.output_dir': os.path.join(data_root, 'pretrained')}
  if dataset == 'regdb':
    overrides['cluster.eps'] = overrides['pclhd.joint_eps'] = 0.3
  command = [sys.executable, os.path.join(REPO, 'main.py'), '--config',
             os.path.join(REPO, 'configs', 'pclhd_demo.py'), '--workdir', workdir,
             f'--config.data.root={root}', *[f'--config.{k}={v}' for k, v in overrides.items()]]
  env = dict(os.environ, PYTHONPATH=REPO)
  trained = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
  assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
  assert re.search(r'epoch +1/2 stage 1 .*\| R1 ', trained.stdout)
  assert 'Stage 2 starts from the best checkpoint of stage 1' in trained.stdout
  assert re.search(r'epoch +2/2 stage 2 .*joint \d+ \(\d+ mixed\).*\| R1 ', trained.stdout)
  if dataset != 'sysu':
    return
  evaluated = subprocess.run(command + ['--mode', 'eval'], env=env, capture_output=True,
                             text=True, timeout=900)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'highest' in evaluated.stdout and 'Rank-1' in evaluated.stdout
