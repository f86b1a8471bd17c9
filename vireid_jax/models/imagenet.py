"""torchvision's ImageNet ResNet-50: found in PyTorch's own cache, or downloaded into it.

MBCCM starts from `torchvision.models.resnet50(pretrained=True)`: torchvision's IMAGENET1K_V1
weights, published as `resnet50-0676ba61.pth` (zip layout) and earlier, with the same values,
as `resnet50-19c8e357.pth` (legacy layout). `fetch` looks for either, or for the file the URL
names, in the folder torch.hub keeps downloads in, exactly as `torch.hub.get_dir()` finds it:

  $TORCH_HOME/hub/checkpoints, else $XDG_CACHE_HOME/torch/hub/checkpoints,
  else ~/.cache/torch/hub/checkpoints

so a machine where PyTorch already downloaded them downloads nothing. Otherwise it downloads
the URL into that folder as torch.hub does: a temporary file beside the target, the sha256
checked against the hex prefix in the file name (torch.hub's HASH_REGEX), then renamed, so a
broken download never leaves a file that looks complete. A short timeout makes an offline
machine fail in seconds with one line that names the URL, the folder and both ways out.
"""

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Optional

from vireid_jax.runtime import console
from vireid_jax.runtime import multihost

TORCHVISION_RESNET50_URL = 'https://download.pytorch.org/models/resnet50-0676ba61.pth'
# The same IMAGENET1K_V1 weights under torchvision's current name and its earlier one.
TORCHVISION_RESNET50_FILES = ('resnet50-0676ba61.pth', 'resnet50-19c8e357.pth')
# torch.hub's: the hex digits between '-' and '.' in a file name are its sha256's prefix.
HASH_REGEX = re.compile(r'-([a-f0-9]*)\.')
# Seconds without a byte (connecting or reading) before a download counts as failed.
TIMEOUT_SECONDS = 15.0
_CHUNK_BYTES = 1 << 20


class WeightsUnavailable(RuntimeError):
  """The ImageNet weights are in no cache and cannot be downloaded; the message says what to do."""


def hub_checkpoints_dir() -> str:
  """The folder torch.hub downloads weights into (torch.hub.get_dir() + '/checkpoints')."""
  torch_home = os.path.expanduser(
      os.getenv('TORCH_HOME', os.path.join(os.getenv('XDG_CACHE_HOME', '~/.cache'), 'torch')))
  return os.path.join(torch_home, 'hub', 'checkpoints')


def file_name(url: str) -> str:
  """The name torch.hub saves `url` under: the last part of its path."""
  return os.path.basename(urllib.parse.urlparse(url).path)


def cached_file(url: str = TORCHVISION_RESNET50_URL,
                folder: Optional[str] = None) -> Optional[str]:
  """The weights already in `folder` (default: torch.hub's): the URL's file, else either of
  torchvision's names; None when none is there."""
  folder = hub_checkpoints_dir() if folder is None else folder
  for name in dict.fromkeys((file_name(url),) + TORCHVISION_RESNET50_FILES):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def _ways_out(folder: str) -> str:
  return (f'Put torchvision\'s {" or ".join(TORCHVISION_RESNET50_FILES)} into {folder}, or pass '
          f'--config.model.pretrained=/path/to/resnet50.pth, or '
          f'--config.model.pretrained=none to start from random weights (far from the paper\'s '
          f'numbers).')


def download(url: str, folder: str, timeout: float = TIMEOUT_SECONDS,
             progress: bool = True) -> str:
  """Downloads `url` into `folder` under its own name, checked and renamed into place.

  Args:
    url: where the weights are; its file name's hash prefix (e.g. `resnet50-0676ba61.pth`),
      if any, must start the downloaded file's sha256.
    folder: where to put the file (created if missing).
    timeout: seconds without progress (connecting or reading) before giving up.
    progress: show a progress bar (process 0 only, as every bar).

  Returns:
    The path of the downloaded file.

  Raises:
    WeightsUnavailable: the download failed, was cut short or has the wrong hash; nothing is
      left in `folder` then.
  """
  name = file_name(url)
  target = os.path.join(folder, name)
  match = HASH_REGEX.search(name)
  hash_prefix = match.group(1) if match else None
  partial = f'{target}.{uuid.uuid4().hex}.partial'
  try:
    os.makedirs(folder, exist_ok=True)
    request = urllib.request.Request(url, headers={'User-Agent': 'vireid_jax'})
    with urllib.request.urlopen(request, timeout=timeout) as response, \
        open(partial, 'wb') as f:
      size = response.headers.get('Content-Length')
      size = int(size) if size and size.isdigit() else None
      console.line(f'Downloading {url} into {folder}')
      sha256, received = hashlib.sha256(), 0
      bar = console.bar(desc=f'download {name}', unit='MiB', enabled=progress,
                        total=None if size is None else -(-size // _CHUNK_BYTES))
      try:
        while chunk := response.read(_CHUNK_BYTES):
          f.write(chunk)
          sha256.update(chunk)
          shown = received // _CHUNK_BYTES
          received += len(chunk)
          bar.update(received // _CHUNK_BYTES - shown)
      finally:
        bar.close()
    if size is not None and received != size:
      raise WeightsUnavailable(f'the download of {url} stopped after {received} of {size} '
                               f'bytes; nothing was kept. {_ways_out(folder)}')
    digest = sha256.hexdigest()
    if hash_prefix and not digest.startswith(hash_prefix):
      raise WeightsUnavailable(
          f'{url} sent a file whose sha256 is {digest[:16]}..., not the {hash_prefix} its name '
          f'promises (a damaged download, or another file); nothing was kept in {folder}. '
          f'{_ways_out(folder)}')
    os.replace(partial, target)
  except (OSError, http.client.HTTPException, ValueError) as e:
    # URLError wraps the socket's error in .reason; HTTPError's own text has the status.
    reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, 'reason', None) or e
    raise WeightsUnavailable(f'cannot get the ImageNet ResNet-50 weights: downloading {url} into '
                             f'{folder} failed ({reason}). {_ways_out(folder)}') from None
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target


def fetch(url: str = TORCHVISION_RESNET50_URL, progress: bool = True) -> str:
  """The ImageNet ResNet-50 file: from torch.hub's folder, downloaded there if missing.

  Raises:
    WeightsUnavailable: not cached and not downloadable (one line: URL, folder, what to do).
  """
  folder = hub_checkpoints_dir()
  return cached_file(url, folder) or download(url, folder, progress=progress)


def fetch_on_every_process(url: str = TORCHVISION_RESNET50_URL) -> str:
  """`fetch` on process 0 first, then on the others; every process gets its own file's path.

  On a shared disk only process 0 downloads and the others find its file; on hosts with disks
  of their own, each host's processes download their own copy afterwards (a temporary name
  per download, so concurrent ones cannot clash). Every process stops together if one fails.
  """
  path = multihost.run_on_main(lambda: fetch(url), 'fetching the ImageNet weights')
  if multihost.process_count() == 1:
    return path
  error = None
  if not multihost.is_main():
    try:
      path = fetch(url, progress=False)
    except WeightsUnavailable as e:
      error = e
  if not multihost.all_true(error is None):
    raise error or WeightsUnavailable(
        'another process of this run could not get the ImageNet weights; its output says why')
  return path
