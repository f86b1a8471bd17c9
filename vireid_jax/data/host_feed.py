"""Each step's images fed from host memory, for training sets that do not fit on the devices.

With `config.data.images_on_device` off, the training images stay in host memory and every
step's batch is copied to the devices as the step's input: each process copies only the rows
its own devices train on, a background thread prepares a few steps ahead so the step does not
wait, and augmentation still runs on the devices. The batches are exactly those the on-device
path gathers from the same plan.
"""

import collections
import concurrent.futures
from typing import Iterator

import numpy as np
from jax.sharding import Mesh

from vireid_jax import sampling
from vireid_jax.runtime import sharding

PREFETCH_STEPS = 3


def step_batches(visible_images: np.ndarray, infrared_images: np.ndarray,
                 plan: sampling.EpochPlan, mesh: Mesh,
                 prefetch: int = PREFETCH_STEPS) -> Iterator[tuple]:
  """Yields (visible (B,H,W,3), infrared (B,H,W,3)) uint8 batch-sharded arrays, step by step.

  Args:
    visible_images, infrared_images: (N, H, W, 3) uint8 host arrays, the same on every process.
    plan: the epoch's plan (numpy, the same on every process); row s gives step s's images.
    mesh: the training mesh.
    prefetch: steps prepared ahead of the one being yielded.
  """

  def batch(row: int):
    return (sharding.gather_rows(visible_images, plan.visible_index[row], mesh),
            sharding.gather_rows(infrared_images, plan.infrared_index[row], mesh))

  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='host-feed') as pool:
    pending = collections.deque()
    try:
      for row in range(len(plan.visible_index)):
        pending.append(pool.submit(batch, row))
        if len(pending) > prefetch:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for future in pending:  # stopped early (an error, an interrupt): drop queued work
        future.cancel()
