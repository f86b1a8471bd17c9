"""ClusterContrast per modality: the single-modality baseline, and the smallest complete method.

Each modality is clustered on its own every epoch (the core's Jaccard + DBSCAN) and trained
against its own cluster memory, with no cross-modality term at all: MBCCM's stage 1 for the
whole run (Dai et al., "Cluster Contrast for Unsupervised Person Re-Identification", applied to
each modality separately, as the USL-VI-ReID papers' baselines do). What it reaches is what
the cross-modality parts of MBCCM and PGM are measured against.

  memories  one table per modality, rebuilt from the centres every epoch
  sampler   clusters x instances per modality, drawn independently (vireid_jax/sampling.py)
  augment   MBCCM's three views: visible A and B of each visible image, one infrared view
  loss      CE(M_v(f_a), y_v) + CE(M_v(f_b), y_v) + CE(M_i(f_r), y_i)
  update    after each step, M_v takes f_b then f_a, M_i takes f_r (the momentum update)

It reads MBCCM's settings (`memory`, `sampler`, `augment`, `schedule.epochs`, `eval_every`),
so `--config.method=cluster_contrast` on any MBCCM config runs the baseline of that
experiment. docs/new_method.md walks through this file.
"""

import flax.struct
import jax
import jax.numpy as jnp

from vireid_jax import augment
from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax import sampling
from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.losses import cross_entropy
from vireid_jax.methods.mbccm import views as mbccm_views


@flax.struct.dataclass
class Memories:
  """One cluster memory per modality (rows from `num_*` on are padding, masked out)."""
  visible: jax.Array  # (K_v, C) float32
  infrared: jax.Array  # (K_i, C) float32
  num_visible: jax.Array  # () int32
  num_infrared: jax.Array  # () int32


def validate(config) -> None:
  # MBCCM's settings (sampler, memory, augment, schedule.eval_every): any MBCCM config works.
  methods.require_settings(
      config, ('memory.temperature', 'memory.momentum', 'sampler', 'augment',
               'schedule.eval_every'),
      'an MBCCM config (configs/sysu.py, demo.py, ...) with --config.method=cluster_contrast')


def batch_sizes(config) -> methods.StepBatch:
  batch = config.sampler.clusters_per_step * config.sampler.instances_per_cluster
  return methods.StepBatch(batch, batch, 2 * batch, batch)  # two views of each visible image


def schedule(config, epoch: int) -> methods.EpochSchedule:
  """One stage for the whole run; evaluation every `schedule.eval_every` epochs and at the end."""
  s = config.schedule
  return methods.EpochSchedule(
      epoch=epoch, stage=1, stage_epoch=epoch, phase=1, lr_epoch=epoch,
      evaluate=(epoch + 1) % s.eval_every == 0 or epoch + 1 == s.epochs)


def build_memories(config, schedule, clusters, arrays) -> Memories:
  del config, schedule, arrays
  tables = []
  for centers in (clusters.visible_centers, clusters.infrared_centers):
    padded = memory_lib.pad_rows(centers, memory_lib.memory_capacity(len(centers)))
    tables.append(memory_lib.normalize_rows(padded))
  return Memories(visible=tables[0], infrared=tables[1],
                  num_visible=jnp.int32(len(clusters.visible_centers)),
                  num_infrared=jnp.int32(len(clusters.infrared_centers)))


def plan_epoch(config, schedule, clusters, arrays, train_sets, rng) -> methods.Plan:
  del schedule, arrays, train_sets
  s = config.sampler
  plan = sampling.stage1_plan(clusters.visible_labels, clusters.infrared_labels,
                              s.steps_per_epoch, s.clusters_per_step, s.instances_per_cluster,
                              rng)
  return methods.Plan.of(plan, repeat_unit=s.instances_per_cluster)


def step_fns(config, phase, label_repeats=None) -> methods.StepFns:
  """The step's pieces; `label_repeats` bounds the by-rank memory rounds (None = N)."""
  del phase  # one phase
  method = config.memory.update_method
  bound = lambda stream, copies: memory_lib.rounds_bound(
      None if label_repeats is None else label_repeats[stream], copies)
  aug_cfg = augment.AugmentConfig.from_config(config.augment)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  temperature, momentum = config.memory.temperature, config.memory.momentum

  def augment_fn(rng, images, batch):  # MBCCM's three views (methods/mbccm/views.py)
    del batch
    view_a, view_b, infrared_view = mbccm_views.augment_batch(
        rng, images[VISIBLE], images[INFRARED], aug_cfg, mean, std)
    return {VISIBLE: jnp.concatenate([view_a, view_b]), INFRARED: infrared_view}

  def loss_fn(outputs, batch, memories, ctx):
    del ctx
    y_v, y_i = batch[VISIBLE]['label'], batch[INFRARED]['label']
    visible_logits = lambda f: memory_lib.memory_logits(f, memories.visible, temperature,
                                                        num_valid=memories.num_visible)
    # rows [view A; view B] of the same images
    f_a, f_b = jnp.split(outputs[VISIBLE]['neck'], 2)
    visible_loss = (cross_entropy(visible_logits(f_a), y_v)
                    + cross_entropy(visible_logits(f_b), y_v))
    infrared_loss = cross_entropy(memory_lib.memory_logits(
        outputs[INFRARED]['neck'], memories.infrared, temperature,
        num_valid=memories.num_infrared), y_i)
    return visible_loss + infrared_loss, {'visible': visible_loss, 'infrared': infrared_loss}

  def update_fn(memories, outputs, batch, ctx):
    del ctx
    y_v, y_i = batch[VISIBLE]['label'], batch[INFRARED]['label']
    f_a, f_b = jnp.split(outputs[VISIBLE]['neck'], 2)
    visible = memory_lib.update_memory(memories.visible, jnp.concatenate([f_b, f_a]),
                                       jnp.concatenate([y_v, y_v]), momentum, method=method,
                                       max_rounds=bound(VISIBLE, 2))
    infrared = memory_lib.update_memory(memories.infrared, outputs[INFRARED]['neck'], y_i,
                                        momentum, method=method, max_rounds=bound(INFRARED, 1))
    return memories.replace(visible=visible, infrared=infrared)

  return methods.StepFns(augment=augment_fn,
                         updates=(methods.Update(loss=loss_fn, update_memories=update_fn),))


METHOD = methods.Method(
    name='cluster_contrast',
    validate=validate,
    batch_sizes=batch_sizes,
    schedule=schedule,
    build_memories=build_memories,
    plan_epoch=plan_epoch,
    step_fns=step_fns,
    reporting=methods.Reporting(loss_terms=(('visible', 'visible CE'),
                                            ('infrared', 'infrared CE'))))
