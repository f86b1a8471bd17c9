"""Keeps the aftermath of a failed orbax save or restore off the terminal once it is explained.

Orbax runs every save and restore as asyncio coroutines, on an event loop it creates for the
call (and one per writer thread) and closes as soon as the first task fails. What the failure
leaves behind reports itself later, whenever and wherever it is collected:
  * each writer thread's traceback, which orbax logs at ERROR through absl;
  * "Task exception was never retrieved", "_GatheringFuture exception was never retrieved"
    (asyncio's `asyncio` logger);
  * "Exception ignored in: <coroutine ...>" ... "RuntimeError: Event loop is closed"
    (`sys.unraisablehook`: a coroutine closed after its loop);
  * a traceback from a thread that died of it (`threading.excepthook`).
All of it repeats, at length, the one error that the main thread raises and main.py explains.

`install()` (main.py, once, unless --verbosity >= 1) filters these four ways out. Only what
comes from orbax's or asyncio's own code is touched ("noise"); our lines, JAX's, and the main
thread's traceback of a real bug never are. Noise
  * passes as before while nothing has failed;
  * is held back while a save or restore runs (`held()`) and let through when it ends without
    an explained failure (a bug then shows everything orbax said);
  * is dropped from the moment a failure has been explained in one line (`explained()`), for
    the rest of the process: the leftovers of a failed operation surface at any later garbage
    collection, even at exit.
Without `install()` (tests, library use, --verbosity >= 1) `held()` and `explained()` change
nothing that is shown.
"""

import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import threading
import traceback
from typing import Callable, Optional


class _State:
  """What the hooks share; they keep a reference to it, so they work during shutdown too."""

  def __init__(self):
    self.lock = threading.Lock()
    self.installed = False
    self.holding = 0  # nesting depth of held()
    self.quiet = False  # a failure was explained: noise is dropped from now on
    self.held: list[Callable[[], None]] = []  # noise held back, each as a call that shows it

  def divert(self, show: Callable[[], None]) -> bool:
    """Holds or drops one piece of noise; False when it should be shown now."""
    with self.lock:
      if self.quiet:
        return True
      if self.holding:
        self.held.append(show)
        return True
    return False


_STATE = _State()


def _package_dir(name: str) -> Optional[str]:
  spec = importlib.util.find_spec(name)
  locations = list(spec.submodule_search_locations or []) if spec else []
  return os.path.join(locations[0], '') if locations else None


def _origins() -> tuple[str, ...]:
  """Source folders whose frames mark a report as orbax's or asyncio's own."""
  folders = [os.path.join(os.path.dirname(asyncio.__file__), '')]
  for name in ('orbax', 'tensorstore'):
    folder = _package_dir(name)
    if folder:
      folders.append(folder)
  return tuple(folders)


def _from(origins: tuple[str, ...], filename: Optional[str]) -> bool:
  return bool(filename) and filename.startswith(origins)


def _traceback_from(origins: tuple[str, ...], tb) -> bool:
  return any(_from(origins, frame.f_code.co_filename) for frame, _ in traceback.walk_tb(tb))


def _object_from(origins: tuple[str, ...], obj) -> bool:
  """Whether the object being finalised (a coroutine, a future, a method) is theirs."""
  code = getattr(obj, 'cr_code', None) or getattr(obj, '__code__', None)
  if code is not None:
    return _from(origins, code.co_filename)
  module = sys.modules.get(getattr(type(obj), '__module__', '') or '')
  return _from(origins, getattr(module, '__file__', None))


class _NoiseFilter(logging.Filter):
  """On the `absl` and `asyncio` loggers: records made in orbax's or asyncio's code."""

  def __init__(self, origins: tuple[str, ...], state: _State):
    super().__init__()
    self._origins = origins
    self._state = state

  def filter(self, record: logging.LogRecord) -> bool:
    if getattr(record, 'vireid_released', False) or not _from(self._origins, record.pathname):
      return True
    logger = logging.getLogger(record.name)

    def show():
      record.vireid_released = True
      logger.handle(record)

    return not self._state.divert(show)


def install() -> None:
  """Puts the filters in place (once). Call early in the main program."""
  state = _STATE
  with state.lock:
    if state.installed:
      return
    state.installed = True
  origins = _origins()
  noise_filter = _NoiseFilter(origins, state)
  for name in ('absl', 'asyncio'):
    logging.getLogger(name).addFilter(noise_filter)
  previous_unraisablehook = sys.unraisablehook
  previous_excepthook = threading.excepthook

  # Both hooks may run during interpreter shutdown: they use only what they close over.
  def unraisablehook(unraisable, previous=previous_unraisablehook, origins=origins,
                     state=state, traceback_from=_traceback_from, object_from=_object_from):
    try:
      noise = (traceback_from(origins, unraisable.exc_traceback) or
               object_from(origins, unraisable.object) or
               'Event loop is closed' in str(unraisable.exc_value))
      if noise and state.divert(lambda: previous(unraisable)):
        return
    except Exception:  # pylint: disable=broad-except  (never lose the report itself)
      pass
    previous(unraisable)

  def excepthook(args, previous=previous_excepthook, origins=origins, state=state,
                 traceback_from=_traceback_from):
    try:
      if traceback_from(origins, args.exc_traceback) and state.divert(lambda: previous(args)):
        return
    except Exception:  # pylint: disable=broad-except
      pass
    previous(args)

  sys.unraisablehook = unraisablehook
  threading.excepthook = excepthook


@contextlib.contextmanager
def held():
  """Holds noise back while the block runs (a save or a restore); it is shown after the
  block, unless a failure was explained in the meantime."""
  state = _STATE
  with state.lock:
    state.holding += 1
  try:
    yield
  finally:
    with state.lock:
      state.holding -= 1
      release = []
      if not state.holding:
        release, state.held = ([] if state.quiet else state.held), []
    for show in release:
      show()


def explained() -> None:
  """A failure has just been explained in one line: drop its noise, now and from now on."""
  with _STATE.lock:
    _STATE.quiet = True
    _STATE.held = []
