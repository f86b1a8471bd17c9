"""PCLHD's training method: its schedule, hooks and step on the core's interface.

  stage 1   each modality against its own hybrid memory (`losses.stage1_terms`); PGM's
            camera-aware sampler, 128 infrared and 128 visible images (RegDB: 64) per step
  stage 2   restarts from stage 1's best checkpoint with a fresh Adam; the teacher starts as
            that network (`init_state`). Every epoch: per-modality clusters as stage 1, the joint
            clustering of both modalities (`clustering.joint_jaccard_distance`), PCLHD's
            matching (`association.pclhd_match`); every step: the teacher's train-mode forward
            (its BatchNorm statistics; its features for the constant dynamic term), Adam on
            the main loss (`losses.main_terms`), then a second forward and Adam on the joint
            batch (`losses.joint_terms`), then the teacher's EMA (`teacher.ema_update`).
            Evaluation, selection (Rank-1, every epoch) and --mode eval use the teacher.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vireid_jax import augment as augment_lib
from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax.clustering.diagnostics import match_diagnostics
from vireid_jax.config import ConfigError
from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.methods.pclhd import association
from vireid_jax.methods.pclhd import clustering as pclhd_clustering
from vireid_jax.methods.pclhd import config as pclhd_config
from vireid_jax.methods.pclhd import instances
from vireid_jax.methods.pclhd import losses
from vireid_jax.methods.pclhd import memory as hybrid
from vireid_jax.methods.pclhd import teacher as teacher_lib
from vireid_jax.methods.pgm import augment as pgm_augment
from vireid_jax.methods.pgm import sampler

JOINT_VISIBLE, JOINT_INFRARED = 'joint_visible', 'joint_infrared'
VISIBLE_TO_INFRARED, INFRARED_TO_VISIBLE = 'visible_to_infrared', 'infrared_to_visible'
_SETTINGS = ('pclhd', 'memory.temperature', 'memory.momentum', 'memory.stage1',
             'sampler.visible_images', 'sampler.infrared_images',
             'sampler.visible_images_stage1', 'sampler.joint_visible_images',
             'sampler.joint_infrared_images', 'sampler.instances_per_cluster',
             'sampler.steps_per_epoch', 'augment.color_jitter', 'schedule.stage2_start',
             'schedule.eval_every', 'schedule.eval_from')
_CHOICES = (('memory.stage1', ('hybrid', 'centroid')),
            ('pclhd.dynamic_term', ('constant', 'off')),
            ('pclhd.match', association.VARIANTS),
            ('pclhd.more_infrared', ('skip', 'stop')))


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def validate(config) -> None:
  methods.require_settings(config, _SETTINGS, 'configs/pclhd_sysu.py, pclhd_regdb.py, '
                           'pclhd_llcm.py or pclhd_demo.py (vireid_jax.methods.pclhd.config.'
                           'pclhd_config)')
  for field, choices in _CHOICES:
    if _get(config, field) not in choices:
      raise ConfigError(f'config.{field} = {_get(config, field)!r}; expected one of {choices}')
  rounds = config.pclhd.rounds
  if not (rounds == 'until_all' or (str(rounds).isdigit() and int(rounds) >= 1)):
    raise ConfigError(f"config.pclhd.rounds = {rounds!r}; expected 'until_all' or a number of "
                      f"rounds >= 1 (the authors': 3 on SYSU-MM01, 2 on RegDB)")
  if not 0 <= config.schedule.stage2_start <= config.schedule.epochs:
    raise ConfigError('config.schedule.stage2_start must lie in [0, schedule.epochs]')
  s = config.sampler
  for field in ('visible_images', 'infrared_images', 'visible_images_stage1',
                'joint_visible_images', 'joint_infrared_images'):
    if s[field] % s.instances_per_cluster:
      raise ConfigError(f'config.sampler.{field} = {s[field]} must be a multiple of '
                        f'sampler.instances_per_cluster = {s.instances_per_cluster}')
  if len(config.augment.color_jitter) != 4:
    raise ConfigError('config.augment.color_jitter needs 4 strengths (brightness, contrast, '
                      f'saturation, hue; all 0 = none, PCLHD\'s), got '
                      f'{config.augment.color_jitter}')
  # The stage-1 and joint forwards must split into the BatchNorm groups too (RegDB: 64 visible
  # images in stage 1).
  joint_visible, joint_infrared = _joint_batches(config)
  for rows, what in ((2 * s.visible_images_stage1, 'visible inputs of a stage-1 step'),
                     (2 * joint_visible, 'visible inputs of a joint step'),
                     (joint_infrared, 'infrared inputs of a joint step')):
    if rows % config.model.bn_groups:
      raise ConfigError(f'config.model.bn_groups = {config.model.bn_groups} does not divide the '
                        f'{rows} {what} (config.sampler)')


def batch_sizes(config) -> methods.StepBatch:
  """Stage 2's main step: 128 visible images (x2 views) and 128 infrared."""
  visible, infrared = config.sampler.visible_images, config.sampler.infrared_images
  return methods.StepBatch(visible, infrared, 2 * visible, infrared)


def schedule(config, epoch: int) -> methods.EpochSchedule:
  """Stage 1 for `stage2_start` epochs, then stage 2 counting its epochs from 0 again;
  evaluation every `eval_every` epochs from each stage's `eval_from` (TS:569,1102: every
  epoch from 0) and at each stage's last."""
  s = config.schedule
  stage = 1 if epoch < s.stage2_start else 2
  stage_epoch = epoch if stage == 1 else epoch - s.stage2_start
  stage_epochs = s.stage2_start if stage == 1 else s.epochs - s.stage2_start
  evaluate = stage_epoch >= s.eval_from and (
      (stage_epoch + 1) % s.eval_every == 0 or stage_epoch == stage_epochs - 1)
  return methods.EpochSchedule(
      epoch=epoch, stage=stage, stage_epoch=stage_epoch,
      phase=(1,) if stage == 1 else (2, stage_epoch % 2), lr_epoch=stage_epoch,
      evaluate=evaluate, restart=stage == 2 and stage_epoch == 0)


def _stage2(config, schedule_) -> bool:
  return schedule_.stage == 2


def _joint_distance(config, features, is_infrared):
  return pclhd_clustering.joint_jaccard_distance(
      features, is_infrared, k1=config.pclhd.joint_k1, k2=config.pclhd.joint_k2,
      max_distance=config.pclhd.joint_eps)


def _teacher_features(config, schedule_) -> bool:
  """The teacher's training features feed the dynamic term's instance tables (stage 2)."""
  return schedule_.stage == 2 and config.pclhd.dynamic_term == 'constant'


def associate(config, schedule_, clusters, pids) -> tuple[dict, dict]:
  """Stage 2: PCLHD's matching of the per-modality centres ({} in stage 1)."""
  stats = {}
  if clusters.joint_labels is not None:
    is_infrared = np.arange(len(clusters.joint_labels)) >= len(clusters.visible_labels)
    mixed = _mixed(clusters.joint_labels, is_infrared)
    stats['joint/mixed_clusters'] = float(mixed.sum())
  if schedule_.stage == 1:
    return {}, stats
  num_visible, num_infrared = len(clusters.visible_centers), len(clusters.infrared_centers)
  try:
    rounds = config.pclhd.rounds
    visible_to_infrared, infrared_to_visible = association.pclhd_match(
        clusters.visible_centers, clusters.infrared_centers, variant=config.pclhd.match,
        rounds=rounds if rounds == 'until_all' else int(rounds))
  except association.MoreInfraredClusters as error:
    if config.pclhd.more_infrared == 'stop':
      raise association.MoreInfraredClusters(
          f'epoch {schedule_.epoch + 1}: {error} (--config.pclhd.more_infrared=skip trains the '
          f'epoch without the cross term, as the authors\' RegDB code does)') from error
    return {}, dict(stats, **{'match/skipped': 1.0})
  if np.all(visible_to_infrared < 0):  # RegDB's code: no matching with more infrared clusters
    return {}, dict(stats, **{'match/skipped': 1.0})
  for side, partners in (('visible', visible_to_infrared), ('infrared', infrared_to_visible)):
    if np.any(partners < 0):
      raise methods.MethodStop(
          f'epoch {schedule_.epoch + 1}: PCLHD\'s {config.pclhd.rounds} matching rounds left '
          f'{int(np.sum(partners < 0))} of {len(partners)} {side} clusters without a partner '
          f'({num_visible} visible, {num_infrared} infrared clusters; the authors\' code stops '
          f'here with a KeyError). Use --config.pclhd.rounds=until_all to match them all.')
  mask = np.zeros((num_infrared, num_visible), bool)
  mask[visible_to_infrared, np.arange(num_visible)] = True
  mask[np.arange(num_infrared), infrared_to_visible] = True
  stats.update({f'match/{k}': v for k, v in match_diagnostics(
      mask, clusters.visible_labels, pids[0], clusters.infrared_labels, pids[1]).items()})
  stats['match/skipped'] = 0.0
  return {VISIBLE_TO_INFRARED: visible_to_infrared,
          INFRARED_TO_VISIBLE: infrared_to_visible}, stats


def _mixed(joint_labels, is_infrared) -> np.ndarray:
  """(K,) bool: the joint clusters with both modalities (TS:352-380)."""
  num = int(joint_labels.max(initial=-1)) + 1
  member = joint_labels >= 0
  has = np.zeros((num, 2), bool)
  has[joint_labels[member], is_infrared[member].astype(int)] = True
  return has.all(axis=1)


def _padded_map(arrays, key, num, capacity) -> np.ndarray:
  padded = np.full(capacity, -1, np.int32)
  if key in arrays:
    padded[:num] = arrays[key]
  return padded


def build_memories(config, schedule_, clusters, arrays, *, features, rng):
  """Stage 1: M_v, M_i (hybrid, or centroid with memory.stage1 'centroid'). Stage 2: M_v, M_i,
  the matching's maps, M_all over every joint cluster (TS:928-932), and with the dynamic term
  the teacher's instance tables (TS:891-902)."""
  num_v, num_i = len(clusters.visible_centers), len(clusters.infrared_centers)
  cap_v, cap_i = memory_lib.memory_capacity(num_v), memory_lib.memory_capacity(num_i)
  memories = {'num_visible': np.int32(num_v), 'num_infrared': np.int32(num_i)}
  if schedule_.stage == 1 and config.memory.stage1 == 'centroid':
    memories['visible'] = memory_lib.normalize_rows(
        memory_lib.pad_rows(clusters.visible_centers, cap_v))
    memories['infrared'] = memory_lib.normalize_rows(
        memory_lib.pad_rows(clusters.infrared_centers, cap_i))
    return memories
  memories['visible'] = hybrid.hybrid_table(clusters.visible_centers, cap_v)
  memories['infrared'] = hybrid.hybrid_table(clusters.infrared_centers, cap_i)
  if schedule_.stage == 1:
    return memories
  memories[VISIBLE_TO_INFRARED] = _padded_map(arrays, VISIBLE_TO_INFRARED, num_v, cap_v)
  memories[INFRARED_TO_VISIBLE] = _padded_map(arrays, INFRARED_TO_VISIBLE, num_i, cap_i)
  all_features = np.concatenate([features.visible, features.infrared])
  is_infrared = np.arange(len(all_features)) >= len(features.visible)
  centers, _ = pclhd_clustering.joint_clusters(all_features, is_infrared, clusters.joint_labels)
  memories['joint'] = hybrid.hybrid_table(centers, memory_lib.memory_capacity(len(centers)))
  memories['num_joint'] = np.int32(len(centers))
  if config.pclhd.dynamic_term == 'constant':
    for modality, teacher, labels, num, capacity in (
        (VISIBLE, features.eval_visible, clusters.visible_labels, num_v, cap_v),
        (INFRARED, features.eval_infrared, clusters.infrared_labels, num_i, cap_i)):
      memories[f'instances_{modality}'] = instances.instance_table(
          teacher, labels, num, rng, num_instances=config.pclhd.dynamic_instances,
          capacity=capacity)
  return memories


def _joint_batches(config) -> tuple[int, int]:
  """(visible, infrared) images of a stage-2 joint batch: the main batches' by default."""
  s = config.sampler
  return (s.joint_visible_images or s.visible_images,
          s.joint_infrared_images or s.infrared_images)


def _camera_plan(config, visible_labels, infrared_labels, train_sets, rng, visible_images,
                 what: str, infrared_images=None):
  s = config.sampler
  try:
    return sampler.plan_epoch(
        visible_labels, train_sets[0].cams, infrared_labels, train_sets[1].cams,
        s.steps_per_epoch, rng, visible_batch=visible_images,
        infrared_batch=infrared_images or s.infrared_images,
        num_instances=s.instances_per_cluster)
  except sampler.PassTooShort as error:  # the authors' loader dies with StopIteration here
    raise methods.MethodStop(f'{what}: {error} (config.sampler.visible_images / '
                             f'infrared_images).') from error


def plan_epoch(config, schedule_, clusters, arrays, train_sets, rng) -> methods.Plan:
  """Stage 1: each modality's camera-aware passes. Stage 2: the same at stage 2's sizes, and
  two more streams from the joint clusters that hold both modalities, labelled by joint
  cluster (TS:958-981, 1084-1093), each modality drawn on its own."""
  del arrays
  s = config.sampler
  epoch = schedule_.epoch + 1
  if schedule_.stage == 1:
    main = _camera_plan(config, clusters.visible_labels, clusters.infrared_labels, train_sets,
                        rng, s.visible_images_stage1, f'epoch {epoch}')
    return methods.Plan.of(main, repeat_unit=s.instances_per_cluster)
  main = _camera_plan(config, clusters.visible_labels, clusters.infrared_labels, train_sets,
                      rng, s.visible_images, f'epoch {epoch}')
  joint = clusters.joint_labels
  split = len(clusters.visible_labels)
  is_infrared = np.arange(len(joint)) >= split
  mixed = _mixed(joint, is_infrared)
  joint_visible, joint_infrared = _joint_batches(config)
  per_batch = max(joint_visible, joint_infrared) // s.instances_per_cluster
  if mixed.sum() < per_batch:  # IL:22-27: the joint loader is empty and next() raises
    raise methods.MethodStop(
        f'epoch {epoch}: only {int(mixed.sum())} joint clusters hold both modalities, fewer '
        f'than the {per_batch} clusters of one joint batch (sampler.joint_infrared_images or '
        f'infrared_images / instances_per_cluster); the authors\' loader stops here with '
        f'StopIteration. The features do not yet cluster across modalities: check the initial '
        f'weights, pclhd.joint_eps, or take smaller joint batches.')
  kept = np.where((joint >= 0) & mixed[np.maximum(joint, 0)], joint, -1)
  joint_plan = _camera_plan(config, kept[:split], kept[split:], train_sets, rng,
                            joint_visible, f'epoch {epoch}, joint clusters', joint_infrared)
  streams = dict(methods.Plan.of(main).streams)
  streams[JOINT_VISIBLE] = {'index': joint_plan.visible_index, 'label': joint_plan.visible_label}
  streams[JOINT_INFRARED] = {'index': joint_plan.infrared_index,
                             'label': joint_plan.infrared_label}
  return methods.Plan(streams=streams, modalities={JOINT_VISIBLE: VISIBLE,
                                                   JOINT_INFRARED: INFRARED},
                      repeat_unit=s.instances_per_cluster)


def init_state(config, network_variables, rng, previous) -> methods.MethodVariables:
  """The teacher: a copy of the network (at the start, and as the restored stage-1 best when
  stage 2 restarts, TS:756-760), parameters and BatchNorm statistics."""
  del config, rng, previous
  teacher = jax.tree.map(jnp.array, network_variables)
  return methods.MethodVariables(params={}, state={'teacher': teacher})


def eval_variables(config, epoch, network_variables, method_state):
  """Stage 2 evaluates, selects and saves the teacher (TS:1121,1129,1164-1168)."""
  if schedule(config, epoch).stage == 2:
    return method_state['teacher']
  return network_variables


def step_fns(config, phase, label_repeats=None) -> methods.StepFns:
  """Stage 1 (one update) or a stage-2 epoch of one parity (two updates and the teacher)."""
  del label_repeats  # the hybrid update has no rounds to bound
  stage = phase[0]
  aug_cfg = augment_lib.AugmentConfig.from_config(config.augment)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  jitter = tuple(float(x) for x in config.augment.color_jitter)
  p = config.pclhd
  options = dict(temperature=config.memory.temperature, momentum=config.memory.momentum)

  def views(rng, visible, infrared):
    return pgm_augment.augment_batch(rng, visible, infrared, aug_cfg, jitter, None, mean, std)

  def augment_fn(rng, images, batch):
    del batch
    main_rng, joint_rng = jax.random.split(rng)
    inputs = dict(zip((VISIBLE, INFRARED), views(main_rng, images[VISIBLE], images[INFRARED])))
    if stage == 2:
      inputs.update(zip((JOINT_VISIBLE, JOINT_INFRARED),
                        views(joint_rng, images[JOINT_VISIBLE], images[JOINT_INFRARED])))
    return inputs

  def labels(batch, stream):
    return batch[stream]['label']

  if stage == 1:
    def stage1(outputs, batch, memories):
      return losses.stage1_terms(
          outputs[VISIBLE]['neck'], outputs[INFRARED]['neck'], labels(batch, VISIBLE),
          labels(batch, INFRARED), (memories['visible'], memories['infrared']),
          mode=config.memory.stage1, margin=p.margin, num_visible=memories['num_visible'],
          num_infrared=memories['num_infrared'], update_method=config.memory.update_method,
          **options)

    def stage1_loss(outputs, batch, memories, ctx):
      del ctx
      terms, _ = stage1(outputs, batch, memories)
      return terms['total'], {k: v for k, v in terms.items() if k != 'total'}

    def stage1_memories(memories, outputs, batch, ctx):
      del ctx
      _, (visible, infrared) = stage1(outputs, batch, memories)
      return dict(memories, visible=visible, infrared=infrared)
    return methods.StepFns(augment=augment_fn, updates=(
        methods.Update(loss=stage1_loss, update_memories=stage1_memories),))

  parity = phase[1]

  def main(outputs, batch, memories, teacher=None):
    return losses.main_terms(
        outputs[VISIBLE]['neck'], outputs[INFRARED]['neck'], labels(batch, VISIBLE),
        labels(batch, INFRARED), (memories['visible'], memories['infrared']),
        memories[VISIBLE_TO_INFRARED], memories[INFRARED_TO_VISIBLE], parity,
        teacher=teacher, margin=p.margin, cross_weight=p.cross_weight,
        num_visible=memories['num_visible'], num_infrared=memories['num_infrared'], **options)

  def main_loss(outputs, batch, memories, ctx):
    teacher = None
    if p.dynamic_term == 'constant':
      teacher = (ctx.extras['teacher_visible'], ctx.extras['teacher_infrared'],
                 (memories['instances_visible'], memories['instances_infrared']))
    terms, _ = main(outputs, batch, memories, teacher)
    return terms['total'], {k: v for k, v in terms.items() if k != 'total'}

  def main_memories(memories, outputs, batch, ctx):
    del ctx
    _, (visible, infrared) = main(outputs, batch, memories)
    return dict(memories, visible=visible, infrared=infrared)

  def joint(outputs, batch, memories):
    return losses.joint_terms(
        outputs[VISIBLE]['neck'], outputs[INFRARED]['neck'], labels(batch, JOINT_VISIBLE),
        labels(batch, JOINT_INFRARED), memories['joint'], margin=p.margin,
        num_joint=memories['num_joint'], **options)

  def joint_loss(outputs, batch, memories, ctx):
    del ctx
    terms, _ = joint(outputs, batch, memories)
    return terms['total'], {k: v for k, v in terms.items() if k != 'total'}

  def joint_memories(memories, outputs, batch, ctx):
    del ctx
    _, table = joint(outputs, batch, memories)
    return dict(memories, joint=table)

  def before_updates(ctx):
    """The teacher's forward under no_grad in train mode on the main inputs (TRN:173-176): its
    BatchNorm running statistics (group 0, as the student's) and its features for D."""
    teacher = ctx.state['teacher']
    outputs, stats = ctx.network(teacher, ctx.inputs[VISIBLE], ctx.inputs[INFRARED])
    outputs = jax.lax.stop_gradient(outputs)
    state = dict(ctx.state, teacher=dict(teacher, batch_stats=stats))
    return state, {'teacher_visible': outputs[VISIBLE]['neck'],
                   'teacher_infrared': outputs[INFRARED]['neck']}

  def after_updates(ctx):
    """The EMA once per iteration, after both Adam steps, parameters only (TRN:211,249-251)."""
    teacher = ctx.state['teacher']
    params = teacher_lib.ema_update(teacher['params'], ctx.network_variables['params'],
                                    p.ema_momentum)
    return dict(ctx.state, teacher=dict(teacher, params=params)), {}

  return methods.StepFns(
      augment=augment_fn,
      updates=(methods.Update(loss=main_loss, update_memories=main_memories),
               methods.Update(loss=joint_loss, update_memories=joint_memories,
                              inputs=(JOINT_VISIBLE, JOINT_INFRARED), name='joint')),
      before_updates=before_updates, after_updates=after_updates)


def _epoch_line(entry) -> str:
  text = ''
  if 'joint/clusters' in entry:
    text = (f'joint {entry["joint/clusters"]:.0f} ({entry.get("joint/mixed_clusters", 0):.0f} '
            f'mixed)')
  if 'match/pairs' in entry:
    text += f'  pairs {entry["match/pairs"]:.0f}'
    precision = entry.get('match/pair_precision', np.nan)
    if not np.isnan(precision):
      text += f'  pairs same id {precision:.2f}'
  elif entry.get('match/skipped'):
    text += '  skipped cross term'
  return text.strip()


METHOD = methods.Method(
    name='pclhd',
    validate=validate,
    batch_sizes=batch_sizes,
    schedule=schedule,
    associate=associate,
    build_memories=build_memories,
    plan_epoch=plan_epoch,
    step_fns=step_fns,
    clustering=methods.Clustering(
        joint_distance=_joint_distance, joint_eps=lambda config: config.pclhd.joint_eps,
        joint_when=_stage2, evaluated_features=_teacher_features),
    init_state=init_state,
    eval_variables=eval_variables,
    default_config=pclhd_config.pclhd_config,
    reporting=methods.Reporting(
        loss_terms=(('infrared', 'H infrared'), ('visible', 'H visible'),
                    ('cross', 'L_x (cross)'), ('dynamic', 'D (constant)'),
                    ('joint/total', 'joint H (second step)')),
        association_columns=(
            ('joint', 'joint/clusters', '.0f'),
            ('mixed', 'joint/mixed_clusters', '.0f'),
            ('joint purity', 'joint/purity', '.3f'),
            ('pairs', 'match/pairs', '.0f'),
            ('pairs same id', 'match/pair_precision', '.3f')),
        association_quality=(('joint/purity', 'joint cluster purity'),
                             ('joint/mixed_share', 'joint clusters with both modalities'),
                             ('match/pair_precision', 'matched pairs sharing an id')),
        epoch_line=_epoch_line))
