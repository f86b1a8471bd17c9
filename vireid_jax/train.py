"""The epoch loop every method shares, over every device of every process.

Each epoch: extract eval features of all training images, cluster each modality and let the
method associate the clusters across modalities (once, on process 0, shared with all), rebuild
the method's memories from the centres, plan the whole epoch's batches, run `steps_per_epoch`
jitted steps (train_state.py), evaluate when the method's schedule says so, then checkpoint,
report and log. The host only plans and dispatches; the step reads nothing from it. What is the
method's (config.method; vireid_jax/methods/) comes through its `Method` functions.
"""

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import serialization

from vireid_jax import clustering
from vireid_jax import extract as extract_lib
from vireid_jax import methods
from vireid_jax import models
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.data import host_feed
from vireid_jax.data import shared as shared_data
from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.evaluation import driver as evaluate_lib
from vireid_jax.reporting import metric_writer
from vireid_jax.reporting import run_report
from vireid_jax.runtime import checkpoint
from vireid_jax.runtime import console
from vireid_jax.runtime import files
from vireid_jax.runtime import interrupts
from vireid_jax.runtime import multihost
from vireid_jax.runtime import run_lock
from vireid_jax.runtime import sharding

# Training images stay on the devices when they take at most this share of a device's memory
# (config.data.images_on_device unset): SYSU-MM01 at 288x144 (4.3 GB) stays on an 80 GB GPU and
# is fed from the host on a 16 GB TPU v5e chip, where ResNet-50 training needs the room.
IMAGES_ON_DEVICE_SHARE = 0.2


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class NoClustersStop(RuntimeError):
  """A modality produced no cluster and config.cluster.on_no_clusters is 'stop'."""


class RunStopped(RuntimeError):
  """Ctrl-C or SIGTERM stopped the run at a step boundary; checkpoints are intact."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def images_fit_on_device(num_bytes: int, device: jax.Device) -> bool:
  """Whether `num_bytes` of training images take at most IMAGES_ON_DEVICE_SHARE of `device`."""
  stats = device.memory_stats() or {}
  capacity = stats.get('bytes_limit')
  if capacity is None:  # the CPU backend: the devices share the host's memory
    capacity = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    num_bytes *= jax.local_device_count()
  return num_bytes <= IMAGES_ON_DEVICE_SHARE * capacity


def _first_nonfinite(losses_per_step: np.ndarray) -> int | None:
  bad = np.flatnonzero(~np.isfinite(losses_per_step))
  return int(bad[0]) if len(bad) else None


_SELECT_LABEL = {'mAP': 'mAP', 'rank1': 'Rank-1'}


def _fresh_best() -> dict:
  return {'mAP': -1.0, 'rank1': -1.0, 'epoch': -1}


def _is_total(key: str) -> bool:
  """Keys of the losses each update differentiated ('total', 'joint/total', ...)."""
  return key == 'total' or key.endswith('/total')


class Trainer:
  """Holds what lives across epochs: the data, compiled functions, the state, the history."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.mesh = sharding.make_mesh()
    self.method = methods.for_config(config)
    for modality, batch in zip(('visible', 'infrared'), self.method.batch_sizes(config)[:2]):
      sharding.check_divisible(batch, self.mesh, f'{modality} images per step')
    self.model = models.build_model(config.model)
    self.train_visible, self.train_infrared = shared_data.load_train_on_every_process(
        config.data)
    self.test_visible, self.test_infrared = shared_data.load_test_on_every_process(config.data)
    logging.info('train: %d visible / %d infrared images; test: %d visible / %d infrared',
                 len(self.train_visible), len(self.train_infrared), len(self.test_visible),
                 len(self.test_infrared))
    self.images_on_device = config.data.images_on_device
    if self.images_on_device is None:
      num_bytes = self.train_visible.images.nbytes + self.train_infrared.images.nbytes
      self.images_on_device = images_fit_on_device(num_bytes, jax.local_devices()[0])
    if self.images_on_device:
      self.visible_images = sharding.put_replicated(self.train_visible.images, self.mesh)
      self.infrared_images = sharding.put_replicated(self.train_infrared.images, self.mesh)
      # The devices hold the training images from here on; keep only the labels on the host
      # (SYSU-MM01 at 288x144 would otherwise cost 4.3 GB twice).
      self.train_visible = self.train_visible.without_images()
      self.train_infrared = self.train_infrared.without_images()
    else:
      self.visible_images = self.train_visible.images
      self.infrared_images = self.train_infrared.images
    self.extract_fns = extract_lib.for_config(self.model, config)
    # The features clustered may be extracted otherwise than the evaluation's (PGM: the
    # flip-averaged features, not renormalised); the same function when they are not.
    c = config.cluster
    if (c.flip, c.renormalize) == (config.eval.flip, True):
      self.cluster_extract_fns = self.extract_fns
    else:
      self.cluster_extract_fns = extract_lib.for_config(self.model, config, clustering=True)
    self._step_fns = {}  # (phase, label_repeats) -> jitted step, made when first needed
    self.history: list[dict] = []
    self.best = _fresh_best()
    self.start_epoch = 0
    # The memory tables at the end of the last epoch (a state dict of host arrays), which the
    # method's build_memories may carry over; checkpointed with the state.
    self.previous_memories = None
    # A resumed run takes its weights from the checkpoint: the initial ones (ImageNet, ...)
    # are resolved and loaded only for a fresh start.
    if not self._resume():
      self.state = train_state.create_train_state(config, self.model, self.mesh)

  # --- checkpoints -------------------------------------------------------------------------

  def _record(self, epoch: int) -> dict:
    return {'epoch': epoch, 'history': self.history, 'best': self.best,
            'config': self.config.to_json_best_effort()}

  def _resume(self) -> bool:
    """Restores the newest readable checkpoint, if the workdir has one; whether it did."""
    abstract = train_state.abstract_train_state(self.config, self.model, self.mesh)
    restored = checkpoint.restore_newest_readable(self.workdir, abstract)
    if restored is None:
      return False
    self.state, record, kind = restored
    self.history, self.best = record['history'], dict(_fresh_best(), **record['best'])
    self.start_epoch = record['epoch']
    self.previous_memories = checkpoint.read_memories(
        self.workdir, kind, self.start_epoch, sharding.replicated(self.mesh))
    checkpoint.set_aside_after(self.workdir, self.start_epoch)
    # A run stopped between writing `latest` and `best` of its best epoch has no best
    # checkpoint of it yet: that epoch's state is the one just restored.
    if (self.best['epoch'] + 1 == self.start_epoch and
        checkpoint.latest_epoch(self.workdir, checkpoint.BEST) != self.start_epoch):
      checkpoint.save(self.workdir, checkpoint.BEST, self.start_epoch, self.state,
                      self._record(self.start_epoch), self._memories_to_save())
    key = self.config.eval.select_by
    best = (f'best {_SELECT_LABEL[key]} so far {self.best[key]:.2f} after epoch '
            f'{self.best["epoch"] + 1}' if self.best['epoch'] >= 0 else 'no evaluation yet')
    console.line(f'Resuming {self.workdir} after epoch {self.start_epoch} ({best}).')
    return True

  def _memories_to_save(self):
    if self.previous_memories is None:
      return None
    return sharding.put_replicated(self.previous_memories, self.mesh)

  def _save(self, epoch: int, improved: bool) -> None:
    # `latest` first: a failure between the two leaves best <= latest, never a best newer
    # than every latest (and _resume writes the missing best).
    memories = self._memories_to_save()
    checkpoint.save(self.workdir, checkpoint.LATEST, epoch + 1, self.state,
                    self._record(epoch + 1), memories)
    if improved:
      checkpoint.save(self.workdir, checkpoint.BEST, epoch + 1, self.state,
                      self._record(epoch + 1), memories)

  def variables(self) -> dict:
    """The trained network's variables (what the clustering features come from)."""
    return self.state.network_variables()

  def eval_variables(self, epoch: int) -> dict:
    """The network the method evaluates after `epoch` (e.g. PCLHD's teacher in stage 2)."""
    return evaluate_lib.evaluated_variables(self.config, self.method, epoch, self.state)

  # --- pieces of an epoch ------------------------------------------------------------------

  def extract(self, images, modality: str, desc: str, for_clustering: bool = False,
              variables: dict | None = None) -> np.ndarray:
    fns = self.cluster_extract_fns if for_clustering else self.extract_fns
    return extract_lib.extract_features(fns, variables or self.variables(), images, modality,
                                        self.config.eval.batch_size, self.mesh, desc=desc)

  def evaluate(self, trials, epoch: int) -> tuple[dict | None, dict]:
    """(full results on process 0 / None elsewhere, the headline on every process) of the
    network the method evaluates after `epoch`."""
    variables = self.eval_variables(epoch)
    extract = lambda images, modality, desc: self.extract(images, modality, desc,
                                                          variables=variables)
    results = evaluate_lib.evaluate_features(
        self.config, extract, self.test_visible, self.test_infrared, trials=trials)
    return results, evaluate_lib.shared_headline(self.config, results)

  def step_fn(self, phase, label_repeats: train_state.LabelRepeats | None):
    """The jitted train step of the method's `phase` whose memory updates loop for
    `label_repeats` (both static; made once per pair, a few per run)."""
    key = (phase, label_repeats)
    if key not in self._step_fns:
      self._step_fns[key] = train_state.make_train_step(
          self.model, self.config, self.mesh, phase, self.images_on_device,
          step_fns=self.method.step_fns(self.config, phase, label_repeats))
    return self._step_fns[key]

  def _rng(self, epoch: int, hook: int) -> np.random.Generator:
    """A host generator for an epoch hook, the same on every process and on resume."""
    return np.random.default_rng([self.config.seed, epoch, hook])

  def epoch_features(self, schedule: methods.EpochSchedule) -> methods.EpochFeatures:
    """The training features the epoch clusters (and, when the method asks, the evaluated
    network's)."""
    extract = lambda images, modality, variables=None: self.extract(
        images, modality, f'extract {modality}', for_clustering=True, variables=variables)
    features = methods.EpochFeatures(extract(self.visible_images, VISIBLE),
                                     extract(self.infrared_images, INFRARED))
    wants = self.method.clustering.evaluated_features
    if wants is not None and wants(self.config, schedule):
      variables = self.eval_variables(schedule.epoch)
      features = features._replace(
          eval_visible=extract(self.visible_images, VISIBLE, variables),
          eval_infrared=extract(self.infrared_images, INFRARED, variables))
    return features

  def cluster(self, schedule: methods.EpochSchedule, features: methods.EpochFeatures
              ) -> epoch_clustering.EpochClusters | None:
    """This epoch's clusters, refinement and association, or None when the epoch is skipped
    (no clusters)."""
    config = self.config
    epoch = schedule.epoch
    pids = (self.train_visible.pids, self.train_infrared.pids)
    associate = lambda clusters: methods.call_with_extras(
        self.method.associate, config, schedule, clusters, pids, features=features)
    refine = None
    if self.method.refine is not None:
      refine = lambda clusters: methods.call_with_extras(
          self.method.refine, config, schedule, clusters, pids, features=features,
          rng=self._rng(epoch, 2))
    try:
      clusters = epoch_clustering.shared_cluster_epoch(
          config, features.visible, features.infrared, *pids, associate=associate,
          method=self.method, refine=refine, schedule=schedule,
          paths=(self.train_visible.paths, self.train_infrared.paths))
    except clustering.NoClustersError as error:
      if config.cluster.on_no_clusters == 'stop':
        raise NoClustersStop(
            f'epoch {epoch + 1}: {error} Training cannot proceed; the run stopped cleanly '
            f'(checkpoints intact). Set --config.cluster.on_no_clusters=skip to skip such '
            f'epochs, or revisit cluster.eps / the initial weights.') from error
      console.line(f'epoch {epoch + 1}: {error} Skipping the epoch '
                   f'(cluster.on_no_clusters=skip).')
      return None
    if config.save_pseudo_labels and multihost.is_main():
      _save_pseudo_labels(self.workdir, epoch, clusters)
    return clusters

  def _plan(self, schedule: methods.EpochSchedule, clusters) -> methods.Plan:
    # Seeded by (seed, epoch): the same plan on every process and on resume.
    rng = np.random.default_rng([self.config.seed, schedule.epoch])
    plan = methods.as_plan(self.method.plan_epoch(
        self.config, schedule, clusters, clusters.association,
        (self.train_visible, self.train_infrared), rng))
    for stream, arrays in plan.streams.items():
      for name in ('index', 'label'):
        if name not in arrays:
          raise ValueError(f'plan stream {stream!r} has no {name!r} array (every stream holds '
                           f'index and label; see methods.Plan)')
      sharding.check_divisible(arrays['index'].shape[1], self.mesh,
                               f'images per step of plan stream {stream!r}')
    return plan

  def train_epoch(self, schedule: methods.EpochSchedule, clusters,
                  features: methods.EpochFeatures, stop: interrupts.StopRequests) -> dict:
    config = self.config
    epoch, stage = schedule.epoch, schedule.stage
    plan = self._plan(schedule, clusters)
    first_step = int(jax.device_get(self.state.step))
    train_sets = {VISIBLE: self.train_visible, INFRARED: self.train_infrared}
    inputs = train_state.put_epoch_inputs(plan, epoch, first_step, self.mesh,
                                          lr_epoch=schedule.lr_epoch, train_sets=train_sets)
    memories = methods.call_with_extras(
        self.method.build_memories, config, schedule, clusters, clusters.association,
        previous=self.previous_memories, features=features, rng=self._rng(epoch, 1))
    memories = sharding.put_replicated(jax.device_get(memories), self.mesh)
    # One bound for the whole epoch (the plan is known): a few compiled steps per run.
    step_fn = self.step_fn(schedule.phase, train_state.step_label_repeats(config, plan))
    steps = plan.steps
    if self.images_on_device:
      images = {VISIBLE: self.visible_images, INFRARED: self.infrared_images}
      batches = (images for _ in range(steps))
    else:
      batches = host_feed.step_batches(
          {VISIBLE: self.visible_images, INFRARED: self.infrared_images}, plan, self.mesh)
    per_step = []
    bar = console.bar(desc=f'epoch {epoch + 1} (stage {stage})', total=steps, unit='step')
    try:
      for step, images in enumerate(batches):
        if stop.should_stop():
          # Finish what was dispatched: with several processes the others are in the same
          # step, and every process must take part in it before any of them exits.
          jax.block_until_ready((self.state, memories))
          raise RunStopped(self._stopped_message(stop, epoch), stop.exit_code)
        self.state, memories, metrics = step_fn(self.state, memories, images, inputs)
        per_step.append(metrics)
        bar.update(1)
        if (step + 1) % config.log_every == 0:
          total = next(v for k, v in metrics.items() if _is_total(k))
          bar.set_postfix(loss=f'{float(jax.device_get(total)):.3f}')
    finally:
      bar.close()
      if hasattr(batches, 'close'):
        batches.close()
    per_step = jax.device_get(per_step)
    for key in (k for k in per_step[0] if _is_total(k)):
      losses_per_step = np.array([m[key] for m in per_step])
      bad_step = _first_nonfinite(losses_per_step)
      if bad_step is not None:
        raise TrainingDiverged(
            f'loss{"" if key == "total" else " " + key} became {losses_per_step[bad_step]} at '
            f'epoch {epoch + 1} (of {config.schedule.epochs}), step {bad_step + 1} (of '
            f'{len(losses_per_step)}); the run stopped without saving this epoch. The last '
            f'good checkpoint (after epoch {epoch}) is intact in '
            f'{checkpoint.directory(self.workdir, checkpoint.LATEST)}: check the data and run '
            f'the same command to resume, or train with a lower learning rate in a new '
            f'--workdir (a workdir resumes only with the settings it was trained with).')
    self.previous_memories = jax.device_get(serialization.to_state_dict(memories))
    summary = {f'loss/{k}': float(np.mean([m[k] for m in per_step])) for k in per_step[0]}
    summary['lr'] = train_state.learning_rate(config.optim, schedule.lr_epoch)
    return summary

  def _stopped_message(self, stop: interrupts.StopRequests, epoch: int) -> str:
    saved = checkpoint.latest_epoch(self.workdir)
    if saved is None:
      kept = 'no epoch had finished, so there is no checkpoint yet; rerun to start again'
    else:
      kept = (f'the checkpoint after epoch {saved} is intact; rerun the same command to '
              f'resume')
    return f'{stop.cause} during epoch {epoch + 1}; {kept}.'

  # --- the loop ----------------------------------------------------------------------------

  def run(self, max_epochs: int | None = None) -> dict:
    """Trains from `start_epoch`; `max_epochs` stops early (used to test resuming)."""
    config = self.config
    epochs = config.schedule.epochs
    end_epoch = epochs if max_epochs is None else min(epochs, self.start_epoch + max_epochs)
    writer = metric_writer.MetricWriter(self.workdir, enabled=multihost.is_main(),
                                        resume_epoch=self.start_epoch)
    try:
      with interrupts.StopRequests() as stop:
        if self.start_epoch == 0 and not self.history and config.eval.at_start:
          # Where the untrained network stands, so every report shows what training bought.
          results, headline = self.evaluate(config.eval.train_trials, epoch=-1)
          self.history.append({'epoch': -1, 'eval': results, 'headline': headline})
          console.line(f'untrained: {evaluate_lib.format_headline(config, headline)}')
        for epoch in range(self.start_epoch, end_epoch):
          self._run_epoch(epoch, stop, writer)
    finally:
      writer.close()
    return {'history': self.history, 'best': self.best}

  def _run_epoch(self, epoch: int, stop: interrupts.StopRequests, writer) -> None:
    config = self.config
    epochs = config.schedule.epochs
    schedule = self.method.schedule(config, epoch)
    entry = {'epoch': epoch, 'stage': schedule.stage}
    if schedule.restart:
      entry['restarted_from'] = self._restart_stage(schedule)
    t0 = time.time()
    features = self.epoch_features(schedule)
    t1 = time.time()
    clusters = self.cluster(schedule, features)
    t2 = time.time()
    if clusters is None:
      entry['skipped'] = 'no clusters'
    else:
      entry.update(clusters.stats)
      entry.update(self.train_epoch(schedule, clusters, features, stop))
    del features
    t3 = time.time()
    entry['time/extract'], entry['time/cluster'], entry['time/train'] = t1 - t0, t2 - t1, t3 - t2
    improved = False
    if schedule.evaluate:
      results, headline = self.evaluate(config.eval.train_trials, epoch)
      entry['eval'], entry['headline'] = results, headline
      key = config.eval.select_by
      improved = headline[key] > self.best[key]
      if improved:
        self.best = {'mAP': headline['mAP'], 'rank1': headline['rank1'], 'epoch': epoch}
    entry['time/eval'] = time.time() - t3
    self.history.append(entry)
    self._save(epoch, improved)
    if multihost.is_main():
      run_report.write_report(self.workdir, self.history, self.best, config)
      writer.write(self.history)
    console.line(run_report.epoch_line(entry, epochs, self.method.reporting))

  def _restart_stage(self, schedule: methods.EpochSchedule) -> dict:
    """Starts `schedule.stage` from the previous stage's best checkpoint with a new optimiser.

    The method's schedule asks for it (PGM's stage 2 restarts from stage 1's `model_best`
    with a fresh Adam). The method's own variables are made afresh from the restored ones
    (`init_state(..., previous=...)`: PCLHD's teacher starts as the restored network). Without
    a best checkpoint (no evaluation in the previous stage) the stage continues from the
    current parameters, with a new optimiser all the same. The best of the new stage is then
    chosen among its own epochs. Returns what the history records.
    """
    previous = dict(self.best, stage=schedule.stage - 1)
    state = self.state
    key = self.config.eval.select_by
    best_epoch = checkpoint.latest_epoch(self.workdir, checkpoint.BEST)
    if self.best['epoch'] >= 0 and best_epoch is not None:
      abstract = train_state.abstract_train_state(self.config, self.model, self.mesh)
      state, record = checkpoint.restore(self.workdir, checkpoint.BEST, abstract)
      self.previous_memories = checkpoint.read_memories(
          self.workdir, checkpoint.BEST, best_epoch, sharding.replicated(self.mesh))
      console.line(f'Stage {schedule.stage} starts from the best checkpoint of stage '
                   f'{schedule.stage - 1} (after epoch {record["epoch"]}, '
                   f'{_SELECT_LABEL[key]} {self.best[key]:.2f}) with a new optimiser.')
    else:
      console.line(f'Stage {schedule.stage} starts from the current parameters with a new '
                   f'optimiser (stage {schedule.stage - 1} chose no best checkpoint).')
    if self.method.init_state is not None:
      state = train_state.reset_method_variables(self.config, state, self.mesh,
                                                 previous=state.method_variables())
    self.state = train_state.restart_optimizer(self.config, state, self.mesh).replace(
        step=self.state.step)
    self.best = _fresh_best()
    return previous


def _save_pseudo_labels(workdir: str, epoch: int,
                        clusters: epoch_clustering.EpochClusters) -> None:
  """`<workdir>/pseudo_labels/epoch_<n>.npz`: labels of both modalities and the method's
  association arrays (MBCCM: `match_mask`)."""
  import io  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  np.savez_compressed(buffer, visible=clusters.visible_labels, infrared=clusters.infrared_labels,
                      **clusters.association)
  files.write_bytes(files.path(workdir) / 'pseudo_labels' / f'epoch_{epoch + 1:03d}.npz',
                    buffer.getvalue())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       max_epochs: int | None = None) -> dict:
  """Trains (resuming what `workdir` holds), evaluating and checkpointing as configured.

  Process 0 holds the workdir's lock for the whole run; a second run on the same workdir stops
  with `run_lock.WorkdirLocked` (on every process).
  """
  held = multihost.run_on_main(lambda: run_lock.acquire(workdir), 'locking the workdir')
  try:
    trainer = Trainer(config, workdir)
    # Written once the workdir's checkpoints (if any) restored into this config's state.
    if multihost.is_main():
      files.write_text(files.path(workdir) / 'config.json', config.to_json_best_effort(indent=2))
    return trainer.run(max_epochs=max_epochs)
  finally:
    if held is not None:
      run_lock.release(workdir, held)
