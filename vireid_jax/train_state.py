"""The train state, the optimiser, the learning-rate schedule and the jitted train step.

One `init_train_state` builds the state; `abstract_train_state` runs it under `jax.eval_shape`
(shapes and shardings for restoring a checkpoint) and `create_train_state` under
`jax.jit(out_shardings=...)` (the real, replicated state), so the two can never disagree.

The step is a pure function of device arrays: (state, memories, images, epoch inputs) ->
(state, memories, metrics). Its random key and learning rate are computed inside from the
state's step counter and the epoch, so the host transfers nothing per step; the plan of the
whole epoch goes to the devices once. The step is the skeleton every method shares (gather,
augment, forward, loss, backward, optimiser, memory update, shardings, donation); what is the
method's comes from its `StepFns` (vireid_jax/methods).
"""

import functools
import os
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vireid_jax.runtime import console
from vireid_jax.models import initial_weights
from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax.runtime import multihost
from vireid_jax import sampling
from vireid_jax.runtime import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # () int32 optimiser steps taken since the start of the run
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class EpochInputs:
  """What every step of an epoch reads besides the images and the state.

  Attributes:
    plan: the epoch's `sampling.EpochPlan`, (steps, B) int32 arrays split along B.
    epoch: () int32, 0-based epoch of the run; seeds the augmentation.
    first_step: () int32 `TrainState.step` at the start of the epoch: the step's row of the
      plan is `state.step - first_step`.
    lr_epoch: () int32, the epoch the learning-rate schedule reads (the method's
      `EpochSchedule.lr_epoch`: the run's epoch, or the epoch within a restarted stage).
  """
  plan: sampling.EpochPlan
  epoch: jax.Array
  first_step: jax.Array
  lr_epoch: jax.Array


def make_optimizer(optim_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """PyTorch Adam with weight_decay: the L2 term is added to the gradient before the moments.

  The learning rate is applied outside (it changes by epoch), so the optimiser state does not
  depend on the schedule and one state is kept across all epochs, as in the reference.
  """
  return optax.chain(
      optax.add_decayed_weights(optim_cfg.weight_decay),
      optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps))


def learning_rate(optim_cfg: ml_collections.ConfigDict, epoch):
  """Step decay by epoch: lr * decay**(boundaries passed); a Python int or a traced int32."""
  passed = sum(epoch >= boundary for boundary in optim_cfg.lr_boundaries)
  return optim_cfg.learning_rate * optim_cfg.lr_decay**passed


def init_train_state(config: ml_collections.ConfigDict, model, rng: jax.Array) -> TrainState:
  """The state before training: random weights (stems identical if configured), Adam at 0."""
  image_shape = (config.data.image_height, config.data.image_width)
  variables = models.init_variables(model, rng, image_shape)
  if config.model.identical_stems:
    variables = models.copy_visible_stem_to_infrared(variables)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables['batch_stats'],
                    opt_state=make_optimizer(config.optim).init(params))


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
  line naming the file loaded, or the warning of a random start.
  """
  init = functools.partial(init_train_state, config, model)
  state = jax.jit(init, out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(config.seed))
  pretrained = initial_weights.resolve(config)
  say(initial_weights.describe(pretrained))
  if not pretrained:
    return state
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  # The converted-weights cache is an orbax checkpoint, whose writes synchronise processes:
  # with several processes each converts on its own (seconds for a ResNet-50).
  cache_dir = None
  if multihost.process_count() == 1:
    cache_dir = os.path.join(os.path.dirname(os.path.abspath(pretrained)),
                             'vireid_jax_converted')
  variables = models.weights.load_imagenet_resnet(pretrained, variables, cache_dir=cache_dir)
  variables = sharding.put_replicated(variables, mesh)
  return state.replace(params=variables['params'], batch_stats=variables['batch_stats'])


def restart_optimizer(config: ml_collections.ConfigDict, state: TrainState,
                      mesh: Mesh) -> TrainState:
  """`state` with a new optimiser state (Adam's moments and count at zero), replicated.

  For a method whose later stage starts afresh from an earlier stage's weights (PGM)."""
  tx = make_optimizer(config.optim)
  opt_state = jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(state.params)
  return state.replace(opt_state=opt_state)


def epoch_sharding(mesh: Mesh) -> EpochInputs:
  """Shardings of `EpochInputs`: the plan split along its batch axis, scalars replicated."""
  plan = NamedSharding(mesh, PartitionSpec(None, sharding.DATA_AXIS))
  replicated = sharding.replicated(mesh)
  return EpochInputs(plan=sampling.EpochPlan(plan, plan, plan, plan), epoch=replicated,
                     first_step=replicated, lr_epoch=replicated)


def put_epoch_inputs(plan: sampling.EpochPlan, epoch: int, first_step: int,
                     mesh: Mesh, lr_epoch: int | None = None) -> EpochInputs:
  """The epoch's inputs on the devices (every process passes the same plan).

  `lr_epoch` defaults to `epoch` (a run whose schedule never restarts)."""
  inputs = EpochInputs(plan=plan, epoch=np.int32(epoch), first_step=np.int32(first_step),
                       lr_epoch=np.int32(epoch if lr_epoch is None else lr_epoch))
  return sharding.put_global(inputs, epoch_sharding(mesh))


class LabelRepeats(NamedTuple):
  """Static bounds of how often one cluster label occurs in one step of a plan, per modality
  (`memory.label_repeats` of the plan's visible_label and infrared_label arrays)."""
  visible: int
  infrared: int


def step_label_repeats(config: ml_collections.ConfigDict,
                       plan: sampling.EpochPlan) -> Optional[LabelRepeats]:
  """`make_train_step`'s label_repeats for the steps of `plan` (host side, numpy).

  None where the memories are updated sequentially (the CPU default): the bound would change
  nothing there, and leaving it out keeps one compiled step per phase.
  """
  if memory_lib.resolve_update_method(config.memory.update_method) != 'by_rank':
    return None
  unit = config.sampler.instances_per_cluster
  return LabelRepeats(memory_lib.label_repeats(plan.visible_label, unit=unit),
                      memory_lib.label_repeats(plan.infrared_label, unit=unit))


def make_train_step(model, config: ml_collections.ConfigDict, mesh: Mesh, phase,
                    images_on_device: bool = True, step_fns: methods.StepFns | None = None,
                    label_repeats: Optional[LabelRepeats] = None):
  """The jitted train step of one phase of the configured method, sharded over `mesh`.

  With `images_on_device` the step is (state, memories, visible_images (Nv,H,W,3) uint8,
  infrared_images (Ni,H,W,3) uint8, epoch_inputs) -> (state, memories, metrics): images,
  state and memories are replicated, the plan is split along its batch axis, so each device
  gathers and augments its share of the batch. Otherwise the images arguments are the step's
  batches themselves, (B,H,W,3) uint8 split along B (each host feeds its own rows: see
  `host_feed`); everything else is the same, so both give the same step.

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

  def loss_fn(params, batch_stats, memories, visible_inputs, infrared_inputs, y_v, y_i):
    (neck, _), new_vars = model.apply({'params': params, 'batch_stats': batch_stats},
                                      visible_inputs, infrared_inputs, train=True,
                                      mutable=['batch_stats'])
    f_visible, f_infrared = jnp.split(neck, [visible_inputs.shape[0]])
    loss, metrics = step_fns.loss(f_visible, f_infrared, y_v, y_i, memories)
    # 'total' is the very value differentiated, so a NaN anywhere in it is seen by the host.
    metrics = dict(metrics, total=loss)
    return loss, (metrics, new_vars['batch_stats'], (f_visible, f_infrared))

  def train_step(state, memories, visible_images, infrared_images, inputs: EpochInputs):
    row_index = state.step - inputs.first_step
    row = lambda a: jax.lax.dynamic_index_in_dim(a, row_index, keepdims=False)
    plan = inputs.plan
    y_v, y_i = row(plan.visible_label), row(plan.infrared_label)
    if images_on_device:
      visible_batch = visible_images[row(plan.visible_index)]
      infrared_batch = infrared_images[row(plan.infrared_index)]
    else:
      visible_batch, infrared_batch = visible_images, infrared_images
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), inputs.epoch),
                             row_index)
    visible_inputs, infrared_inputs = step_fns.augment(rng, visible_batch, infrared_batch)
    grads, (metrics, batch_stats, features) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, memories, visible_inputs, infrared_inputs, y_v, y_i)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = learning_rate(config.optim, inputs.lr_epoch)
    updates = jax.tree.map(lambda u: -lr * u, updates)
    params = optax.apply_updates(state.params, updates)
    memories = step_fns.update_memories(memories, *features, y_v, y_i)
    metrics = dict(metrics, grad_norm=optax.tree_utils.tree_norm(grads))
    return TrainState(state.step + 1, params, batch_stats, opt_state), memories, metrics

  replicated = sharding.replicated(mesh)
  images = replicated if images_on_device else sharding.batch_sharded(mesh)
  return jax.jit(
      train_step,
      in_shardings=(replicated, replicated, images, images, epoch_sharding(mesh)),
      out_shardings=(replicated, replicated, replicated),
      donate_argnums=(0, 1))
