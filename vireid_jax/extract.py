"""Eval-mode feature extraction: jitted, batched, and sharded across the mesh.

Used between epochs to cluster the training images and by the evaluation protocols. Each
modality goes through its own stem. Images are gathered on the device from an array that is
already there, so extracting the training set every epoch costs no host-to-device copy.
"""

import functools
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from vireid_jax import augment
from vireid_jax import models
from vireid_jax import sharding
from vireid_jax.data.types import INFRARED, VISIBLE


def make_extract_fn(model, mean, std, flip: bool) -> Callable:
  """Returns f(variables, images (N,H,W,3) uint8 on device, index (B,), modality) -> (B, C)."""

  @functools.partial(jax.jit, static_argnames=('modality',))
  def extract_batch(variables, images, index, modality):
    batch = augment.normalize(images[index], mean, std)

    def forward(x):
      if modality == VISIBLE:
        return model.apply(variables, x, None, train=False)
      return model.apply(variables, None, x, train=False)

    features = forward(batch)
    if flip:  # average with the mirror image, then renormalise (the usual re-id flip test)
      features = features + forward(batch[:, :, ::-1, :])
      features = models.l2_normalize(features)
    return features

  return extract_batch


def extract_features(extract_batch: Callable, variables, images, modality: str, batch_size: int,
                     mesh: Mesh, desc: str = '', progress: bool = True) -> np.ndarray:
  """L2-normalised eval features of every image, in order.

  Args:
    extract_batch: from `make_extract_fn`.
    variables: model variables, replicated on the mesh.
    images: (N, H, W, 3) uint8, a numpy array (copied to the devices once) or a jax array
      already on them.
    modality: VISIBLE or INFRARED, which stem to use.
    batch_size: images per call; rounded up to a multiple of the device count. The last batch
      is padded by repeating the final image so every call has the same shape (one compile).
  Returns:
    (N, C) float32 numpy array.
  """
  if modality not in (VISIBLE, INFRARED):
    raise ValueError(f'modality must be {VISIBLE!r} or {INFRARED!r}, got {modality!r}')
  num_images = len(images)
  batch_size = -(-batch_size // mesh.size) * mesh.size
  if not isinstance(images, jax.Array):
    images = sharding.put_replicated(np.asarray(images), mesh)
  index_sharding = sharding.batch_sharded(mesh)
  outputs = []
  starts = range(0, num_images, batch_size)
  for start in tqdm(starts, desc=desc or f'extract {modality}', disable=not progress,
                    leave=False, unit='batch'):
    index = np.minimum(np.arange(start, start + batch_size), num_images - 1).astype(np.int32)
    index = jax.device_put(index, index_sharding)
    outputs.append(extract_batch(variables, images, index, modality))
  if not outputs:
    return np.zeros((0, 0), np.float32)
  # One transfer at the end keeps dispatch asynchronous during the loop.
  features = np.concatenate([np.asarray(o) for o in outputs])[:num_images]
  return features.astype(np.float32)
