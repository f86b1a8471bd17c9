"""What goes wrong around checkpoints, and what the user sees: a damaged checkpoint, a full
disk, two runs on one workdir, Ctrl-C. Nothing is lost, and each case ends in one line."""

import errno
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vireid_jax.runtime import checkpoint
from vireid_jax import launch
from vireid_jax import models
from vireid_jax.runtime import run_lock
from vireid_jax.runtime import sharding
from vireid_jax import train
from vireid_jax import train_state

from end_to_end_test import REPO, TINY, demo_config

# Whole training runs, several in processes of their own: minutes; `pytest -m "not slow"`
# leaves them out.
pytestmark = pytest.mark.slow


def tree(scale):
  # Large enough to be stored apart from OCDBT's index (small values are inlined in it).
  return {'params': {'w': np.arange(60000.0, dtype=np.float32).reshape(200, 300) * scale}}


def truncate_data(workdir, kind, epoch):
  """Cuts the largest array file of a checkpoint in half (bit rot, a half-copied folder)."""
  data = os.path.join(workdir, 'checkpoints', kind, str(epoch), 'state', 'ocdbt.process_0', 'd')
  largest = max((os.path.join(data, name) for name in os.listdir(data)), key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
  workdir = str(tmp_path)
  for epoch in (1, 2):
    checkpoint.save(workdir, checkpoint.LATEST, epoch, tree(epoch), {'epoch': epoch})
  truncate_data(workdir, checkpoint.LATEST, 2)
  said = []
  state, record, kind = checkpoint.restore_newest_readable(workdir, tree(0), say=said.append)
  assert (record, kind) == ({'epoch': 1}, checkpoint.LATEST)
  np.testing.assert_array_equal(state['params']['w'], tree(1)['params']['w'])
  assert len(said) == 1 and 'latest/2 cannot be read' in said[0] and 'trying latest/1' in said[0]
  # Moved aside (kept for inspection), so the run can write epoch 2 again.
  assert checkpoint.epochs(workdir) == [1]
  assert os.path.isdir(tmp_path / 'checkpoints' / 'latest' / '2.unreadable')
  checkpoint.save(workdir, checkpoint.LATEST, 2, tree(5), {'epoch': 2})
  assert checkpoint.epochs(workdir) == [1, 2]


def test_no_latest_readable_falls_back_to_best_and_none_readable_stops(tmp_path):
  workdir = str(tmp_path)
  checkpoint.save(workdir, checkpoint.BEST, 1, tree(1), {'epoch': 1})
  checkpoint.save(workdir, checkpoint.LATEST, 2, tree(2), {'epoch': 2})
  truncate_data(workdir, checkpoint.LATEST, 2)
  said = []
  state, record, kind = checkpoint.restore_newest_readable(workdir, tree(0), say=said.append)
  assert (record['epoch'], kind) == (1, checkpoint.BEST)
  assert 'trying best/1' in said[0] and 'Resuming from the best checkpoint' in said[1]

  truncate_data(workdir, checkpoint.BEST, 1)
  checkpoint.save(workdir, checkpoint.LATEST, 2, tree(2), {'epoch': 2})
  truncate_data(workdir, checkpoint.LATEST, 2)
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.restore_newest_readable(workdir, tree(0), say=lambda line: None)
  message = str(error.value)
  assert 'latest/2' in message and 'best/1' in message and 'new --workdir' in message
  assert '\n' not in message
  assert checkpoint.epochs(workdir) == [2] and checkpoint.epochs(workdir, checkpoint.BEST) == [1]


def test_a_checkpoint_that_does_not_fit_is_never_called_damaged_nor_moved(tmp_path):
  workdir = str(tmp_path)
  for epoch in (1, 2):
    checkpoint.save(workdir, checkpoint.LATEST, epoch, tree(epoch), {'epoch': epoch})
  checkpoint.save(workdir, checkpoint.BEST, 2, tree(2), {'epoch': 2})
  wider = {'params': {'w': np.zeros((200, 301), np.float32)}}
  extra = {'params': {'w': np.zeros((200, 300), np.float32), 'b': np.zeros(3, np.float32)}}
  for target, difference in (
      (wider, 'params/w: stored (200, 300), this config (200, 301)'),
      (extra, 'params/b: not in the checkpoint')):
    said = []
    with pytest.raises(checkpoint.CheckpointMismatch) as error:
      checkpoint.restore_newest_readable(workdir, target, say=said.append)
    message = str(error.value)
    assert difference in message and 'latest/2' in message and '\n' not in message
    assert 'written with another config' in message and 'left as it is' in message
    assert said == []  # never "cannot be read"
    assert checkpoint.epochs(workdir) == [1, 2]
    assert checkpoint.epochs(workdir, checkpoint.BEST) == [2]
    assert sorted(os.listdir(tmp_path / 'checkpoints' / 'latest')) == ['1', '2']
  state, record = checkpoint.restore(workdir, checkpoint.LATEST, tree(0))  # intact
  np.testing.assert_array_equal(state['params']['w'], tree(2)['params']['w'])


def test_checkpoints_newer_than_the_resumed_epoch_are_set_aside(tmp_path):
  workdir = str(tmp_path)
  for kind, epoch in ((checkpoint.LATEST, 1), (checkpoint.LATEST, 2), (checkpoint.BEST, 2)):
    checkpoint.save(workdir, kind, epoch, tree(epoch), {'epoch': epoch})
  checkpoint.set_aside_after(workdir, 1)  # a run resumed from latest/1 trains epoch 2 again
  assert checkpoint.epochs(workdir) == [1] and checkpoint.epochs(workdir, checkpoint.BEST) == []
  for kind in ('latest', 'best'):
    assert os.path.isdir(tmp_path / 'checkpoints' / kind / '2.superseded')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def final_params(workdir, config):
  abstract = train_state.abstract_train_state(config, models.build_model(config.model),
                                              sharding.make_mesh())
  state, _ = checkpoint.restore(workdir, checkpoint.LATEST, abstract)
  return jax.device_get(state.params)


def test_a_full_disk_stops_with_one_line_and_the_run_resumes(data_root, tmp_path, monkeypatch):
  config = demo_config(data_root, **{'eval.at_start': False})
  workdir = str(tmp_path / 'full')
  train.train_and_evaluate(config, workdir, max_epochs=1)
  after_epoch_1 = final_params(workdir, config)
  real_save = ocp.CheckpointManager.save

  def disk_full(manager, step, *args, **kwargs):
    # What orbax leaves when the disk fills mid-write: its temporary folder, then the error.
    os.makedirs(os.path.join(manager.directory, f'{step}.orbax-checkpoint-tmp-123'))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(manager.directory))

  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full)
  with pytest.raises(checkpoint.CheckpointError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert 'could not write checkpoint latest/2' in message and 'No space left on device' in message
  assert 'latest/1) is intact' in message and 'run the same command to resume' in message
  # `latest` is written before `best`: never a best newer than every latest.
  assert checkpoint.latest_epoch(workdir, checkpoint.BEST) == 1
  jax.tree.map(np.testing.assert_array_equal, after_epoch_1, final_params(workdir, config))

  monkeypatch.setattr(ocp.CheckpointManager, 'save', real_save)
  result = train.train_and_evaluate(config, workdir)  # space freed: the same command resumes
  assert [e['epoch'] for e in result['history']] == [0, 1]
  assert checkpoint.epochs(workdir) == [1, 2]
  assert not [p for p in os.listdir(os.path.join(workdir, 'checkpoints', 'latest'))
              if 'tmp' in p]  # the failed save's leftovers are gone


def test_a_missing_best_of_the_resumed_epoch_is_written_again(data_root, tmp_path):
  config = demo_config(data_root, **{'eval.at_start': False})
  workdir = str(tmp_path / 'best')
  train.train_and_evaluate(config, workdir, max_epochs=1)  # epoch 1 is always the best so far
  best = os.path.join(workdir, 'checkpoints', 'best', '1')
  os.rename(best, best + '-removed')  # as if the run died between `latest` and `best`
  trainer = train.Trainer(config, workdir)
  assert trainer.start_epoch == 1 and checkpoint.latest_epoch(workdir, checkpoint.BEST) == 1


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_runs_lock_taken_over(
    data_root, tmp_path, capsys):
  workdir = str(tmp_path / 'locked')
  held = run_lock.acquire(workdir)  # a live run: this very process
  config = demo_config(data_root)
  with pytest.raises(run_lock.WorkdirLocked, match=f'process {os.getpid()}') as error:
    train.train_and_evaluate(config, workdir)
  assert 'in use by another run' in str(error.value) and held['host'] in str(error.value)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  run_lock.release(workdir, held)

  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()  # its process id now names no process
  with open(os.path.join(workdir, run_lock.LOCK_NAME), 'w') as f:
    json.dump({'host': held['host'], 'pid': gone.pid, 'started': 'earlier'}, f)
  taken = run_lock.acquire(workdir)
  assert taken['pid'] == os.getpid()
  assert f'process {gone.pid}) is gone' in capsys.readouterr().out
  run_lock.release(workdir, taken)
  assert not os.path.exists(os.path.join(workdir, run_lock.LOCK_NAME))


def main_args(workdir, data_root, *extra):
  return ['--config', os.path.join(REPO, 'configs', 'demo.py'), '--workdir', str(workdir),
          f'--config.data.root={data_root}',
          f'--config.pretrain.output_dir={os.path.join(data_root, "pretrained")}',
          *[f'--config.{k}={v}' for k, v in TINY.items()], *extra]


def test_ctrl_c_stops_at_a_step_boundary_with_exit_130_and_the_run_resumes(data_root, tmp_path):
  workdir = tmp_path / 'interrupted'
  args = main_args(workdir, data_root, '--config.sampler.steps_per_epoch=40')
  local = launch.start(args, num_processes=1)
  assert local.wait_for(0, 'epoch   1/2', 600), local.text(0)[-3000:]
  local.send(0, signal.SIGINT)
  assert local.wait(600) == [130]
  output = local.text(0)
  assert ('interrupted (Ctrl-C) during epoch 2; the checkpoint after epoch 1 is intact; rerun '
          'the same command to resume.') in output
  for noise in ('Traceback', 'Event loop is closed', 'asyncio'):
    assert noise not in output
  assert checkpoint.latest_epoch(str(workdir)) == 1
  assert not os.path.exists(workdir / run_lock.LOCK_NAME)  # released on the way out
  resumed = launch.start(args, num_processes=1)
  assert resumed.wait(600) == [0], resumed.text(0)[-3000:]
  assert 'Resuming' in resumed.text(0) and checkpoint.latest_epoch(str(workdir)) == 2


def test_verbosity_1_keeps_the_traceback_for_developers(tmp_path):
  args = ['--config', os.path.join(REPO, 'configs', 'sysu.py'), '--workdir', str(tmp_path),
          f'--config.data.root={tmp_path / "nowhere"}', '--config.model.pretrained=none']
  quiet = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args],
                         capture_output=True, text=True, timeout=120)
  loud = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args,
                         '--verbosity=1'], capture_output=True, text=True, timeout=120)
  assert quiet.returncode == loud.returncode == 1
  assert 'Traceback' not in quiet.stderr and 'Traceback' in loud.stderr
  assert 'cam1..cam6' in quiet.stderr and 'cam1..cam6' in loud.stderr
