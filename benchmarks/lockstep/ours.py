"""THE adapter: the only module of the lockstep tool that calls into vireid_jax's training.

It runs the project's own epoch loop (`train.Trainer.run`: schedule, restart, extraction,
clustering and association, plan, steps, evaluation, checkpoints) and records, through a sink,
every quantity the lockstep compares. What it overrides, and why each override computes what
training computes:

  Trainer.extract        records the features clustered (then returns them unchanged);
  Trainer.cluster        records the partitions, the association and the neighbour tables
                         of the Jaccard distances (`clustering.neighbors.nearest_neighbors`,
                         wrapped for the call), unchanged;
  Trainer._restart_stage records which stage-1 epoch stage 2 restarts from (unchanged);
  Trainer.train_epoch    Trainer.train_epoch's own steps (its `_plan`, put_epoch_inputs,
                         the method's build_memories with the previous epoch's tables, the
                         step of `train_state.make_train_step`), one
                         dispatch at a time, with the method's StepFns wrapped so that the
                         step hands its augmented network inputs to the host
                         (`jax.debug.callback`; the arrays are the very ones it trains on);
                         after each step it records the loss terms, gradient norm, learning
                         rate, parameters, BatchNorm statistics and memory tables.

`tests/lockstep_test.py` checks that the parameters this records after N steps equal those
of a plain `Trainer` run. What this calls in vireid_jax (to port when the step interface
changes): `train.Trainer` (its constructor, `run`, `extract`, `cluster`, `_restart_stage`,
`_plan`, `_rng`, `evaluate` via `run`, attributes `config`, `method`, `model`, `mesh`,
`state`, `previous_memories`, `images_on_device`, `visible_images`, `infrared_images`,
`train_visible`, `train_infrared`), `train_state.{make_train_step, put_epoch_inputs,
step_label_repeats, learning_rate}`, `clustering.neighbors.nearest_neighbors`,
`clustering.epoch.clustering_order`, `methods.call_with_extras`, the method's
`build_memories`, `step_fns` and `StepFns` (its `augment` and its first `Update`'s
`update_memories`), `runtime.sharding.put_replicated`, the config functions `mbccm_config` / `pgm_config`, and the memory pytrees'
fields (`visible`, `infrared`, `agnostic_visible`, `agnostic_infrared`, `num_visible`,
`num_infrared`).

Planting (for the harness's self-test): ('lr', k, factor) scales step k's parameter update
(what a learning rate times `factor` at that step gives, Adam's moments being independent of
the learning rate) and records that learning rate; ('memory_order', k) updates the memories of
step k with the two visible views swapped, so every visible table takes them in the other
order.
"""

import os
from typing import Callable, Optional, Tuple

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.lockstep import names
from benchmarks.lockstep.settings import RunSettings
from vireid_jax import methods
from vireid_jax import train
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.clustering import neighbors
from vireid_jax.runtime import sharding

VISIBLE, INFRARED = 'visible', 'infrared'

MEMORY_TABLES = (('visible', 'num_visible'), ('infrared', 'num_infrared'),
                 ('agnostic_visible', 'num_visible'), ('agnostic_infrared', 'num_infrared'))
# The method's association arrays recorded each epoch (their keys in `clusters.association`).
ASSOCIATION_KEYS = ('match_mask', 'visible_to_infrared', 'infrared_to_visible')

Plant = Optional[Tuple]


def make_config(settings: RunSettings, data_root: str):
  """The project's config for a lockstep run: the method's paper config at `settings`' sizes."""
  s = settings
  if s.method == 'mbccm':
    from vireid_jax.methods.mbccm import config as mbccm_config  # pylint: disable=import-outside-toplevel
    config = mbccm_config.mbccm_config('sysu')
    config.sampler.clusters_per_step = s.clusters_per_step
    config.sampler.instances_per_cluster = s.instances_per_cluster
    config.sampler.steps_per_epoch = s.steps_per_epoch
    config.schedule.stage2_start = s.stage1_epochs
    config.schedule.eval_every = 10**6  # the authors' eval-step is set as high: no evaluation
    config.augment.linear_transform_prob = s.linear_transform_prob
  else:
    from vireid_jax.methods.pgm import config as pgm_config  # pylint: disable=import-outside-toplevel
    config = pgm_config.pgm_config('sysu')
    config.sampler.instances_per_cluster = s.instances_per_cluster
    config.sampler.visible_images = s.visible_images
    config.sampler.infrared_images = s.infrared_images
    config.sampler.steps_per_epoch = s.steps_per_epoch
    config.schedule.stage2_start = s.stage1_epochs
    # Stage 1 evaluates every epoch (the authors' code only from epoch 6), so that a stage 2
    # of a short run restarts from a best checkpoint chosen as the project chooses it.
    config.schedule.eval_from = 0
    # StepLR(step_size, 0.1) in each stage.
    longest = max(s.stage1_epochs, s.stage2_epochs)
    config.optim.lr_boundaries = tuple(range(s.lr_step, longest + 1, s.lr_step)) or (10**6,)
    # train_sysu.py has no branch for more infrared than visible clusters (docs/pgm.md, "Reference quirks", 2).
    config.pgm.more_infrared = 'skip'
  config.seed = s.seed
  config.schedule.epochs = s.epochs
  config.optim.learning_rate = s.learning_rate
  config.data.root = data_root
  config.data.synthetic = True
  config.data.synthetic_ids = s.synthetic_ids
  config.data.image_height, config.data.image_width = s.image_size
  config.data.images_on_device = True
  config.model.dtype = 'float32'
  config.model.pretrained = 'none'  # the same random start goes to the authors' network
  config.model.bn_groups = s.groups
  if s.network == 'tiny':
    config.model.block = 'basic'
    config.model.stage_sizes = (1, 1, 1, 1)
    config.model.width = 8
  config.cluster.k1, config.cluster.k2 = s.k1, s.k2
  config.cluster.eps = s.eps
  config.cluster.min_samples = s.min_samples
  config.augment.pad = s.pad
  config.eval.at_start = False
  config.eval.batch_size = s.eval_batch
  config.log_every = 10**6
  return config


def variables_state(state) -> dict:
  """A TrainState's parameters and BatchNorm statistics under the authors' names (numpy)."""
  host = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  return names.reference_state(host)


def memory_tables(memories) -> dict:
  """{name: (K, C) float32} of a method's memory pytree, padding rows dropped."""
  out = {}
  for field, count in MEMORY_TABLES:
    if hasattr(memories, field):
      rows = int(jax.device_get(getattr(memories, count)))
      out[field] = np.asarray(jax.device_get(getattr(memories, field)))[:rows]
  return out


def _nchw(x) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(np.asarray(x, np.float32), (0, 3, 1, 2)))


class RecordingTrainer(train.Trainer):
  """`train.Trainer` whose epochs report to `sink` (see the module docstring)."""

  def __init__(self, config, workdir: str, sink, plant: Plant = None):
    self.sink = sink
    self.plant = plant
    self._features = {}
    self._epoch_start = None
    self._restarted_from = None
    self._captured = []
    self._recording_steps = {}
    super().__init__(config, workdir)
    sink.initial(variables_state(self.state))
    sink.data(self._data())

  def _data(self) -> dict:
    """The training images and their order, for the reference's extraction."""
    out = {}
    for key, image_set, images in ((VISIBLE, self.train_visible, self.visible_images),
                                   (INFRARED, self.train_infrared, self.infrared_images)):
      out[f'{key}/images'] = np.asarray(jax.device_get(images))
      out[f'{key}/paths'] = np.asarray(image_set.paths).astype(str)
      out[f'{key}/pids'] = np.asarray(image_set.pids)
      out[f'{key}/cams'] = np.asarray(image_set.cams)
    return out

  # --- the epoch's pieces, recorded -------------------------------------------------------

  def extract(self, images, modality, desc, for_clustering=False, variables=None):
    if for_clustering and modality == VISIBLE and variables is None:
      self._epoch_start = variables_state(self.state)
    features = super().extract(images, modality, desc, for_clustering=for_clustering,
                               variables=variables)
    if for_clustering and variables is None:
      self._features[modality] = np.array(features, np.float32)
    return features

  def cluster(self, schedule, features):
    """Trainer.cluster, recording the neighbour tables its Jaccard distances use (in our
    image order; the reference's clustering check runs their code on them)."""
    tables = []
    real = neighbors.nearest_neighbors

    def recording(features, k, *args, **kwargs):
      index, similarities = real(features, k, *args, **kwargs)
      tables.append(np.asarray(index))
      return index, similarities

    neighbors.nearest_neighbors = recording
    try:
      clusters = super().cluster(schedule, features)
    finally:
      neighbors.nearest_neighbors = real
    self._neighbors = {}
    for modality, image_set in ((VISIBLE, self.train_visible), (INFRARED, self.train_infrared)):
      for table in tables:
        if len(table) == len(image_set):
          order = epoch_clustering.clustering_order(self.config.cluster.order, image_set.paths)
          if order is None:
            self._neighbors[modality] = table
          else:  # rows and entries of the ordered features -> our image indices
            ours = np.empty_like(table)
            ours[order] = order[table]
            self._neighbors[modality] = ours
    return clusters

  def _restart_stage(self, schedule):
    previous = super()._restart_stage(schedule)
    self._restarted_from = previous.get('epoch', -1)
    return previous

  def _epoch_record(self, schedule, clusters, memories) -> dict:
    record = {'epoch': schedule.epoch, 'stage': schedule.stage,
              'labels/visible': np.asarray(clusters.visible_labels),
              'labels/infrared': np.asarray(clusters.infrared_labels)}
    for modality, features in self._features.items():
      record[f'features/{modality}'] = features
    for modality, table in getattr(self, '_neighbors', {}).items():
      record[f'neighbors/{modality}'] = table
    for key in ASSOCIATION_KEYS:
      if key in clusters.association:
        record[f'association/{key}'] = np.asarray(clusters.association[key])
    for name, table in memory_tables(memories).items():
      record[f'memories/{name}'] = table
    for name, value in (self._epoch_start or {}).items():
      record[f'start/{name}'] = value
    if schedule.restart:
      record['restart/from_epoch'] = -1 if self._restarted_from is None else self._restarted_from
    self._features, self._epoch_start, self._restarted_from = {}, None, None
    self._neighbors = {}
    return record

  # --- the steps, recorded --------------------------------------------------------------------

  def _wrapped_step_fns(self, phase, label_repeats, swap_views: bool) -> methods.StepFns:
    fns = self.method.step_fns(self.config, phase, label_repeats)

    def capture(inputs):
      # Kept as they come: reading them here would block this device while the others wait
      # for it in a collective of the same step (8 CPU devices deadlock); read after the step.
      self._captured.append(inputs)

    replicated = sharding.replicated(self.mesh)

    def augment(rng, images, batch):
      inputs = fns.augment(rng, images, batch)
      # Copies gathered for the host; the step goes on with the arrays themselves.
      jax.debug.callback(capture, {name: jax.lax.with_sharding_constraint(x, replicated)
                                   for name, x in inputs.items()})
      return inputs

    updates = list(fns.updates)
    if swap_views:  # the planted difference: the visible views in the other order
      first = updates[0]

      def swapped(memories, outputs, batch, ctx):
        outputs = dict(outputs)
        outputs[VISIBLE] = {name: jnp.concatenate(jnp.split(x, 2)[::-1])
                            for name, x in outputs[VISIBLE].items()}
        return first.update_memories(memories, outputs, batch, ctx)
      updates[0] = first._replace(update_memories=swapped)
    return fns._replace(augment=augment, updates=tuple(updates))

  def _recording_step(self, phase, label_repeats, swap_views: bool = False) -> Callable:
    key = (phase, label_repeats, swap_views)
    if key not in self._recording_steps:
      self._recording_steps[key] = train_state.make_train_step(
          self.model, self.config, self.mesh, phase, self.images_on_device,
          step_fns=self._wrapped_step_fns(phase, label_repeats, swap_views))
    return self._recording_steps[key]

  def train_epoch(self, schedule, clusters, features, stop) -> dict:
    """Trainer.train_epoch's steps, one at a time, each recorded (see the module docstring)."""
    del stop  # the lockstep run is never interrupted
    config = self.config
    epoch = schedule.epoch
    plan = self._plan(schedule, clusters)
    first_step = int(jax.device_get(self.state.step))
    train_sets = {VISIBLE: self.train_visible, INFRARED: self.train_infrared}
    inputs = train_state.put_epoch_inputs(plan, epoch, first_step, self.mesh,
                                          lr_epoch=schedule.lr_epoch, train_sets=train_sets)
    memories = methods.call_with_extras(
        self.method.build_memories, config, schedule, clusters, clusters.association,
        previous=self.previous_memories, features=features, rng=self._rng(epoch, 1))
    memories = sharding.put_replicated(jax.device_get(memories), self.mesh)
    self.sink.epoch(epoch, self._epoch_record(schedule, clusters, memories))
    label_repeats = train_state.step_label_repeats(config, plan)
    # The rate the step applies: computed as inside the step, from a traced int32 epoch.
    lr = float(jax.jit(lambda e: train_state.learning_rate(config.optim, e))(
        jnp.int32(schedule.lr_epoch)))
    images = {VISIBLE: self.visible_images, INFRARED: self.infrared_images}
    per_step = []
    for row in range(plan.steps):
      step = first_step + row
      plant = self.plant if self.plant is not None and self.plant[1] == step else None
      step_fn = self._recording_step(schedule.phase, label_repeats,
                                     swap_views=plant is not None and plant[0] == 'memory_order')
      planting_lr = plant is not None and plant[0] == 'lr'
      # The step donates the state: keep a copy of the parameters where the plant needs them.
      previous = jax.tree.map(jnp.copy, self.state.params) if planting_lr else None
      self.state, memories, metrics = step_fn(self.state, memories, images, inputs)
      jax.block_until_ready((self.state, memories))
      jax.effects_barrier()
      step_lr = lr
      if planting_lr:
        factor = plant[2]
        self.state = self.state.replace(params=jax.tree.map(
            lambda p, q: p + factor * (q - p), previous, self.state.params))
        step_lr = lr * factor
      captured = {name: np.asarray(x) for name, x in self._captured.pop().items()}
      assert not self._captured, 'one augmentation per step'
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      per_step.append(metrics)
      record = {'epoch': epoch, 'stage': schedule.stage, 'lr': step_lr,
                'grad_norm': metrics.pop('grad_norm'),
                'inputs/visible': _nchw(captured[VISIBLE]),
                'inputs/infrared': _nchw(captured[INFRARED]),
                'labels/visible': np.asarray(plan.streams[VISIBLE]['label'][row]),
                'labels/infrared': np.asarray(plan.streams[INFRARED]['label'][row])}
      record.update({f'loss/{k}': v for k, v in metrics.items()})
      record.update({f'state/{k}': v for k, v in variables_state(self.state).items()})
      record.update({f'memories/{k}': v for k, v in memory_tables(memories).items()})
      self.sink.step(step, record)
    self.previous_memories = jax.device_get(serialization.to_state_dict(memories))
    summary = {f'loss/{k}': float(np.mean([m[k] for m in per_step])) for k in per_step[0]}
    summary['lr'] = lr
    return summary


def run(settings: RunSettings, data_root: str, workdir: str, sink, plant: Plant = None,
        max_epochs: Optional[int] = None) -> dict:
  """The project's whole run at `settings` (or its first `max_epochs`), reported to `sink`
  (see `record.Recording`)."""
  os.makedirs(workdir, exist_ok=True)
  config = make_config(settings, data_root)
  trainer = RecordingTrainer(config, workdir, sink, plant=plant)
  return trainer.run(max_epochs=max_epochs)


def plain_run_params(settings: RunSettings, data_root: str, workdir: str,
                     max_epochs: int) -> dict:
  """The authors'-named parameters after `max_epochs` epochs of a plain `Trainer` (no
  recording): what the recording trainer must reproduce (tests/lockstep_test.py)."""
  config = make_config(settings, data_root)
  trainer = train.Trainer(config, workdir)
  trainer.run(max_epochs=max_epochs)
  return variables_state(trainer.state)
