"""One run over several processes (TPU pod hosts, GPU nodes): start-up, who writes, and the
few collectives the trainer needs between epochs.

Every process runs the same program. Process 0 (the "main" process) alone writes files and
prints; work that must happen once (preparing the dataset, clustering) runs there and its result
is broadcast. Every process goes through the same collectives in the same order, so no
collective ever sits inside an `is_main()` branch: `run_on_main` and `broadcast` are called by
all processes and only the computation inside is gated.

With one process (no flags, no cluster environment) nothing here communicates.
"""

import os
import pickle
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

# Environments where `jax.distributed.initialize()` finds the coordinator, the process count
# and this process's id by itself: SLURM (srun), Open MPI (mpirun), Cloud TPU pods.
_CLUSTER_VARIABLES = {
    'SLURM': ('SLURM_STEP_NUM_TASKS', 'SLURM_NTASKS'),
    'Open MPI': ('OMPI_COMM_WORLD_SIZE',),
}


class MainProcessFailed(RuntimeError):
  """Work that ran on process 0 failed; process 0 prints why, the others stop with this."""


def cluster_environment() -> Optional[str]:
  """The multi-process launcher this process runs under, or None (a plain local run)."""
  for name, variables in _CLUSTER_VARIABLES.items():
    for variable in variables:
      if int(os.environ.get(variable, '1') or '1') > 1:
        return name
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h]) > 1:
    return 'Cloud TPU pod'
  return None


def initialize(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1,
               heartbeat_timeout_seconds: int = 60, initialization_timeout: int = 300) -> None:
  """Starts `jax.distributed` when the run spans several processes; call before any JAX call.

  Explicit with `coordinator_address` (and `num_processes`, `process_id`); automatic under
  SLURM, Open MPI or on a Cloud TPU pod; otherwise the run stays single-process.

  Args:
    coordinator_address: 'host:port' of process 0; '' for automatic detection or none.
    num_processes, process_id: with `coordinator_address`, this run's size and this process.
    heartbeat_timeout_seconds: a process silent this long counts as dead, and the others stop
      (JAX aborts them) instead of waiting for it.
    initialization_timeout: seconds to wait for every process to connect.
  """
  timeouts = dict(heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                  initialization_timeout=initialization_timeout)
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f'--coordinator_address needs --num_processes >= 1 and --process_id in '
                       f'[0, num_processes); got {num_processes} and {process_id}')
    port = coordinator_address.rsplit(':', 1)[-1]
    host = coordinator_address.rsplit(':', 1)[0]
    # A local coordinator listens on loopback only, never on every interface.
    bind = f'{host}:{port}' if host in ('127.0.0.1', 'localhost') else None
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id, coordinator_bind_address=bind, **timeouts)
  elif cluster_environment():
    jax.distributed.initialize(**timeouts)


def process_count() -> int:
  return jax.process_count()


def is_main() -> bool:
  """Whether this is process 0, the one that writes files and prints."""
  return jax.process_index() == 0


def describe() -> str:
  """One line: processes, local / global devices, platform."""
  devices = jax.devices()
  return (f'{jax.process_count()} process(es) (this is {jax.process_index()}), '
          f'{jax.local_device_count()} local / {len(devices)} global devices, platform '
          f'{devices[0].platform} ({devices[0].device_kind})')


def broadcast(tree: Any) -> Any:
  """Process 0's value of `tree` (numpy arrays of the same shapes on every process).

  Send int32 / float32: the transfer drops 64-bit values to 32 bits when x64 is off."""
  if process_count() == 1:
    return tree
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def all_true(flag: bool) -> bool:
  """Whether `flag` holds on every process (called by all of them)."""
  if process_count() == 1:
    return bool(flag)
  return bool(np.all(multihost_utils.process_allgather(np.int32(bool(flag)))))


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier of this name."""
  if process_count() > 1:
    multihost_utils.sync_global_devices(name)


def run_on_main(fn: Callable[[], Any], what: str) -> Any:
  """Runs `fn` on process 0 only; every process returns once it is done.

  Returns fn's result on process 0 and None elsewhere. If fn raises on process 0, it re-raises
  there and the other processes raise MainProcessFailed, so all stop together.
  """
  result, error = None, None
  if is_main():
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, on every process)
      error = e
  failed = int(broadcast(np.int32(error is not None)))
  if error is not None:
    raise error
  if failed:
    raise MainProcessFailed(f'{what} failed on process 0; its output says why')
  return result


def share_from_main(fn: Callable[[], Any], what: str,
                    shared_errors: tuple[type[BaseException], ...] = ()) -> Any:
  """Runs `fn` on process 0 only and returns its result on every process (called by all).

  The result (any picklable object: numpy arrays, dicts, dataclasses) travels as bytes, so
  every process gets exactly process 0's values, never a recomputation that floating-point
  differences between hosts could change. An error of a type in `shared_errors` is raised on
  every process with process 0's message; any other error is raised on process 0 and as
  MainProcessFailed elsewhere (as `run_on_main`).
  """
  if process_count() == 1:
    return fn()

  def pickled() -> bytes:
    try:
      return pickle.dumps((True, fn()))
    except shared_errors as error:  # pylint: disable=catching-non-exception
      return pickle.dumps((False, error))

  payload = run_on_main(pickled, what) or b''
  # int32 words: the broadcast sums process 0's values with zeros, exactly, in 32 bits.
  size = int(broadcast(np.int32(len(payload))))
  words = np.zeros(-(-size // 4), np.int32)
  if is_main():
    padded = payload + b'\0' * (4 * len(words) - size)
    words = np.frombuffer(padded, np.int32).copy()
  words = broadcast(words)
  ok, value = pickle.loads(np.asarray(words, np.int32).tobytes()[:size])
  if not ok:
    raise value
  return value


def is_peer_lost(error: BaseException) -> bool:
  """Whether a runtime error says that another process went away mid-collective."""
  text = str(error)
  return isinstance(error, jax.errors.JaxRuntimeError) and any(
      marker in text for marker in ('Gloo', 'Connection closed', 'Socket closed',
                                    'heartbeat', 'UNAVAILABLE', 'NCCL'))
