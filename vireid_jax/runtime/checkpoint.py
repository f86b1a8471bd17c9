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

import errno
import os
import re
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from vireid_jax.runtime import async_noise
from vireid_jax.runtime import console
from vireid_jax.runtime import files
from vireid_jax.runtime import multihost

LATEST = 'latest'
BEST = 'best'
KEEP = {LATEST: 2, BEST: 1}
UNREADABLE_SUFFIX = '.unreadable'
SUPERSEDED_SUFFIX = '.superseded'
MEMORIES = 'memories'  # the item holding the memory tables at the end of the epoch


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or none could be read; the message says what to do."""


class CheckpointUnreadable(CheckpointError):
  """A checkpoint's files cannot be read: damaged or incomplete.

  Attributes:
    folder: the checkpoint, `.../checkpoints/<kind>/<epoch>`.
    reason: the root cause in at most 200 characters.
  """

  def __init__(self, folder: epath.Path, reason: str):
    super().__init__(
        f'checkpoint {folder} cannot be read ({reason}). Evaluate another one '
        f'(--config.eval.checkpoint=best, latest or a checkpoint folder), or train on the '
        f'workdir: training resumes from the newest checkpoint that reads.')
    self.folder, self.reason = folder, reason


class CheckpointMismatch(CheckpointError):
  """An intact checkpoint whose arrays do not fit the state this config builds: it was
  written with another config. Never treated as damage: nothing is moved."""


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


def save(workdir: str, kind: str, epoch: int, state: Any, record: dict,
         memories: Any = None) -> None:
  """Writes `state` (a pytree of arrays) and `record` (JSON-able) as checkpoint `epoch`, and
  `memories` (a state dict of arrays whose shapes change from epoch to epoch: the method's
  memory tables at the end of the epoch) when given.

  Raises:
    CheckpointError: the write failed for an OS reason (no space, permission, quota); the
      previous checkpoints are intact.
  """
  # A failed write leaves orbax's threads and event loops to report it again at length;
  # async_noise keeps that back once the failure is explained here.
  with async_noise.held():
    try:
      with _manager(workdir, kind) as manager:
        items = dict(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))
        if memories and jax.tree_util.tree_leaves(memories):
          items[MEMORIES] = ocp.args.StandardSave(memories)
        manager.save(epoch, args=ocp.args.Composite(**items), force=True)
        manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      os_error = _os_error(error)
      if os_error is None:  # a failure one line cannot explain: orbax's own words follow
        raise
      async_noise.explained()
      reason = os_error.strerror or errno.errorcode.get(os_error.errno, str(os_error))
      previous = latest_epoch(workdir, kind)
      intact = (f'the previous checkpoint ({kind}/{previous}) is intact'
                if previous is not None else 'no earlier checkpoint of this kind existed')
      raise CheckpointError(
          f'could not write checkpoint {kind}/{epoch} in {directory(workdir, kind)}: '
          f'{reason} (errno {os_error.errno}); {intact}. Free space (or fix permissions), '
          f'then run the same command to resume.') from error


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

  Raises:
    FileNotFoundError: no checkpoint of `kind`.
    CheckpointMismatch: the checkpoint is intact but holds other arrays than `abstract_state`
      (seen in its metadata, before any array is read).
    CheckpointUnreadable: its files cannot be read.
  """
  epoch = latest_epoch(workdir, kind) if epoch is None else epoch
  if epoch is None:
    raise FileNotFoundError(
        f'no {kind} checkpoint in {directory(workdir, kind)}: train first '
        f'(python main.py --config ... --workdir {workdir})')
  folder = directory(workdir, kind) / str(epoch)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  # A failed read leaves orbax's threads and event loops to report it again at length;
  # async_noise keeps that back once the failure is explained in the error raised here.
  with async_noise.held():
    try:
      stored = ocp.StandardCheckpointHandler().metadata(folder / 'state')
    except Exception as error:  # pylint: disable=broad-except  (unreadable metadata: damage)
      async_noise.explained()
      raise CheckpointUnreadable(folder, _short(error)) from error
    difference = _first_difference(_shapes(stored), _shapes(target))
    if difference:
      async_noise.explained()
      raise CheckpointMismatch(
          f'checkpoint {folder} does not fit the model and optimiser of this config '
          f'({difference}): it was written with another config. It is intact and was left as '
          f'it is: run with the config it was written with, or choose a new --workdir.')
    try:
      with _manager(workdir, kind) as manager:
        restored = manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()))
    except Exception as error:  # pylint: disable=broad-except  (any unreadable file is damage)
      async_noise.explained()
      raise CheckpointUnreadable(folder, _short(error)) from error
  return restored.state, restored.record


def read_memories(workdir: str, kind: str, epoch: int, sharding) -> Optional[dict]:
  """The memory tables checkpoint `kind/epoch` holds, as a state dict of host numpy arrays
  (restored with `sharding`, then copied to the host), or None when it holds none (every
  process calls). Raises CheckpointUnreadable."""
  folder = directory(workdir, kind) / str(epoch)
  if not (folder / MEMORIES).exists():
    return None
  with async_noise.held():
    try:
      stored = ocp.StandardCheckpointHandler().metadata(folder / MEMORIES)
      target = jax.tree.map(
          lambda meta: jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=sharding),
          stored, is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))
      with _manager(workdir, kind) as manager:
        restored = manager.restore(epoch, args=ocp.args.Composite(
            **{MEMORIES: ocp.args.StandardRestore(target)}))
    except Exception as error:  # pylint: disable=broad-except
      async_noise.explained()
      raise CheckpointUnreadable(folder, _short(error)) from error
  return jax.device_get(restored[MEMORIES])


def read_record(workdir: str, kind: str, epoch: int) -> dict:
  """The JSON record of checkpoint `kind/epoch` (epoch, history, best, config), without reading
  its arrays. Raises CheckpointUnreadable."""
  folder = directory(workdir, kind) / str(epoch)
  with async_noise.held():
    try:
      return ocp.JsonCheckpointHandler().restore(folder / 'record')
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointUnreadable(folder, _short(error)) from error


def _key_name(key) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _shapes(tree) -> dict[str, tuple]:
  """'params/layer1/block0/conv1/kernel' -> shape, for every array of `tree`. Names join dict
  keys, dataclass fields and sequence positions alike, so a TrainState and the dict that orbax
  stores of it give the same names."""
  return {'/'.join(_key_name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _first_difference(stored: dict[str, tuple], wanted: dict[str, tuple]) -> str:
  """'' when the checkpoint stores exactly the arrays of `wanted`, with their shapes; else
  the first difference and how many more there are."""
  differences = [f'{name}: stored {stored[name]}, this config {shape}'
                 for name, shape in wanted.items() if name in stored and stored[name] != shape]
  differences += [f'{name}: not in the checkpoint' for name in wanted if name not in stored]
  differences += [f'{name}: in the checkpoint, not in this config' for name in stored
                  if name not in wanted]
  if not differences:
    return ''
  more = f'; {len(differences) - 1} more' if len(differences) > 1 else ''
  return differences[0] + more


def workdir_of(folder) -> epath.Path:
  """The workdir of a checkpoint folder `<workdir>/checkpoints/<kind>/<epoch>`."""
  return files.path(folder).parent.parent.parent


def restore_path(path: str, abstract_state: Any):
  """Restores a checkpoint from an explicit directory `.../checkpoints/<kind>/<epoch>`."""
  path = files.path(path)
  if not path.name.isdigit() or not path.is_dir():
    raise FileNotFoundError(
        f'{path} is not a checkpoint directory: expected <workdir>/checkpoints/<best|latest>/'
        f'<epoch>')
  return restore(str(workdir_of(path)), path.parent.name, abstract_state, int(path.name))


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
    result, error, mismatch = None, None, None
    try:
      result = restore(workdir, kind, abstract_state, epoch)
    except CheckpointMismatch as e:
      mismatch = e
    except Exception as e:  # pylint: disable=broad-except  (any unreadable file is a failure)
      error = e
    # A checkpoint that does not fit this config is not damaged: stop, moving nothing.
    if not multihost.all_true(mismatch is None):
      raise mismatch or CheckpointMismatch(
          f'checkpoint {directory(workdir, kind) / str(epoch)} does not fit this config on '
          f'another process of this run; nothing was moved.')
    if multihost.all_true(error is None):
      _move_aside(workdir, unreadable)
      if kind == BEST and unreadable:
        say(f'Resuming from the best checkpoint ({kind}/{epoch}) instead: no latest checkpoint '
            f'could be read.')
      return (*result, kind)
    if isinstance(error, CheckpointUnreadable):
      reason = error.reason
    else:
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
