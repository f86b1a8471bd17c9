"""The command line: bad input ends with one clear line and exit code 1, not a traceback."""

import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, env=None):
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args],
                        capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def offline(tmp_path):
  """(environment, URL): an empty torch.hub cache and a weights URL where nothing listens."""
  env = {k: v for k, v in os.environ.items() if k not in ('TORCH_HOME', 'XDG_CACHE_HOME')}
  env['HOME'] = str(tmp_path / 'home')
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return env, f'http://127.0.0.1:{port}/models/resnet50-0676ba61.pth'


def test_mistyped_config_field_is_named_with_a_suggestion():
  result = run_main('--config', 'configs/sysu.py', '--workdir', '/tmp/unused',
                    '--config.data.rooot=/x')
  assert result.returncode == 1
  assert 'rooot' in result.stderr and 'Did you mean "root"' in result.stderr
  assert 'Traceback' not in result.stderr


def test_missing_dataset_names_the_path_and_the_layout(tmp_path):
  missing = str(tmp_path / 'nowhere')
  result = run_main('--config', 'configs/sysu.py', '--workdir', str(tmp_path / 'run'),
                    f'--config.data.root={missing}', '--config.model.pretrained=none')
  assert result.returncode == 1
  assert missing in result.stderr and 'cam1..cam6' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_impossible_value_is_rejected_before_anything_runs(tmp_path):
  result = run_main('--config', 'configs/regdb.py', '--workdir', str(tmp_path),
                    '--config.data.root=/x', '--config.data.trial=11')
  assert result.returncode == 1 and 'RegDB trials are 1..10' in result.stderr


def test_paper_config_without_reachable_weights_stops_at_once_before_the_data(tmp_path):
  env, url = offline(tmp_path)
  data = tmp_path / 'data'
  data.mkdir()  # empty: preparing it would fail with the dataset's own error
  start = time.monotonic()
  result = run_main('--config', 'configs/sysu.py', '--workdir', str(tmp_path / 'run'),
                    f'--config.data.root={data}', f'--config.model.imagenet_url={url}', env=env)
  assert result.returncode == 1 and time.monotonic() - start < 60
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  folder = os.path.join(env['HOME'], '.cache', 'torch', 'hub', 'checkpoints')
  assert len(errors) == 1 and 'Traceback' not in result.stderr
  for part in (url, folder, '--config.model.pretrained=/path/to/resnet50.pth',
               '--config.model.pretrained=none'):
    assert part in errors[0], part
  assert 'cam1..cam6' not in result.stderr  # no data was looked at
  assert os.listdir(data) == [] and not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_a_resumed_run_does_not_ask_for_the_imagenet_weights(tmp_path):
  """Its checkpoint holds its weights: it gets past them to the data (missing here)."""
  env, url = offline(tmp_path)
  (tmp_path / 'run' / 'checkpoints' / 'latest' / '1').mkdir(parents=True)
  result = run_main('--config', 'configs/sysu.py', '--workdir', str(tmp_path / 'run'),
                    f'--config.data.root={tmp_path / "nowhere"}',
                    f'--config.model.imagenet_url={url}', env=env)
  assert result.returncode == 1 and 'cam1..cam6' in result.stderr
  assert url not in result.stderr
