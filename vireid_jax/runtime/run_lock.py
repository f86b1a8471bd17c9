"""One training run per workdir: `<workdir>/run.lock` names the run that holds it.

Written when a run starts and removed when it ends, however it ends. A second run on the same
workdir refuses to start and names the first (host and process id). A lock left by a process
that no longer exists on this host (killed with -9, a crash) is taken over, saying so. A lock
from another host cannot be checked from here: the message says how to remove it.
"""

import contextlib
import json
import os
import socket
import time

from vireid_jax.runtime import console
from vireid_jax.runtime import files

LOCK_NAME = 'run.lock'


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _create(path, text: str) -> bool:
  """Creates the lock file unless it exists (atomically on a local disk)."""
  if '://' in str(path):  # object stores have no exclusive create: check, then write
    if path.exists():
      return False
    files.write_text(path, text)
    return True
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    return False
  with os.fdopen(descriptor, 'w') as f:
    f.write(text)
  return True


def acquire(workdir: str) -> dict:
  """Takes the workdir's lock; returns what was written. Raises WorkdirLocked."""
  path = files.path(workdir) / LOCK_NAME
  mine = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S')}
  if _create(path, json.dumps(mine)):
    return mine
  try:
    other = json.loads(path.read_text())
  except (OSError, ValueError):
    other = {}
  host, pid = other.get('host', '?'), other.get('pid', -1)
  if not (host == mine['host'] and isinstance(pid, int) and pid > 0 and not _alive(pid)):
    raise WorkdirLocked(
        f'{files.path(workdir)} is in use by another run (host {host}, process {pid}, '
        f'started {other.get("started", "?")}): wait for it to end or choose another '
        f'--workdir. If that run is gone (e.g. its machine restarted), delete {path}.')
  console.line(f'Taking over {path}: the run that held it (host {host}, process {pid}) is '
               f'gone.')
  files.write_text(path, json.dumps(mine))
  return mine


def release(workdir: str, held: dict) -> None:
  """Removes the lock if it is still this run's."""
  path = files.path(workdir) / LOCK_NAME
  try:
    if json.loads(path.read_text()) == held:
      path.unlink()
  except (OSError, ValueError):
    pass


@contextlib.contextmanager
def hold(workdir: str):
  held = acquire(workdir)
  try:
    yield held
  finally:
    release(workdir, held)
