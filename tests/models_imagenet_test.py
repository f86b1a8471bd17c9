"""torchvision's ImageNet weights: found in torch.hub's cache, downloaded into it, or one line.

Downloads are served by an HTTP server on 127.0.0.1 in a thread; an offline machine is a URL on
a port nobody listens on. Nothing here reaches the network.
"""

import hashlib
import http.server
import io
import os
import socket
import threading
import time

import ml_collections
import numpy as np
import pytest

from vireid_jax import config as config_lib
from vireid_jax.models import initial_weights
from vireid_jax.runtime import multihost
from vireid_jax.models import imagenet
from vireid_jax.models import torch_pickle

torch = pytest.importorskip('torch', reason='torch writes the served files and checks the cache')

NAMES = imagenet.TORCHVISION_RESNET50_FILES


@pytest.fixture
def home(tmp_path, monkeypatch):
  """An empty home: no TORCH_HOME, no XDG_CACHE_HOME, so torch.hub's cache is in it."""
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.delenv('TORCH_HOME', raising=False)
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  return tmp_path / 'home'


def closed_port_url(name='resnet50-0676ba61.pth') -> str:
  """A URL on 127.0.0.1 where nothing listens: connecting fails at once, as offline."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/models/{name}'


def imagenet_config(url: str) -> ml_collections.ConfigDict:
  config = config_lib.base_config()  # ResNet-50, pretrained = 'imagenet'
  config.model.imagenet_url = url
  return config


def torch_saved() -> bytes:
  buffer = io.BytesIO()
  torch.save({'conv1.weight': torch.arange(6.0).reshape(1, 1, 2, 3)}, buffer)
  return buffer.getvalue()


class _Server(http.server.ThreadingHTTPServer):
  files: dict  # path -> (body, Content-Length sent)


class _Handler(http.server.BaseHTTPRequestHandler):

  def do_GET(self):  # pylint: disable=invalid-name
    if self.path not in self.server.files:
      self.send_error(404)
      return
    body, length = self.server.files[self.path]
    self.send_response(200)
    self.send_header('Content-Length', str(length))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    del args


@pytest.fixture
def server():
  """(base URL, files): files['/x.pth'] = (body, content_length) serves body at base + '/x.pth'."""
  httpd = _Server(('127.0.0.1', 0), _Handler)
  httpd.files = {}
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}', httpd.files
  httpd.shutdown()
  httpd.server_close()


# --------------------------------------------------------------------------------------------
# Where torch.hub keeps its files


@pytest.mark.parametrize('variables', [{}, {'XDG_CACHE_HOME': 'xdg'},
                                       {'TORCH_HOME': 'th', 'XDG_CACHE_HOME': 'xdg'}])
def test_cache_folder_is_torch_hubs(home, monkeypatch, variables):
  for name, folder in variables.items():
    monkeypatch.setenv(name, str(home.parent / folder))
  assert imagenet.hub_checkpoints_dir() == os.path.join(torch.hub.get_dir(), 'checkpoints')
  expected = {'TORCH_HOME': 'th/hub/checkpoints', 'XDG_CACHE_HOME': 'xdg/torch/hub/checkpoints'}
  chosen = next((expected[k] for k in ('TORCH_HOME', 'XDG_CACHE_HOME') if k in variables),
                None)
  want = (str(home.parent / chosen) if chosen
          else os.path.join(str(home), '.cache/torch/hub/checkpoints'))
  assert imagenet.hub_checkpoints_dir() == want


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('variable', ['TORCH_HOME', 'XDG_CACHE_HOME', None])
def test_a_torchvision_file_in_the_cache_is_found_and_named(home, monkeypatch, name, variable):
  if variable:
    monkeypatch.setenv(variable, str(home.parent / 'elsewhere'))
  folder = os.path.join(torch.hub.get_dir(), 'checkpoints')  # where torchvision would put it
  os.makedirs(folder)
  path = os.path.join(folder, name)
  with open(path, 'wb') as f:
    f.write(torch_saved())
  config = imagenet_config(closed_port_url())  # no download can happen
  assert initial_weights.resolve(config) == path
  assert initial_weights.describe(path) == (
      f'weights: ImageNet ResNet-50 (torchvision IMAGENET1K_V1) from {path}')


# --------------------------------------------------------------------------------------------
# Downloading


def test_download_lands_in_the_cache_checked_and_complete(home, server):
  base, files = server
  body = torch_saved()
  name = f'resnet50-{hashlib.sha256(body).hexdigest()[:8]}.pth'
  files[f'/models/{name}'] = (body, len(body))
  config = imagenet_config(f'{base}/models/{name}')

  path = initial_weights.resolve(config)

  folder = home / '.cache' / 'torch' / 'hub' / 'checkpoints'
  assert path == str(folder / name) and os.listdir(folder) == [name]  # no .partial left
  with open(path, 'rb') as f:
    assert f.read() == body
  np.testing.assert_array_equal(torch_pickle.load(path)['conv1.weight'],
                                np.arange(6.0, dtype=np.float32).reshape(1, 1, 2, 3))
  files.clear()  # the next run finds it without asking the server
  assert initial_weights.resolve(config) == path


def test_a_file_that_does_not_match_its_hash_is_not_kept(home, server):
  base, files = server
  body = torch_saved()
  wrong = 'ffffffff' if not hashlib.sha256(body).hexdigest().startswith('ff') else '00000000'
  files[f'/resnet50-{wrong}.pth'] = (body, len(body))
  url = f'{base}/resnet50-{wrong}.pth'
  with pytest.raises(imagenet.WeightsUnavailable) as info:
    initial_weights.resolve(imagenet_config(url))
  message = str(info.value)
  assert url in message and f'not the {wrong} its name promises' in message
  assert '--config.model.pretrained=none' in message and '\n' not in message
  folder = home / '.cache' / 'torch' / 'hub' / 'checkpoints'
  assert os.listdir(folder) == []


def test_a_download_cut_short_is_not_kept(home, server):
  base, files = server
  body = torch_saved()
  files['/resnet50.pth'] = (body[:100], len(body))  # announces more than it sends
  with pytest.raises(imagenet.WeightsUnavailable, match=rf'stopped after 100 of {len(body)}'):
    initial_weights.resolve(imagenet_config(f'{base}/resnet50.pth'))
  assert os.listdir(home / '.cache' / 'torch' / 'hub' / 'checkpoints') == []


def test_offline_is_one_line_with_the_url_the_folder_and_both_ways_out(home):
  url = closed_port_url()
  start = time.monotonic()
  with pytest.raises(imagenet.WeightsUnavailable) as info:
    initial_weights.resolve(imagenet_config(url))
  assert time.monotonic() - start < 5
  message = str(info.value)
  folder = os.path.join(str(home), '.cache', 'torch', 'hub', 'checkpoints')
  assert '\n' not in message
  for part in (url, folder, *NAMES, '--config.model.pretrained=/path/to/resnet50.pth',
               '--config.model.pretrained=none'):
    assert part in message, part


def test_a_missing_http_file_names_the_status(home, server):
  base, _ = server
  with pytest.raises(imagenet.WeightsUnavailable, match='HTTP Error 404'):
    initial_weights.resolve(imagenet_config(f'{base}/resnet50-0676ba61.pth'))


# --------------------------------------------------------------------------------------------
# The other values of config.model.pretrained


def test_imagenet_for_another_network_is_refused_before_any_download(home):
  config = imagenet_config(closed_port_url())
  config.model.block, config.model.stage_sizes, config.model.width = 'basic', (1, 1, 1, 1), 16
  with pytest.raises(config_lib.ConfigError,
                     match=r"this config: stage_sizes=\(1, 1, 1, 1\), block='basic', width=16\); "
                           r'pass --config.model.pretrained=none'):
    initial_weights.resolve(config)


def test_none_is_random_with_a_warning_and_a_path_must_exist(tmp_path):
  config = config_lib.base_config()
  for value in ('none', ''):
    config.model.pretrained = value
    assert initial_weights.resolve(config) == ''
  assert 'random' in initial_weights.describe('') and 'paper' in initial_weights.describe('')
  config.model.pretrained = str(tmp_path / 'missing.pth')
  with pytest.raises(FileNotFoundError, match=r'missing\.pth.*pretrained=imagenet.*'
                                              r'pretrained=none'):
    initial_weights.resolve(config)


def test_resolved_config_is_a_copy_naming_the_file(home, tmp_path):
  folder = home / '.cache' / 'torch' / 'hub' / 'checkpoints'
  os.makedirs(folder)
  path = str(folder / NAMES[1])
  open(path, 'wb').close()
  config = imagenet_config(closed_port_url())
  resolved = initial_weights.resolved_config(config)
  assert resolved.model.pretrained == path and config.model.pretrained == 'imagenet'
  config.model.pretrained = 'none'
  assert initial_weights.resolved_config(config).model.pretrained == 'none'


# --------------------------------------------------------------------------------------------
# Several processes


def test_process_0_fetches_first_and_the_others_find_its_file(home, monkeypatch):
  """On process 0 `fetch` runs inside run_on_main; elsewhere after it, finding its file."""
  folder = home / '.cache' / 'torch' / 'hub' / 'checkpoints'
  os.makedirs(folder)
  path = str(folder / NAMES[0])
  open(path, 'wb').close()
  calls = []

  def run_on_main(fn, what):
    calls.append(what)
    return None  # what every process but 0 gets back

  monkeypatch.setattr(multihost, 'run_on_main', run_on_main)
  monkeypatch.setattr(multihost, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost, 'is_main', lambda: False)
  monkeypatch.setattr(multihost, 'all_true', lambda flag: flag)
  assert imagenet.fetch_on_every_process(closed_port_url()) == path
  assert calls == ['fetching the ImageNet weights']
  os.remove(path)  # a host of its own without the file, and offline: it says so itself
  with pytest.raises(imagenet.WeightsUnavailable, match='--config.model.pretrained=none'):
    imagenet.fetch_on_every_process(closed_port_url())
  # Process 0 had its file, another process failed: every process stops.
  open(path, 'wb').close()
  monkeypatch.setattr(multihost, 'run_on_main', lambda fn, what: fn())
  monkeypatch.setattr(multihost, 'is_main', lambda: True)
  monkeypatch.setattr(multihost, 'all_true', lambda flag: False)
  with pytest.raises(imagenet.WeightsUnavailable, match='another process'):
    imagenet.fetch_on_every_process(closed_port_url())
