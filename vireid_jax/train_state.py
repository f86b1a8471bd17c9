"""The train state and the jitted train step every method shares.

One `init_train_state` builds the state; `abstract_train_state` runs it under `jax.eval_shape`
(shapes and shardings for restoring a checkpoint) and `create_train_state` under
`jax.jit(out_shardings=...)` (the real, replicated state), so the two can never disagree.

The step is a pure function of device arrays: (state, memories, images, epoch inputs) ->
(state, memories, metrics). Its random key and learning rate are computed inside from the
state's step counter and the epoch, so the host transfers nothing per step; the plan of the
whole epoch goes to the devices once. The step is the skeleton every method shares (gather each
stream's images, augment, then per update: forward, loss, gradient, optimiser, memory update;
the method's state hooks around them; shardings, donation); what is the method's comes from its
`StepFns` (vireid_jax/methods).
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax import optim
from vireid_jax.models import initial_weights
from vireid_jax.runtime import console
from vireid_jax.runtime import multihost
from vireid_jax.runtime import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # () int32 steps (iterations) taken since the start of the run
  params: Any  # the network's
  batch_stats: Any  # the network's BatchNorm running statistics
  opt_state: Any  # of trainable(state)
  method_params: Any = dataclasses.field(default_factory=dict)  # the method's trainable
  method_state: Any = dataclasses.field(default_factory=dict)  # the method's own, not trained

  def trainable(self) -> dict:
    """What the optimiser updates: {'network': params, 'method': method_params}."""
    return {'network': self.params, 'method': self.method_params}

  def network_variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def method_variables(self) -> methods.MethodVariables:
    return methods.MethodVariables(self.method_params, self.method_state)


@flax.struct.dataclass
class EpochInputs:
  """What every step of an epoch reads besides the images and the state.

  Attributes:
    plan: the epoch's plan streams, {stream: {name: (steps, B, ...) array}}, split along B.
    epoch: () int32, 0-based epoch of the run; seeds the augmentation.
    first_step: () int32 `TrainState.step` at the start of the epoch: the step's row of the
      plan is `state.step - first_step`.
    lr_epoch: () int32, the epoch the learning-rate schedule reads (the method's
      `EpochSchedule.lr_epoch`: the run's epoch, or the epoch within a restarted stage).
    modalities: ((stream, modality), ...) of the plan's streams not named after their
      modality: static (part of the tree's structure, so a new set of streams retraces).
  """
  plan: Any
  epoch: jax.Array
  first_step: jax.Array
  lr_epoch: jax.Array
  modalities: tuple = flax.struct.field(pytree_node=False, default=())


def learning_rate(optim_cfg: ml_collections.ConfigDict, epoch):
  """The default group's learning rate at `epoch` (optim.learning_rate)."""
  return optim.learning_rate(optim_cfg, epoch)


def make_optimizer(optim_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """config.optim's optimiser without the learning rate (optim.make_optimizer)."""
  return optim.make_optimizer(optim_cfg)


def _method_variables(config, method: methods.Method, network_variables, rng,
                      previous=None) -> methods.MethodVariables:
  if method.init_state is None:
    return methods.MethodVariables({}, {})
  return methods.MethodVariables(*method.init_state(config, network_variables, rng, previous))


def init_train_state(config: ml_collections.ConfigDict, model, rng: jax.Array) -> TrainState:
  """The state before training: random weights (stems identical if configured), the method's
  own variables, the optimiser at 0."""
  image_shape = (config.data.image_height, config.data.image_width)
  variables = models.init_variables(model, rng, image_shape)
  if config.model.identical_stems:
    variables = models.copy_visible_stem_to_infrared(variables)
  method = methods.for_config(config)
  own = _method_variables(config, method, variables, jax.random.fold_in(rng, 1))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                     batch_stats=variables['batch_stats'], opt_state=None,
                     method_params=own.params, method_state=own.state)
  return state.replace(opt_state=make_optimizer(config.optim).init(state.trainable()))


def abstract_train_state(config: ml_collections.ConfigDict, model, mesh: Mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the train state, without computing it."""
  shapes = jax.eval_shape(functools.partial(init_train_state, config, model),
                          jax.random.PRNGKey(0))
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      shapes)


def create_train_state(config: ml_collections.ConfigDict, model, mesh: Mesh,
                       say: Callable[[str], None] = console.line) -> TrainState:
  """The initial state, replicated on `mesh`, from the weights `config.model.pretrained` names.

  Resolves them first (initial_weights.resolve: found, fetched or made) and tells `say` one
  line naming the file loaded, or the warning of a random start. The method's own variables
  (e.g. a teacher copying the network) are made from the loaded weights.
  """
  init = functools.partial(init_train_state, config, model)
  state = jax.jit(init, out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(config.seed))
  pretrained = initial_weights.resolve(config)
  say(initial_weights.describe(pretrained))
  if not pretrained:
    return state
  variables = jax.device_get(state.network_variables())
  # The converted-weights cache is an orbax checkpoint, whose writes synchronise processes:
  # with several processes each converts on its own (seconds for a ResNet-50).
  cache_dir = None
  if multihost.process_count() == 1:
    cache_dir = os.path.join(os.path.dirname(os.path.abspath(pretrained)),
                             'vireid_jax_converted')
  variables = models.weights.load_imagenet_resnet(pretrained, variables, cache_dir=cache_dir)
  variables = sharding.put_replicated(variables, mesh)
  state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  method = methods.for_config(config)
  if method.init_state is None:
    return state
  return reset_method_variables(config, state, mesh, previous=None)


def reset_method_variables(config: ml_collections.ConfigDict, state: TrainState, mesh: Mesh,
                           previous: Optional[methods.MethodVariables]) -> TrainState:
  """`state` with the method's variables made afresh from its network (`init_state`), and the
  optimiser's state of the method's parameters kept only where they are unchanged: the
  caller restarts the optimiser where needed."""
  method = methods.for_config(config)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)

  def make(network_variables, previous):
    return _method_variables(config, method, network_variables, rng, previous)
  own = jax.jit(make, out_shardings=sharding.replicated(mesh))(state.network_variables(),
                                                              previous)
  return state.replace(method_params=own.params, method_state=own.state)


def restart_optimizer(config: ml_collections.ConfigDict, state: TrainState,
                      mesh: Mesh) -> TrainState:
  """`state` with a new optimiser state (moments and count at zero), replicated.

  For a method whose later stage starts afresh from an earlier stage's weights (PGM)."""
  tx = make_optimizer(config.optim)
  opt_state = jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(state.trainable())
  return state.replace(opt_state=opt_state)


def epoch_sharding(mesh: Mesh, plan, modalities: tuple = ()) -> EpochInputs:
  """Shardings of `EpochInputs` for `plan`'s streams: every plan array split along its batch
  axis (axis 1), scalars replicated."""
  split = NamedSharding(mesh, PartitionSpec(None, sharding.DATA_AXIS))
  replicated = sharding.replicated(mesh)
  return EpochInputs(plan=jax.tree.map(lambda _: split, plan), epoch=replicated,
                     first_step=replicated, lr_epoch=replicated, modalities=modalities)


def plan_arrays(plan: methods.Plan, train_sets: Optional[Mapping[str, Any]] = None) -> dict:
  """The plan's streams as the step reads them: int arrays as int32, floats as float32, and
  each stream's 'camera' from its modality's ImageSet (`train_sets`: {modality: ImageSet})."""
  streams = {}
  for stream, arrays in plan.streams.items():
    arrays = dict(arrays)
    if train_sets is not None and 'camera' not in arrays:
      cams = np.asarray(train_sets[plan.modality(stream)].cams)
      arrays['camera'] = cams[np.asarray(arrays['index'])]
    for name, value in arrays.items():
      value = np.asarray(value)
      if np.issubdtype(value.dtype, np.integer) or value.dtype == bool:
        arrays[name] = value.astype(np.int32)
      else:
        arrays[name] = value.astype(np.float32)
    streams[stream] = arrays
  return streams


def put_epoch_inputs(plan, epoch: int, first_step: int, mesh: Mesh,
                     lr_epoch: int | None = None,
                     train_sets: Optional[Mapping[str, Any]] = None) -> EpochInputs:
  """The epoch's inputs on the devices (every process passes the same plan).

  `plan`: a methods.Plan or a sampling.EpochPlan; `lr_epoch` defaults to `epoch` (a run whose
  schedule never restarts); `train_sets` ({modality: ImageSet}) adds each stream's cameras."""
  plan = methods.as_plan(plan)
  arrays = plan_arrays(plan, train_sets)
  inputs = EpochInputs(plan=arrays, epoch=np.int32(epoch), first_step=np.int32(first_step),
                       lr_epoch=np.int32(epoch if lr_epoch is None else lr_epoch),
                       modalities=tuple(sorted(plan.modalities.items())))
  return sharding.put_global(inputs, epoch_sharding(mesh, arrays, inputs.modalities))


@dataclasses.dataclass(frozen=True)
class LabelRepeats:
  """Static bounds of how often one cluster label occurs in one step of a plan, per stream
  (`memory.label_repeats` of each stream's labels): `repeats['visible']`."""
  counts: tuple  # ((stream, bound), ...)

  def __getitem__(self, stream: str) -> int:
    return dict(self.counts)[stream]

  @property
  def visible(self) -> int:
    return self['visible']

  @property
  def infrared(self) -> int:
    return self['infrared']


def step_label_repeats(config: ml_collections.ConfigDict, plan) -> Optional[LabelRepeats]:
  """`make_train_step`'s label_repeats for the steps of `plan` (host side, numpy).

  None where the memories are updated sequentially (the CPU default): the bound would change
  nothing there, and leaving it out keeps one compiled step per phase.
  """
  if memory_lib.resolve_update_method(config.memory.update_method) != 'by_rank':
    return None
  plan = methods.as_plan(plan)
  return LabelRepeats(tuple(
      (stream, memory_lib.label_repeats(arrays['label'], unit=plan.repeat_unit))
      for stream, arrays in sorted(plan.streams.items())))


def network_fn(model):
  """network(variables, visible, infrared) -> (outputs, batch_stats): the network in train mode,
  its outputs split per modality ({'visible': {'neck', 'pooled'}, 'infrared': {...}})."""

  def network(variables, visible, infrared):
    (neck, pooled), new_vars = model.apply(variables, visible, infrared, train=True,
                                           mutable=['batch_stats'])
    rows = [visible.shape[0]]
    neck_v, neck_i = jnp.split(neck, rows)
    pooled_v, pooled_i = jnp.split(pooled, rows)
    outputs = {'visible': {'neck': neck_v, 'pooled': pooled_v},
               'infrared': {'neck': neck_i, 'pooled': pooled_i}}
    return outputs, new_vars['batch_stats']
  return network


def _prefixed(metrics: Mapping[str, Any], name: str) -> dict:
  return dict(metrics) if not name else {f'{name}/{k}': v for k, v in metrics.items()}


def make_train_step(model, config: ml_collections.ConfigDict, mesh: Mesh, phase,
                    images_on_device: bool = True, step_fns: methods.StepFns | None = None,
                    label_repeats: Optional[LabelRepeats] = None):
  """The jitted train step of one phase of the configured method, sharded over `mesh`.

  With `images_on_device` the step is (state, memories, images {modality: (N,H,W,3) uint8},
  epoch_inputs) -> (state, memories, metrics): images, state and memories are replicated, the
  plan is split along its batch axis, so each device gathers and augments its share of every
  stream. Otherwise `images` holds the step's batches themselves, {stream: (B,H,W,3) uint8}
  split along B (each host feeds its own rows: see `data.host_feed`); everything else is the
  same, so both give the same step.

  Args:
    model: the network (`models.build_model(config.model)`).
    config: the run's config; `config.method` names the method.
    mesh: the device mesh.
    phase: the method's static phase (its `EpochSchedule.phase`, e.g. MBCCM's stage 1 or 2).
    images_on_device: see above.
    step_fns: the method's pieces; default `methods.for_config(config).step_fns(config, phase,
      label_repeats)`.
    label_repeats: static bounds of how often one cluster label occurs in one step
      (`step_label_repeats` of the epoch's plan): the by-rank memory updates loop that many
      rounds per copy of the labels, a trip count XLA knows. None: as many rounds as samples
      (always correct, slower). A step given a plan that exceeds it writes NaN rows into the
      memories (the next loss is NaN and the run stops).
  """
  if step_fns is None:
    step_fns = methods.for_config(config).step_fns(config, phase, label_repeats)
  tx = make_optimizer(config.optim)
  network = network_fn(model)
  optim_cfg = config.optim

  def loss_fn(trainable, batch_stats, memories, update, net_inputs, batch, ctx):
    variables = {'params': trainable['network'], 'batch_stats': batch_stats}
    visible, infrared = (net_inputs[name] for name in update.inputs)
    outputs, new_stats = network(variables, visible, infrared)
    loss, metrics = update.loss(outputs, batch, memories, ctx._replace(params=trainable['method']))
    # 'total' is the very value differentiated, so a NaN anywhere in it is seen by the host.
    metrics = dict(metrics, total=loss)
    return loss, (metrics, new_stats, outputs)

  def train_step(state, memories, images, inputs: EpochInputs):
    row_index = state.step - inputs.first_step
    row = lambda a: jax.lax.dynamic_index_in_dim(a, row_index, keepdims=False)
    batch = jax.tree.map(row, inputs.plan)
    if images_on_device:
      modality_of = dict(inputs.modalities)
      stream_images = {stream: images[modality_of.get(stream, stream)][arrays['index']]
                       for stream, arrays in batch.items()}
    else:
      stream_images = images
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), inputs.epoch),
                             row_index)
    net_inputs = step_fns.augment(rng, stream_images, batch)
    steps_in_epoch = next(iter(inputs.plan.values()))['index'].shape[0]
    rates = optim.learning_rates(optim_cfg, optim.epoch_position(
        optim_cfg, inputs.lr_epoch, row_index, steps_in_epoch))
    trainable, batch_stats, opt_state = state.trainable(), state.batch_stats, state.opt_state
    labels = optim.param_labels(optim_cfg, trainable) if optim_cfg.get('groups') else None
    ctx = methods.StepContext(
        params=state.method_params, state=state.method_state, extras={}, network=network,
        network_variables=state.network_variables(), inputs=net_inputs, epoch=inputs.epoch,
        step=state.step, rng=jax.random.fold_in(rng, 1 << 20))
    method_state = state.method_state
    metrics = {}
    if step_fns.before_updates is not None:
      method_state, extras = step_fns.before_updates(ctx)
      ctx = ctx._replace(state=method_state, extras=extras)
    for update in step_fns.updates:
      ctx = ctx._replace(network_variables={'params': trainable['network'],
                                            'batch_stats': batch_stats})
      differentiated = functools.partial(loss_fn, batch_stats=batch_stats, memories=memories,
                                         update=update, net_inputs=net_inputs, batch=batch,
                                         ctx=ctx)
      grads, (update_metrics, batch_stats, outputs) = jax.grad(differentiated, has_aux=True)(
          trainable)
      updates, opt_state = tx.update(grads, opt_state, trainable)
      updates = optim.apply_learning_rates(optim_cfg, updates, rates, labels)
      trainable = optax.apply_updates(trainable, updates)
      ctx = ctx._replace(params=trainable['method'])
      if update.update_memories is not None:
        memories = update.update_memories(memories, outputs, batch, ctx)
      update_metrics = dict(update_metrics, grad_norm=optax.tree_utils.tree_norm(grads))
      metrics.update(_prefixed(update_metrics, update.name))
    if step_fns.after_updates is not None:
      ctx = ctx._replace(network_variables={'params': trainable['network'],
                                            'batch_stats': batch_stats})
      method_state, state_metrics = step_fns.after_updates(ctx)
      metrics.update(state_metrics)
    new_state = TrainState(state.step + 1, trainable['network'], batch_stats, opt_state,
                           trainable['method'], method_state)
    return new_state, memories, metrics

  replicated = sharding.replicated(mesh)
  images = replicated if images_on_device else sharding.batch_sharded(mesh)
  # The epoch's inputs keep the shardings `put_epoch_inputs` gave them (the plan split along
  # its batch axis): their structure depends on the method's streams.
  return jax.jit(
      train_step,
      in_shardings=(replicated, replicated, images, None),
      out_shardings=(replicated, replicated, replicated),
      donate_argnums=(0, 1))
