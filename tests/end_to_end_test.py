"""The whole training loop on tiny synthetic sets: runs, resumes, stops cleanly, evaluates."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vireid_jax.runtime import checkpoint
from vireid_jax import evaluation
from vireid_jax import models
from vireid_jax.runtime import sharding
from vireid_jax import train
from vireid_jax import train_state
from vireid_jax.data import synthetic
from vireid_jax.methods.mbccm import losses

# Whole training runs, several in processes of their own: minutes; `pytest -m "not slow"`
# leaves them out.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The overrides that shrink configs/demo.py to a test-sized run; the subprocess test passes
# the same values as flags.
TINY = {
    'data.synthetic_ids': 12, 'data.image_height': 32, 'data.image_width': 16,
    'model.width': 4, 'sampler.clusters_per_step': 4, 'sampler.instances_per_cluster': 2,
    'sampler.steps_per_epoch': 3, 'schedule.epochs': 2, 'schedule.stage2_start': 1,
    'schedule.eval_every': 1, 'eval.batch_size': 64, 'augment.pad': 1,
    'cluster.k1': 10, 'cluster.k2': 3,  # 8 training ids: k1 = 30 would merge everything
    # The ImageNet stand-in of the demo, pretrained once (tiny) and shared by every run here.
    'pretrain.num_ids': 4, 'pretrain.images_per_id': 2, 'pretrain.epochs': 1,
    'pretrain.batch_size': 8,
}


def demo_config(root: str, **overrides):
  spec = importlib.util.spec_from_file_location('demo_config', os.path.join(REPO, 'configs',
                                                                           'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
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
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  result = train.train_and_evaluate(demo_config(data_root), workdir)
  return workdir, result


def _final_params(workdir, config):
  trainer_state = train_state.abstract_train_state(
      config, models.build_model(config.model), sharding.make_mesh())
  state, record = checkpoint.restore(workdir, checkpoint.LATEST, trainer_state)
  return jax.device_get(state.params), record


def test_two_epoch_run_trains_both_stages_and_reports(uninterrupted, data_root):
  workdir, result = uninterrupted
  history = result['history']
  assert [e['epoch'] for e in history] == [-1, 0, 1]  # untrained evaluation, then 2 epochs
  stage1, stage2 = history[1], history[2]
  assert (stage1['stage'], stage2['stage']) == (1, 2)
  assert stage1['loss/ma'] == 0 and stage2['loss/ma'] > 0 and stage2['loss/cc'] >= 0
  for entry in history[1:]:
    assert np.isfinite(entry['loss/total'])
    assert entry['visible/clusters'] >= 1 and entry['infrared/clusters'] >= 1
    assert set(entry['headline']) >= {'rank1', 'mAP', 'mINP'}
  for name in ('report.md', 'curves.png', 'config.json'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  assert checkpoint.latest_epoch(workdir) == 2
  best = result['best']
  assert checkpoint.latest_epoch(workdir, checkpoint.BEST) == best['epoch'] + 1
  assert best['mAP'] == max(e['headline']['mAP'] for e in history[1:])
  report = open(os.path.join(workdir, 'report.md')).read()
  assert 'untrained' in report and f'{best["mAP"]:.2f}' in report


def test_resumed_run_equals_uninterrupted_run(uninterrupted, data_root, tmp_path):
  workdir_a, result_a = uninterrupted
  workdir_b = str(tmp_path / 'resumed')
  config = demo_config(data_root)
  first = train.train_and_evaluate(config, workdir_b, max_epochs=1)  # "crashes" after epoch 1
  assert [e['epoch'] for e in first['history']] == [-1, 0]
  trainer = train.Trainer(config, workdir_b)  # a new process would do exactly this
  assert trainer.start_epoch == 1
  result_b = trainer.run()
  losses_a = [e.get('loss/total') for e in result_a['history']]
  losses_b = [e.get('loss/total') for e in result_b['history']]
  np.testing.assert_allclose(losses_b[1:], losses_a[1:], rtol=1e-5)
  params_a, _ = _final_params(workdir_a, config)
  params_b, record_b = _final_params(workdir_b, config)
  assert record_b['epoch'] == 2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_a, params_b)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(data_root, tmp_path,
                                                                 monkeypatch):
  workdir = str(tmp_path / 'nan')
  config = demo_config(data_root, **{'eval.at_start': False})
  train.train_and_evaluate(config, workdir, max_epochs=1)
  saved_before, _ = _final_params(workdir, config)

  def poisoned(*args, **kwargs):
    loss, metrics = losses.stage1_loss(*args[:7])
    return loss * np.nan, metrics

  monkeypatch.setattr(losses, 'stage2_loss', poisoned)
  with pytest.raises(train.TrainingDiverged, match=r'epoch 2 \(of 2\), step 1 \(of 3\)'):
    train.train_and_evaluate(config, workdir)
  assert checkpoint.latest_epoch(workdir) == 1
  saved_after, _ = _final_params(workdir, config)
  jax.tree.map(np.testing.assert_array_equal, saved_before, saved_after)


@pytest.mark.parametrize('policy', ['stop', 'skip'])
def test_no_clusters_stops_or_skips_as_configured(data_root, tmp_path, policy):
  # eps ~ 0: every sample is alone in its neighbourhood, so DBSCAN finds nothing.
  config = demo_config(data_root, **{'cluster.eps': 1e-9, 'cluster.on_no_clusters': policy,
                                     'eval.at_start': False, 'schedule.eval_every': 100})
  workdir = str(tmp_path / policy)
  if policy == 'stop':
    with pytest.raises(train.NoClustersStop, match='no cluster'):
      train.train_and_evaluate(config, workdir)
    assert checkpoint.latest_epoch(workdir) is None
  else:
    result = train.train_and_evaluate(config, workdir)
    assert all('skipped' in e for e in result['history'] if e['epoch'] >= 0)
    assert checkpoint.latest_epoch(workdir) == 2


def test_kill_9_mid_run_then_resume_matches_uninterrupted(uninterrupted, data_root, tmp_path):
  """A real process killed with SIGKILL after its first checkpoint resumes to the same end."""
  workdir = str(tmp_path / 'killed')
  flags = [f'--config.{k}={v}' for k, v in TINY.items()]
  command = [sys.executable, os.path.join(REPO, 'main.py'), '--config',
             os.path.join(REPO, 'configs', 'demo.py'), '--workdir', workdir,
             f'--config.data.root={data_root}',
             f'--config.pretrain.output_dir={os.path.join(data_root, "pretrained")}', *flags]
  env = dict(os.environ, PYTHONPATH=REPO)
  process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 300
  try:
    while checkpoint.latest_epoch(workdir) is None and process.poll() is None:
      assert time.time() < deadline, 'the first epoch did not finish in time'
      time.sleep(0.2)
  finally:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  completed = checkpoint.latest_epoch(workdir)
  assert completed in (1, 2)
  finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert finished.returncode == 0, finished.stderr[-2000:]
  if completed == 1:
    assert 'Resuming' in finished.stdout
  config = demo_config(data_root)
  params_killed, _ = _final_params(workdir, config)
  params_a, _ = _final_params(uninterrupted[0], config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_a, params_killed)


def test_images_fed_from_the_host_train_like_images_on_the_devices(uninterrupted, data_root,
                                                                  tmp_path):
  workdir = str(tmp_path / 'host_fed')
  config = demo_config(data_root, **{'data.images_on_device': False})
  trainer = train.Trainer(config, workdir)
  assert not trainer.images_on_device
  assert isinstance(trainer.visible_images, np.ndarray)  # stays in host memory
  result = trainer.run()
  losses = [e.get('loss/total') for e in result['history']]
  expected = [e.get('loss/total') for e in uninterrupted[1]['history']]
  np.testing.assert_allclose(losses[1:], expected[1:], rtol=1e-5)
  params_a, _ = _final_params(uninterrupted[0], config)
  params_b, _ = _final_params(workdir, config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params_a, params_b)


def test_llcm_two_epochs_then_eval_from_the_command_line(tmp_path):
  """Synthetic LLCM through main.py: one epoch per stage, then `--mode eval` on the best and
  the latest checkpoint."""
  workdir, root = str(tmp_path / 'run'), str(tmp_path / 'data')
  overrides = {**TINY, 'data.dataset': 'llcm', 'eval.at_start': False,
               'schedule.eval_every': 2, 'eval.ranklist_queries': 2,
               'pretrain.output_dir': os.path.join(root, 'pretrained')}
  command = [sys.executable, os.path.join(REPO, 'main.py'), '--config',
             os.path.join(REPO, 'configs', 'demo.py'), '--workdir', workdir,
             f'--config.data.root={root}', *[f'--config.{k}={v}' for k, v in overrides.items()]]
  # Compiling the two train steps is most of this test, so it runs on one CPU device (the
  # sharded step is tested on eight in train_test.py; partitioning it doubles the compile
  # time) without XLA's backend optimisation (it only speeds up running six tiny steps).
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=(
      '--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0'))
  trained = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert re.search(r'epoch +1/2 stage 1 ', trained.stdout)
  assert re.search(r'epoch +2/2 stage 2 .*\| R1 ', trained.stdout)
  assert checkpoint.latest_epoch(workdir) == checkpoint.latest_epoch(workdir,
                                                                     checkpoint.BEST) == 2
  assert 'LLCM infrared-to-visible, gallery draws [0]' in open(
      os.path.join(workdir, 'report.md')).read()

  evaluated = subprocess.run(command + ['--mode', 'eval'], env=env, capture_output=True,
                             text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  out = os.path.join(workdir, 'eval')
  # The best checkpoint and the latest, each with its files, and the two side by side.
  assert sorted(os.listdir(out)) == sorted(
      [f'llcm_{kind}{suffix}' for kind in ('best', 'latest')
       for suffix in ('.json', '.md', '_cmc.png', '_ranklist.png')] +
      ['llcm_best_and_latest.md'])
  with open(os.path.join(out, 'llcm_best.json')) as f:
    results = json.load(f)
  # What the synthetic set implies: every test image of the query modality is a query, every
  # gallery holds one image per (identity, camera) of the other modality.
  test_ids = synthetic.llcm_id_split(TINY['data.synthetic_ids'])['test']
  cams = {pid: synthetic.llcm_cameras(pid) for pid in test_ids}
  for name, query, gallery in (('infrared_to_visible', 'infrared', 'visible'),
                               ('visible_to_infrared', 'visible', 'infrared')):
    result = results[name]
    assert result['num_query'] == sum(len(cams[pid][query]) for pid in test_ids) * (
        synthetic.LLCM_IMAGES_PER_CAMERA)
    assert result['trials'] == list(range(10))
    assert {entry['gallery_size'] for entry in result['per_trial']} == {
        sum(len(cams[pid][gallery]) for pid in test_ids)}
    for entry in result['per_trial']:
      assert all(0 <= entry[key] <= 100 for key in evaluation.METRIC_KEYS)
      assert entry['rank1'] <= entry['rank5'] <= entry['rank10'] <= entry['rank20']
  table = open(os.path.join(out, 'llcm_best.md')).read()
  assert 'LLCM infrared-to-visible | 10 (0-9) |' in table
  assert 'LLCM visible-to-infrared | 10 (0-9) |' in table
  # Both are after epoch 2 here: the same weights, the same numbers.
  assert json.load(open(os.path.join(out, 'llcm_latest.json'))) == results
  side_by_side = open(os.path.join(out, 'llcm_best_and_latest.md')).read()
  assert 'best (epoch 2): Rank-1' in side_by_side and 'latest (epoch 2): Rank-1' in side_by_side
  assert side_by_side in evaluated.stdout  # --mode eval prints what it wrote
