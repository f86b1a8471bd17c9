"""The epoch loop of MBCCM (SPEC.md "Each epoch"), over every device of every process.

Each epoch: extract eval features of all training images, cluster each modality and match the
clusters across modalities (once, on process 0, shared with all), rebuild the four cluster
memories from the centres, plan the whole epoch's batches, run `steps_per_epoch` jitted steps
(train_state.py), evaluate every `eval_every` epochs, then checkpoint, report and log. The host
only plans and dispatches; the step reads nothing from it.
"""

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from vireid_jax import checkpoint
from vireid_jax import clustering
from vireid_jax import console
from vireid_jax import evaluate as evaluate_lib
from vireid_jax import extract as extract_lib
from vireid_jax import files
from vireid_jax import host_feed
from vireid_jax import interrupts
from vireid_jax import memory as memory_lib
from vireid_jax import metric_writer
from vireid_jax import models
from vireid_jax import multihost
from vireid_jax import report
from vireid_jax import run_lock
from vireid_jax import sampling
from vireid_jax import sharding
from vireid_jax import train_state
from vireid_jax.clustering import epoch as epoch_clustering
from vireid_jax.data import shared as shared_data
from vireid_jax.data.types import INFRARED, VISIBLE

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


def build_memories(clusters: epoch_clustering.EpochClusters, mesh) -> memory_lib.Memories:
  """M_v, M_i, M_vi, M_iv from the epoch's centres, padded to a power of two, replicated."""
  num_v, num_i = len(clusters.visible_centers), len(clusters.infrared_centers)
  memories = memory_lib.Memories.from_centers(
      memory_lib.pad_rows(clusters.visible_centers, memory_lib.memory_capacity(num_v)),
      memory_lib.pad_rows(clusters.infrared_centers, memory_lib.memory_capacity(num_i)),
      num_visible=num_v, num_infrared=num_i)
  return sharding.put_replicated(jax.device_get(memories), mesh)


def plan_epoch(config, clusters: epoch_clustering.EpochClusters, stage: int,
               epoch: int) -> sampling.EpochPlan:
  """The epoch's batches, seeded by (seed, epoch): the same on every process and on resume."""
  s = config.sampler
  rng = np.random.default_rng([config.seed, epoch])
  if stage == 1:
    return sampling.stage1_plan(clusters.visible_labels, clusters.infrared_labels,
                                s.steps_per_epoch, s.clusters_per_step,
                                s.instances_per_cluster, rng)
  return sampling.stage2_plan(clusters.visible_labels, clusters.infrared_labels,
                              clusters.match.mask, s.steps_per_epoch, s.clusters_per_step,
                              s.instances_per_cluster, rng)


def _first_nonfinite(losses_per_step: np.ndarray) -> int | None:
  bad = np.flatnonzero(~np.isfinite(losses_per_step))
  return int(bad[0]) if len(bad) else None


class Trainer:
  """Holds what lives across epochs: the data, compiled functions, the state, the history."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.mesh = sharding.make_mesh()
    batch = config.sampler.clusters_per_step * config.sampler.instances_per_cluster
    sharding.check_divisible(batch, self.mesh, 'images per modality per step')
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
    self.extract_fns = extract_lib.make_extract_fn(
        self.model, tuple(config.data.mean), tuple(config.data.std), config.eval.flip)
    self.step_fns = {stage: train_state.make_train_step(self.model, config, self.mesh, stage,
                                                        self.images_on_device)
                     for stage in (1, 2)}
    self.state = train_state.create_train_state(config, self.model, self.mesh)
    self.history: list[dict] = []
    self.best = {'mAP': -1.0, 'epoch': -1}
    self.start_epoch = 0
    self._resume()

  # --- checkpoints -------------------------------------------------------------------------

  def _record(self, epoch: int) -> dict:
    return {'epoch': epoch, 'history': self.history, 'best': self.best,
            'config': self.config.to_json_best_effort()}

  def _resume(self) -> None:
    abstract = train_state.abstract_train_state(self.config, self.model, self.mesh)
    restored = checkpoint.restore_newest_readable(self.workdir, abstract)
    if restored is None:
      return
    self.state, record, _ = restored
    self.history, self.best = record['history'], record['best']
    self.start_epoch = record['epoch']
    checkpoint.set_aside_after(self.workdir, self.start_epoch)
    # A run stopped between writing `latest` and `best` of its best epoch has no best
    # checkpoint of it yet: that epoch's state is the one just restored.
    if (self.best['epoch'] + 1 == self.start_epoch and
        checkpoint.latest_epoch(self.workdir, checkpoint.BEST) != self.start_epoch):
      checkpoint.save(self.workdir, checkpoint.BEST, self.start_epoch, self.state,
                      self._record(self.start_epoch))
    best = (f'best mAP so far {self.best["mAP"]:.2f} after epoch {self.best["epoch"] + 1}'
            if self.best['epoch'] >= 0 else 'no evaluation yet')
    console.line(f'Resuming {self.workdir} after epoch {self.start_epoch} ({best}).')

  def _save(self, epoch: int, improved: bool) -> None:
    # `latest` first: a failure between the two leaves best <= latest, never a best newer
    # than every latest (and _resume writes the missing best).
    checkpoint.save(self.workdir, checkpoint.LATEST, epoch + 1, self.state,
                    self._record(epoch + 1))
    if improved:
      checkpoint.save(self.workdir, checkpoint.BEST, epoch + 1, self.state,
                      self._record(epoch + 1))

  def variables(self) -> dict:
    return {'params': self.state.params, 'batch_stats': self.state.batch_stats}

  # --- pieces of an epoch ------------------------------------------------------------------

  def extract(self, images, modality: str, desc: str) -> np.ndarray:
    return extract_lib.extract_features(self.extract_fns, self.variables(), images, modality,
                                        self.config.eval.batch_size, self.mesh, desc=desc)

  def evaluate(self, trials) -> tuple[dict | None, dict]:
    """(full results on process 0 / None elsewhere, the headline on every process)."""
    results = evaluate_lib.evaluate_features(
        self.config, self.extract, self.test_visible, self.test_infrared, trials=trials)
    return results, evaluate_lib.shared_headline(self.config, results)

  def cluster(self, epoch: int, visible_features: np.ndarray,
              infrared_features: np.ndarray) -> epoch_clustering.EpochClusters | None:
    """This epoch's clusters and match, or None when the epoch is skipped (no clusters)."""
    config = self.config
    try:
      clusters = epoch_clustering.shared_cluster_epoch(
          config, visible_features, infrared_features, self.train_visible.pids,
          self.train_infrared.pids)
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

  def train_epoch(self, epoch: int, stage: int, clusters, stop: interrupts.StopRequests) -> dict:
    config = self.config
    plan = plan_epoch(config, clusters, stage, epoch)
    first_step = int(jax.device_get(self.state.step))
    inputs = train_state.put_epoch_inputs(plan, epoch, first_step, self.mesh)
    memories = build_memories(clusters, self.mesh)
    step_fn = self.step_fns[stage]
    steps = config.sampler.steps_per_epoch
    if self.images_on_device:
      batches = ((self.visible_images, self.infrared_images) for _ in range(steps))
    else:
      batches = host_feed.step_batches(self.visible_images, self.infrared_images, plan,
                                       self.mesh)
    per_step = []
    bar = console.bar(desc=f'epoch {epoch + 1} (stage {stage})', total=steps, unit='step')
    try:
      for step, (visible, infrared) in enumerate(batches):
        if stop.should_stop():
          # Finish what was dispatched: with several processes the others are in the same
          # step, and every process must take part in it before any of them exits.
          jax.block_until_ready((self.state, memories))
          raise RunStopped(self._stopped_message(stop, epoch), stop.exit_code)
        self.state, memories, metrics = step_fn(self.state, memories, visible, infrared, inputs)
        per_step.append(metrics)
        bar.update(1)
        if (step + 1) % config.log_every == 0:
          bar.set_postfix(loss=f'{float(jax.device_get(metrics["total"])):.3f}')
    finally:
      bar.close()
      if hasattr(batches, 'close'):
        batches.close()
    per_step = jax.device_get(per_step)
    losses_per_step = np.array([m['total'] for m in per_step])
    bad_step = _first_nonfinite(losses_per_step)
    if bad_step is not None:
      raise TrainingDiverged(
          f'loss became {losses_per_step[bad_step]} at epoch {epoch + 1} (of '
          f'{config.schedule.epochs}), step {bad_step + 1} (of {len(losses_per_step)}); the run '
          f'stopped without saving this epoch. The last good checkpoint (after epoch {epoch}) '
          f'is intact in {checkpoint.directory(self.workdir, checkpoint.LATEST)}: lower the '
          f'learning rate or check the data, then run the same command to resume.')
    summary = {f'loss/{k}': float(np.mean([m[k] for m in per_step])) for k in per_step[0]}
    summary['lr'] = train_state.learning_rate(config.optim, epoch)
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
          results, headline = self.evaluate(config.eval.train_trials)
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
    stage = 1 if epoch < config.schedule.stage2_start else 2
    entry = {'epoch': epoch, 'stage': stage}
    t0 = time.time()
    visible_features = self.extract(self.visible_images, VISIBLE, 'extract visible')
    infrared_features = self.extract(self.infrared_images, INFRARED, 'extract infrared')
    t1 = time.time()
    clusters = self.cluster(epoch, visible_features, infrared_features)
    t2 = time.time()
    if clusters is None:
      entry['skipped'] = 'no clusters'
    else:
      entry.update(clusters.stats)
      entry.update(self.train_epoch(epoch, stage, clusters, stop))
    t3 = time.time()
    entry['time/extract'], entry['time/cluster'], entry['time/train'] = t1 - t0, t2 - t1, t3 - t2
    improved = False
    if (epoch + 1) % config.schedule.eval_every == 0 or epoch + 1 == epochs:
      results, headline = self.evaluate(config.eval.train_trials)
      entry['eval'], entry['headline'] = results, headline
      improved = headline['mAP'] > self.best['mAP']
      if improved:
        self.best = {'mAP': headline['mAP'], 'rank1': headline['rank1'], 'epoch': epoch}
    entry['time/eval'] = time.time() - t3
    self.history.append(entry)
    self._save(epoch, improved)
    if multihost.is_main():
      report.write_report(self.workdir, self.history, self.best, config)
      writer.write(self.history)
    console.line(report.epoch_line(entry, epochs))


def _save_pseudo_labels(workdir: str, epoch: int,
                        clusters: epoch_clustering.EpochClusters) -> None:
  """`<workdir>/pseudo_labels/epoch_<n>.npz`: labels of both modalities and the match mask."""
  import io  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  np.savez_compressed(buffer, visible=clusters.visible_labels, infrared=clusters.infrared_labels,
                      match_mask=clusters.match.mask)
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
