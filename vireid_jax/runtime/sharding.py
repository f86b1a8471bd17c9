"""Device plumbing: one data-parallel mesh over every device of every process, and where
arrays live.

The trainer jits its step over this mesh with explicit shardings: batch-shaped arrays are split
along the `data` axis, everything else (parameters, optimiser state, memories, the uint8 image
arrays the step gathers from) is replicated. Under jit the program keeps its single-device
meaning, so BatchNorm statistics, gradients and the sequential memory update all see the whole
global batch, exactly as the one-GPU reference does, and XLA inserts the all-reduces and
all-gathers that data parallelism needs. That is what `jax.pmap` did, as one program that
spans the devices of every host (pmap is kept only in maintenance).

With several processes a global array is built from host data by each process for its own
devices (`jax.make_array_from_callback`): every helper below takes host values that are the
same on every process (or reads only the rows that process's devices hold).
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis across the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def put_global(tree, shardings):
  """Host values (identical on every process) -> global arrays with `shardings` (a sharding
  or a tree of them). Each process copies only the pieces its own devices hold."""

  def put(value, target):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, target, lambda index: value[index])

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda value: put(value, shardings), tree)
  return jax.tree.map(put, tree, shardings)


def put_replicated(tree, mesh: Mesh):
  """Host values (identical on every process) replicated on every device of the mesh."""
  return put_global(tree, replicated(mesh))


def gather_rows(host_images: np.ndarray, index: np.ndarray, mesh: Mesh) -> jax.Array:
  """`host_images[index]` as a batch-sharded global array; each process reads only the rows
  its devices hold (`index` is the same on every process)."""
  index = np.asarray(index)
  shape = (len(index), *host_images.shape[1:])
  return jax.make_array_from_callback(shape, batch_sharded(mesh),
                                      lambda where: host_images[index[where[0]]])


def to_host(array: jax.Array) -> np.ndarray:
  """A global array as a numpy array on every process (an all-gather when it is split)."""
  if array.is_fully_replicated:
    return np.asarray(array.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def check_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
  """A ConfigError (one line from main.py) unless `batch_size` splits over the mesh."""
  if batch_size % mesh.size:
    from vireid_jax.config import ConfigError  # pylint: disable=import-outside-toplevel
    raise ConfigError(
        f'{what} ({batch_size}) must be divisible by the number of devices ({mesh.size}, over '
        f'{jax.process_count()} process(es)): change the batch composition in the config or '
        f'run on fewer devices (e.g. CUDA_VISIBLE_DEVICES).')
