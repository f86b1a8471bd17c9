"""Orbax checkpoints of a training run: the latest one (to resume) and the best one (by mAP).

Layout under the workdir:
  checkpoints/latest/<epoch>/   params, batch stats, optimiser state + a JSON record
  checkpoints/best/<epoch>/     the same, for the evaluation with the highest mAP
Orbax writes each checkpoint under a temporary name and renames it when complete, so a run
killed mid-save (even with kill -9) still has its previous checkpoint intact, and a restart
resumes from it. The epoch number is the number of finished epochs.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST = 'latest'
BEST = 'best'


def _manager(workdir: str, kind: str) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints', kind)
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options)


def save(workdir: str, kind: str, epoch: int, state: Any, record: dict) -> None:
  """Writes `state` (a pytree of arrays) and `record` (JSON-able) as checkpoint `epoch`."""
  with _manager(workdir, kind) as manager:
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                record=ocp.args.JsonSave(record)), force=True)
    manager.wait_until_finished()


def latest_epoch(workdir: str, kind: str = LATEST) -> int | None:
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints', kind)
  if not os.path.isdir(directory):
    return None
  with _manager(workdir, kind) as manager:
    return manager.latest_step()


def restore(workdir: str, kind: str, abstract_state: Any, epoch: int | None = None):
  """Returns (state, record) of checkpoint `epoch` (default: the newest) of `kind`.

  `abstract_state` is a pytree with the target structure (arrays or jax.ShapeDtypeStruct with
  shardings); restored arrays take its shardings.
  """
  with _manager(workdir, kind) as manager:
    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
      raise FileNotFoundError(
          f'no {kind} checkpoint in {os.path.join(workdir, "checkpoints", kind)}: train first '
          f'(python main.py --config ... --workdir {workdir})')
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()))
  return restored.state, restored.record


def restore_path(path: str, abstract_state: Any):
  """Restores a checkpoint from an explicit directory `.../checkpoints/<kind>/<epoch>`."""
  path = os.path.abspath(path)
  epoch_dir = os.path.basename(path.rstrip('/'))
  kind_dir = os.path.dirname(path.rstrip('/'))
  if not epoch_dir.isdigit() or not os.path.isdir(path):
    raise FileNotFoundError(
        f'{path} is not a checkpoint directory: expected <workdir>/checkpoints/<best|latest>/<epoch>')
  workdir = os.path.dirname(os.path.dirname(kind_dir))
  return restore(workdir, os.path.basename(kind_dir), abstract_state, int(epoch_dir))
