"""Checkpoints: round trip, newest wins, an interrupted write is never taken for a checkpoint."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax import checkpoint


def state(scale):
  return {'params': {'w': jnp.arange(6.0).reshape(2, 3) * scale}, 'step': jnp.int32(scale)}


def test_round_trip_keeps_only_the_newest_latest(tmp_path):
  workdir = str(tmp_path)
  assert checkpoint.latest_epoch(workdir) is None
  checkpoint.save(workdir, checkpoint.LATEST, 1, state(1), {'epoch': 1, 'history': [{'a': 1}]})
  checkpoint.save(workdir, checkpoint.LATEST, 2, state(2), {'epoch': 2, 'history': []})
  assert checkpoint.latest_epoch(workdir) == 2
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'latest')) == ['2']
  restored, record = checkpoint.restore(workdir, checkpoint.LATEST, state(0))
  np.testing.assert_array_equal(restored['params']['w'], state(2)['params']['w'])
  assert record == {'epoch': 2, 'history': []}
  restored, record = checkpoint.restore_path(str(tmp_path / 'checkpoints' / 'latest' / '2'),
                                             state(0))
  assert record['epoch'] == 2


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
