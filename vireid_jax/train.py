"""Training: the train state, the sharded two-stage train step, and the epoch loop.

Each epoch follows SPEC.md: extract eval features of all training images, cluster each
modality (Jaccard + DBSCAN), match clusters across modalities (MBCCM), rebuild the four cluster
memories from the centres, then run `steps_per_epoch` jitted steps. The step is a pure function
(state, memories, batch) -> (state, memories, metrics); the host only samples index arrays for
the whole epoch ahead and dispatches.
"""

import dataclasses
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from vireid_jax import augment
from vireid_jax import checkpoint
from vireid_jax import clustering
from vireid_jax import data as data_lib
from vireid_jax import evaluate as evaluate_lib
from vireid_jax import extract as extract_lib
from vireid_jax import losses
from vireid_jax import memory as memory_lib
from vireid_jax import models
from vireid_jax import report
from vireid_jax import sampling
from vireid_jax import sharding
from vireid_jax.data.types import INFRARED, VISIBLE


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class NoClustersStop(RuntimeError):
  """A modality produced no cluster and config.cluster.on_no_clusters is 'stop'."""


@flax.struct.dataclass
class TrainState:
  params: Any
  batch_stats: Any
  opt_state: Any


def make_optimizer(optim_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """PyTorch Adam with weight_decay: the L2 term is added to the gradient before the moments.

  The learning rate is applied outside (it changes by epoch), so the optimiser state does not
  depend on the schedule and one state is kept across all epochs, as in the reference.
  """
  return optax.chain(
      optax.add_decayed_weights(optim_cfg.weight_decay),
      optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps))


def learning_rate(optim_cfg: ml_collections.ConfigDict, epoch: int) -> float:
  """Step decay by epoch: lr * decay**(number of boundaries passed)."""
  passed = sum(epoch >= boundary for boundary in optim_cfg.lr_boundaries)
  return optim_cfg.learning_rate * optim_cfg.lr_decay**passed


def memory_capacity(num_clusters: int) -> int:
  """Memories are padded to a power of two so the step recompiles only when it is crossed."""
  return max(16, 1 << int(np.ceil(np.log2(max(num_clusters, 1)))))


def create_train_state(config: ml_collections.ConfigDict, model, rng: jax.Array) -> TrainState:
  image_shape = (config.data.image_height, config.data.image_width)
  variables = models.init_variables(model, rng, image_shape)
  if config.model.identical_stems:
    variables = models.copy_visible_stem_to_infrared(variables)
  if config.model.pretrained:
    cache_dir = os.path.join(os.path.dirname(os.path.abspath(config.model.pretrained)),
                             'vireid_jax_converted')
    variables = models.weights.load_imagenet_resnet(config.model.pretrained, variables,
                                                    cache_dir=cache_dir)
  params = variables['params']
  return TrainState(params=params, batch_stats=variables['batch_stats'],
                    opt_state=make_optimizer(config.optim).init(params))


def make_train_step(model, config: ml_collections.ConfigDict, mesh: Mesh, stage: int):
  """The jitted train step of stage 1 or 2, sharded over `mesh`.

  Returned function: (state, memories, visible_images (Nv,H,W,3) uint8, infrared_images
  (Ni,H,W,3) uint8, plan (EpochPlan of (steps, B) int32), step () int32, rng, lr ()) ->
  (state, memories, metrics). Images, state and memories are replicated; the plan is split
  along its batch axis, so each device gathers and augments its share of the batch.
  """
  aug_cfg = augment.AugmentConfig.from_config(config.augment)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  tx = make_optimizer(config.optim)
  temperature = config.memory.temperature
  reference_gradients = dict(
      reference_memory_gradients=config.loss.reference_memory_gradients,
      momentum=config.memory.momentum)

  def loss_fn(params, batch_stats, memories, view_a, view_b, infrared, y_v, y_i):
    visible = jnp.concatenate([view_a, view_b])
    (neck, _), new_vars = model.apply({'params': params, 'batch_stats': batch_stats}, visible,
                                      infrared, train=True, mutable=['batch_stats'])
    f_a, f_b, f_r = jnp.split(neck, 3)
    if stage == 1:
      loss, metrics = losses.stage1_loss(f_a, f_b, f_r, y_v, y_i, memories, temperature,
                                         **reference_gradients)
    else:
      loss, metrics = losses.stage2_loss(
          f_a, f_b, f_r, y_v, y_i, memories, temperature, config.loss.alpha, config.loss.beta,
          unnormalized_cross_logits=config.loss.unnormalized_cross_logits,
          kl_clamp=config.loss.kl_clamp, **reference_gradients)
    # 'total' is the very value differentiated, so a NaN anywhere in it is seen by the host.
    metrics = dict(metrics, total=loss)
    return loss, (metrics, new_vars['batch_stats'], (f_a, f_b, f_r))

  def train_step(state, memories, visible_images, infrared_images, plan, step, rng, lr):
    row = lambda a: jax.lax.dynamic_index_in_dim(a, step, keepdims=False)
    visible_index, infrared_index = row(plan.visible_index), row(plan.infrared_index)
    y_v, y_i = row(plan.visible_label), row(plan.infrared_label)
    view_a, view_b, infrared = augment.augment_batch(
        rng, visible_images[visible_index], infrared_images[infrared_index], aug_cfg, mean, std)
    grads, (metrics, batch_stats, features) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, memories, view_a, view_b, infrared, y_v, y_i)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: -lr * u, updates)
    params = optax.apply_updates(state.params, updates)
    # The reference updates the memories in its backward pass, after every logit of the step
    # was computed with the old tables: updating after the loss gives the same tables (the
    # gradients it saw from partly updated tables are reference_memory_gradients' business).
    memories = memory_lib.update_memories(memories, *features, y_v, y_i, stage=stage,
                                          momentum=config.memory.momentum)
    metrics = dict(metrics, grad_norm=optax.tree_utils.tree_norm(grads))
    return TrainState(params, batch_stats, opt_state), memories, metrics

  replicated = sharding.replicated(mesh)
  plan_sharding = NamedSharding(mesh, PartitionSpec(None, sharding.DATA_AXIS))
  return jax.jit(
      train_step,
      in_shardings=(replicated, replicated, replicated, replicated, plan_sharding, replicated,
                    replicated, replicated),
      out_shardings=(replicated, replicated, replicated),
      donate_argnums=(0, 1))


@dataclasses.dataclass
class EpochClusters:
  """What clustering and matching produced for one epoch (host side)."""
  visible_labels: np.ndarray  # (Nv,) int, -1 = outlier
  infrared_labels: np.ndarray  # (Ni,) int
  visible_centers: np.ndarray  # (Kv, C) float32, L2-normalised
  infrared_centers: np.ndarray  # (Ki, C)
  match: Any  # clustering.MatchResult
  stats: dict


def oracle_match(visible_pids: np.ndarray, infrared_pids: np.ndarray):
  """The match of `cluster.oracle`: clusters are identities, matched when they are the same."""
  visible_ids, infrared_ids = np.unique(visible_pids), np.unique(infrared_pids)
  mask = infrared_ids[:, None] == visible_ids[None, :]
  unmatched = sorted(int(pid) for pid in set(visible_ids) ^ set(infrared_ids))
  if unmatched:
    raise ValueError(f'cluster.oracle needs every identity in both modalities; missing a '
                     f'partner: {unmatched[:10]}')
  pairs = np.argwhere(mask)
  return clustering.MatchResult(
      mask=mask, infrared_partners=[np.flatnonzero(r) for r in mask],
      visible_partners=[np.flatnonzero(c) for c in mask.T], mean_partners_infrared=1.0,
      mean_partners_visible=1.0, one_to_one=pairs, many_to_one=pairs)


def cluster_epoch(config, visible_features, infrared_features, visible_pids, infrared_pids):
  """Jaccard + DBSCAN per modality, then MBCCM matching; raises clustering.NoClustersError.

  With `config.cluster.oracle` the true identities replace both (an upper bound for studies).
  """
  c = config.cluster
  labels, centers, stats = {}, {}, {}
  for modality, features, pids in ((VISIBLE, visible_features, visible_pids),
                                   (INFRARED, infrared_features, infrared_pids)):
    if c.oracle:
      labels[modality] = np.unique(pids, return_inverse=True)[1]
      centers[modality] = clustering.cluster_centers(features, labels[modality])
    else:
      labels[modality], centers[modality] = clustering.cluster_features(
          features, k1=c.k1, k2=c.k2, eps=c.eps, min_samples=c.min_samples, modality=modality)
    for key, value in clustering.cluster_diagnostics(labels[modality], pids).items():
      stats[f'{modality}/{key}'] = value
  if c.oracle:
    match = oracle_match(visible_pids, infrared_pids)
  else:
    match = clustering.mbccm_match(centers[VISIBLE], centers[INFRARED])
  stats['match/mean_partners_infrared'] = float(match.mean_partners_infrared)
  stats['match/mean_partners_visible'] = float(match.mean_partners_visible)
  stats.update({f'match/{k}': v for k, v in clustering.match_diagnostics(
      match.mask, labels[VISIBLE], visible_pids, labels[INFRARED], infrared_pids).items()})
  return EpochClusters(labels[VISIBLE], labels[INFRARED], centers[VISIBLE], centers[INFRARED],
                       match, stats)


def _pad_rows(centers: np.ndarray, capacity: int) -> np.ndarray:
  padded = np.zeros((capacity, centers.shape[1]), np.float32)
  padded[:len(centers)] = centers
  return padded


def build_memories(clusters: EpochClusters, mesh: Mesh):
  num_v, num_i = len(clusters.visible_centers), len(clusters.infrared_centers)
  memories = memory_lib.Memories.from_centers(
      _pad_rows(clusters.visible_centers, memory_capacity(num_v)),
      _pad_rows(clusters.infrared_centers, memory_capacity(num_i)),
      num_visible=num_v, num_infrared=num_i)
  return sharding.put_replicated(memories, mesh)


def plan_epoch(config, clusters: EpochClusters, stage: int, epoch: int) -> sampling.EpochPlan:
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
  """Holds what lives across epochs: data on the devices, compiled functions, the state."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.mesh = sharding.make_mesh()
    batch = config.sampler.clusters_per_step * config.sampler.instances_per_cluster
    sharding.check_divisible(batch, self.mesh, 'images per modality per step')
    self.model = models.build_model(config.model)
    self.train_visible, self.train_infrared = data_lib.load_train(config.data)
    self.test_visible, self.test_infrared = data_lib.load_test(config.data)
    logging.info('train: %d visible / %d infrared images; test: %d visible / %d infrared',
                 len(self.train_visible), len(self.train_infrared), len(self.test_visible),
                 len(self.test_infrared))
    self.visible_images = sharding.put_replicated(self.train_visible.images, self.mesh)
    self.infrared_images = sharding.put_replicated(self.train_infrared.images, self.mesh)
    # The devices hold the training images from here on; keep only the labels on the host
    # (SYSU-MM01 at 288x144 would otherwise cost 4.3 GB twice).
    self.train_visible = self.train_visible.without_images()
    self.train_infrared = self.train_infrared.without_images()
    self.extract_batch = extract_lib.make_extract_fn(
        self.model, tuple(config.data.mean), tuple(config.data.std), config.eval.flip)
    self.step_fns = {stage: make_train_step(self.model, config, self.mesh, stage)
                     for stage in (1, 2)}
    self.state = sharding.put_replicated(
        create_train_state(config, self.model, jax.random.PRNGKey(config.seed)), self.mesh)
    self.history: list[dict] = []
    self.best = {'mAP': -1.0, 'epoch': -1}
    self.start_epoch = 0
    self._resume()

  # --- checkpoints -------------------------------------------------------------------------

  def _record(self, epoch: int) -> dict:
    return {'epoch': epoch, 'history': self.history, 'best': self.best,
            'config': self.config.to_json_best_effort()}

  def _resume(self) -> None:
    epoch = checkpoint.latest_epoch(self.workdir)
    if epoch is None:
      return
    self.state, record = checkpoint.restore(self.workdir, checkpoint.LATEST, self.state)
    self.history, self.best = record['history'], record['best']
    self.start_epoch = record['epoch']
    logging.info('resumed from %s after epoch %d', self.workdir, self.start_epoch)
    print(f'Resuming {self.workdir} after epoch {self.start_epoch} '
          f'(best mAP so far {self.best["mAP"]:.2f} after epoch {self.best["epoch"] + 1}).')

  def variables(self) -> dict:
    return {'params': self.state.params, 'batch_stats': self.state.batch_stats}

  # --- pieces of an epoch ------------------------------------------------------------------

  def extract(self, images, modality: str, desc: str) -> np.ndarray:
    return extract_lib.extract_features(self.extract_batch, self.variables(), images, modality,
                                        self.config.eval.batch_size, self.mesh, desc=desc)

  def evaluate(self, trials) -> dict:
    return evaluate_lib.evaluate_features(
        self.config, self.extract, self.test_visible, self.test_infrared, trials=trials)

  def train_epoch(self, epoch: int, stage: int, clusters: EpochClusters) -> dict:
    config = self.config
    plan = plan_epoch(config, clusters, stage, epoch)
    plan = jax.device_put(plan, NamedSharding(self.mesh, PartitionSpec(None, sharding.DATA_AXIS)))
    memories = build_memories(clusters, self.mesh)
    lr = learning_rate(config.optim, epoch)
    epoch_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)
    step_fn = self.step_fns[stage]
    per_step = []
    bar = tqdm(range(config.sampler.steps_per_epoch), desc=f'epoch {epoch + 1} (stage {stage})',
               leave=False, unit='step')
    for step in bar:
      rng = jax.random.fold_in(epoch_key, step)
      self.state, memories, metrics = step_fn(self.state, memories, self.visible_images,
                                              self.infrared_images, plan, np.int32(step), rng,
                                              np.float32(lr))
      per_step.append(metrics)
      if (step + 1) % config.log_every == 0:
        bar.set_postfix(loss=f'{float(metrics["total"]):.3f}')
    per_step = jax.device_get(per_step)
    losses_per_step = np.array([m['total'] for m in per_step])
    bad_step = _first_nonfinite(losses_per_step)
    if bad_step is not None:
      raise TrainingDiverged(
          f'loss became {losses_per_step[bad_step]} at epoch {epoch + 1} (of '
          f'{config.schedule.epochs}), step {bad_step + 1} (of {len(losses_per_step)}); the run '
          f'stopped without saving this epoch. The last good checkpoint (after epoch {epoch}) '
          f'is intact in {self.workdir}/checkpoints/latest: lower the learning rate or check '
          f'the data, then run the same command to resume.')
    summary = {f'loss/{k}': float(np.mean([m[k] for m in per_step])) for k in per_step[0]}
    summary['lr'] = lr
    return summary

  def run(self, max_epochs: int | None = None) -> dict:
    """Trains from `start_epoch`; `max_epochs` stops early (used to test resuming)."""
    config = self.config
    epochs = config.schedule.epochs
    end_epoch = epochs if max_epochs is None else min(epochs, self.start_epoch + max_epochs)
    if self.start_epoch == 0 and not self.history and config.eval.at_start:
      # Where the untrained network stands, so every report shows what training bought.
      results = self.evaluate(config.eval.train_trials)
      self.history.append({'epoch': -1, 'eval': results,
                           'headline': evaluate_lib.headline(config, results)})
      print(f'untrained: {evaluate_lib.format_headline(config, results)}')
    for epoch in range(self.start_epoch, end_epoch):
      stage = 1 if epoch < config.schedule.stage2_start else 2
      entry = {'epoch': epoch, 'stage': stage}
      t0 = time.time()
      visible_features = self.extract(self.visible_images, VISIBLE, 'extract visible')
      infrared_features = self.extract(self.infrared_images, INFRARED, 'extract infrared')
      t1 = time.time()
      try:
        clusters = cluster_epoch(config, visible_features, infrared_features,
                                 self.train_visible.pids, self.train_infrared.pids)
      except clustering.NoClustersError as error:
        if config.cluster.on_no_clusters == 'stop':
          raise NoClustersStop(
              f'epoch {epoch + 1}: {error} Training cannot proceed; the run stopped cleanly '
              f'(checkpoints intact). Set --config.cluster.on_no_clusters=skip to skip such '
              f'epochs, or revisit cluster.eps / the initial weights.') from error
        print(f'epoch {epoch + 1}: {error} Skipping the epoch (cluster.on_no_clusters=skip).')
        entry['skipped'] = str(error)
        clusters = None
      t2 = time.time()
      if clusters is not None:
        entry.update(clusters.stats)
        entry.update(self.train_epoch(epoch, stage, clusters))
      t3 = time.time()
      entry['time/extract'], entry['time/cluster'], entry['time/train'] = t1 - t0, t2 - t1, t3 - t2
      improved = False
      if (epoch + 1) % config.schedule.eval_every == 0 or epoch + 1 == epochs:
        results = self.evaluate(config.eval.train_trials)
        entry['eval'] = results
        entry['headline'] = headline = evaluate_lib.headline(config, results)
        improved = headline['mAP'] > self.best['mAP']
        if improved:
          self.best = {'mAP': headline['mAP'], 'rank1': headline['rank1'], 'epoch': epoch}
      self.history.append(entry)
      if improved:
        checkpoint.save(self.workdir, checkpoint.BEST, epoch + 1, self.state,
                        self._record(epoch + 1))
      checkpoint.save(self.workdir, checkpoint.LATEST, epoch + 1, self.state,
                      self._record(epoch + 1))
      report.write_report(self.workdir, self.history, self.best, config)
      print(report.epoch_line(entry, epochs))
    return {'history': self.history, 'best': self.best}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       max_epochs: int | None = None) -> dict:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  return Trainer(config, workdir).run(max_epochs=max_epochs)


def abstract_train_state(config: ml_collections.ConfigDict, model, mesh: Mesh) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the train state, without computing it."""
  image_shape = (config.data.image_height, config.data.image_width)

  def init(rng):
    variables = models.init_variables(model, rng, image_shape)
    return TrainState(variables['params'], variables['batch_stats'],
                      make_optimizer(config.optim).init(variables['params']))

  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      shapes)
