"""PGM as a method: its schedule, its association, its step, and its two-run training.

The numerical pieces (pgm_match, the hard update, pgm_losses, the sampler, the ColorJitter) are
checked against transcriptions of the authors' code in their own test files; here, that the
method wires them as the authors' training loop does.
"""

import functools
import importlib.util
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from vireid_jax.runtime import checkpoint
from vireid_jax import config as config_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax.runtime import sharding
from vireid_jax import train
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.data.types import INFRARED, VISIBLE, ImageSet
from vireid_jax.methods.pgm import augment as pgm_augment
from vireid_jax.methods.pgm import config as pgm_config
from vireid_jax.methods.pgm import losses as pgm_losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGM = methods.load('pgm')


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('dataset', ['sysu', 'regdb'])
def test_schedule_is_the_authors_two_runs(dataset):
  """train_sysu.py / train_regdb.py: each stage `for epoch in range(args.epochs)`, StepLR after
  every epoch, evaluation when `epoch >= 6 and ((epoch + 1) % eval_step == 0 or epoch ==
  epochs - 1)` (TS:541,903), stage 2 from stage 1's model_best with a new optimiser."""
  config = load(f'pgm_{dataset}')
  stage_epochs, step_size = {'sysu': (50, 20), 'regdb': (30, 10)}[dataset]
  assert config.schedule.epochs == 2 * stage_epochs
  expected = []
  for stage in (1, 2):
    for epoch in range(stage_epochs):  # the authors' loop, transcribed
      evaluate = epoch >= 6 and ((epoch + 1) % 1 == 0 or epoch == stage_epochs - 1)
      lr = 3.5e-4 * 0.1**(epoch // step_size)  # StepLR(step_size, gamma=0.1)
      expected.append((stage, epoch, evaluate, stage == 2 and epoch == 0, lr))
  got = []
  for epoch in range(config.schedule.epochs):
    s = PGM.schedule(config, epoch)
    assert s.phase == ((1,) if s.stage == 1 else (2, s.stage_epoch % 2))
    got.append((s.stage, s.stage_epoch, s.evaluate, s.restart,
                train_state.learning_rate(config.optim, s.lr_epoch)))
  for g, e in zip(got, expected):
    assert g[:4] == e[:4]
    assert g[4] == pytest.approx(e[4], rel=1e-12)


def _clusters(num_visible_clusters, num_infrared_clusters, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  visible_labels = np.arange(4 * num_visible_clusters) % num_visible_clusters
  infrared_labels = np.arange(4 * num_infrared_clusters) % num_infrared_clusters
  return epoch_clustering.EpochClusters(
      visible_labels, infrared_labels,
      rng.normal(size=(num_visible_clusters, dim)).astype(np.float32),
      rng.normal(size=(num_infrared_clusters, dim)).astype(np.float32))


def test_association_follows_the_run_settings():
  config = load('pgm_sysu')
  stage1, stage2 = PGM.schedule(config, 0), PGM.schedule(config, 50)
  clusters = _clusters(9, 4)
  pids = (clusters.visible_labels, clusters.infrared_labels)
  assert PGM.associate(config, stage1, clusters, pids) == ({}, {})  # no matching in stage 1
  arrays, stats = PGM.associate(config, stage2, clusters, pids)
  assert np.all(arrays['visible_to_infrared'] >= 0) and np.all(arrays['infrared_to_visible'] >= 0)
  assert stats['match/pairs'] == 9  # every visible cluster once; the infrared ones among them
  # The authors' two rounds leave 9 - 2 x 4 = 1 visible cluster without a partner: their code
  # dies with a KeyError when it is sampled; ours stops with one line saying what to do.
  config.pgm.rounds = '2'  # a string, as --config.pgm.rounds=2 gives it
  with pytest.raises(methods.MethodStop, match=r"left 1 of 9 visible clusters.*pgm.rounds=until_all"):
    PGM.associate(config, stage2, clusters, pids)
  # More infrared than visible clusters: train_sysu.py has no branch, the cross term vanishes.
  config.pgm.more_infrared = 'skip'
  config.pgm.rounds = 'until_all'
  clusters = _clusters(3, 5)
  pids = (clusters.visible_labels, clusters.infrared_labels)
  arrays, stats = PGM.associate(config, stage2, clusters, pids)
  assert arrays == {} and stats == {'match/skipped': 1.0}
  config.pgm.more_infrared = 'symmetric'
  arrays, _ = PGM.associate(config, stage2, clusters, pids)
  assert np.all(arrays['infrared_to_visible'] >= 0)


def test_oracle_pairs_the_same_identities():
  config = load('pgm_sysu')
  config.cluster.oracle = True
  visible_pids, infrared_pids = np.array([3, 7, 7, 9, 3]), np.array([9, 3, 7])
  clusters = _clusters(3, 3)
  clusters.visible_labels = np.unique(visible_pids, return_inverse=True)[1]
  clusters.infrared_labels = np.unique(infrared_pids, return_inverse=True)[1]
  arrays, stats = PGM.associate(config, PGM.schedule(config, 50), clusters,
                                (visible_pids, infrared_pids))
  np.testing.assert_array_equal(arrays['visible_to_infrared'], [0, 1, 2])
  np.testing.assert_array_equal(arrays['infrared_to_visible'], [0, 1, 2])
  assert stats['match/pair_precision'] == 1.0


def tiny_pgm_config(**overrides):
  config = pgm_config.pgm_config('sysu')
  config.data.root = 'unused'
  config.data.image_height, config.data.image_width = 32, 16
  config.model.block, config.model.stage_sizes, config.model.width = 'basic', (1, 1, 1, 1), 4
  config.model.dtype, config.model.pretrained = 'float32', 'none'
  config.model.bn_groups = 2
  config.augment.pad = 1
  config.sampler.instances_per_cluster = 2
  config.sampler.visible_images, config.sampler.infrared_images = 8, 16
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  config_lib.validate(config)
  return config


@pytest.mark.parametrize('epoch,hard', [(0, False), (50, True), (51, False)])
def test_step_is_the_authors_loss_on_the_network_features(epoch, hard):
  """One step of the trainer equals pgm_losses on the features the network gives for the
  step's augmented images: the same loss, and memories equal to the tables it returns."""
  config = tiny_pgm_config(**{'memory.stage2_update': 'hard' if hard else 'sequential'})
  schedule = PGM.schedule(config, epoch)
  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  rng = np.random.default_rng(epoch)
  num_images, num_clusters = 48, 8
  images = [rng.integers(0, 256, (num_images, 32, 16, 3), dtype=np.uint8) for _ in range(2)]
  clusters = _clusters(num_clusters, num_clusters, dim=model.num_features, seed=epoch)
  clusters.visible_labels = clusters.infrared_labels = np.arange(num_images) % num_clusters
  labels = (clusters.visible_labels, clusters.infrared_labels)
  clusters.association, _ = PGM.associate(config, schedule, clusters, labels)
  sets = tuple(ImageSet(np.zeros((num_images, 0, 0, 3), np.uint8), labels[0], np.arange(
      num_images) % 3, np.array([''] * num_images), modality) for modality in (VISIBLE, INFRARED))
  plan = PGM.plan_epoch(config, schedule, clusters, clusters.association, sets,
                        np.random.default_rng(1))
  memories = jax.device_get(PGM.build_memories(config, schedule, clusters,
                                               clusters.association))
  state = train_state.create_train_state(config, model, mesh)
  step = train_state.make_train_step(model, config, mesh, schedule.phase)
  inputs = train_state.put_epoch_inputs(plan, epoch, 0, mesh, lr_epoch=schedule.lr_epoch)
  before = jax.device_get(state)
  _, after, metrics = step(state, sharding.put_replicated(memories, mesh),
                           {modality: sharding.put_replicated(x, mesh)
                            for modality, x in zip((VISIBLE, INFRARED), images)}, inputs)

  # The same step composed by hand from its parts (each part jitted: run op by op, the
  # colour jitter alone compiles hundreds of small programs).
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch), 0)
  inputs_of_step = jax.jit(PGM.step_fns(config, schedule.phase).augment)(
      key, {VISIBLE: images[0][plan.streams[VISIBLE]['index'][0]],
            INFRARED: images[1][plan.streams[INFRARED]['index'][0]]}, {})
  visible_in, infrared_in = inputs_of_step[VISIBLE], inputs_of_step[INFRARED]
  forward = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  (neck, _), _ = forward({'params': before.params, 'batch_stats': before.batch_stats},
                         visible_in, infrared_in)
  f_visible, f_infrared = np.split(np.asarray(neck), [visible_in.shape[0]])
  maps = ((memories.visible_to_infrared[:num_clusters], memories.infrared_to_visible[:num_clusters])
          if schedule.stage == 2 else (None, None))
  loss, (visible, infrared) = jax.jit(pgm_losses.pgm_losses, static_argnames='hard')(
      f_visible, f_infrared, plan.streams[VISIBLE]["label"][0], plan.streams[INFRARED]["label"][0],
      (memories.visible[:num_clusters], memories.infrared[:num_clusters]), *maps,
      schedule.stage_epoch, hard=hard)
  np.testing.assert_allclose(float(metrics['total']), float(loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(after.visible)[:num_clusters], visible, atol=2e-5)
  np.testing.assert_allclose(np.asarray(after.infrared)[:num_clusters], infrared, atol=2e-5)
  if schedule.stage == 2:
    assert float(metrics['cross']) > 0
  # view B is jittered, view A is not: the two views of an image differ in colour.
  assert visible_in.shape == (16, 32, 16, 3) and infrared_in.shape == (16, 32, 16, 3)


def test_infrared_jitter_is_a_stage_1_switch():
  config = tiny_pgm_config(**{'augment.ir_jitter_stage1': True})
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 16, 3), dtype=np.uint8)
  key = jax.random.PRNGKey(3)
  views = {phase: PGM.step_fns(config, phase).augment(
      key, {VISIBLE: images, INFRARED: images}, {})[INFRARED] for phase in ((1,), (2, 0))}
  plain = pgm_augment.augment_batch(key, images, images, pgm_augment.augment.AugmentConfig
                                    .from_config(config.augment), (0.5,) * 4, None,
                                    tuple(config.data.mean), tuple(config.data.std))[1]
  np.testing.assert_array_equal(views[(2, 0)], plain)  # stage 2: no infrared jitter
  assert not np.allclose(views[(1,)], plain)


# --- the two runs, end to end ------------------------------------------------------------

TINY = {
    'data.synthetic_ids': 12, 'data.image_height': 32, 'data.image_width': 16,
    'model.width': 4, 'model.bn_groups': 2, 'sampler.instances_per_cluster': 2,
    'sampler.visible_images': 8, 'sampler.infrared_images': 8, 'sampler.steps_per_epoch': 3,
    'schedule.epochs': 3, 'schedule.stage2_start': 2, 'schedule.eval_from': 0,
    'eval.batch_size': 64, 'augment.pad': 1, 'cluster.k1': 10, 'cluster.k2': 3,
    'model.pretrained': 'none',  # the stand-in's import is tested in models_weights_test.py
}
# From random weights the tiny RegDB clusters its infrared images into one cluster.
PRETRAINED = {'model.pretrained': 'synthetic_imagenet', 'pretrain.num_ids': 4,
              'pretrain.images_per_id': 2, 'pretrain.epochs': 1, 'pretrain.batch_size': 8}


def demo_config(root, **overrides):
  config = load('pgm_demo')
  config.data.root = root
  config.pretrain.output_dir = os.path.join(root, 'pretrained')
  for dotted, value in {**TINY, **overrides}.items():
    *parents, leaf = dotted.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


@pytest.fixture(scope='module')
def uninterrupted(data_root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pgm'))
  return workdir, train.train_and_evaluate(demo_config(data_root), workdir)


def _params(workdir, config):
  abstract = train_state.abstract_train_state(config, models.build_model(config.model),
                                              sharding.make_mesh())
  state, record = checkpoint.restore(workdir, checkpoint.LATEST, abstract)
  return jax.device_get(state.params), record


@pytest.mark.slow
def test_stage_2_restarts_from_the_best_of_stage_1(uninterrupted):
  workdir, result = uninterrupted
  history = [e for e in result['history'] if e['epoch'] >= 0]
  assert [(e['stage'], 'restarted_from' in e) for e in history] == [
      (1, False), (1, False), (2, True)]
  stage1_best = max(history[:2], key=lambda e: e['headline']['mAP'])
  assert history[2]['restarted_from']['epoch'] == stage1_best['epoch']
  # Stage 2 starts its step schedule afresh and chooses its own best, whatever stage 1 reached.
  assert result['best']['epoch'] == 2
  assert result['best']['mAP'] == history[2]['headline']['mAP']
  assert history[2]['lr'] == history[0]['lr']
  assert 'match/pairs' in history[2] and 'match/pairs' not in history[1]
  report = open(os.path.join(workdir, 'report.md')).read()
  assert f'Stage 1: best mAP {stage1_best["headline"]["mAP"]:.2f}' in report


@pytest.mark.slow
def test_a_run_stopped_at_the_stage_boundary_resumes_to_the_same_end(uninterrupted, data_root,
                                                                     tmp_path):
  config = demo_config(data_root)
  workdir = str(tmp_path / 'resumed')
  train.train_and_evaluate(config, workdir, max_epochs=2)  # all of stage 1, then "a crash"
  trainer = train.Trainer(config, workdir)
  assert trainer.start_epoch == 2
  result = trainer.run()
  assert 'restarted_from' in result['history'][3]
  params_a, _ = _params(uninterrupted[0], config)
  params_b, _ = _params(workdir, config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_a, params_b)


@pytest.mark.slow
@pytest.mark.parametrize('dataset', ['sysu', 'regdb', 'llcm'])
def test_pgm_trains_and_evaluates_from_the_command_line(dataset, tmp_path):
  """configs/pgm_demo.py through main.py on each synthetic layout: both stages, each epoch
  evaluated with the layout's protocol; on SYSU-MM01 then `--mode eval` (the same code for
  every layout: tests/end_to_end_test.py runs it on LLCM)."""
  workdir, root = str(tmp_path / 'run'), str(tmp_path / 'data')
  overrides = {**TINY, **PRETRAINED, 'data.dataset': dataset, 'eval.at_start': False,
               'schedule.epochs': 2, 'schedule.stage2_start': 1, 'eval.ranklist_queries': 2,
               'pretrain.output_dir': os.path.join(root, 'pretrained')}
  if dataset == 'llcm':
    overrides['eval.train_trials'] = (0,)
  command = [sys.executable, os.path.join(REPO, 'main.py'), '--config',
             os.path.join(REPO, 'configs', 'pgm_demo.py'), '--workdir', workdir,
             f'--config.data.root={root}', *[f'--config.{k}={v}' for k, v in overrides.items()]]
  # One CPU device without XLA's backend optimisation: compiling the steps is most of it.
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=(
      '--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0'))
  trained = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert re.search(r'epoch +1/2 stage 1 .*\| R1 ', trained.stdout)
  assert 'Stage 2 starts from the best checkpoint of stage 1' in trained.stdout
  assert re.search(r'epoch +2/2 stage 2 .*pairs \d+.*\| R1 ', trained.stdout)
  if dataset != 'sysu':
    return
  evaluated = subprocess.run(command + ['--mode', 'eval'], env=env, capture_output=True,
                             text=True, timeout=900)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  written = os.listdir(os.path.join(workdir, 'eval'))
  assert any(name.endswith('.json') for name in written)
  assert 'best' in evaluated.stdout and 'latest' in evaluated.stdout


def test_a_pass_shorter_than_a_batch_stops_the_run_with_one_line():
  """The authors' loader ends with StopIteration there; the method stops every process."""
  config = tiny_pgm_config()
  schedule = PGM.schedule(config, 3)
  clusters = _clusters(2, 3)  # 2 visible clusters x 2 instances: 4 images, the batch is 8
  sets = tuple(ImageSet(np.zeros((len(labels), 0, 0, 3), np.uint8), labels, labels % 2,
                        np.array([''] * len(labels)), modality)
               for labels, modality in ((clusters.visible_labels, VISIBLE),
                                        (clusters.infrared_labels, INFRARED)))
  with pytest.raises(methods.MethodStop, match=r'epoch 4: one pass over the visible clusters '
                     r'gives 4 images .* fewer than a batch of 8.*visible_images'):
    PGM.plan_epoch(config, schedule, clusters, {}, sets, np.random.default_rng(0))
