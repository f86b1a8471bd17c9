"""Methods as plug-ins: the interface every method implements, and `load` by name.

The core (data, network, extraction, Jaccard + DBSCAN, memory primitives, the train-step
skeleton, the epoch loop, checkpoints, multi-host, evaluation, reports) knows no method. A method
is a package `vireid_jax/methods/<name>/` whose `METHOD` is a `Method`: a frozen dataclass of
plain functions, chosen by `config.method` and imported by name (no table of methods to edit).
docs/new_method.md walks through adding one.

What a method decides, per epoch (host side, numpy) and per step (device side, pure JAX):

  schedule(config, epoch) -> EpochSchedule       stage, learning-rate epoch, evaluate?, restart?
  associate(config, schedule, clusters, pids)    cross-modality association of the epoch's
      -> (arrays: dict[str, ndarray], stats)     clusters (process 0 only; shared by the core)
  build_memories(config, schedule, clusters, arrays) -> pytree of arrays (its memory tables)
  plan_epoch(config, schedule, clusters, arrays, train_sets, rng) -> sampling.EpochPlan
  step_fns(config, phase, label_repeats)         augment / loss / update_memories of one step
      -> StepFns

The core's step (train_state.make_train_step) gathers each modality's images by the plan,
calls `augment`, runs the network on [visible inputs; infrared inputs], splits the neck
features back per modality, differentiates `loss` with respect to the parameters, applies the
optimiser, then calls `update_memories` with the same features. Everything a step reads comes
from the device (the plan of the whole epoch goes there once), so the step stays a pure
function of device arrays; `phase` is static and the core compiles one step per phase (and per
`label_repeats`, the static bound of the memory updates' rounds on accelerators that the core
computes from each epoch's plan: `train_state.step_label_repeats`; None on CPU).
"""

import dataclasses
import importlib
from typing import Any, Callable, Dict, Hashable, Mapping, NamedTuple, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from vireid_jax.config import ConfigError

Metrics = Dict[str, jax.Array]
Association = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
  """Where an epoch stands in a method's schedule (host side).

  Attributes:
    epoch: 0-based epoch of the run.
    stage: 1-based training stage.
    stage_epoch: 0-based epoch within the stage.
    phase: static key of the compiled step this epoch runs (hashable; the core compiles one
      step per distinct phase, e.g. MBCCM's stage, or PGM's stage and epoch parity).
    lr_epoch: the epoch the optimiser's step schedule reads (`train_state.learning_rate`).
    evaluate: whether the test set is scored after this epoch (the best checkpoint is chosen
      on it, as the authors' code does).
    restart: this epoch starts its stage afresh from the previous stage's best checkpoint, with
      a new optimiser state (PGM's stage 2); False continues the run's state.
  """
  epoch: int
  stage: int
  stage_epoch: int
  phase: Hashable
  lr_epoch: int
  evaluate: bool
  restart: bool = False


class StepBatch(NamedTuple):
  """What one step takes: images per modality (as the plans index them; each must divide by
  the device count) and the network's input rows per modality after augmentation (e.g. two
  views of every visible image; each must divide by config.model.bn_groups)."""
  visible_images: int
  infrared_images: int
  visible_inputs: int
  infrared_inputs: int


class StepFns(NamedTuple):
  """The device-side pieces of one method step (pure functions, traced inside the core's jit).

  augment(rng, visible (Bv, H, W, 3) uint8, infrared (Bi, H, W, 3) uint8)
      -> (visible_inputs (Nv, H, W, 3) float32, infrared_inputs (Ni, H, W, 3) float32),
      normalised network inputs (e.g. Nv = 2 Bv for two visible views).
  loss(f_visible (Nv, C), f_infrared (Ni, C), visible_labels (Bv,) int32,
       infrared_labels (Bi,) int32, memories) -> (loss () float32, metrics {name: ()}),
      on the un-normalised neck features; differentiated with respect to the parameters.
  update_memories(memories, f_visible, f_infrared, visible_labels, infrared_labels)
      -> memories, after the optimiser step, from the same features (no gradient).
  """
  augment: Callable[..., Tuple[jax.Array, jax.Array]]
  loss: Callable[..., Tuple[jax.Array, Metrics]]
  update_memories: Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Reporting:
  """What report.md, curves.png and the epoch line show of a method's own numbers.

  Attributes:
    loss_terms: ((metric key, label), ...) of the step's metrics, drawn beside the total loss
      and tabulated as 'loss/<key>' columns.
    association_columns: ((title, history key, format), ...) of the association's statistics.
    association_quality: ((history key, label), ...) in [0, 1], drawn with the cluster purity.
    association_counts: ((history key, label), ...) drawn on their own axis.
    epoch_line: entry -> the method's part of the one-line epoch summary ('' for nothing).
  """
  loss_terms: Sequence[Tuple[str, str]] = ()
  association_columns: Sequence[Tuple[str, str, str]] = ()
  association_quality: Sequence[Tuple[str, str]] = ()
  association_counts: Sequence[Tuple[str, str]] = ()
  epoch_line: Callable[[Mapping[str, Any]], str] = lambda entry: ''


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: the functions the core's epoch loop and step call.

  Attributes:
    name: the `config.method` value that selects it.
    validate: config -> None; raises config.ConfigError for settings this method cannot run.
    batch_sizes: config -> StepBatch, the images and network inputs of one step (checked
      against the device count and config.model.bn_groups before any data is loaded).
    schedule: (config, epoch) -> EpochSchedule.
    associate: (config, schedule, clusters, (visible_pids, infrared_pids)) -> (arrays, stats).
      `clusters` is the epoch's `clustering.epoch.EpochClusters`; the true identities serve
      diagnostics and `config.cluster.oracle` only. Runs on process 0; the core shares the
      arrays with every process (any dict of numpy arrays; {} when the epoch needs none).
    build_memories: (config, schedule, clusters, arrays) -> pytree of arrays: the memory tables
      the epoch's steps read and update (the core puts them on the devices, replicated).
    plan_epoch: (config, schedule, clusters, arrays, (visible_set, infrared_set), rng)
      -> sampling.EpochPlan, the image indices and labels of every step of the epoch; the
      ImageSets carry cameras and paths (no images). `rng` is seeded by (config.seed, epoch).
    step_fns: (config, phase, label_repeats) -> StepFns for the compiled step of that phase.
      `label_repeats` is None or a `train_state.LabelRepeats` (visible, infrared): how often
      one cluster label occurs at most in one step's labels of each modality; the method
      passes the bound of each memory update (`memory.rounds_bound`) to `memory.update_memory`
      as max_rounds, so the by-rank update's loop has a trip count XLA knows.
    reporting: what the reports show of this method.
  """
  name: str
  validate: Callable[[ml_collections.ConfigDict], None]
  batch_sizes: Callable[[ml_collections.ConfigDict], StepBatch]
  schedule: Callable[[ml_collections.ConfigDict, int], EpochSchedule]
  associate: Callable[..., Tuple[Association, dict]]
  build_memories: Callable[..., Any]
  plan_epoch: Callable[..., Any]
  step_fns: Callable[..., StepFns]
  reporting: Reporting = Reporting()


class MethodStop(RuntimeError):
  """A method's condition that ends the run with one line (e.g. a matching that leaves clusters
  without a partner, where the authors' code would crash). Raised in `associate` on process 0,
  it stops every process with the same message; checkpoints are intact."""


class UnknownMethodError(ConfigError):
  """`config.method` names no package under vireid_jax/methods/."""


def missing_settings(config: ml_collections.ConfigDict, fields: Sequence[str]) -> list[str]:
  """The dotted `fields` (e.g. 'sampler.visible_images') that `config` lacks."""
  missing = []
  for dotted in fields:
    node = config
    for part in dotted.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        missing.append(dotted)
        break
      node = node[part]
  return missing


def require_settings(config: ml_collections.ConfigDict, fields: Sequence[str],
                     config_function: str) -> None:
  """ConfigError naming the missing `fields` and where the method's settings come from (e.g.
  'vireid_jax.methods.pgm.config.pgm_config, called by configs/pgm_*.py')."""
  missing = missing_settings(config, fields)
  if missing:
    raise ConfigError(f'config.method = {config.method!r} needs its own settings '
                      f'({", ".join(missing)} missing): start from {config_function}')


def available() -> list[str]:
  """Names of the method packages found under vireid_jax/methods/."""
  import pkgutil  # pylint: disable=import-outside-toplevel
  return sorted(info.name for info in pkgutil.iter_modules(__path__) if info.ispkg)


def load(name: str) -> Method:
  """The `Method` of `vireid_jax.methods.<name>` (its module-level `METHOD`)."""
  if not isinstance(name, str) or not name.isidentifier() or name not in available():
    raise UnknownMethodError(f'config.method = {name!r}: no such method; available: '
                             f'{available()} (each a package under vireid_jax/methods/)')
  module = importlib.import_module(f'{__name__}.{name}')
  method = getattr(module, 'METHOD', None)
  if not isinstance(method, Method):
    raise UnknownMethodError(f'vireid_jax/methods/{name}/ defines no METHOD = methods.Method('
                             f'...); see docs/new_method.md')
  return method


def for_config(config: ml_collections.ConfigDict) -> Method:
  """The method `config.method` chooses."""
  return load(config.method)
