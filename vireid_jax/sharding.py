"""Device plumbing: one data-parallel mesh over every local device, and where arrays live.

The trainer jits its step over this mesh with explicit shardings: batch-shaped arrays are split
along the `data` axis, everything else (parameters, optimiser state, memories, the uint8 image
arrays the step gathers from) is replicated. Under jit the program keeps its single-device
meaning, so BatchNorm statistics, gradients and the sequential memory update all see the whole
global batch, exactly as the one-GPU reference does, and XLA inserts the all-reduces and
all-gathers that data parallelism needs.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: all local devices)."""
  devices = jax.local_devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis across the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def put_replicated(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def check_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size:
    raise ValueError(
        f'{what} ({batch_size}) must be divisible by the number of devices ({mesh.size}): '
        f'change the batch composition in the config or run on fewer devices '
        f'(e.g. CUDA_VISIBLE_DEVICES).')
