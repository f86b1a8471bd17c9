"""A workdir belongs to one configuration: what a resumed run or `--mode eval` must match.

Every checkpoint records the config it was written with (and training also writes it to
`<workdir>/config.json`). Before anything is restored from a workdir, `check_workdir_config`
compares this run's config with the one recorded by the checkpoint about to be restored (the
newest whose record reads; config.json when none does) and stops with one line naming each
field that differs, unless the field cannot change what the checkpoints mean (`FREE`).
Without this check a changed model reaches orbax as arrays of other shapes, which looked like
damage.

Training (`mode='train'`) compares every field but `FREE`. `--mode eval` compares only what
builds the network and the test images (`EVAL_COMPARED`, minus `FREE`): the training-only
settings say how a checkpoint was made, not how to read it. A workdir without checkpoints is
not checked: nothing of it is restored, so the config may still change.

A field that the recorded config lacks (written before the field existed) counts as having
its default (the method's config function, else `config.base_config()`): code that lacked the
field behaved as that default does. A field that the recorded config holds and this config lacks (removed since) is not
compared: no setting reads it any more (and a checkpoint that then no longer fits is named as
such by checkpoint.restore, never treated as damaged).
"""

import json
import shlex
from typing import Any, Iterable, Optional

import ml_collections

from vireid_jax.runtime import checkpoint
from vireid_jax import config as config_lib
from vireid_jax.runtime import files

CONFIG_NAME = 'config.json'

# Dotted prefixes of fields that may differ from the workdir's config.json, and why.
FREE = (
    # Where things are, not what they are: the prepared copy is keyed by what defines the
    # images (dataset, layout or trial, size, synthetic settings), and moving data is allowed.
    'data.root',
    'data.cache_dir',
    'data.num_workers',  # decode threads
    'data.images_on_device',  # where the training images live; the step is the same (tested)
    # The starting weights are read when a run starts; a resumed run restores its checkpoint
    # instead, and --mode eval restores a checkpoint.
    'model.pretrained',
    'model.imagenet_url',
    # The arithmetic of the feature extraction (dtype, matmul precision), not what the weights
    # are: evaluating a checkpoint both ways is a question a user asks of the same workdir.
    'model.extract_dtype',
    'model.extract_precision',
    'pretrain',  # how the synthetic ImageNet stand-in (a starting weight file) is made
    # What to do when a modality has no cluster: the NoClustersStop message itself asks to
    # resume with 'skip'.
    'cluster.on_no_clusters',
    # How long to train: the checkpoint after epoch N is the same whatever the planned total
    # (learning rates follow optim.lr_boundaries, stages schedule.stage2_start), so a finished
    # run can be continued for more epochs.
    'schedule.epochs',
    # Evaluation that neither the training steps nor the choice of the best checkpoint read
    # (eval.sysu_mode, sysu_shots, llcm_setting, train_trials and flip define the number that
    # picks the best checkpoint: they are compared when training).
    'schedule.eval_every',
    'eval.batch_size',
    'eval.trials',
    'eval.checkpoint',
    'eval.ranklist_queries',
    'eval.max_rank',
    'eval.at_start',
    'log_every',  # progress-bar refreshes
    'save_pseudo_labels',  # extra files for studies
)

# What `--mode eval` compares: the method, the network, and what makes the test images.
EVAL_COMPARED = (
    'method',
    'model',
    # Which network a checkpoint evaluates may follow the stages (PCLHD: stage 2's teacher).
    'schedule.stage2_start',
    'data.dataset',
    'data.layout',
    'data.synthetic',
    'data.synthetic_ids',
    'data.image_height',
    'data.image_width',
    'data.mean',
    'data.std',
    'data.trial',
)

# Fields added with a default other than what the code did before them: a config.json that
# lacks one was trained with this value, not with today's default.
ABSENT_MEANS = {
    'cluster.order': 'reader',  # MBCCM clusters in path order since 2026-12-07
    'model.neck_two_pass': False,  # the neck's variance in two passes since 2026-12-07
}

# Compared when training, not by `--mode eval`: evaluation normalises with the running
# statistics, which the training variance's form does not change once they are saved.
EVAL_IGNORED = (
    'model.neck_two_pass',
)

MAX_LISTED = 6  # differing fields named in the message; the rest are counted
MAX_VALUE_CHARS = 40


class _Missing:
  """The saved value of a field that config.json lacks and base_config() does not know."""

  def __repr__(self):
    return '(not in config.json)'


MISSING = _Missing()


class WorkdirConfigMismatch(config_lib.ConfigError):
  """This run's config differs from the one the workdir's checkpoints were written with."""


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'model.width': 16, ...} of a nested dict (the JSON form of a ConfigDict)."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f'{prefix}.{key}' if prefix else str(key)))
  return flat


def _as_json(config: ml_collections.ConfigDict) -> dict:
  """The config as config.json holds it (tuples as lists, placeholders as null)."""
  return json.loads(config.to_json_best_effort())


def _matches(field: str, prefixes: Iterable[str]) -> bool:
  return any(field == prefix or field.startswith(prefix + '.') for prefix in prefixes)


def differences(saved: dict, current: dict, defaults: dict, mode: str = 'train'
                ) -> list[tuple[str, Any, Any]]:
  """Fields whose value in `current` differs from `saved`, as (field, saved, current).

  Args:
    saved, current, defaults: configs in their JSON form (nested dicts): the workdir's
      config.json, this run's, and `base_config()`'s (the value of a field `saved` lacks).
    mode: 'train' compares every field but FREE; 'eval' only EVAL_COMPARED but FREE.

  Returns:
    The differing fields in the order of `current`; a field `saved` lacks is compared as
    `ABSENT_MEANS` or `defaults` give it (else with the saved value `MISSING`).
  """
  saved, current, defaults = _flatten(saved), _flatten(current), _flatten(defaults)
  found = []
  for field, value in current.items():
    if _matches(field, FREE) or (mode == 'eval' and (not _matches(field, EVAL_COMPARED) or
                                                     _matches(field, EVAL_IGNORED))):
      continue
    if field in saved:
      before = saved[field]
    elif field in ABSENT_MEANS:
      before = ABSENT_MEANS[field]
    elif field in defaults:
      before = defaults[field]
    else:
      before = MISSING
    if before != value:
      found.append((field, before, value))
  return found


def _literal(value: Any) -> str:
  """`value` as Python (and a --config override) writes it: tuples for JSON lists."""
  if value is MISSING:
    return repr(value)
  return repr(tuple(value) if isinstance(value, list) else value)


def _shown(value: Any) -> str:
  text = _literal(value)
  return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + '...'


def _override(field: str, value: Any) -> str:
  """The flag that sets `field` to `value`, as a shell word: --config.a.b=value."""
  text = value if isinstance(value, str) else _literal(value)
  return shlex.quote(f'--config.{field}={text}')


def mismatch_message(workdir: str, source: str, found: list[tuple[str, Any, Any]],
                     mode: str) -> str:
  """One line: what differs (saved -> now) and the two ways on."""
  listed = ', '.join(f'{field} {_shown(before)} -> {_shown(now)}'
                     for field, before, now in found[:MAX_LISTED])
  if len(found) > MAX_LISTED:
    listed += f', and {len(found) - MAX_LISTED} more'
  # A flag cannot set a field to None (or back to a value config.json lacks).
  restorable = [(field, before) for field, before, _ in found
                if before is not MISSING and before is not None]
  if len(found) <= MAX_LISTED and len(restorable) == len(found):
    back = ('rerun with the saved values (' +
            ' '.join(_override(field, before) for field, before in restorable) + ')')
  else:
    back = (f'rerun with the config the run was started with (all its values: '
            f'{files.path(workdir) / CONFIG_NAME})')
  what = 'was trained with' if mode == 'train' else 'holds checkpoints of'
  return (f'{files.path(workdir)} {what} another config ({source}): {listed}. Either {back}, '
          f'or choose a new --workdir for the new settings.')


def saved_config(workdir: str, candidates: list[tuple[str, int]]
                 ) -> Optional[tuple[dict, str]]:
  """(config, where it was read) of the first of `candidates` (kind, epoch) whose record
  reads, else of `<workdir>/config.json`; None when there is neither.

  The checkpoint's own record comes first: it is what the arrays were written with, even in a
  workdir whose config.json another run has since rewritten."""
  for kind, epoch in candidates:
    try:
      return (json.loads(checkpoint.read_record(workdir, kind, epoch)['config']),
              f'as its checkpoint {kind}/{epoch} records')
    except (checkpoint.CheckpointError, KeyError, TypeError, ValueError):
      continue  # an unreadable record: the restore will say so; try the next
  path = files.path(workdir) / CONFIG_NAME
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text()), f'as {path} records'
  except ValueError:
    return None


def _candidates(workdir: str, kinds: tuple[str, ...]) -> list[tuple[str, int]]:
  return [(kind, epoch) for kind in kinds
          for epoch in reversed(checkpoint.epochs(workdir, kind))]


def _defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every setting's default for this config's method: its own config function where it has
  one (methods.Method.default_config), else the core's `base_config()`."""
  from vireid_jax import methods  # pylint: disable=import-outside-toplevel  (methods import config)
  method = methods.for_config(config)
  return method.default_config() if method.default_config else config_lib.base_config()


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str,
                         mode: str = 'train') -> None:
  """Stops when `config` differs from the config that the workdir's checkpoints were written
  with (nothing to compare: no checkpoint yet, or none whose config can be read).

  Args:
    config: this run's config.
    workdir: the run folder. For `--mode eval` with `config.eval.checkpoint` a checkpoint
      folder, that folder's own record is compared instead.
    mode: 'train' (before resuming: every field but FREE) or 'eval' (before restoring:
      EVAL_COMPARED but FREE).

  Raises:
    WorkdirConfigMismatch: one line naming each differing field (saved -> now) and what to do.
  """
  if mode not in ('train', 'eval'):
    raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
  which = config.eval.checkpoint
  if mode == 'train':
    candidates = _candidates(workdir, (checkpoint.LATEST, checkpoint.BEST))
  elif which in (checkpoint.BEST, checkpoint.LATEST):
    candidates = _candidates(workdir, (which,))
  elif which == 'both':
    candidates = _candidates(workdir, (checkpoint.LATEST, checkpoint.BEST))
  else:
    folder = files.path(which)
    if not folder.name.isdigit():
      return  # not a checkpoint folder: restore_path says so
    workdir = str(checkpoint.workdir_of(folder))
    candidates = [(folder.parent.name, int(folder.name))]
  if not candidates:
    return  # nothing restored, so nothing to protect: the config may change freely
  saved = saved_config(workdir, candidates)
  if saved is None:
    return  # nothing recorded: checkpoint.restore still checks every array's shape
  found = differences(saved[0], _as_json(config), _as_json(_defaults(config)), mode)
  if found:
    raise WorkdirConfigMismatch(mismatch_message(workdir, saved[1], found, mode))
