"""Stopping a run cleanly on Ctrl-C (SIGINT) or a preemption notice (SIGTERM).

The signal only sets a flag; the trainer asks `should_stop(step)` at every step boundary and
stops there, after the last finished epoch's checkpoint. With several processes every process
must stop at the same step, or the others would wait forever in that step's collectives: JAX's
preemption service (it owns SIGTERM once `jax.distributed` runs) agrees on the step, and a
Ctrl-C on any process is turned into that notice. A second Ctrl-C aborts at once.
"""

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
TERMINATED_EXIT_CODE = 143  # 128 + SIGTERM


class StopRequests:
  """A context manager that turns SIGINT / SIGTERM into `should_stop(step) == True`."""

  def __init__(self):
    self.received = None  # 'interrupt' | 'terminate' | None: what this process received
    self._previous = {}
    self._several = False
    # JAX's sync point counts calls from the run's start (the same on every process), not the
    # trainer's step numbers, which start wherever a resumed run starts.
    self._calls = 0

  def __enter__(self):
    self._several = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return self  # Python delivers signals to the main thread only: nothing to catch here
    self._install(signal.SIGINT, self._on_interrupt)
    if not self._several:  # with several processes JAX's preemption notifier owns SIGTERM
      self._install(signal.SIGTERM, self._on_terminate)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _install(self, signum, handler) -> None:
    self._previous[signum] = signal.signal(signum, handler)

  def _on_interrupt(self, signum, frame):  # pylint: disable=unused-argument
    if self.received == 'interrupt':
      raise KeyboardInterrupt  # the second Ctrl-C: do not wait for the step boundary
    self.received = 'interrupt'
    os.write(2, b'\nCtrl-C: stopping at the next step boundary (Ctrl-C again aborts now).\n')
    if self._several:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notice, so all processes stop

  def _on_terminate(self, signum, frame):  # pylint: disable=unused-argument
    self.received = self.received or 'terminate'

  def should_stop(self) -> bool:
    """Whether to stop now; every process must ask at every step boundary."""
    if self._several:
      self._calls += 1
      return multihost_utils.reached_preemption_sync_point(self._calls)
    return self.received is not None

  @property
  def exit_code(self) -> int:
    return INTERRUPTED_EXIT_CODE if self.received == 'interrupt' else TERMINATED_EXIT_CODE

  @property
  def cause(self) -> str:
    return 'interrupted (Ctrl-C)' if self.received == 'interrupt' else 'stopped by SIGTERM'
