"""The inference network as a portable `jax.export` artifact, and its input contract.

`export_run` serialises one function, `features(images, modality)`:

  images    (batch, H, W, 3) uint8 RGB, already resized to the run's H x W (PIL Lanczos from
            the original, greyscale replicated into 3 channels: inference/images.py); the batch
            size is symbolic, any batch runs;
  modality  int32 scalar: 0 visible, 1 infrared (both stems are in the artifact);
  returns   (batch, C) float32, L2-normalised features: the evaluation's extraction
            (`extract.for_config`: normalisation by the run's mean / std inside, the run's
            extraction dtype and precision, flip-averaged when the run's evaluation is).

The weights are constants inside the artifact, so it needs nothing but JAX (and jaxlib) to run:
`jax.export.deserialize(bytes).call(images, np.int32(0))`. It is lowered for CPU, CUDA and TPU
at once; JAX runs the lowering of the platform it finds. The JSON beside it states the contract
and the SHA-256 of the checkpoint's weights (inference/run.py) and of the artifact.
"""

import hashlib
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.inference.errors import InferenceError
from vireid_jax.runtime import files

PLATFORMS = ('cpu', 'cuda', 'tpu')
MODALITY_CODES = {VISIBLE: 0, INFRARED: 1}
SUFFIX = '.jaxexport'


def inference_function(run):
  """features(images uint8 (B, H, W, 3), modality int32 ()) -> (B, C) float32, with the run's
  weights as constants: the extraction `--mode embed` runs (inference/embedding.py)."""
  # pylint: disable=import-outside-toplevel
  from vireid_jax import extract as extract_lib
  fns = extract_lib.for_config(run.model, run.config)
  variables = jax.device_get(run.variables)  # constants of the artifact, on no device

  def branch(modality):
    return lambda images: fns.from_batch(variables, images, modality)

  def features(images, modality):
    # Only the chosen stem runs; both are compiled in.
    return jax.lax.cond(modality == MODALITY_CODES[VISIBLE], branch(VISIBLE),
                        branch(INFRARED), images)

  return features


def export(run, platforms: Sequence[str] = PLATFORMS) -> jax_export.Exported:
  """The `jax.export.Exported` of `inference_function(run)` with a symbolic batch size."""
  height, width = run.image_size
  batch, = jax_export.symbolic_shape('batch')
  images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)
  modality = jax.ShapeDtypeStruct((), jnp.int32)
  return jax_export.export(jax.jit(inference_function(run)),
                           platforms=tuple(platforms))(images, modality)


def contract(run, exported: jax_export.Exported, artifact_sha256: str) -> dict:
  """The JSON that tells a user of the artifact what goes in and what comes out."""
  c = run.config
  height, width = run.image_size
  return {
      'format': 'jax.export (load with jax.export.deserialize; call .call(images, modality))',
      'jax_version': jax.__version__,
      'calling_convention_version': int(exported.calling_convention_version),
      'platforms': list(exported.platforms),
      'inputs': {
          'images': {'shape': ['batch', height, width, 3], 'dtype': 'uint8',
                     'channels': 'RGB (greyscale replicated into 3 channels)',
                     'resize': f'PIL Image.convert("RGB"), then Image.resize(({width}, '
                               f'{height}), Image.LANCZOS) from the original image'},
          'modality': {'shape': [], 'dtype': 'int32', 'values': dict(MODALITY_CODES)},
      },
      'normalisation': {'mean': [float(v) for v in c.data.mean],
                        'std': [float(v) for v in c.data.std],
                        'where': 'inside the artifact: (pixels / 255 - mean) / std'},
      'flip_averaged': bool(c.eval.flip),
      'output': {'shape': ['batch', int(run.model.num_features)], 'dtype': 'float32',
                 'l2_normalised': True},
      'distance': '-cosine: -(query_features @ gallery_features.T), smaller is nearer',
      'method': str(c.method), 'dataset': str(c.data.dataset),
      'checkpoint': run.checkpoint, 'checkpoint_epoch': int(run.epoch),
      'weights_sha256': run.weights_sha256,
      'artifact_sha256': artifact_sha256,
  }


def default_path(run) -> str:
  """<workdir>/export/<kind>_epoch<epoch>.jaxexport for the run's checkpoint."""
  folder = files.path(run.checkpoint)
  workdir = folder.parent.parent.parent
  return os.fspath(workdir / 'export' / f'{folder.parent.name}_epoch{folder.name}{SUFFIX}')


def contract_path(artifact_path: str) -> str:
  base = artifact_path[:-len(SUFFIX)] if artifact_path.endswith(SUFFIX) else artifact_path
  return base + '.json'


def export_run(run, path: str = '', platforms: Sequence[str] = PLATFORMS) -> tuple[str, str]:
  """Writes the artifact at `path` (default `default_path(run)`) and its contract JSON beside
  it (same name, .json); returns both paths."""
  path = os.fspath(path) or default_path(run)
  try:
    import flatbuffers  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise InferenceError('--mode export needs the flatbuffers package, which jax.export '
                         'serialises with: pip install -r requirements.txt (or pip install '
                         'flatbuffers)') from None
  data = bytes(export(run, platforms).serialize())
  # Reading it back is the proof that it loads; and the contract reports what was read.
  exported = jax_export.deserialize(bytearray(data))
  digest = hashlib.sha256(data).hexdigest()
  artifact = files.write_bytes(path, data)
  meta = files.write_text(contract_path(path),
                          json.dumps(contract(run, exported, digest), indent=2) + '\n')
  return str(artifact), str(meta)


def load(path: str) -> jax_export.Exported:
  """The exported function of an artifact (what a user without vireid_jax does by hand)."""
  with open(path, 'rb') as f:
    return jax_export.deserialize(bytearray(f.read()))


def call(exported: jax_export.Exported, images: np.ndarray, modality: str) -> np.ndarray:
  """(N, C) features of (N, H, W, 3) uint8 images through an exported artifact."""
  return np.asarray(exported.call(images, np.int32(MODALITY_CODES[modality])))
