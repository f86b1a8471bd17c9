"""Checkpoints: round trip, newest wins, an interrupted write is never taken for a checkpoint."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax.runtime import checkpoint


def state(scale):
  return {'params': {'w': jnp.arange(6.0).reshape(2, 3) * scale}, 'step': jnp.int32(scale)}


def test_round_trip_keeps_the_two_newest_latest(tmp_path):
  workdir = str(tmp_path)
  assert checkpoint.latest_epoch(workdir) is None
  checkpoint.save(workdir, checkpoint.LATEST, 1, state(1), {'epoch': 1, 'history': [{'a': 1}]})
  checkpoint.save(workdir, checkpoint.LATEST, 3, state(3), {'epoch': 3, 'history': []})
  checkpoint.save(workdir, checkpoint.LATEST, 2, state(2), {'epoch': 2, 'history': []})
  assert checkpoint.latest_epoch(workdir) == 3
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'latest')) == ['2', '3']
  checkpoint.save(workdir, checkpoint.LATEST, 4, state(2), {'epoch': 4, 'history': []})
  assert checkpoint.epochs(workdir) == [3, 4]
  restored, record = checkpoint.restore(workdir, checkpoint.LATEST, state(0), epoch=3)
  np.testing.assert_array_equal(restored['params']['w'], state(3)['params']['w'])
  assert record == {'epoch': 3, 'history': []}
  restored, record = checkpoint.restore_path(str(tmp_path / 'checkpoints' / 'latest' / '4'),
                                             state(0))
  assert record['epoch'] == 4


def test_an_unfinished_write_is_ignored(tmp_path):
  workdir = str(tmp_path)
  checkpoint.save(workdir, checkpoint.LATEST, 1, state(1), {'epoch': 1})
  # What a process killed mid-save leaves: orbax's temporary folder, never renamed.
  os.makedirs(tmp_path / 'checkpoints' / 'latest' / '2.orbax-checkpoint-tmp-1234' / 'state')
  assert checkpoint.latest_epoch(workdir) == 1
  restored, record = checkpoint.restore(workdir, checkpoint.LATEST, state(0))
  assert record['epoch'] == 1 and int(restored['step']) == 1


def test_missing_checkpoint_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match='train first'):
    checkpoint.restore(str(tmp_path), checkpoint.BEST, state(0))
  with pytest.raises(FileNotFoundError, match='not a checkpoint directory'):
    checkpoint.restore_path(str(tmp_path / 'somewhere'), state(0))
