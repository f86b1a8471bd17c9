"""A trained run, opened for inference: its config, its network and one checkpoint's variables.

The config is the one the checkpoint records (what its arrays were written with; training also
writes `<workdir>/config.json`, read when the record cannot be), so nothing but `--workdir` is
needed. The variables come from `evaluation.driver.restore_variables`, the function
`--mode eval` restores with: which network a checkpoint stands for is decided there alone.

`weights_sha256` identifies what the checkpoint computes: the SHA-256 of every inference
array (parameters and BatchNorm statistics, by name, dtype, shape and bytes). It is the same for
any copy of the checkpoint folder, and it differs for any other weights; embeddings files and
exported models carry it, so a gallery embedded by another checkpoint is told apart.
"""

import dataclasses
import hashlib
import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from vireid_jax import config as config_lib
from vireid_jax.data.types import MODALITIES
from vireid_jax.inference.errors import InferenceError
from vireid_jax.runtime import checkpoint
from vireid_jax.runtime import files
from vireid_jax.runtime import run_config

BEST, LATEST = checkpoint.BEST, checkpoint.LATEST


@dataclasses.dataclass
class TrainedRun:
  """What inference needs of a run.

  Attributes:
    config: the run's config (ConfigDict).
    model: `models.build_model(config.model)`.
    variables: {'params', 'batch_stats'} of the checkpoint, replicated on `mesh`.
    mesh: every local device.
    checkpoint: the checkpoint folder, `<workdir>/checkpoints/<kind>/<epoch>`.
    epoch: the epochs it had finished.
    weights_sha256: see the module docstring.
  """
  config: ml_collections.ConfigDict
  model: object
  variables: dict
  mesh: object
  checkpoint: str
  epoch: int
  weights_sha256: str

  @property
  def image_size(self) -> tuple[int, int]:
    return int(self.config.data.image_height), int(self.config.data.image_width)

  @property
  def modalities(self) -> tuple[str, ...]:
    """The modalities with a trained stem in the checkpoint."""
    return tuple(m for m in MODALITIES if f'{m}_stem' in self.variables['params'])

  def check_modality(self, modality: str) -> str:
    if modality in self.modalities:
      return modality
    trained = ' and '.join(self.modalities) or 'no'
    raise InferenceError(
        f'modality {modality!r}: {self.checkpoint} holds a network for {trained} images; '
        f'choose one of {", ".join(self.modalities)} (thermal and near-infrared images are '
        f"'{MODALITIES[-1]}')")

  def extraction(self) -> dict:
    """How images become features here: what an embeddings file must share to be compared."""
    c = self.config
    return {'image_height': int(c.data.image_height), 'image_width': int(c.data.image_width),
            'resize': 'lanczos', 'mean': [float(v) for v in c.data.mean],
            'std': [float(v) for v in c.data.std], 'flip': bool(c.eval.flip),
            'extract_dtype': str(c.model.extract_dtype),
            'extract_precision': str(c.model.extract_precision)}


def _as_tuples(value):
  """JSON lists back to the tuples the config files write (build_model and friends take
  either; tuples keep the config hashable where a jit argument needs it)."""
  if isinstance(value, dict):
    return {k: _as_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_as_tuples(v) for v in value)
  return value


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved` with every field it lacks taken from `defaults` (a config written before the field
  existed behaves as its default: runtime/run_config.py)."""
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_defaults(merged[key], value)
  return merged


def config_from_json(saved: dict) -> ml_collections.ConfigDict:
  """The ConfigDict of a recorded config (its JSON form)."""
  defaults = json.loads(config_lib.base_config().to_json_best_effort())
  return ml_collections.ConfigDict(_as_tuples(_with_defaults(saved, defaults)))


def _resolve_checkpoint(workdir: Optional[str], which: str) -> tuple[str, str, int]:
  """(workdir, kind, epoch) of `which`: 'best', 'latest' or a checkpoint folder."""
  if which in (BEST, LATEST):
    if not workdir:
      raise InferenceError('no --workdir: name the run folder that training wrote '
                           '(e.g. runs/demo)')
    if not files.path(workdir).is_dir():
      raise InferenceError(f'{workdir} does not exist: expected the folder of a trained run '
                           f'(--workdir of the training command)')
    found = {kind: checkpoint.epochs(workdir, kind) for kind in (BEST, LATEST)}
    if not found[BEST] and not found[LATEST]:
      raise InferenceError(
          f'{workdir} has no checkpoints (nothing in {checkpoint.directory(workdir, BEST)} or '
          f'{checkpoint.directory(workdir, LATEST)}): train there first, or name the workdir '
          f'of a trained run')
    if not found[which]:
      other = LATEST if which == BEST else BEST
      raise InferenceError(
          f'{workdir} has no {which} checkpoint (its {other} checkpoints: epochs '
          f'{found[other]}): use --checkpoint={other}')
    return workdir, which, found[which][-1]
  folder = files.path(which)
  if not folder.name.isdigit() or not folder.is_dir():
    raise InferenceError(f'--checkpoint={which}: expected best, latest or a checkpoint folder '
                         f'<workdir>/checkpoints/<best|latest>/<epoch>')
  return str(checkpoint.workdir_of(folder)), folder.parent.name, int(folder.name)


def weights_sha256(variables: dict) -> str:
  """SHA-256 of every array of `variables` by name, dtype, shape and bytes (see module doc)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f'{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def load_run(workdir: Optional[str], which: str = BEST,
             config: Optional[ml_collections.ConfigDict] = None) -> TrainedRun:
  """Opens checkpoint `which` ('best', 'latest' or a checkpoint folder) of the run `workdir`.

  Args:
    config: None: the config the checkpoint records. A config (`--config`): compared with the
      recorded one as `--mode eval` compares (only what builds the network and the test
      images may differ: runtime/run_config.py), then used, so e.g. `eval.flip` or
      `eval.batch_size` may be changed.

  Raises:
    InferenceError: no such run or checkpoint, or no recorded config.
    run_config.WorkdirConfigMismatch: `config` builds another network or other test images.
    checkpoint.CheckpointError: the checkpoint cannot be read.
  """
  # pylint: disable=import-outside-toplevel  (JAX and the model: only once a run is opened)
  from vireid_jax import models
  from vireid_jax.evaluation import driver
  from vireid_jax.runtime import sharding

  workdir, kind, epoch = _resolve_checkpoint(workdir, which)
  saved = run_config.saved_config(workdir, [(kind, epoch)])
  if saved is None:
    raise InferenceError(f'{workdir} records no config (neither the record of '
                         f'{kind}/{epoch} nor {run_config.CONFIG_NAME} reads): it was not '
                         f'written by this code\'s training')
  recorded, source = saved
  if config is None:
    config = config_from_json(recorded)
  else:
    found = run_config.differences(
        recorded, json.loads(config.to_json_best_effort()),
        json.loads(config_lib.base_config().to_json_best_effort()), mode='eval')
    if found:
      raise run_config.WorkdirConfigMismatch(
          run_config.mismatch_message(workdir, source, found, 'eval'))
  model = models.build_model(config.model)
  mesh = sharding.make_mesh(jax.local_devices())
  folder = checkpoint.directory(workdir, kind) / str(epoch)
  # The one way to a checkpoint's inference variables (the evaluation's own).
  variables, record = driver.restore_variables(config, model, workdir, mesh,
                                               which if which in (BEST, LATEST) else str(folder))
  return TrainedRun(config=config, model=model, variables=variables, mesh=mesh,
                    checkpoint=os.fspath(folder), epoch=int(record['epoch']),
                    weights_sha256=weights_sha256(variables))
