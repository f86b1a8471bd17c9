"""What a person sees while a run works: printed lines and progress bars.

Only process 0 prints (the others of a multi-process run stay quiet). On a terminal a progress
bar is tqdm's; when the output goes to a file or a pipe it is a plain line every
`PLAIN_INTERVAL_SECONDS` instead of carriage-return fragments, so a redirected log stays short
and readable.
"""

import sys
import time
from typing import Iterable, Optional

import tqdm

PLAIN_INTERVAL_SECONDS = 30.0


def _is_main() -> bool:
  # Without JAX imported there is one process; importing it here would make the data layer's
  # decoding import JAX too.
  jax = sys.modules.get('jax')
  return jax is None or jax.process_index() == 0


def line(message: str, file=None) -> None:
  """Prints one line (process 0 only), flushed at once."""
  if _is_main():
    print(message, file=file or sys.stdout, flush=True)


class _PlainProgress:
  """tqdm's interface, printing `desc: n/total (rate)` at most every `interval` seconds."""

  def __init__(self, iterable, desc: str, total: Optional[int], unit: str, interval: float,
               file):
    self._iterable = iterable
    self._desc = desc
    self._total = total
    self._unit = unit
    self._interval = interval
    self._file = file
    self._count = 0
    self._start = self._last = time.monotonic()
    self._postfix = ''

  def __iter__(self):
    for item in self._iterable:
      yield item
      self.update(1)

  def update(self, count: int = 1) -> None:
    self._count += count
    now = time.monotonic()
    if now - self._last >= self._interval:
      self._last = now
      self._print(now)

  def _print(self, now: float) -> None:
    elapsed = now - self._start
    of = f'/{self._total}' if self._total else ''
    rate = self._count / elapsed if elapsed > 0 else 0.0
    print(f'{self._desc}: {self._count}{of} {self._unit} ({rate:.1f} {self._unit}/s, '
          f'{elapsed:.0f}s){self._postfix}', file=self._file, flush=True)

  def set_postfix(self, **values) -> None:
    self._postfix = '  ' + ' '.join(f'{k}={v}' for k, v in values.items())

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _Silent(_PlainProgress):

  def update(self, count: int = 1) -> None:
    self._count += count


def bar(iterable: Optional[Iterable] = None, desc: str = '', total: Optional[int] = None,
        unit: str = 'it', leave: bool = False, enabled: bool = True):
  """A progress bar over `iterable` (or one to `update()` by hand when it is None)."""
  stream = sys.stderr
  if total is None and iterable is not None and hasattr(iterable, '__len__'):
    total = len(iterable)
  if not enabled or not _is_main():
    return _Silent(() if iterable is None else iterable, desc, total, unit, float('inf'), stream)
  if stream.isatty():
    return tqdm.tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave,
                     dynamic_ncols=True, file=stream)
  return _PlainProgress(() if iterable is None else iterable, desc, total, unit,
                        PLAIN_INTERVAL_SECONDS, stream)
