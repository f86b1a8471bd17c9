"""The command line: bad input ends with one clear line and exit code 1, not a traceback."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args],
                        capture_output=True, text=True, timeout=120, cwd=REPO)


def test_mistyped_config_field_is_named_with_a_suggestion():
  result = run_main('--config', 'configs/sysu.py', '--workdir', '/tmp/unused',
                    '--config.data.rooot=/x')
  assert result.returncode == 1
  assert 'rooot' in result.stderr and 'Did you mean "root"' in result.stderr
  assert 'Traceback' not in result.stderr


def test_missing_dataset_names_the_path_and_the_layout(tmp_path):
  missing = str(tmp_path / 'nowhere')
  result = run_main('--config', 'configs/sysu.py', '--workdir', str(tmp_path / 'run'),
                    f'--config.data.root={missing}')
  assert result.returncode == 1
  assert missing in result.stderr and 'cam1..cam6' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_impossible_value_is_rejected_before_anything_runs(tmp_path):
  result = run_main('--config', 'configs/regdb.py', '--workdir', str(tmp_path),
                    '--config.data.root=/x', '--config.data.trial=11')
  assert result.returncode == 1 and 'RegDB trials are 1..10' in result.stderr
