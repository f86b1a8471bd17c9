"""Each step's images fed from host memory, for training sets that do not fit on the devices.

With `config.data.images_on_device` off, the training images stay in host memory and every
step's batch is copied to the devices as the step's input: each process copies only the rows
its own devices train on, a background thread prepares a few steps ahead so the step does not
wait, and augmentation still runs on the devices. The batches are exactly those the on-device
path gathers from the same plan.
"""

import collections
import concurrent.futures
from typing import Iterator, Mapping

import numpy as np
from jax.sharding import Mesh

from vireid_jax.runtime import sharding

PREFETCH_STEPS = 3


def step_batches(images: Mapping[str, np.ndarray], plan, mesh: Mesh,
                 prefetch: int = PREFETCH_STEPS) -> Iterator[dict]:
  """Yields {stream: (B,H,W,3) uint8 batch-sharded array}, step by step.

  Args:
    images: {modality: (N, H, W, 3) uint8 host array}, the same on every process.
    plan: the epoch's `methods.Plan` (numpy, the same on every process); row s of each
      stream's 'index' gives step s's images of that stream.
    mesh: the training mesh.
    prefetch: steps prepared ahead of the one being yielded.
  """

  def batch(row: int) -> dict:
    return {stream: sharding.gather_rows(images[plan.modality(stream)], arrays['index'][row],
                                         mesh)
            for stream, arrays in plan.streams.items()}

  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='host-feed') as pool:
    pending = collections.deque()
    try:
      for row in range(plan.steps):
        pending.append(pool.submit(batch, row))
        if len(pending) > prefetch:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:  # stopped early (an error, an interrupt): drop queued work
        future.cancel()
