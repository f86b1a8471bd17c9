"""MBCCM: bilateral cross-modality cluster matching (ACM MM 2023), as docs/mbccm.md gives it.

Two stages in one run, one optimiser state throughout: epochs before `schedule.stage2_start`
train each modality against its own memory (stage 1); from there, matched cluster pairs
(`association.associate`, every epoch) make paired batches, and two modality-agnostic memories
and a consistency term join the loss (stage 2).

  matching    bilateral cluster matching of the two modalities' centres (matching.py,
              association.py)
  memories    M_v, M_i, M_vi, M_iv from the centres (memories.py), updated in the reference's
              order after every step
  sampler     12 clusters x 12 images per modality; stage 2 pairs position i of both
              modalities through the match mask (sampler.py; stage 1: the core's sampling.py)
  views       visible views A (multiplicative rectangles) and B (one channel), infrared
              (views.py, from the core's augmentation ops)
  losses      L_ms; + alpha L_ma + beta L_cc in stage 2 (losses.py)
Settings per dataset: config.py (configs/sysu.py, regdb.py, llcm.py, demo.py).
"""

import jax.numpy as jnp
import numpy as np

from vireid_jax import augment
from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax import sampling
from vireid_jax.config import ConfigError
from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.methods.mbccm import association
from vireid_jax.methods.mbccm import config as mbccm_config
from vireid_jax.methods.mbccm import losses
from vireid_jax.methods.mbccm import memories as memories_lib
from vireid_jax.methods.mbccm import sampler
from vireid_jax.methods.mbccm import views as mbccm_views

SETTINGS = ('memory.temperature', 'memory.momentum', 'loss', 'sampler', 'augment',
            'schedule.stage2_start', 'schedule.eval_every')


def validate(config) -> None:
  methods.require_settings(config, SETTINGS, 'configs/sysu.py, regdb.py, llcm.py or demo.py '
                           '(vireid_jax.methods.mbccm.config.mbccm_config)')
  if not 0 <= config.schedule.stage2_start <= config.schedule.epochs:
    raise ConfigError('config.schedule.stage2_start must lie in [0, schedule.epochs]')
  if config.sampler.clusters_per_step % 2:
    raise ConfigError('config.sampler.clusters_per_step must be even: stage 2 draws half of '
                      'them from each modality')


def batch_sizes(config) -> methods.StepBatch:
  """B visible and B infrared images per step, B = clusters x instances; 2B visible inputs
  (views A and B) and B infrared."""
  batch = config.sampler.clusters_per_step * config.sampler.instances_per_cluster
  return methods.StepBatch(batch, batch, 2 * batch, batch)


def schedule(config, epoch: int) -> methods.EpochSchedule:
  """Stage 1 before `schedule.stage2_start`, stage 2 after; evaluation every `eval_every`."""
  s = config.schedule
  stage = 1 if epoch < s.stage2_start else 2
  return methods.EpochSchedule(
      epoch=epoch, stage=stage, stage_epoch=epoch if stage == 1 else epoch - s.stage2_start,
      phase=stage, lr_epoch=epoch,
      evaluate=(epoch + 1) % s.eval_every == 0 or epoch + 1 == s.epochs)


def build_memories(config, schedule, clusters, arrays) -> memories_lib.Memories:
  """M_v, M_i, M_vi, M_iv from the epoch's centres, padded to a power of two."""
  del config, schedule, arrays
  num_v, num_i = len(clusters.visible_centers), len(clusters.infrared_centers)
  return memories_lib.Memories.from_centers(
      memory_lib.pad_rows(clusters.visible_centers, memory_lib.memory_capacity(num_v)),
      memory_lib.pad_rows(clusters.infrared_centers, memory_lib.memory_capacity(num_i)),
      num_visible=num_v, num_infrared=num_i)


def plan_epoch(config, schedule, clusters, arrays, train_sets, rng) -> methods.Plan:
  """Independent identity batches in stage 1, matched pairs in stage 2."""
  del train_sets
  s = config.sampler
  if schedule.stage == 1:
    plan = sampling.stage1_plan(clusters.visible_labels, clusters.infrared_labels,
                                s.steps_per_epoch, s.clusters_per_step,
                                s.instances_per_cluster, rng)
  else:
    plan = sampler.stage2_plan(clusters.visible_labels, clusters.infrared_labels,
                               arrays['match_mask'], s.steps_per_epoch, s.clusters_per_step,
                               s.instances_per_cluster, rng)
  return methods.Plan.of(plan, repeat_unit=s.instances_per_cluster)


def step_fns(config, stage: int, label_repeats=None) -> methods.StepFns:
  """View A and view B of every visible image, one infrared view; the stage's loss.

  `label_repeats`: the static bound of the memory updates' rounds (None = N; see
  `memories.update_memories`); y_v and y_i have one entry per pair position, so one bound
  serves both."""
  aug_cfg = augment.AugmentConfig.from_config(config.augment)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  temperature = config.memory.temperature
  repeats = None if label_repeats is None else max(label_repeats[VISIBLE],
                                                   label_repeats[INFRARED])
  memory_update = dict(method=config.memory.update_method, label_repeats=repeats)
  reference_gradients = dict(
      reference_memory_gradients=config.loss.reference_memory_gradients,
      momentum=config.memory.momentum, memory_update=config.memory.update_method,
      label_repeats=repeats)

  def augment_fn(rng, images, batch):
    del batch
    view_a, view_b, infrared_view = mbccm_views.augment_batch(
        rng, images[VISIBLE], images[INFRARED], aug_cfg, mean, std)
    return {VISIBLE: jnp.concatenate([view_a, view_b]), INFRARED: infrared_view}

  def loss_fn(outputs, batch, memories, ctx):
    del ctx
    f_a, f_b = jnp.split(outputs[VISIBLE]['neck'], 2)
    f_infrared = outputs[INFRARED]['neck']
    y_v, y_i = batch[VISIBLE]['label'], batch[INFRARED]['label']
    if stage == 1:
      return losses.stage1_loss(f_a, f_b, f_infrared, y_v, y_i, memories, temperature,
                                **reference_gradients)
    return losses.stage2_loss(
        f_a, f_b, f_infrared, y_v, y_i, memories, temperature, config.loss.alpha,
        config.loss.beta, unnormalized_cross_logits=config.loss.unnormalized_cross_logits,
        kl_clamp=config.loss.kl_clamp, **reference_gradients)

  def update_fn(memories, outputs, batch, ctx):
    # The reference updates the memories in its backward pass, after every logit of the step
    # was computed with the old tables: updating after the loss gives the same tables (the
    # gradients it saw from partly updated tables are reference_memory_gradients' business).
    del ctx
    f_a, f_b = jnp.split(outputs[VISIBLE]['neck'], 2)
    return memories_lib.update_memories(
        memories, f_a, f_b, outputs[INFRARED]['neck'], batch[VISIBLE]['label'],
        batch[INFRARED]['label'], stage=stage, momentum=config.memory.momentum,
        **memory_update)

  return methods.StepFns(augment=augment_fn,
                         updates=(methods.Update(loss=loss_fn, update_memories=update_fn),))


def _epoch_line(entry) -> str:
  text = (f'partners I/V {entry.get("match/mean_partners_infrared", 0):.2f}/'
          f'{entry.get("match/mean_partners_visible", 0):.2f}')
  one_to_one = entry.get('match/one_to_one_precision', np.nan)
  if not np.isnan(one_to_one):  # NaN: no true identities known
    text += (f'  same-id: 1:1 {one_to_one:.2f} '
             f'I-partner {entry.get("match/infrared_with_true_partner", np.nan):.2f} '
             f'pairs {entry.get("match/pair_precision", np.nan):.2f}')
  return text


METHOD = methods.Method(
    name='mbccm',
    default_config=mbccm_config.mbccm_config,
    validate=validate,
    batch_sizes=batch_sizes,
    schedule=schedule,
    associate=association.associate,
    build_memories=build_memories,
    plan_epoch=plan_epoch,
    step_fns=step_fns,
    reporting=methods.Reporting(
        loss_terms=(('ms', 'L_ms'), ('ma', 'L_ma'), ('cc', 'L_cc')),
        association_columns=(
            ('partners I', 'match/mean_partners_infrared', '.2f'),
            ('partners V', 'match/mean_partners_visible', '.2f'),
            ('1:1 same id', 'match/one_to_one_precision', '.3f'),
            ('I with same-id partner', 'match/infrared_with_true_partner', '.3f'),
            ('pairs same id', 'match/pair_precision', '.3f')),
        association_quality=(
            ('match/one_to_one_precision', 'one-to-one partner same id'),
            ('match/infrared_with_true_partner', 'infrared clusters with a same-id partner'),
            ('match/pair_precision', 'matched pairs sharing an id')),
        association_counts=(('match/mean_partners_infrared', 'partners / infrared cluster'),
                            ('match/mean_partners_visible', 'partners / visible cluster')),
        epoch_line=_epoch_line))
