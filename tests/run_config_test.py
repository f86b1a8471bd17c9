"""A changed config on an existing workdir: one line naming what differs, nothing restored,
nothing moved; fields that cannot change a checkpoint's meaning may differ."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from vireid_jax.runtime import checkpoint
from vireid_jax import config as config_lib
from vireid_jax.runtime import run_config

from end_to_end_test import REPO, TINY, demo_config

DEMO = os.path.join(REPO, 'configs', 'demo.py')


def parse_flags(*overrides):
  """configs/demo.py with `overrides` applied exactly as main.py's flags apply them."""
  argv = ['main.py', '--config', DEMO, *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def fake_run(workdir, config, epochs=(1,), kind=checkpoint.LATEST):
  """Checkpoints as training writes them (arrays + a record holding the config): only the
  record matters to the config check."""
  for epoch in epochs:
    checkpoint.save(str(workdir), kind, epoch, {'w': np.zeros((2, 3), np.float32)},
                    {'epoch': epoch, 'config': config.to_json_best_effort()})


def as_json(config):
  return json.loads(config.to_json_best_effort())


def test_differences_name_compared_fields_and_skip_free_ones():
  base = as_json(config_lib.base_config())
  saved = as_json(config_lib.base_config())
  current = as_json(config_lib.base_config())
  current['model']['width'] = 32
  current['optim']['lr_boundaries'] = [1, 2, 3]
  current['eval']['trials'] = [0]  # free: never reported
  current['data']['root'] = '/elsewhere'
  current['pretrain']['epochs'] = 3
  current['cluster']['on_no_clusters'] = 'skip'
  assert run_config.differences(saved, current, base) == [
      ('model.width', 64, 32), ('optim.lr_boundaries', [20, 50, 70], [1, 2, 3])]
  # --mode eval compares only the network and what makes the test images.
  current['data']['image_height'] = 64
  assert run_config.differences(saved, current, base, mode='eval') == [
      ('data.image_height', 288, 64), ('model.width', 64, 32)]
  # The choice of the best checkpoint is compared when training, not when evaluating.
  current = as_json(config_lib.base_config())
  current['eval']['sysu_mode'] = 'indoor'
  assert run_config.differences(saved, current, base) == [('eval.sysu_mode', 'all', 'indoor')]
  assert run_config.differences(saved, current, base, mode='eval') == []


def test_a_field_the_saved_config_lacks_counts_as_its_default():
  base = as_json(config_lib.base_config())
  saved = as_json(config_lib.base_config())
  del saved['model']['dtype']  # written before the field existed
  saved['old_section'] = {'gone': 1}  # a field removed since: not compared
  current = as_json(config_lib.base_config())
  assert run_config.differences(saved, current, base) == []
  current['model']['dtype'] = 'bfloat16'
  assert run_config.differences(saved, current, base) == [('model.dtype', 'auto', 'bfloat16')]
  current['model']['new_field'] = 2  # known neither to the saved config nor to base_config()
  found = run_config.differences(saved, current, base)
  assert found[-1] == ('model.new_field', run_config.MISSING, 2)
  message = run_config.mismatch_message('/runs/x', 'as ...', found, 'train')
  # No flag can bring back an absent field: the way back is the original config.
  assert 'model.new_field (not in config.json) -> 2' in message
  assert 'rerun with the config the run was started with' in message


def test_a_field_added_with_a_new_behaviour_counts_as_the_old_one(tmp_path):
  """An MBCCM workdir from before cluster.order clustered in the reader's order: resuming it
  with today's default ('path') is refused in one line that names the flag bringing it back."""
  workdir = str(tmp_path / 'run')
  saved = parse_flags()
  assert saved.cluster.order == 'path'  # MBCCM's default
  saved_json = as_json(saved)
  del saved_json['cluster']['order']  # written before the field existed
  base = as_json(config_lib.base_config())
  assert run_config.differences(saved_json, as_json(saved), base) == [
      ('cluster.order', 'reader', 'path')]
  checkpoint.save(workdir, checkpoint.LATEST, 1, {'w': np.zeros((2, 3), np.float32)},
                  {'epoch': 1, 'config': json.dumps(saved_json)})
  with pytest.raises(run_config.WorkdirConfigMismatch) as error:
    run_config.check_workdir_config(parse_flags(), workdir)
  assert "--config.cluster.order=reader" in str(error.value)
  run_config.check_workdir_config(parse_flags('--config.cluster.order=reader'), workdir)


def test_a_run_from_before_the_two_pass_neck_resumes_only_as_it_trained_and_evaluates_as_is():
  base = as_json(config_lib.base_config())
  saved = as_json(config_lib.base_config())
  del saved['model']['neck_two_pass']  # written before the field existed: one pass
  current = as_json(config_lib.base_config())
  assert run_config.differences(saved, current, base) == [('model.neck_two_pass', False, True)]
  # Evaluation normalises with the saved running statistics: the form does not matter there.
  assert run_config.differences(saved, current, base, mode='eval') == []
  current['model']['neck_two_pass'] = False
  assert run_config.differences(saved, current, base) == []


def test_the_suggested_flags_bring_the_saved_config_back(tmp_path):
  workdir = str(tmp_path / 'run')
  # Trained with overrides, then run again without them.
  saved = parse_flags('--config.model.width=8', '--config.optim.lr_boundaries=(1, 2, 3)',
                      '--config.data.layout=raw', '--config.model.identical_stems=False')
  fake_run(workdir, saved)
  with pytest.raises(run_config.WorkdirConfigMismatch) as error:
    run_config.check_workdir_config(parse_flags(), workdir)
  message = str(error.value)
  assert '\n' not in message and 'new --workdir' in message
  default = parse_flags()
  for field in (f'model.width 8 -> {default.model.width}', 'model.identical_stems False -> True',
                f'optim.lr_boundaries (1, 2, 3) -> {tuple(default.optim.lr_boundaries)}',
                f"data.layout 'raw' -> {default.data.layout!r}"):
    assert field in message
  suggested = shlex.split(re.search(r'saved values \((.*?)\), or', message).group(1))
  assert len(suggested) == 4
  back = parse_flags(*suggested)
  run_config.check_workdir_config(back, workdir)
  assert back.to_json_best_effort() == saved.to_json_best_effort()


def test_free_fields_pass_and_a_workdir_without_checkpoints_is_not_checked(tmp_path):
  workdir = str(tmp_path / 'run')
  fake_run(workdir, parse_flags())
  run_config.check_workdir_config(parse_flags(
      '--config.eval.trials=(0,)', '--config.eval.batch_size=7', '--config.data.root=/moved',
      '--config.data.cache_dir=/cache', '--config.log_every=1', '--config.model.pretrained=',
      '--config.pretrain.output_dir=/weights', '--config.schedule.eval_every=1'), workdir)
  with pytest.raises(run_config.WorkdirConfigMismatch):
    run_config.check_workdir_config(parse_flags('--config.seed=1'), workdir)
  run_config.check_workdir_config(parse_flags('--config.seed=1'), workdir, mode='eval')
  # Only config.json and no checkpoint (a run stopped in its first epoch): nothing to protect.
  fresh = tmp_path / 'fresh'
  fresh.mkdir()
  (fresh / 'config.json').write_text(parse_flags('--config.model.width=8').to_json_best_effort())
  run_config.check_workdir_config(parse_flags(), str(fresh))


def test_the_checkpoint_record_wins_over_config_json_and_is_its_fallback(tmp_path):
  workdir = tmp_path / 'run'
  fake_run(workdir, parse_flags(), epochs=(1, 2))
  # config.json rewritten by another run (as a run before this check could do): the newest
  # checkpoint's record still says what the arrays were written with.
  (workdir / 'config.json').write_text(parse_flags('--config.model.width=8').to_json_best_effort())
  run_config.check_workdir_config(parse_flags(), str(workdir))
  with pytest.raises(run_config.WorkdirConfigMismatch, match='checkpoint latest/2 records'):
    run_config.check_workdir_config(parse_flags('--config.model.width=8'), str(workdir))
  # No readable record: config.json is compared.
  for epoch in (1, 2):
    record = workdir / 'checkpoints' / 'latest' / str(epoch) / 'record'
    for name in os.listdir(record):
      (record / name).write_text('{not json')
  with pytest.raises(run_config.WorkdirConfigMismatch, match='config.json records'):
    run_config.check_workdir_config(parse_flags(), str(workdir))


def test_eval_of_a_checkpoint_folder_compares_that_checkpoint(tmp_path):
  fake_run(tmp_path / 'a', parse_flags('--config.model.width=8'), kind=checkpoint.BEST,
           epochs=(3,))
  folder = str(tmp_path / 'a' / 'checkpoints' / 'best' / '3')
  run_config.check_workdir_config(
      parse_flags('--config.model.width=8', f'--config.eval.checkpoint={folder}'),
      str(tmp_path / 'elsewhere'), mode='eval')
  with pytest.raises(run_config.WorkdirConfigMismatch, match='best/3 records'):
    run_config.check_workdir_config(parse_flags(f'--config.eval.checkpoint={folder}'),
                                    str(tmp_path / 'elsewhere'), mode='eval')


def run_main(workdir, data_root, *extra):
  args = ['--config', DEMO, '--workdir', str(workdir), f'--config.data.root={data_root}',
          *[f'--config.{k}={v}' for k, v in TINY.items()], *extra]
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args],
                        capture_output=True, text=True, timeout=300, cwd=REPO)


def test_main_stops_with_one_line_before_restoring_and_moves_nothing(tmp_path):
  workdir, data_root = tmp_path / 'run', str(tmp_path / 'data')
  fake_run(workdir, demo_config(data_root), epochs=(1, 2))
  fake_run(workdir, demo_config(data_root), epochs=(2,), kind=checkpoint.BEST)
  before = sorted(os.listdir(workdir / 'checkpoints' / 'latest'))
  for mode in ('train', 'eval'):
    result = run_main(workdir, data_root, '--config.model.width=8', f'--mode={mode}')
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f'error: {workdir} ') and 'model.width 4 -> 8' in lines[0]
    assert 'Either rerun with the saved values (--config.model.width=4), or choose a new ' \
           '--workdir' in lines[0]
  assert sorted(os.listdir(workdir / 'checkpoints' / 'latest')) == before == ['1', '2']
  assert os.listdir(workdir / 'checkpoints' / 'best') == ['2']
  assert not os.path.exists(workdir / 'config.json')  # nothing ran that would write it
