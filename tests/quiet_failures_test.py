"""After a failed save or restore has been explained in one line, nothing else reaches the
terminal: not orbax's thread tracebacks, not asyncio's "Event loop is closed" or "exception was
never retrieved". Through main.py, on a disk that fails inside orbax (tests/failing_disk.py),
whichever save fails, and for a restore that fails, stopping or falling back."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from vireid_jax.runtime import checkpoint

from end_to_end_test import REPO, TINY

# Whole training runs, several in processes of their own: minutes; `pytest -m "not slow"`
# leaves them out.
pytestmark = pytest.mark.slow

# What a failed orbax operation leaves behind, in any of its forms.
NOISE = re.compile(r'Traceback|Event loop is closed|never retrieved|Exception ignored|'
                   r'Exception in thread|was destroyed but it is pending|_SignalingThread|'
                   r'RESOURCE_EXHAUSTED')
# A progress line of a redirected run (console._PlainProgress), printed to stderr.
PROGRESS = re.compile(r': \d+(/\d+)? \S+ \([\d.]+ \S+/s, \d+s\)')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('synthetic'))


def run(workdir, data_root, *extra, disk=None):
  """main.py (through tests/failing_disk.py when `disk` is (write|read, pattern)) on the
  test-sized demo for one epoch."""
  program = ([os.path.join(REPO, 'tests', 'failing_disk.py'), *disk] if disk else
             [os.path.join(REPO, 'main.py')])
  args = ['--config', os.path.join(REPO, 'configs', 'demo.py'), '--workdir', str(workdir),
          f'--config.data.root={data_root}',
          f'--config.pretrain.output_dir={os.path.join(data_root, "pretrained")}',
          *[f'--config.{k}={v}' for k, v in TINY.items()], '--config.eval.at_start=False',
          '--config.schedule.epochs=1', *extra]
  # One CPU device: compiling the step is most of each run (see end_to_end_test.py).
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.run([sys.executable, *program, *args], capture_output=True, text=True,
                        timeout=600, cwd=REPO, env=env)


def ends_with_one_line(result, start: str) -> str:
  """The error line, after asserting that stderr holds nothing else (progress lines aside) and
  that no noise is anywhere."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert not NOISE.search(result.stdout + result.stderr), result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if not PROGRESS.search(line)]
  assert len(lines) == 1 and lines[0].startswith(start), result.stderr[-3000:]
  assert result.stderr.rstrip('\n').endswith(lines[0])  # nothing after it
  return lines[0]


def test_the_first_save_failing_ends_in_one_line(data_root, tmp_path):
  result = run(tmp_path / 'run', data_root, disk=('write', '/checkpoints/'))
  line = ends_with_one_line(result, 'error: could not write checkpoint latest/1 ')
  assert 'No space left on device (errno 28); no earlier checkpoint' in line
  assert checkpoint.epochs(str(tmp_path / 'run')) == []


@pytest.fixture(scope='module')
def best_did_not_fit(data_root, tmp_path_factory):
  """A run whose `latest/1` fits and whose `best/1` does not."""
  workdir = tmp_path_factory.mktemp('second') / 'run'
  return workdir, run(workdir, data_root, disk=('write', '/checkpoints/best/'))


def test_the_second_save_failing_ends_in_one_line(best_did_not_fit):
  workdir, result = best_did_not_fit
  line = ends_with_one_line(result, 'error: could not write checkpoint best/1 ')
  assert 'No space left on device (errno 28)' in line
  assert checkpoint.epochs(str(workdir)) == [1]
  assert checkpoint.epochs(str(workdir), checkpoint.BEST) == []


def test_a_restore_that_fails_ends_in_one_line(best_did_not_fit, data_root, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(best_did_not_fit[0], workdir)
  # Some arrays cannot be read while the others are being read: orbax's worst case.
  result = run(workdir, data_root, disk=('read', r'latest/1/.*conv1\.kernel'))
  ends_with_one_line(result, 'error: none of the checkpoints found can be read ')
  assert re.search(r'Checkpoint \S+/latest/1 cannot be read \(DATA_LOSS.*nothing else to try',
                   result.stdout)
  assert (result.stdout + result.stderr).count('DATA_LOSS') == 1  # in that line alone
  assert checkpoint.epochs(str(workdir)) == [1]  # nothing moved when nothing could be read


def test_a_restore_that_fails_over_to_best_continues_quietly(best_did_not_fit, data_root,
                                                             tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(best_did_not_fit[0], workdir)
  shutil.copytree(workdir / 'checkpoints' / 'latest' / '1', workdir / 'checkpoints' / 'best' /
                  '1')  # a best of the same epoch, readable
  result = run(workdir, data_root, '--config.schedule.epochs=2',
               disk=('read', r'latest/1/.*conv1\.kernel'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert not NOISE.search(result.stdout + result.stderr), result.stderr[-3000:]
  assert 'latest/1 cannot be read' in result.stdout and 'trying best/1' in result.stdout
  assert (result.stdout + result.stderr).count('DATA_LOSS') == 1
  assert 'Resuming from the best checkpoint (best/1)' in result.stdout
  assert re.search(r'epoch +2/2 stage 2 ', result.stdout)
  assert checkpoint.epochs(str(workdir)) == [2]  # latest/1 moved aside, epoch 2 written
  assert os.path.isdir(workdir / 'checkpoints' / 'latest' / '1.unreadable')


# The filters themselves, on noise made the way orbax makes it, in a fresh process (they
# change process-wide hooks).
_NOISE_SCRIPT = textwrap.dedent('''
    import asyncio, gc, logging, sys, threading
    from vireid_jax.runtime import async_noise

    def mark(text):
      sys.stderr.write(f'== {text}\\n'); sys.stderr.flush()

    def noise():
      """A failed gather on a loop closed at once, as orbax leaves it."""
      async def fails():
        raise ValueError('disk full')
      async def waits(loop):
        try:
          await asyncio.sleep(10)
        finally:
          loop.call_soon(lambda: None)  # after the loop closed: "Event loop is closed"
      loop = asyncio.new_event_loop()
      tasks = [loop.create_task(fails()), loop.create_task(waits(loop))]
      loop.run_until_complete(asyncio.sleep(0.01))
      loop.close()
      del tasks
      gc.collect()
      def in_thread():
        asyncio.new_event_loop().run_until_complete(fails())
      thread = threading.Thread(target=in_thread)
      thread.start(); thread.join()

    def ours():
      logging.getLogger('absl').error('our own error line')
      thread = threading.Thread(target=lambda: 1 / 0)
      thread.start(); thread.join()

    if sys.argv[1] == 'install':
      async_noise.install()
    mark('plain'); noise(); ours()
    mark('held, then fine')
    with async_noise.held():
      noise(); mark('inside')
    mark('held, then explained')
    with async_noise.held():
      noise(); async_noise.explained()
    mark('after explained'); noise(); ours()
    mark('end')
''')


def noise_sections(*args):
  result = subprocess.run([sys.executable, '-c', _NOISE_SCRIPT, *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=dict(os.environ,
                                                                     PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr
  sections = re.split(r'^== (.*)\n', result.stderr, flags=re.M)[1:]
  return dict(zip(sections[::2], sections[1::2]))


KINDS = ('Task exception was never retrieved', 'Task was destroyed but it is pending',
         'Event loop is closed', 'Exception in thread')


def test_noise_is_held_back_then_shown_or_dropped_once_explained():
  sections = noise_sections('install')
  for kind in KINDS:
    assert kind in sections['plain'], sections['plain']  # nothing failed yet: all shows
    assert kind in sections['inside'], sections  # held back, shown after a clean end
  assert 'our own error line' in sections['plain']
  assert sections['held, then fine'] == ''  # (held back while the operation ran)
  assert sections['held, then explained'] == ''  # dropped
  after = sections['after explained']
  for kind in KINDS[:3]:  # dropped for the rest of the process
    assert kind not in after, after
  # What is not orbax's or asyncio's still shows: our own lines, our own thread's failure.
  assert 'our own error line' in after and 'ZeroDivisionError' in after
  assert 'ValueError' not in after and sections['end'] == ''


def test_without_install_nothing_is_filtered():
  """What main.py does with --verbosity=1: every report shows, explained or not."""
  sections = noise_sections('no')
  for name in ('plain', 'held, then fine', 'held, then explained', 'after explained'):
    for kind in KINDS:
      assert kind in sections[name], (name, sections[name])
