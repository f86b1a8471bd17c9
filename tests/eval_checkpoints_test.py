"""`--mode eval` reports the best checkpoint (chosen on the test set during training) and the
latest side by side, each from its own weights."""

import json
import os

import jax
import pytest

from vireid_jax.runtime import checkpoint
from vireid_jax.evaluation import driver as evaluate
from vireid_jax import models
from vireid_jax import train_state

from end_to_end_test import demo_config


def write_checkpoint(workdir, config, kind, epoch, seed):
  """A checkpoint of untrained weights drawn with `seed`, recorded as training records it."""
  state = train_state.init_train_state(config, models.build_model(config.model),
                                       jax.random.PRNGKey(seed))
  record = {'epoch': epoch, 'history': [], 'config': config.to_json_best_effort(),
            'best': {'mAP': 1.0, 'rank1': 1.0, 'epoch': epoch - 1}}
  checkpoint.save(workdir, kind, epoch, jax.device_get(state), record)


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('data'))
  workdir = str(tmp_path_factory.mktemp('run'))
  config = demo_config(root, **{'eval.trials': (0, 1), 'eval.ranklist_queries': 2})
  write_checkpoint(workdir, config, checkpoint.BEST, 1, seed=1)
  write_checkpoint(workdir, config, checkpoint.LATEST, 2, seed=2)
  return workdir, config, evaluate.run_eval(config, workdir)


def test_best_and_latest_side_by_side_with_what_best_means(evaluated):
  workdir, config, text = evaluated
  out = os.path.join(workdir, 'eval')
  assert sorted(os.listdir(out)) == sorted(
      [f'sysu_{kind}{suffix}' for kind in ('best', 'latest')
       for suffix in ('.json', '.md', '_cmc.png', '_ranklist.png')] +
      ['sysu_best_and_latest.md'])
  table = open(os.path.join(out, 'sysu_best_and_latest.md')).read()
  assert table in text
  assert table.splitlines()[0] == ('| Setting | Trials | best (epoch 1): Rank-1 | mAP | mINP | '
                                   'latest (epoch 2): Rank-1 | mAP | mINP |')
  assert 'the best is chosen on test data' in table
  assert f'latest: after epoch 2 of {config.schedule.epochs} (the last)' in table
  # Each column holds its own checkpoint's results (as its own files have them).
  results = {kind: json.load(open(os.path.join(out, f'sysu_{kind}.json')))
             for kind in ('best', 'latest')}
  assert results['best'] != results['latest']  # other weights, other numbers
  for name, result in results['best'].items():
    row, = [line for line in table.splitlines()
            if line.startswith(f'| SYSU-MM01 {result["mode"]}-search ') and
            (' single-shot |' if result['shots'] == 1 else ' multi-shot |') in line]
    cells = [cell.strip() for cell in row.strip('|').split('|')]
    for column, kind in ((2, 'best'), (5, 'latest')):
      mean, std = results[kind][name]['mean'], results[kind][name]['std']
      assert cells[column:column + 3] == [f'{mean[k]:.2f} ± {std[k]:.2f}'
                                          for k in ('rank1', 'mAP', 'mINP')]


def test_one_checkpoint_alone_as_before(evaluated, tmp_path):
  workdir, config, _ = evaluated
  config = config.copy_and_resolve_references()
  config.eval.checkpoint = 'latest'
  text = evaluate.run_eval(config, workdir)
  assert text.startswith('checkpoint: latest (after epoch 2)\nlatest: after epoch 2 of ')
  with open(os.path.join(workdir, 'eval', 'sysu_latest.md')) as f:
    assert f.read() in text
