"""Orbax checkpoints of a training run: the latest ones (to resume) and the best one (by mAP).

Layout under the workdir (a local path or gs://...):
  checkpoints/latest/<epoch>/   params, batch stats, optimiser state + a JSON record; the two
                                newest are kept, so a damaged one has a predecessor
  checkpoints/best/<epoch>/     the same, for the evaluation with the highest mAP
Orbax writes each checkpoint under a temporary name and renames it when complete, so a run
killed mid-save (even with kill -9) still has its previous checkpoint intact; leftover
temporary folders are removed when the next run opens the folder. The epoch number is the
number of finished epochs. With several processes every process calls these functions
together (orbax coordinates who writes what).
"""

import contextlib
import errno
import gc
import os
import re
import sys
import tempfile
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from vireid_jax import console
from vireid_jax import files
from vireid_jax import multihost

LATEST = 'latest'
BEST = 'best'
KEEP = {LATEST: 2, BEST: 1}
UNREADABLE_SUFFIX = '.unreadable'
SUPERSEDED_SUFFIX = '.superseded'


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or none could be read; the message says what to do."""


def directory(workdir: str, kind: str) -> epath.Path:
  return files.path(workdir) / 'checkpoints' / kind


def _manager(workdir: str, kind: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=KEEP[kind], create=True,
                                         cleanup_tmp_directories=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory(workdir, kind), options=options)


def _os_error(error: BaseException) -> Optional[OSError]:
  """The operating-system error behind `error`, if any.

  Orbax passes Python's OSErrors on; TensorStore (which writes the arrays) raises a ValueError
  whose message carries the OS error code instead (`... [os_error_code='28']`)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error
    code = re.search(r"os_error_code='(\d+)'", str(error))
    if code:
      number = int(code.group(1))
      return OSError(number, os.strerror(number))
    error = error.__cause__ or error.__context__
  return None


def save(workdir: str, kind: str, epoch: int, state: Any, record: dict) -> None:
  """Writes `state` (a pytree of arrays) and `record` (JSON-able) as checkpoint `epoch`.

  Raises:
    CheckpointError: the write failed for an OS reason (no space, permission, quota); the
      previous checkpoints are intact.
  """
  failure = None
  with _captured_stderr() as captured:
    try:
      with _manager(workdir, kind) as manager:
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    record=ocp.args.JsonSave(record)),
                     force=True)
        manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      failure = error
      gc.collect()  # orbax's failed futures report themselves when collected: here, captured
  os_error = _os_error(failure) if failure is not None else None
  if os_error is None:  # success, or a failure one line cannot explain: show what orbax said
    sys.stderr.write(captured[0])
    if failure is not None:
      raise failure
    return
  reason = os_error.strerror or errno.errorcode.get(os_error.errno, str(os_error))
  previous = latest_epoch(workdir, kind)
  intact = (f'the previous checkpoint ({kind}/{previous}) is intact' if previous is not None
            else 'no earlier checkpoint of this kind existed')
  raise CheckpointError(
      f'could not write checkpoint {kind}/{epoch} in {directory(workdir, kind)}: {reason} '
      f'(errno {os_error.errno}); {intact}. Free space (or fix permissions), then run the '
      f'same command to resume.') from failure


@contextlib.contextmanager
def _captured_stderr():
  """Collects everything written to the process's stderr (Python, C++, other threads) into the
  returned list's first item, as text. A failing orbax save prints a traceback from each of its
  writer threads; the caller decides whether anyone needs to read them."""
  sys.stderr.flush()
  saved = os.dup(2)
  captured = ['']
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield captured
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      captured[0] = capture.read().decode('utf-8', 'replace')


def epochs(workdir: str, kind: str = LATEST) -> list[int]:
  """The finished checkpoints of `kind`, oldest first."""
  if not directory(workdir, kind).is_dir():
    return []
  return sorted(int(p.name) for p in directory(workdir, kind).iterdir()
                if p.name.isdigit() and p.is_dir())


def latest_epoch(workdir: str, kind: str = LATEST) -> int | None:
  found = epochs(workdir, kind)
  return found[-1] if found else None


def restore(workdir: str, kind: str, abstract_state: Any, epoch: int | None = None):
  """Returns (state, record) of checkpoint `epoch` (default: the newest) of `kind`.

  `abstract_state` is a pytree with the target structure (arrays or jax.ShapeDtypeStruct with
  shardings); restored arrays take its shardings, so a checkpoint written by N processes
  restores into a mesh of any size.
  """
  epoch = latest_epoch(workdir, kind) if epoch is None else epoch
  if epoch is None:
    raise FileNotFoundError(
        f'no {kind} checkpoint in {directory(workdir, kind)}: train first '
        f'(python main.py --config ... --workdir {workdir})')
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  with _manager(workdir, kind) as manager:
    restored = manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()))
  return restored.state, restored.record


def restore_path(path: str, abstract_state: Any):
  """Restores a checkpoint from an explicit directory `.../checkpoints/<kind>/<epoch>`."""
  path = files.path(path)
  if not path.name.isdigit() or not path.is_dir():
    raise FileNotFoundError(
        f'{path} is not a checkpoint directory: expected <workdir>/checkpoints/<best|latest>/'
        f'<epoch>')
  workdir = path.parent.parent.parent
  return restore(str(workdir), path.parent.name, abstract_state, int(path.name))


def _short(error: BaseException) -> str:
  """The root cause of `error` in at most 200 characters (orbax wraps TensorStore's message,
  which names what was wrong, in messages that name only the array)."""
  seen = set()
  while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  text = ' '.join(str(error).split()) or type(error).__name__
  return (text[:200] + '...') if len(text) > 200 else text


def restore_newest_readable(workdir: str, abstract_state: Any,
                            say: Callable[[str], None] = console.line):
  """Resumes from the newest checkpoint that reads completely.

  Tries the latest checkpoints newest first, then the best one, naming each that cannot be
  read and why (through `say`). Those skipped are moved aside to `<epoch>.unreadable` once an
  older one has been read, so the run can write their epochs again. Every process must read
  the same checkpoint: a restore counts only when it succeeded on all of them.

  Returns:
    (state, record, kind) or None when the workdir has no checkpoint at all.

  Raises:
    CheckpointError: checkpoints exist and none can be read (nothing is moved then).
  """
  candidates = [(LATEST, e) for e in reversed(epochs(workdir, LATEST))]
  candidates += [(BEST, e) for e in reversed(epochs(workdir, BEST))]
  if not candidates:
    return None
  unreadable = []
  for position, (kind, epoch) in enumerate(candidates):
    result, error = None, None
    try:
      result = restore(workdir, kind, abstract_state, epoch)
    except Exception as e:  # pylint: disable=broad-except  (any unreadable file is a failure)
      error = e
    if multihost.all_true(error is None):
      _move_aside(workdir, unreadable)
      if kind == BEST and unreadable:
        say(f'Resuming from the best checkpoint ({kind}/{epoch}) instead: no latest checkpoint '
            f'could be read.')
      return (*result, kind)
    reason = _short(error) if error is not None else 'another process could not read it'
    unreadable.append((kind, epoch))
    following = candidates[position + 1] if position + 1 < len(candidates) else None
    then = f'trying {following[0]}/{following[1]}' if following else 'nothing else to try'
    say(f'Checkpoint {directory(workdir, kind) / str(epoch)} cannot be read ({reason}); {then}.')
  folders = ', '.join(str(directory(workdir, k) / str(e)) for k, e in unreadable)
  raise CheckpointError(
      f'none of the checkpoints found can be read ({folders}). Start afresh with a new '
      f'--workdir, or delete those folders to train from scratch in {files.path(workdir)}.')


def set_aside_after(workdir: str, epoch: int) -> None:
  """Moves checkpoints newer than `epoch` aside to `<epoch>.superseded` (every process calls).

  A run resumed from an older checkpoint (the newer ones could not be read) trains those epochs
  again; the best checkpoint of the abandoned run must not stand for them."""
  newer = [(kind, e) for kind in (LATEST, BEST) for e in epochs(workdir, kind) if e > epoch]
  _move_aside(workdir, newer, SUPERSEDED_SUFFIX)


def _move_aside(workdir: str, checkpoints: list[tuple[str, int]],
                suffix: str = UNREADABLE_SUFFIX) -> None:
  """Renames checkpoints to `<epoch><suffix>` (kept for inspection, ignored by orbax)."""
  if not checkpoints:
    return
  multihost.barrier('checkpoints-read')
  if multihost.is_main():
    for kind, epoch in checkpoints:
      folder = directory(workdir, kind) / str(epoch)
      if folder.exists():
        aside = folder.parent / f'{folder.name}{suffix}'
        copy = 1
        while aside.exists():  # an earlier run moved another copy of this epoch aside
          copy += 1
          aside = folder.parent / f'{folder.name}{suffix}{copy}'
        folder.rename(aside)
        console.line(f'Moved {folder} aside to {aside.name}.')
  multihost.barrier('checkpoints-moved-aside')
