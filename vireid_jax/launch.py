r"""Several processes of one run on this machine: how the tests emulate a TPU pod on a CPU.

  python -m vireid_jax.launch --processes 2 --cpu_devices 2 -- \
      --config configs/demo.py --workdir runs/demo_2x2

starts `python main.py <args> --coordinator_address=127.0.0.1:<free port> --num_processes=2
--process_id=i` for i = 0, 1, each seeing 2 virtual CPU devices (JAX_NUM_CPU_DEVICES), so the
run has a mesh of 4 devices over 2 processes, as 2 hosts with 2 chips each would. Process 0's
output is passed through; the others' lines are prefixed with `[process i]`. If a process fails,
the others get `--grace` seconds to stop by themselves (they should: see docs/multihost.md),
then are killed, as they are when `--timeout` passes. The exit code is the first failure's, or 0.
"""

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py')


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_command(main_args: Sequence[str], num_processes: int, process_id: int,
                    port: int) -> list[str]:
  """The command line of one process (no coordinator flags for a single process)."""
  command = [sys.executable, MAIN, *main_args]
  if num_processes > 1:
    command += [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}',
                f'--process_id={process_id}']
  return command


def process_environment(cpu_devices: int, extra: Optional[dict] = None) -> dict:
  """This environment (plus `extra`) with `cpu_devices` virtual CPU devices per process (0:
  the real devices)."""
  env = dict(os.environ, **(extra or {}))
  if cpu_devices:
    env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(cpu_devices))
    # A forced device count in XLA_FLAGS would override JAX_NUM_CPU_DEVICES.
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join(flags)
  return env


@dataclasses.dataclass
class LocalRun:
  """The processes of one run; `output[i]` collects process i's lines (stdout and stderr)."""
  processes: list[subprocess.Popen]
  output: list[list[str]]
  echo: bool
  _threads: list[threading.Thread] = dataclasses.field(default_factory=list)

  def _pump(self, index: int) -> None:
    for text in self.processes[index].stdout:
      self.output[index].append(text)
      if self.echo:
        sys.stdout.write(text if index == 0 else f'[process {index}] {text}')
        sys.stdout.flush()

  def text(self, index: int) -> str:
    return ''.join(self.output[index])

  def wait_for(self, index: int, substring: str, timeout: float) -> bool:
    """Waits until process `index` printed `substring` (False: it exited or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if substring in self.text(index):
        return True
      if self.processes[index].poll() is not None:
        return substring in self.text(index)
      time.sleep(0.1)
    return False

  def send(self, index: int, signum: int) -> None:
    self.processes[index].send_signal(signum)

  def kill_all(self) -> None:
    for process in self.processes:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    self.join()

  def join(self) -> None:
    for process in self.processes:
      process.wait()
    for thread in self._threads:
      thread.join()

  def wait(self, timeout: float, grace: float = 30.0) -> list[Optional[int]]:
    """Exit codes once every process ended; None for one killed at `timeout` or after `grace`.

    When a process fails, the others get `grace` seconds to stop by themselves.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      codes = [p.poll() for p in self.processes]
      if all(code is not None for code in codes):
        self.join()
        return codes
      if any(code not in (None, 0) for code in codes):
        deadline = min(deadline, time.monotonic() + grace)
        grace = float('inf')  # set the shortened deadline once
      time.sleep(0.1)
    codes = [p.poll() for p in self.processes]
    self.kill_all()
    return codes


def start(main_args: Sequence[str], num_processes: int, cpu_devices: int = 0,
          port: int = 0, echo: bool = False, cwd: Optional[str] = None,
          env: Optional[dict] = None) -> LocalRun:
  """Starts the processes of one run on 127.0.0.1 (a new session each, so a kill reaches
  everything a process started); `env` adds environment variables."""
  port = port or free_port()
  env = process_environment(cpu_devices, env)
  processes = [
      subprocess.Popen(process_command(main_args, num_processes, i, port), env=env, cwd=cwd,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       start_new_session=True)
      for i in range(num_processes)]
  run = LocalRun(processes, [[] for _ in processes], echo)
  for index in range(num_processes):
    thread = threading.Thread(target=run._pump, args=(index,), daemon=True)  # pylint: disable=protected-access
    thread.start()
    run._threads.append(thread)  # pylint: disable=protected-access
  return run


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      usage='python -m vireid_jax.launch [options] -- <main.py arguments>')
  parser.add_argument('--processes', type=int, default=2, help='processes of the run')
  parser.add_argument('--cpu_devices', type=int, default=2,
                      help='virtual CPU devices per process (0: use the real devices)')
  parser.add_argument('--timeout', type=float, default=24 * 3600,
                      help='seconds after which every process is killed')
  parser.add_argument('--grace', type=float, default=120,
                      help='seconds the others get to stop by themselves after one fails')
  argv = list(sys.argv[1:] if argv is None else argv)
  if '--' not in argv:
    parser.error('put the main.py arguments after --')
  split = argv.index('--')
  args = parser.parse_args(argv[:split])
  run = start(argv[split + 1:], args.processes, args.cpu_devices, echo=True)
  try:
    codes = run.wait(args.timeout, args.grace)
  except KeyboardInterrupt:  # Ctrl-C reaches the processes' own sessions through us
    for index in range(len(run.processes)):
      if run.processes[index].poll() is None:
        run.send(index, signal.SIGINT)
    codes = run.wait(args.timeout, args.grace)
  failed = [code for code in codes if code != 0]
  for index, code in enumerate(codes):
    if code != 0:
      print(f'[launch] process {index} ' + ('was killed' if code is None else
                                            f'exited with {code}'), file=sys.stderr)
  return (failed[0] if failed[0] is not None else 1) if failed else 0


if __name__ == '__main__':
  sys.exit(main())
