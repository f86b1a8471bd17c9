"""One run over several processes means what one process means: local CPU processes stand in
for the hosts of a pod (2 processes x 2 devices against 1 process x 4 devices).

Every run goes through `vireid_jax.launch`, the launcher docs/multihost.md shows, with the tiny demo
config of end_to_end_test.py. The runs share the session's compilation cache (conftest.py), so
only the first run of each process count compiles.
"""

import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from vireid_jax.runtime import checkpoint
from vireid_jax import launch
from vireid_jax import models
from vireid_jax.runtime import sharding
from vireid_jax import train_state

from end_to_end_test import REPO, TINY, demo_config

# Whole training runs, several in processes of their own: minutes; `pytest -m "not slow"`
# leaves them out.
pytestmark = pytest.mark.slow

HEARTBEAT_SECONDS = 10
DEADLINE_SECONDS = 600  # per run; a run takes well under a minute on a 2-core machine
OVERRIDES = {**TINY, 'save_pseudo_labels': True, 'eval.at_start': False}


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """The synthetic data root every run of this module uses, and the runs' folder."""
  root = tmp_path_factory.mktemp('multihost')
  return {'data': str(root / 'data'), 'root': root}


def start(shared, workdir, processes, **overrides):
  args = ['--config', os.path.join(REPO, 'configs', 'demo.py'), '--workdir', str(workdir),
          f'--config.data.root={shared["data"]}',
          f'--config.pretrain.output_dir={os.path.join(shared["data"], "pretrained")}',
          f'--heartbeat_timeout={HEARTBEAT_SECONDS}']
  args += [f'--config.{k}={v}' for k, v in {**OVERRIDES, **overrides}.items()]
  return launch.start(args, processes, cpu_devices=4 // processes)


def run(shared, workdir, processes, **overrides) -> launch.LocalRun:
  local = start(shared, workdir, processes, **overrides)
  codes = local.wait(DEADLINE_SECONDS)
  assert codes == [0] * processes, '\n'.join(local.text(i)[-3000:] for i in range(processes))
  return local


def final_state(workdir):
  config = demo_config('unused', **OVERRIDES)
  abstract = train_state.abstract_train_state(config, models.build_model(config.model),
                                              sharding.make_mesh())
  state, record = checkpoint.restore(str(workdir), checkpoint.LATEST, abstract)
  return jax.device_get(state), record


def assert_same_run(workdir_a, workdir_b):
  """Parameters, per-epoch losses and cluster statistics, pseudo labels and evaluations agree.

  Reduction order differs with the process count, so floats agree to a tolerance; the pseudo
  labels and the matches agree exactly."""
  (state_a, record_a), (state_b, record_b) = final_state(workdir_a), final_state(workdir_b)
  assert record_a['epoch'] == record_b['epoch'] == OVERRIDES['schedule.epochs']
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               state_a.params, state_b.params)
  for entry_a, entry_b in zip(record_a['history'], record_b['history'], strict=True):
    numbers = sorted(k for k in entry_a if k.startswith(('loss/', 'visible/', 'infrared/',
                                                         'match/')))
    assert numbers and numbers == sorted(k for k in entry_b if k.startswith(
        ('loss/', 'visible/', 'infrared/', 'match/')))
    np.testing.assert_allclose([entry_a[k] for k in numbers], [entry_b[k] for k in numbers],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(list(entry_a['headline'].values()),
                               list(entry_b['headline'].values()), atol=1e-3)
  for epoch in range(1, OVERRIDES['schedule.epochs'] + 1):
    name = f'epoch_{epoch:03d}.npz'
    with np.load(os.path.join(workdir_a, 'pseudo_labels', name)) as a, \
         np.load(os.path.join(workdir_b, 'pseudo_labels', name)) as b:
      for key in ('visible', 'infrared', 'match_mask'):
        np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture(scope='module')
def two_processes(shared):
  """The first run of the module: its process 0 also generates and prepares the dataset."""
  workdir = shared['root'] / 'two_processes'
  return workdir, run(shared, workdir, processes=2)


@pytest.fixture(scope='module')
def one_process(shared):
  workdir = shared['root'] / 'one_process'
  run(shared, workdir, processes=1)
  return workdir


@pytest.fixture(scope='module')
def killed_after_epoch_1(shared):
  """A two-process run killed (SIGKILL, both) right after its first checkpoint; tests resume
  copies of its workdir."""
  workdir = shared['root'] / 'killed'
  local = start(shared, workdir, processes=2)
  deadline = time.monotonic() + DEADLINE_SECONDS
  while checkpoint.latest_epoch(str(workdir)) is None:
    assert all(p.poll() is None for p in local.processes), local.text(0)[-3000:]
    assert time.monotonic() < deadline, 'the first epoch did not finish in time'
    time.sleep(0.1)
  local.kill_all()
  assert checkpoint.latest_epoch(str(workdir)) == 1  # epoch 2 takes seconds; it cannot be done
  return workdir


def test_two_processes_equal_one_process(two_processes, one_process):
  workdir, local = two_processes
  assert_same_run(one_process, workdir)
  assert local.text(0).count('Preparing SYSU-MM01') == 1  # process 0 wrote the cache alone
  assert 'Preparing' not in local.text(1)
  assert 'vireid_jax: 2 process(es) (this is 0), 2 local / 4 global devices' in local.text(0)
  # Process 1 neither prints the run's lines nor writes its files.
  assert 'epoch' not in local.text(1) and 'untrained' not in local.text(1)
  metrics = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert len(metrics) == OVERRIDES['schedule.epochs']
  assert os.listdir(workdir / 'tensorboard') and (workdir / 'report.md').exists()
  assert not (workdir / 'run.lock').exists()  # released at the end


@pytest.mark.parametrize('processes', [2, 1])
def test_killed_run_resumes_with_any_process_count(shared, one_process, killed_after_epoch_1,
                                                  tmp_path, processes):
  workdir = tmp_path / 'resumed'
  shutil.copytree(killed_after_epoch_1, workdir)
  resumed = run(shared, workdir, processes=processes)
  assert 'Taking over' in resumed.text(0)  # the killed run's lock was left behind
  assert 'Resuming' in resumed.text(0)
  assert_same_run(one_process, workdir)


def test_sigterm_to_one_process_stops_every_process_at_one_step(shared, one_process,
                                                               killed_after_epoch_1, tmp_path):
  workdir = tmp_path / 'preempted'
  shutil.copytree(killed_after_epoch_1, workdir)
  local = start(shared, workdir, processes=2)
  assert local.wait_for(0, 'Resuming', DEADLINE_SECONDS), local.text(0)[-3000:]
  local.send(1, signal.SIGTERM)  # a preemption notice to one host only
  codes = local.wait(DEADLINE_SECONDS)
  assert codes == [143, 143], (codes, local.text(0)[-3000:], local.text(1)[-3000:])
  assert ('stopped by SIGTERM during epoch 2; the checkpoint after epoch 1 is intact; rerun '
          'the same command to resume') in local.text(0)
  assert 'Traceback' not in local.text(0) + local.text(1)
  assert checkpoint.latest_epoch(str(workdir)) == 1
  run(shared, workdir, processes=2)
  assert_same_run(one_process, workdir)


def test_a_killed_process_ends_the_others_within_the_heartbeat_timeout(shared, tmp_path):
  local = start(shared, tmp_path / 'orphaned', processes=2, **{'schedule.epochs': 50})
  assert local.wait_for(0, 'epoch   1/50', DEADLINE_SECONDS), local.text(0)[-3000:]
  os.killpg(local.processes[1].pid, signal.SIGKILL)
  killed_at = time.monotonic()
  codes = local.wait(timeout=HEARTBEAT_SECONDS + 60, grace=HEARTBEAT_SECONDS + 60)
  took = time.monotonic() - killed_at
  assert codes[0] not in (None, 0), f'process 0 did not stop by itself: {codes}'
  assert took < HEARTBEAT_SECONDS + 60
  assert 'another process' in local.text(0) or 'another task' in local.text(0)
