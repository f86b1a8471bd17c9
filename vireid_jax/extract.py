"""Eval-mode feature extraction: jitted, batched, and sharded across every device of every
process.

Used between epochs to cluster the training images and by the evaluation protocols. Each
modality goes through its own stem. Each batch is split over the whole mesh, so every process
extracts its share; the features are gathered to every process at the end. Images come either
from an array already on the devices (gathered there: no host-to-device copy per epoch) or
from host memory (each process copies only the rows its devices extract).
"""

import contextlib
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vireid_jax import augment
from vireid_jax.runtime import console
from vireid_jax import models
from vireid_jax.runtime import sharding
from vireid_jax.data.types import INFRARED, VISIBLE


class ExtractFns(NamedTuple):
  """The two jitted entry points of `make_extract_fn`.

  from_batch(variables, batch (B,H,W,3) uint8, modality) -> (B, C) features;
  from_resident(variables, images (N,H,W,3) uint8 on the devices, index (B,), modality).
  """
  from_batch: Callable
  from_resident: Callable


def make_extract_fn(model, mean, std, flip: bool, renormalize: bool = True,
                    precision: Optional[str] = None) -> ExtractFns:
  """Jitted eval features of a batch: the network's L2-normalised features f(x).

  Args:
    model: the two-stream network (eval mode returns neck / |neck|).
    mean, std: per-channel normalisation of the uint8 pixels.
    flip: average with the mirror image's features, f(x) + f(flip x).
    renormalize: with `flip`, L2-normalise that sum: l2norm(f(x) + f(flip x)), the usual
      re-id flip test (MBCCM's `eval.flip`, PGM's test features, TS:235-242). False keeps the
      plain mean (f(x) + f(flip x)) / 2, whose norm is cos(angle / 2) <= 1: PGM's clustering
      features, never renormalised (EV:43-49; docs/pgm.md, quirk 6). Ignored without `flip`.
    precision: the matmul and convolution precision of float32 compute ('default', 'high',
      'highest'; None = JAX's default): on a TPU float32 'default' is one bfloat16 pass, on a
      GPU TF32; 'highest' is true float32 on both.
  """

  def features_of(variables, batch, modality):
    with (jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()):
      return _features(variables, batch, modality)

  def _features(variables, batch, modality):
    batch = augment.normalize(batch, mean, std)

    def forward(x):
      if modality == VISIBLE:
        return model.apply(variables, x, None, train=False)
      return model.apply(variables, None, x, train=False)

    features = forward(batch)
    if flip:
      total = features + forward(batch[:, :, ::-1, :])
      features = models.l2_normalize(total) if renormalize else total / 2
    return features

  jit = functools.partial(jax.jit, static_argnames=('modality',))
  return ExtractFns(
      from_batch=jit(features_of),
      from_resident=jit(lambda variables, images, index, modality: features_of(
          variables, images[index], modality)))


def for_config(model, config, clustering: bool = False) -> ExtractFns:
  """The extraction a run uses: `model` computing in `config.model.extract_dtype` at
  `config.model.extract_precision`, flip-averaged as `config.eval` says (test features) or as
  `config.cluster` says (`clustering`: the training features clustered every epoch)."""
  from vireid_jax.models import resnet  # pylint: disable=import-outside-toplevel
  m = config.model
  dtype = m.dtype if m.extract_dtype == 'compute' else m.extract_dtype
  extract_model = model.clone(dtype=resnet.compute_dtype(dtype))
  if clustering:
    flip, renormalize = config.cluster.flip, config.cluster.renormalize
  else:
    flip, renormalize = config.eval.flip, True
  precision = None if m.extract_precision == 'default' else m.extract_precision
  return make_extract_fn(extract_model, tuple(config.data.mean), tuple(config.data.std), flip,
                         renormalize=renormalize, precision=precision)


def extract_features(extract_fns: ExtractFns, variables, images, modality: str,
                     batch_size: int, mesh: Mesh, desc: str = '',
                     progress: bool = True) -> np.ndarray:
  """Eval features of every image (as `make_extract_fn` made them), in order, on every process.

  Args:
    extract_fns: from `make_extract_fn`.
    variables: model variables, replicated on the mesh.
    images: (N, H, W, 3) uint8: a jax array replicated on the mesh, or a numpy array in host
      memory (the same on every process).
    modality: VISIBLE or INFRARED, which stem to use.
    batch_size: images per call; rounded up to a multiple of the device count. The last batch
      is padded by repeating the final image so every call has the same shape (one compile);
      the padding rows are dropped.
  Returns:
    (N, C) float32 numpy array.
  """
  if modality not in (VISIBLE, INFRARED):
    raise ValueError(f'modality must be {VISIBLE!r} or {INFRARED!r}, got {modality!r}')
  num_images = len(images)
  if not num_images:
    return np.zeros((0, 0), np.float32)
  batch_size = -(-batch_size // mesh.size) * mesh.size
  resident = isinstance(images, jax.Array)
  outputs = []
  starts = range(0, num_images, batch_size)
  for start in console.bar(starts, desc=desc or f'extract {modality}', unit='batch',
                           enabled=progress):
    index = np.minimum(np.arange(start, start + batch_size), num_images - 1).astype(np.int32)
    if resident:
      index = sharding.put_global(index, sharding.batch_sharded(mesh))
      outputs.append(extract_fns.from_resident(variables, images, index, modality))
    else:
      batch = sharding.gather_rows(images, index, mesh)
      outputs.append(extract_fns.from_batch(variables, batch, modality))
  # One gather at the end keeps dispatch asynchronous during the loop.
  features = sharding.to_host(jnp.concatenate(outputs))[:num_images]
  return features.astype(np.float32)
