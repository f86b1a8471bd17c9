"""PGM: progressive graph matching and alternate cross contrastive learning (CVPR 2023).

As docs/pgm.md gives it, from the authors' code (zesenwu23/USL-VI-ReID). Two stages, each
a training run of its own: stage 1 trains each modality against its own cluster memory; stage 2
restarts from stage 1's best checkpoint with a new Adam and step schedule and adds, every epoch,
PGM (Hungarian matching of the two modalities' cluster centres, `association.py`) and ACCL (a
0.25-weighted cross-modality contrastive term whose direction alternates with the epoch's
parity, `losses.py`). Batches are never paired across modalities.

  memories    M_v, M_i from the centres (two tables; the epoch's maps ride along, read only)
  sampler     camera-aware, 16 per cluster, 128 visible (x2 views) and 256 infrared images per
              step, each modality on its own (sampler.py)
  augment     visible A, visible B with a PIL-exact ColorJitter, infrared (augment.py)
  losses      CE(M_i(f_i)) + CE(M_v([f_A; f_B])) + 0.25 L_x, with the authors' update order and
              the gradients their in-place memories give (losses.py)
Settings per dataset: config.py (configs/pgm_sysu.py, pgm_regdb.py, pgm_llcm.py, pgm_demo.py).
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vireid_jax import augment as augment_lib
from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax.config import ConfigError
from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.methods.pgm import association
from vireid_jax.methods.pgm import augment
from vireid_jax.methods.pgm import config as pgm_config
from vireid_jax.methods.pgm import losses
from vireid_jax.methods.pgm import sampler


@flax.struct.dataclass
class Memories:
  """The epoch's two memory tables and its matching (padded rows and entries: -1 / masked)."""
  visible: jax.Array  # (K_v', C) float32, L2-normalised visible centres
  infrared: jax.Array  # (K_i', C) float32
  num_visible: jax.Array  # () int32 real rows of `visible`
  num_infrared: jax.Array  # () int32
  visible_to_infrared: jax.Array  # (K_v',) int32 infrared partner per visible cluster, -1 none
  infrared_to_visible: jax.Array  # (K_i',) int32


_NEEDED = ('pgm', 'memory.temperature', 'memory.momentum', 'memory.stage2_update',
           'sampler.visible_images', 'sampler.infrared_images', 'augment.color_jitter',
           'augment.ir_jitter_stage1', 'schedule.stage2_start', 'schedule.eval_every',
           'schedule.eval_from')


def validate(config) -> None:
  methods.require_settings(config, _NEEDED, 'configs/pgm_sysu.py, pgm_regdb.py, pgm_llcm.py or '
                           'pgm_demo.py (vireid_jax.methods.pgm.config.pgm_config)')
  if not 0 <= config.schedule.stage2_start <= config.schedule.epochs:
    raise ConfigError('config.schedule.stage2_start must lie in [0, schedule.epochs]')
  rounds = config.pgm.rounds
  if not (rounds == 'until_all' or (str(rounds).isdigit() and int(rounds) >= 1)):
    raise ConfigError(f"config.pgm.rounds = {rounds!r}; expected 'until_all' or a number of "
                      f"rounds >= 1 ('2' = the authors')")
  for field, value, choices in (
      ('memory.stage2_update', config.memory.stage2_update, ('sequential', 'hard')),
      ('pgm.more_infrared', config.pgm.more_infrared, ('symmetric', 'skip'))):
    if value not in choices:
      raise ConfigError(f'config.{field} = {value!r}; expected one of {choices}')
  s = config.sampler
  for field in ('visible_images', 'infrared_images'):
    if s[field] % s.instances_per_cluster:
      raise ConfigError(f'config.sampler.{field} = {s[field]} must be a multiple of '
                        f'sampler.instances_per_cluster = {s.instances_per_cluster}')
  if len(config.augment.color_jitter) != 4:
    raise ConfigError('config.augment.color_jitter needs 4 strengths (brightness, contrast, '
                      f'saturation, hue), got {config.augment.color_jitter}')


def batch_sizes(config) -> methods.StepBatch:
  visible, infrared = config.sampler.visible_images, config.sampler.infrared_images
  return methods.StepBatch(visible, infrared, 2 * visible, infrared)  # views A and B


def schedule(config, epoch: int) -> methods.EpochSchedule:
  """Stage 1 for `stage2_start` epochs, then stage 2 counting its epochs from 0 again."""
  s = config.schedule
  stage = 1 if epoch < s.stage2_start else 2
  stage_epoch = epoch if stage == 1 else epoch - s.stage2_start
  stage_epochs = s.stage2_start if stage == 1 else s.epochs - s.stage2_start
  # TS:541,903: `epoch >= 6 and ((epoch + 1) % eval_step == 0 or epoch == epochs - 1)`.
  evaluate = stage_epoch >= s.eval_from and (
      (stage_epoch + 1) % s.eval_every == 0 or stage_epoch == stage_epochs - 1)
  return methods.EpochSchedule(
      epoch=epoch, stage=stage, stage_epoch=stage_epoch,
      phase=(1,) if stage == 1 else (2, stage_epoch % 2), lr_epoch=stage_epoch,
      evaluate=evaluate, restart=stage == 2 and stage_epoch == 0)


def build_memories(config, schedule, clusters, arrays) -> Memories:
  """The two tables (F.normalize of the centres, TS:498-503) and the epoch's maps."""
  del config, schedule
  num_v, num_i = len(clusters.visible_centers), len(clusters.infrared_centers)
  cap_v, cap_i = memory_lib.memory_capacity(num_v), memory_lib.memory_capacity(num_i)
  maps = []
  for key, num, capacity in ((association.VISIBLE_TO_INFRARED, num_v, cap_v),
                             (association.INFRARED_TO_VISIBLE, num_i, cap_i)):
    padded = np.full(capacity, -1, np.int32)
    if key in arrays:  # stage 2 (stage 1 and skipped epochs have no maps: no cross term)
      padded[:num] = arrays[key]
    maps.append(padded)
  return Memories(
      visible=memory_lib.normalize_rows(memory_lib.pad_rows(clusters.visible_centers, cap_v)),
      infrared=memory_lib.normalize_rows(memory_lib.pad_rows(clusters.infrared_centers, cap_i)),
      num_visible=jnp.int32(num_v), num_infrared=jnp.int32(num_i),
      visible_to_infrared=jnp.asarray(maps[0]), infrared_to_visible=jnp.asarray(maps[1]))


def plan_epoch(config, schedule, clusters, arrays, train_sets, rng) -> methods.Plan:
  """Each modality's camera-aware passes, drawn independently."""
  del arrays
  visible_set, infrared_set = train_sets
  s = config.sampler
  try:
    plan = sampler.plan_epoch(
        clusters.visible_labels, visible_set.cams, clusters.infrared_labels, infrared_set.cams,
        s.steps_per_epoch, rng, visible_batch=s.visible_images,
        infrared_batch=s.infrared_images, num_instances=s.instances_per_cluster)
  except sampler.PassTooShort as error:  # the authors' loader dies with StopIteration here
    raise methods.MethodStop(f'epoch {schedule.epoch + 1}: {error} (config.sampler.'
                             f'visible_images / infrared_images).') from error
  return methods.Plan.of(plan, repeat_unit=s.instances_per_cluster)


def step_fns(config, phase, label_repeats=None) -> methods.StepFns:
  """Stage 1 (no cross term) or a stage-2 epoch of one parity (the cross direction).

  `label_repeats` bounds the by-rank rounds of the same-modality memory updates (None = N)."""
  stage = phase[0]
  parity = phase[1] if stage == 2 else None
  aug_cfg = augment_lib.AugmentConfig.from_config(config.augment)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  jitter = tuple(float(x) for x in config.augment.color_jitter)
  infrared_jitter = jitter if stage == 1 and config.augment.ir_jitter_stage1 else None
  options = dict(hard=stage == 2 and config.memory.stage2_update == 'hard',
                 temperature=config.memory.temperature, momentum=config.memory.momentum,
                 cross_weight=config.pgm.cross_weight,
                 update_method=config.memory.update_method,
                 label_repeats=None if label_repeats is None else (label_repeats[VISIBLE],
                                                                   label_repeats[INFRARED]))

  def augment_fn(rng, images, batch):
    del batch
    visible, infrared = augment.augment_batch(rng, images[VISIBLE], images[INFRARED], aug_cfg,
                                              jitter, infrared_jitter, mean, std)
    return {VISIBLE: visible, INFRARED: infrared}

  def terms(outputs, batch, memories):
    maps = ((memories.visible_to_infrared, memories.infrared_to_visible) if stage == 2
            else (None, None))
    return losses.pgm_loss_terms(
        outputs[VISIBLE]['neck'], outputs[INFRARED]['neck'], batch[VISIBLE]['label'],
        batch[INFRARED]['label'], (memories.visible, memories.infrared), *maps,
        parity if parity is not None else 0, num_visible=memories.num_visible,
        num_infrared=memories.num_infrared, **options)

  def loss_fn(outputs, batch, memories, ctx):
    del ctx
    metrics, _ = terms(outputs, batch, memories)
    return metrics['total'], {k: v for k, v in metrics.items() if k != 'total'}

  def update_fn(memories, outputs, batch, ctx):
    # The same function as the loss: the tables after the authors' backward pass (the losses
    # computed again here are unused and compiled away).
    del ctx
    _, (visible, infrared) = terms(outputs, batch, memories)
    return memories.replace(visible=visible, infrared=infrared)

  return methods.StepFns(augment=augment_fn,
                         updates=(methods.Update(loss=loss_fn, update_memories=update_fn),))


def _epoch_line(entry) -> str:
  if 'match/pairs' not in entry:
    return 'skipped cross term' if entry.get('match/skipped') else ''
  text = f'pairs {entry["match/pairs"]:.0f}'
  one_to_one = entry.get('match/one_to_one_precision', np.nan)
  if not np.isnan(one_to_one):
    text += (f'  same-id: 1:1 {one_to_one:.2f} '
             f'I-partner {entry.get("match/infrared_with_true_partner", np.nan):.2f} '
             f'pairs {entry.get("match/pair_precision", np.nan):.2f}')
  return text


METHOD = methods.Method(
    name='pgm',
    default_config=pgm_config.pgm_config,
    validate=validate,
    batch_sizes=batch_sizes,
    schedule=schedule,
    associate=association.associate,
    build_memories=build_memories,
    plan_epoch=plan_epoch,
    step_fns=step_fns,
    reporting=methods.Reporting(
        loss_terms=(('infrared', 'CE infrared'), ('visible', 'CE visible'),
                    ('cross', 'L_x (ACCL)')),
        association_columns=(
            ('pairs', 'match/pairs', '.0f'),
            ('1:1 same id', 'match/one_to_one_precision', '.3f'),
            ('I with same-id partner', 'match/infrared_with_true_partner', '.3f'),
            ('pairs same id', 'match/pair_precision', '.3f')),
        association_quality=(
            ('match/one_to_one_precision', 'round-1 (one-to-one) partner same id'),
            ('match/infrared_with_true_partner', 'infrared clusters with a same-id partner'),
            ('match/pair_precision', 'matched pairs sharing an id')),
        epoch_line=_epoch_line))
