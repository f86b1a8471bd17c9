"""A test method that uses every capability of the method interface at once (not shipped).

Loaded by its module path, as a researcher's own method in their own repository would be:
`--config.method=tests.capability_method` (tests/open_interface_test.py, tests/export_test.py).
Its numbers mean nothing; what it proves is that none of this needs an edit of the core:

  optimiser     SGD with Nesterov momentum and two parameter groups: the network, and the
                method's own projection head with its own rate and a warm-up + cosine schedule
  own params    a projection head on the pooled features (`init_state`: MethodVariables.params)
  own state     an EMA teacher: its train-mode forward updates its BatchNorm statistics before
                the updates (`before_updates`), its features feed a loss, and its parameters
                follow the student after them (`after_updates`); it is what evaluation uses
                (`eval_variables`) and it is extracted for the epoch hooks (`Clustering.
                evaluated_features`)
  clustering    per modality, and jointly with a modality-aware distance (each modality's mean
                feature removed before the Jaccard distance)
  refinement    per-image weights and soft targets between clustering and training (`refine`)
  batch         the weights and soft targets ride in the plan; cameras weight the loss
  memories      a two-slot memory per modality whose second slot carries the previous epoch's
                centres over (`build_memories(previous=...)`), and a joint memory
  two updates   a second optimiser update per step over batches drawn from the joint clusters
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vireid_jax import augment
from vireid_jax import clustering
from vireid_jax import memory as memory_lib
from vireid_jax import methods
from vireid_jax import sampling
from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.losses import cross_entropy
from vireid_jax.methods.mbccm import config as mbccm_config
from vireid_jax.methods.mbccm import views

JOINT_VISIBLE, JOINT_INFRARED = 'joint_visible', 'joint_infrared'
HEAD_DIM = 8


def probe_config() -> ml_collections.ConfigDict:
  """MBCCM's sampler and views, SGD with a second group for the head, the probe's settings."""
  config = mbccm_config.mbccm_config('sysu')
  config.method = 'tests.capability_method'
  config.optim.name = 'sgd'
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.lr_boundaries = (2,)
  config.optim.groups = ml_collections.ConfigDict()
  config.optim.groups.head = ml_collections.ConfigDict(dict(
      pattern='^method/head/', learning_rate=0.05, weight_decay=0.0, schedule='cosine',
      cosine_epochs=4, warmup_epochs=1.0, warmup_factor=0.5))
  config.optim.per_step = True
  config.probe = ml_collections.ConfigDict()
  config.probe.ema = 0.9  # teacher <- 0.9 teacher + 0.1 student after every step
  config.probe.soft = 0.2  # soft target = (1 - soft) one-hot + soft softmax(similarity / 0.1)
  config.probe.min_weight = 0.2  # per-image weight = max(cosine to its centre, min_weight)
  return config


def get_config() -> ml_collections.ConfigDict:
  """`--config tests/capability_method.py`: the probe on the demo's synthetic set and network."""
  config = probe_config()
  config.data.root, config.data.synthetic = 'data/synthetic', True
  config.data.image_height, config.data.image_width = 64, 32
  config.model.block, config.model.stage_sizes, config.model.width = 'basic', (1, 1, 1, 1), 16
  config.model.dtype, config.model.pretrained = 'float32', 'synthetic_imagenet'
  config.cluster.k1, config.cluster.k2 = 10, 3
  config.sampler.clusters_per_step, config.sampler.instances_per_cluster = 8, 4
  config.sampler.steps_per_epoch = 30
  config.schedule.epochs = 4
  return config


def validate(config) -> None:
  methods.require_settings(config, ('probe', 'sampler', 'augment', 'memory.temperature',
                                    'memory.momentum'), 'tests.capability_method.probe_config')


def batch_sizes(config) -> methods.StepBatch:
  batch = config.sampler.clusters_per_step * config.sampler.instances_per_cluster
  return methods.StepBatch(batch, batch, 2 * batch, batch)


def schedule(config, epoch: int) -> methods.EpochSchedule:
  return methods.EpochSchedule(epoch=epoch, stage=1, stage_epoch=epoch, phase=1, lr_epoch=epoch,
                               evaluate=True)


def modality_centred_distance(config, features, is_infrared):
  """Jaccard distance after removing each modality's mean feature (a modality-aware distance)."""
  centred = np.array(features, np.float32)
  for mask in (is_infrared, ~is_infrared):
    centred[mask] -= centred[mask].mean(axis=0)
  centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
  c = config.cluster
  return clustering.jaccard_distance(centred, k1=c.k1, k2=c.k2, max_distance=c.eps)


def refine(config, schedule_, clusters, pids, *, features):
  """Per-image weights and soft targets from each image's similarity to the centres."""
  del schedule_, pids
  for modality, feats, labels, centers in (
      (VISIBLE, features.visible, clusters.visible_labels, clusters.visible_centers),
      (INFRARED, features.infrared, clusters.infrared_labels, clusters.infrared_centers)):
    centers = centers / np.linalg.norm(centers, axis=1, keepdims=True)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    similarity = unit @ centers.T  # (N, K)
    own = similarity[np.arange(len(labels)), np.maximum(labels, 0)]
    clusters.extra[f'{modality}_weight'] = np.maximum(own, config.probe.min_weight).astype(
        np.float32)
    soft = np.exp((similarity - similarity.max(1, keepdims=True)) / 0.1)
    soft /= soft.sum(1, keepdims=True)
    onehot = np.eye(len(centers), dtype=np.float32)[np.maximum(labels, 0)]
    clusters.extra[f'{modality}_soft'] = ((1 - config.probe.soft) * onehot
                                          + config.probe.soft * soft).astype(np.float32)
  return clusters


def _two_slot(centers: np.ndarray, previous) -> tuple[np.ndarray, int]:
  """(2, K', C): slot 0 the centres, slot 1 the previous epoch's slot-0 row nearest to each."""
  capacity = memory_lib.memory_capacity(len(centers))
  current = memory_lib.pad_rows(centers / np.linalg.norm(centers, axis=1, keepdims=True),
                                capacity)
  carried = current.copy()
  if previous is not None:
    before = np.asarray(previous)[0]
    before = before[np.linalg.norm(before, axis=1) > 0]
    nearest = np.argmax(current[:len(centers)] @ before.T, axis=1)
    carried[:len(centers)] = before[nearest]
  return np.stack([current, carried]), len(centers)


def build_memories(config, schedule_, clusters, arrays, *, previous, features):
  del config, schedule_, arrays
  assert features.eval_visible is not None  # the teacher's features reach the hooks
  visible, num_visible = _two_slot(clusters.visible_centers,
                                   None if previous is None else previous['visible'])
  infrared, num_infrared = _two_slot(clusters.infrared_centers,
                                     None if previous is None else previous['infrared'])
  joint = memory_lib.pad_rows(clusters.joint_centers,
                              memory_lib.memory_capacity(len(clusters.joint_centers)))
  return {'visible': visible, 'infrared': infrared,
          'joint': np.asarray(memory_lib.normalize_rows(joint)),
          'num_visible': np.int32(num_visible), 'num_infrared': np.int32(num_infrared),
          'num_joint': np.int32(len(clusters.joint_centers))}


def plan_epoch(config, schedule_, clusters, arrays, train_sets, rng) -> methods.Plan:
  del schedule_, arrays, train_sets
  s = config.sampler
  draw = lambda v, i: sampling.stage1_plan(v, i, s.steps_per_epoch, s.clusters_per_step,
                                           s.instances_per_cluster, rng)
  main = draw(clusters.visible_labels, clusters.infrared_labels)
  split = len(clusters.visible_labels)
  joint = draw(clusters.joint_labels[:split], clusters.joint_labels[split:])
  extra = {}
  for modality, index in ((VISIBLE, main.visible_index), (INFRARED, main.infrared_index)):
    soft = clusters.extra[f'{modality}_soft']
    padded = np.zeros((len(soft), memory_lib.memory_capacity(soft.shape[1])), np.float32)
    padded[:, :soft.shape[1]] = soft
    extra[modality] = {'weight': clusters.extra[f'{modality}_weight'][index],
                       'soft': padded[index]}
  streams = methods.Plan.of(main, **extra).streams
  streams = dict(streams, **{
      JOINT_VISIBLE: {'index': joint.visible_index, 'label': joint.visible_label},
      JOINT_INFRARED: {'index': joint.infrared_index, 'label': joint.infrared_label}})
  return methods.Plan(streams=streams, modalities={JOINT_VISIBLE: VISIBLE,
                                                   JOINT_INFRARED: INFRARED},
                      repeat_unit=s.instances_per_cluster)


def init_state(config, network_variables, rng, previous) -> methods.MethodVariables:
  del previous
  channels = network_variables['params']['neck']['scale'].shape[0]
  head = {'head': {'kernel': 0.1 * jax.random.normal(rng, (channels, HEAD_DIM))}}
  teacher = jax.tree.map(jnp.array, network_variables)  # a copy, not an alias
  return methods.MethodVariables(params=head, state={'teacher': teacher,
                                                     'updates': jnp.zeros((), jnp.int32)})


def eval_variables(config, epoch, network_variables, method_state):
  del config, epoch, network_variables
  return method_state['teacher']


def _camera_balanced(weight, cameras):
  """Per-sample weights rescaled so that every camera of the batch carries the same total."""
  same = (cameras[:, None] == cameras[None, :]).astype(jnp.float32)
  share = weight / (same @ weight)
  return share / jnp.sum(share)


def step_fns(config, phase, label_repeats=None) -> methods.StepFns:
  del phase, label_repeats
  aug_cfg = augment.AugmentConfig.from_config(config.augment)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  temperature, momentum = config.memory.temperature, config.memory.momentum

  def augment_fn(rng, images, batch):
    del batch
    main_rng, joint_rng = jax.random.split(rng)
    inputs = {}
    for key, (v, i) in ((main_rng, (VISIBLE, INFRARED)),
                        (joint_rng, (JOINT_VISIBLE, JOINT_INFRARED))):
      view_a, view_b, infrared = views.augment_batch(key, images[v], images[i], aug_cfg, mean,
                                                     std)
      inputs[v], inputs[i] = jnp.concatenate([view_a, view_b]), infrared
    return inputs

  def before_updates(ctx):
    teacher = ctx.state['teacher']
    outputs, stats = ctx.network(teacher, ctx.inputs[VISIBLE], ctx.inputs[INFRARED])
    outputs = jax.lax.stop_gradient(outputs)
    state = dict(ctx.state, teacher=dict(teacher, batch_stats=stats))
    return state, {'teacher_neck': {m: outputs[m]['neck'] for m in (VISIBLE, INFRARED)}}

  def main_loss(outputs, batch, memories, ctx):
    terms = {}
    for modality, views_of in ((VISIBLE, 2), (INFRARED, 1)):
      f = outputs[modality]['neck']
      rows = batch[modality]
      weight = jnp.tile(_camera_balanced(rows['weight'], rows['camera']), views_of) / views_of
      soft = jnp.tile(rows['soft'], (views_of, 1))
      logits = memory_lib.slot_logits(f, memories[modality], temperature,
                                      num_valid=memories[f'num_{modality}']).max(axis=1)
      log_p = jax.nn.log_softmax(logits, axis=-1)
      terms[modality] = -jnp.sum(weight * jnp.sum(soft * jnp.where(soft > 0, log_p, 0.0), -1))
      teacher = ctx.extras['teacher_neck'][modality]
      student_z = outputs[modality]['pooled'] @ ctx.params['head']['kernel']
      teacher_z = jax.lax.stop_gradient(teacher @ ctx.params['head']['kernel'])
      z = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
      terms[f'{modality}_head'] = cross_entropy(z(student_z) @ z(teacher_z).T / 0.5,
                                                jnp.arange(f.shape[0]))
    return sum(terms.values()), terms

  def main_memories(memories, outputs, batch, ctx):
    del ctx
    updated = dict(memories)
    for modality, views_of in ((VISIBLE, 2), (INFRARED, 1)):
      labels = jnp.tile(batch[modality]['label'], views_of)
      slot0 = memory_lib.update_memory(memories[modality][0], outputs[modality]['neck'], labels,
                                       momentum)
      updated[modality] = memories[modality].at[0].set(slot0)
    return updated

  def joint_loss(outputs, batch, memories, ctx):
    del ctx
    logits = lambda f: memory_lib.memory_logits(f, memories['joint'], temperature,
                                                num_valid=memories['num_joint'])
    loss_v = cross_entropy(logits(outputs[VISIBLE]['neck']),
                           jnp.tile(batch[JOINT_VISIBLE]['label'], 2))
    loss_i = cross_entropy(logits(outputs[INFRARED]['neck']), batch[JOINT_INFRARED]['label'])
    return loss_v + loss_i, {'visible': loss_v, 'infrared': loss_i}

  def joint_memories(memories, outputs, batch, ctx):
    del ctx
    features = jnp.concatenate([outputs[VISIBLE]['neck'], outputs[INFRARED]['neck']])
    labels = jnp.concatenate([jnp.tile(batch[JOINT_VISIBLE]['label'], 2),
                              batch[JOINT_INFRARED]['label']])
    return dict(memories, joint=memory_lib.update_memory(memories['joint'], features, labels,
                                                         momentum))

  def after_updates(ctx):
    ema = config.probe.ema
    teacher = ctx.state['teacher']
    params = jax.tree.map(lambda t, s: ema * t + (1 - ema) * s, teacher['params'],
                          ctx.network_variables['params'])
    state = dict(ctx.state, teacher=dict(teacher, params=params),
                 updates=ctx.state['updates'] + 1)
    return state, {'teacher_updates': state['updates'].astype(jnp.float32)}

  return methods.StepFns(
      augment=augment_fn,
      updates=(methods.Update(loss=main_loss, update_memories=main_memories),
               methods.Update(loss=joint_loss, update_memories=joint_memories,
                              inputs=(JOINT_VISIBLE, JOINT_INFRARED), name='joint')),
      before_updates=before_updates, after_updates=after_updates)


METHOD = methods.Method(
    name='tests.capability_method',
    validate=validate,
    batch_sizes=batch_sizes,
    schedule=schedule,
    build_memories=build_memories,
    plan_epoch=plan_epoch,
    step_fns=step_fns,
    refine=refine,
    clustering=methods.Clustering(joint_distance=modality_centred_distance,
                                  evaluated_features=lambda config, schedule_: True),
    init_state=init_state,
    eval_variables=eval_variables,
    default_config=probe_config,
    reporting=methods.Reporting(loss_terms=(('visible', 'soft CE visible'),
                                            ('infrared', 'soft CE infrared'),
                                            ('joint/total', 'joint CE'))))
