"""Methods as plug-ins: the interface every method implements, and `load` by name.

The core (data, network, extraction, Jaccard + DBSCAN, memory primitives, samplers,
augmentation ops, optimisers, the train step, the epoch loop, checkpoints, multi-host,
evaluation, reports) knows no method. A method is a package `vireid_jax/methods/<name>/` (or
any importable module: `config.method = 'my_lab.my_method'`) whose `METHOD` is a `Method`: a
frozen dataclass of plain functions. docs/new_method.md walks through writing one.

What a method decides, per epoch (host side, numpy) and per step (device side, pure JAX):

  schedule(config, epoch) -> EpochSchedule       stage, phase, learning-rate epoch, evaluate?,
                                                 restart the stage from the best checkpoint?
  clustering: Clustering                         per modality (the default), and/or jointly over
                                                 both modalities with the method's distance
  refine(config, schedule, clusters, pids)       relabel, soft labels, weights (process 0)
  associate(config, schedule, clusters, pids)    cross-modality association (process 0)
  build_memories(config, schedule, clusters, arrays) -> its memory tables (any pytree)
  plan_epoch(config, schedule, clusters, arrays, train_sets, rng) -> Plan (or EpochPlan)
  init_state(config, network_variables, rng, previous) -> MethodVariables
                                                 its own trainable parameters and state
  step_fns(config, phase, label_repeats) -> StepFns   augment, one or more updates, state hooks
  eval_variables(config, epoch, network_variables, method_state) -> the network evaluated

Epoch hooks may also declare keyword parameters the core then passes (`EPOCH_EXTRAS`):
`features` (the epoch's extracted training features), `previous` (the memories at the end of
the previous epoch, as a state dict of numpy arrays, or None) and `rng` (a numpy Generator
seeded by (config.seed, epoch, hook)); a hook that does not name one does not get it.

The core's step (train_state.make_train_step) gathers each stream's images by the plan, calls
`augment`, then for every `Update` in order: runs the network on the update's pair of inputs,
differentiates the update's `loss` with respect to the network's and the method's trainable
parameters, applies the optimiser (config.optim), and calls the update's `update_memories`
with the same outputs. `before_updates` and `after_updates` update the method's own state
(e.g. an EMA teacher's BatchNorm statistics and parameters) inside the same jitted step.
Everything a step reads comes from the device (the plan of the whole epoch goes there once),
so the step stays a pure function of device arrays; `phase` is static and the core compiles one
step per phase (and per `label_repeats`, see `train_state.step_label_repeats`).
"""

import dataclasses
import importlib
import inspect
from typing import (Any, Callable, Dict, Hashable, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

import jax
import ml_collections
import numpy as np

from vireid_jax.config import ConfigError
from vireid_jax.data.types import INFRARED, VISIBLE

Metrics = Dict[str, jax.Array]
Association = Dict[str, np.ndarray]
# Keyword parameters an epoch hook may declare to receive (see the module docstring).
EPOCH_EXTRAS = ('features', 'previous', 'rng')


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
  """Where an epoch stands in a method's schedule (host side).

  Attributes:
    epoch: 0-based epoch of the run.
    stage: 1-based training stage.
    stage_epoch: 0-based epoch within the stage.
    phase: static key of the compiled step this epoch runs (hashable; the core compiles one
      step per distinct phase, e.g. MBCCM's stage, or PGM's stage and epoch parity).
    lr_epoch: the epoch the optimiser's learning-rate schedule reads (`optim.learning_rate`).
    evaluate: whether the test set is scored after this epoch (the best checkpoint is chosen
      on it, by `config.eval.select_by`, as the authors' code does).
    restart: this epoch starts its stage afresh from the previous stage's best checkpoint, with
      a new optimiser state and `init_state(..., previous=...)` (PGM's and PCLHD's stage 2);
      False continues the run's state.
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


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every step of an epoch: named streams of images, each drawn from one modality.

  Attributes:
    streams: {stream: {array name: (steps, B, ...) array}}. Every stream holds 'index' (rows of
      its modality's training ImageSet, int32) and 'label' (its cluster labels, int32), plus
      any array the method adds (per-sample weights, soft targets, joint labels, ...). The
      core adds 'camera' (int32, from the ImageSet) before the plan goes to the devices. B may
      differ between streams; each must divide by the device count.
    modalities: {stream: 'visible' | 'infrared'}; streams named 'visible' or 'infrared' may be
      left out (their name is their modality).
    repeat_unit: labels were drawn in runs of this many images per cluster (the samplers'
      instances_per_cluster): the static bound of the by-rank memory rounds is rounded in
      these units (`train_state.step_label_repeats`).
  """
  streams: Mapping[str, Mapping[str, np.ndarray]]
  modalities: Mapping[str, str] = dataclasses.field(default_factory=dict)
  repeat_unit: int = 1

  def modality(self, stream: str) -> str:
    if stream in self.modalities:
      return self.modalities[stream]
    if stream in (VISIBLE, INFRARED):
      return stream
    raise ValueError(f'plan stream {stream!r} names no modality: give Plan(modalities='
                     f'{{{stream!r}: "visible" | "infrared"}})')

  @property
  def steps(self) -> int:
    first = next(iter(self.streams.values()))
    return int(first['index'].shape[0])

  @classmethod
  def of(cls, epoch_plan, repeat_unit: int = 1, **extra: Mapping[str, np.ndarray]) -> 'Plan':
    """A Plan from a sampler's `sampling.EpochPlan` (streams 'visible' and 'infrared'); `extra`
    adds arrays to a stream: `Plan.of(plan, visible={'weight': w})`."""
    streams = {
        VISIBLE: {'index': epoch_plan.visible_index, 'label': epoch_plan.visible_label},
        INFRARED: {'index': epoch_plan.infrared_index, 'label': epoch_plan.infrared_label}}
    for stream, arrays in extra.items():
      streams.setdefault(stream, {}).update(arrays)
    return cls(streams=streams, repeat_unit=repeat_unit)


def as_plan(plan) -> Plan:
  """`plan_epoch`'s result as a Plan (a sampler's EpochPlan becomes streams 'visible' and
  'infrared')."""
  if isinstance(plan, Plan):
    return plan
  if all(hasattr(plan, f) for f in ('visible_index', 'infrared_index', 'visible_label',
                                    'infrared_label')):
    return Plan.of(plan)
  raise TypeError(f'plan_epoch must return a methods.Plan or a sampling.EpochPlan, got '
                  f'{type(plan).__name__}')


class MethodVariables(NamedTuple):
  """A method's own variables, kept in the train state beside the network's.

  params: trainable parameters (heads, projections, prompts), optimised with the network's
    by config.optim (parameter-group paths start with 'method/'); {} for none.
  state: non-trained state the step updates itself (an EMA teacher's parameters and BatchNorm
    statistics, counters); {} for none.
  Both must keep their structure and shapes for the whole run (they are checkpointed and
  restored into a structure made by `init_state(..., previous=None)`).
  """
  params: Any = {}
  state: Any = {}


class StepContext(NamedTuple):
  """What a step's functions may read besides outputs, batch and memories (device arrays).

  Attributes:
    params: the method's trainable parameters (inside `loss`, the differentiated ones).
    state: the method's own state (after `before_updates`, if any).
    extras: what `before_updates` returned for the losses ({} without it).
    network: network(variables, visible_inputs, infrared_inputs) -> (outputs, batch_stats): the
      core's network in train mode, for a teacher's forward (pass its own variables
      {'params', 'batch_stats'}; wrap in jax.lax.stop_gradient where nothing may flow back).
    network_variables: the student network's {'params', 'batch_stats'} as they stand (in
      `after_updates`: after every update of the step).
    inputs: the step's augmented network inputs, {name: (N, H, W, 3) float32}.
    epoch: () int32 epoch of the run.
    step: () int32 optimiser iterations taken in the run before this step.
    rng: a key for the method's own randomness (independent of the augmentation's).
  """
  params: Any
  state: Any
  extras: Any
  network: Callable
  network_variables: Any
  inputs: Mapping[str, jax.Array]
  epoch: jax.Array
  step: jax.Array
  rng: jax.Array


class Update(NamedTuple):
  """One optimiser update of a step (a method may ask for several, each over its own loss).

  Attributes:
    loss: (outputs, batch, memories, ctx) -> (loss () float32, metrics {name: ()}).
      outputs = {'visible': {'neck': (Nv, C), 'pooled': (Nv, C')}, 'infrared': {...}}: the
      network's train-mode outputs for the update's `inputs` (neck features un-normalised);
      batch = {stream: {'index', 'label', 'camera', ...}}: the step's row of the plan;
      memories: the method's tables as they stand; ctx: a StepContext. Differentiated with
      respect to the network's and the method's trainable parameters.
    update_memories: (memories, outputs, batch, ctx) -> memories, after the optimiser update,
      from the same outputs (no gradient); None leaves them as they are.
    inputs: the (visible, infrared) names in augment's output this update's forward runs on
      (BatchNorm normalises them together, as the reference's one forward does).
    name: '' for the first update; later ones prefix their metrics ('joint' -> 'joint/total').
  """
  loss: Callable[..., Tuple[jax.Array, Metrics]]
  update_memories: Optional[Callable[..., Any]] = None
  inputs: Tuple[str, str] = (VISIBLE, INFRARED)
  name: str = ''


class StepFns(NamedTuple):
  """The device-side pieces of one method step (pure functions, traced inside the core's jit).

  augment(rng, images, batch) -> inputs: images = {stream: (B, H, W, 3) uint8} gathered by the
      plan; returns the normalised network inputs {name: (N, H, W, 3) float32} (e.g.
      'visible' = [view A; view B] of the visible stream, 2B rows).
  updates: the step's optimiser updates, in order (one for most methods).
  before_updates(ctx) -> (state, extras): before the first update (e.g. a teacher's forward:
      its BatchNorm statistics into the state, its features as extras for the losses).
  after_updates(ctx) -> (state, metrics): after the last update (e.g. the EMA of the
      teacher's parameters towards ctx.network_variables['params']).
  """
  augment: Callable[..., Mapping[str, jax.Array]]
  updates: Sequence[Update]
  before_updates: Optional[Callable[..., Tuple[Any, Any]]] = None
  after_updates: Optional[Callable[..., Tuple[Any, Metrics]]] = None


@dataclasses.dataclass(frozen=True)
class Clustering:
  """How the core clusters an epoch's features (`clustering.epoch`).

  Attributes:
    per_modality: Jaccard + DBSCAN on each modality (config.cluster), giving visible_labels /
      infrared_labels and their centres. False: the joint clustering's labels, split per
      modality (one label space), stand in for them.
    joint_distance: (config, features (N, C), is_infrared (N,) bool) -> scipy sparse (N, N)
      distance over both modalities ([visible; infrared] rows), clustered by DBSCAN with
      `joint_eps` (None: config.cluster.eps) and config.cluster.min_samples into
      `EpochClusters.joint_labels`; None: no joint clustering.
    joint_eps: (config) -> eps of the joint DBSCAN; None for config.cluster.eps.
    joint_when: (config, schedule) -> bool: the epochs that cluster jointly (PCLHD: stage 2
      only); None: every epoch.
    evaluated_features: (config, schedule) -> bool: also extract the training images with the
      network the method evaluates (`eval_variables`, e.g. a teacher), passed to the epoch
      hooks as `features.eval_visible` / `features.eval_infrared`.
  """
  per_modality: bool = True
  joint_distance: Optional[Callable[..., Any]] = None
  joint_eps: Optional[Callable[[ml_collections.ConfigDict], float]] = None
  joint_when: Optional[Callable[..., bool]] = None
  evaluated_features: Optional[Callable[..., bool]] = None


class EpochFeatures(NamedTuple):
  """The epoch's extracted training features (host numpy, every process): the clustering's,
  and with `Clustering.evaluated_features` the evaluated network's (else None)."""
  visible: np.ndarray
  infrared: np.ndarray
  eval_visible: Optional[np.ndarray] = None
  eval_infrared: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class Reporting:
  """What report.md, curves.png and the epoch line show of a method's own numbers.

  Attributes:
    loss_terms: ((metric key, label), ...) of the step's metrics, drawn beside the total loss
      and tabulated as 'loss/<key>' columns.
    association_columns: ((title, history key, format), ...) of the association's statistics:
      the keys `associate` returns in its stats (e.g. 'match/pairs'), one column each in
      report.md's epoch table.
    association_quality: ((history key, label), ...) in [0, 1], drawn with the cluster purity.
    association_counts: ((history key, label), ...) drawn on their own axis.
    epoch_line: entry -> the method's part of the one-line epoch summary ('' for nothing).
  """
  loss_terms: Sequence[Tuple[str, str]] = ()
  association_columns: Sequence[Tuple[str, str, str]] = ()
  association_quality: Sequence[Tuple[str, str]] = ()
  association_counts: Sequence[Tuple[str, str]] = ()
  epoch_line: Callable[[Mapping[str, Any]], str] = lambda entry: ''


def _no_association(config, schedule, clusters, pids):
  del config, schedule, clusters, pids
  return {}, {}


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: the functions the core's epoch loop and step call.

  Attributes:
    name: the `config.method` value that selects it.
    validate: config -> None; raises config.ConfigError for settings this method cannot run.
    batch_sizes: config -> StepBatch of the first update's forward (checked against the device
      count and config.model.bn_groups before any data is loaded).
    schedule: (config, epoch) -> EpochSchedule.
    build_memories: (config, schedule, clusters, arrays) -> pytree of arrays: the memory tables
      the epoch's steps read and update (the core puts them on the devices, replicated). May
      declare `previous`, `features`, `rng` (EPOCH_EXTRAS).
    plan_epoch: (config, schedule, clusters, arrays, (visible_set, infrared_set), rng) -> Plan
      or sampling.EpochPlan: the image indices, labels and any per-sample arrays of every step;
      the ImageSets carry cameras and paths (no images). `rng` is seeded by (config.seed,
      epoch).
    step_fns: (config, phase, label_repeats) -> StepFns for the compiled step of that phase.
      `label_repeats` is None or a `train_state.LabelRepeats`: how often one cluster label
      occurs at most in one step's labels of each stream; a method passes the bound of each
      memory update (`memory.rounds_bound`) to `memory.update_memory` as max_rounds, so the
      by-rank update's loop has a trip count XLA knows.
    associate: (config, schedule, clusters, (visible_pids, infrared_pids)) -> (arrays, stats).
      `clusters` is the epoch's `clustering.epoch.EpochClusters`; the true identities serve
      diagnostics and `config.cluster.oracle` only. Runs on process 0; the core shares the
      arrays with every process (any dict of numpy arrays; {} when the epoch needs none). May
      declare `features`.
    refine: None or (config, schedule, clusters, pids) -> clusters, between clustering and
      association on process 0 (relabel, add per-image arrays to `clusters.extra`: soft
      labels, weights). May declare `features`, `rng`.
    clustering: what the core clusters (`Clustering`).
    init_state: None or (config, network_variables, rng, previous) -> MethodVariables: the
      method's own variables at a fresh start (previous None; network_variables are the
      initial weights) and when a stage restarts from a best checkpoint (previous: the
      restored MethodVariables; network_variables the restored network's).
    eval_variables: None or (config, epoch, network_variables, method_state) -> the network's
      {'params', 'batch_stats'} that evaluation, `--mode eval` and inference use after
      `epoch` (0-based); None: the trained network itself.
    default_config: None or () -> ConfigDict with every setting the method reads (its
      config.py's function); what a workdir's saved config lacks is compared against it.
    reporting: what the reports show of this method.
  """
  name: str
  validate: Callable[[ml_collections.ConfigDict], None]
  batch_sizes: Callable[[ml_collections.ConfigDict], StepBatch]
  schedule: Callable[[ml_collections.ConfigDict, int], EpochSchedule]
  build_memories: Callable[..., Any]
  plan_epoch: Callable[..., Any]
  step_fns: Callable[..., StepFns]
  associate: Callable[..., Tuple[Association, dict]] = _no_association
  refine: Optional[Callable[..., Any]] = None
  clustering: Clustering = Clustering()
  init_state: Optional[Callable[..., MethodVariables]] = None
  eval_variables: Optional[Callable[..., Any]] = None
  default_config: Optional[Callable[[], ml_collections.ConfigDict]] = None
  reporting: Reporting = Reporting()


class MethodStop(RuntimeError):
  """A method's condition that ends the run with one line (e.g. a matching that leaves clusters
  without a partner, where the authors' code would crash). Raised in `associate`, `refine` or
  `plan_epoch`, it stops every process with the same message; checkpoints are intact."""


class UnknownMethodError(ConfigError):
  """`config.method` names no method package and no importable module with a METHOD."""


def call_with_extras(fn: Callable, *args, **extras):
  """`fn(*args, **those of extras that fn declares)`: the epoch hooks' optional keywords."""
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):  # a builtin or C function: no optional keywords
    return fn(*args)
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return fn(*args, **extras)
  return fn(*args, **{k: v for k, v in extras.items() if k in parameters})


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


def _module_name(name: str) -> str:
  return name if '.' in name else f'{__name__}.{name}'


def load(name: str) -> Method:
  """The `Method` of `vireid_jax.methods.<name>`, or of the module `name` names when it holds
  a dot ('my_lab.my_method': a method kept in your own repository); its `METHOD`."""
  if not isinstance(name, str) or not all(part.isidentifier() for part in name.split('.')):
    raise UnknownMethodError(f'config.method = {name!r}: not a method name; available: '
                             f'{available()}, or the dotted path of a module of yours')
  if '.' not in name and name not in available():
    raise UnknownMethodError(f'config.method = {name!r}: no such method; available: '
                             f'{available()} (each a package under vireid_jax/methods/), or '
                             f'the dotted path of a module of yours (e.g. my_lab.my_method)')
  try:
    module = importlib.import_module(_module_name(name))
  except ModuleNotFoundError as error:
    if error.name and _module_name(name).startswith(error.name):  # the module itself is absent
      raise UnknownMethodError(
          f'config.method = {name!r}: no module {error.name!r} can be imported (is its folder '
          f'on PYTHONPATH?); built-in methods: {available()}') from error
    raise
  method = getattr(module, 'METHOD', None)
  if not isinstance(method, Method):
    raise UnknownMethodError(f'{_module_name(name)} defines no METHOD = vireid_jax.methods.'
                             f'Method(...); see docs/new_method.md')
  return method


def for_config(config: ml_collections.ConfigDict) -> Method:
  """The method `config.method` chooses."""
  return load(config.method)
