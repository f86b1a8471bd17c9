"""PCLHD's losses of one step and the memory tables each leaves (no network, no optimiser).

Notation: f_v = [f_A; f_B] (2B, C) visible features of both views, f_i (B_i, C) infrared; y_v,
y_i one cluster label per feature row (y_v = [y; y]); M_v, M_i, M_all hybrid tables
(`memory.py`); H(M, f, y) the hybrid loss; "M <- f (y)" its update. Citations: authors'
clustercontrast/trainers.py "TRN" and models/cm.py "CM" at 8a376cd.

Stage 1 (TRN:71-82 of ClusterContrastTrainer_DCL, `stage1_terms`):
  L = H(M_i, f_i, y_i) + H(M_v, f_v, y_v); M_v <- f_v (y_v), M_i <- f_i (y_i). Separate tables,
  so each gradient reads its own step-start table. mode='centroid' is the authors' `-mb CM`
  (PGM's sequential centroid memory, K rows per table, CE loss: quirk 9).

Stage 2, main step (TRN:150-184, `main_terms`), e the stage-2 epoch:
  L = H(M_i, f_i, y_i) + H(M_v, f_v, y_v) + cross_weight L_x + D
  e odd:  L_x = H(M_v, f_i, infrared_to_visible[y_i]); e even: L_x = H(M_i, f_v,
  visible_to_infrared[y_v]); maps full of -1 (no association this epoch): L_x = 0.
  D = the teacher's dynamic term (instances.py), a constant (quirk 1); 0 without a teacher.
  Autograd runs the calls in reverse order of creation: cross, visible, infrared. So
    odd e:  M_v <- f_i (i2r[y_i]); the visible gradient reads that M_v; M_v <- f_v (y_v);
            M_i <- f_i (y_i).
    even e: M_i <- f_v (r2i[y_v]); M_v <- f_v (y_v); the infrared gradient reads the updated
            M_i; M_i <- f_i (y_i).
  Every forward value reads the step-start tables.

Stage 2, joint step (TRN:188-209, `joint_terms`), a second optimiser step on a second forward:
  L_J = H(M_all, f^J_i, y^J_i) + H(M_all, f^J_v, y^J_v). Backward: the visible call first
  (M_all <- f^J_v), then the infrared call, whose gradient reads M_all after that update
  (M_all <- f^J_i).

The main and the joint parts are separate functions because training differentiates them
separately (two forward passes, two Adam steps); `pclhd_stage2_losses` composes them.

Unmatched rows (a -1 partner) leave the cross term and its update (`memory.hybrid_losses`).
"""

from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from vireid_jax.methods.pclhd import instances as instances_lib
from vireid_jax.methods.pclhd import memory
from vireid_jax.methods.pgm import losses as pgm_losses

ArrayLike = Union[jax.Array, np.ndarray]
Tables = Tuple[jax.Array, jax.Array]
Terms = Dict[str, jax.Array]
# (f_t_visible (2B, C), f_t_infrared (B_i, C), (instances_visible, instances_infrared)).
Teacher = Tuple[jax.Array, jax.Array, Tuple[jax.Array, jax.Array]]

STAGE1_MODES = ('hybrid', 'centroid')


def row_labels(labels: ArrayLike, num_rows: int, name: str = 'labels') -> jax.Array:
  """(num_rows,) int32 labels: one per feature row, or one per visible image ((num_rows / 2,),
  repeated for the two views, [y; y] as TRN:145)."""
  labels = jnp.asarray(labels, jnp.int32)
  if labels.shape == (num_rows,):
    return labels
  if labels.ndim == 1 and 2 * labels.shape[0] == num_rows:
    return jnp.concatenate([labels, labels])
  raise ValueError(f'{name} must hold one label per feature row ({num_rows},) or per visible '
                   f'image ({num_rows // 2},), got shape {labels.shape}')


def stage1_terms(f_visible: jax.Array, f_infrared: jax.Array, y_visible: ArrayLike,
                 y_infrared: ArrayLike, memories: Tables, *, mode: str = 'hybrid',
                 temperature: float = 0.05, momentum: float = 0.1, margin: float = 0.2,
                 num_visible: Optional[ArrayLike] = None,
                 num_infrared: Optional[ArrayLike] = None,
                 update_method: str = 'auto') -> Tuple[Terms, Tables]:
  """Stage 1's loss terms and tables: ({'infrared', 'visible', 'total'}, (M_v', M_i')).

  Args:
    f_visible: (2B, C) visible features [view A; view B]; f_infrared: (B_i, C).
    y_visible: (2B,) or (B,) visible labels; y_infrared: (B_i,).
    memories: (M_v, M_i): with mode 'hybrid' (2K_v', C) and (2K_i', C) hybrid tables; with
      'centroid' (K_v', C) and (K_i', C) centroid tables.
    mode: 'hybrid' (the authors' scripts, `-mb CMhybrid`) | 'centroid' (`-mb CM`: PGM's
      sequential update, loss CE; quirk 9).
    temperature, momentum, margin: the memories' settings (0.05, 0.1, 0.2; margin: hybrid only).
    num_visible, num_infrared: () int real clusters of padded tables; None = unpadded.
    update_method: mode 'centroid' only: `memory.update_memory`'s method.
  """
  if mode not in STAGE1_MODES:
    raise ValueError(f'mode must be one of {STAGE1_MODES}, got {mode!r}')
  y_visible = row_labels(y_visible, f_visible.shape[0], 'y_visible')
  y_infrared = jnp.asarray(y_infrared, jnp.int32)
  if mode == 'centroid':
    terms, tables = pgm_losses.pgm_loss_terms(
        f_visible, f_infrared, y_visible, y_infrared, memories, None, None, 0, hard=False,
        temperature=temperature, momentum=momentum, num_visible=num_visible,
        num_infrared=num_infrared, update_method=update_method)
    return {k: terms[k] for k in ('infrared', 'visible', 'total')}, tables
  memory_visible, memory_infrared = (jnp.asarray(m, jnp.float32) for m in memories)
  options = dict(temperature=temperature, momentum=momentum, margin=margin)
  loss_infrared, infrared = memory.hybrid_losses(f_infrared, y_infrared, memory_infrared,
                                                 num_valid=num_infrared, **options)
  loss_visible, visible = memory.hybrid_losses(f_visible, y_visible, memory_visible,
                                               num_valid=num_visible, **options)
  terms = {'infrared': loss_infrared, 'visible': loss_visible,
           'total': loss_infrared + loss_visible}
  return terms, (visible, infrared)


def _dynamic_terms(teacher: Optional[Teacher], y_visible: jax.Array, y_infrared: jax.Array,
                   capacities: Tuple[int, int], temperature: float,
                   num_visible: Optional[ArrayLike],
                   num_infrared: Optional[ArrayLike]) -> Terms:
  """D's two halves (TRN:177-179), constants; zeros without a teacher."""
  zero = jnp.zeros((), jnp.float32)
  if teacher is None:
    return {'dynamic_infrared': zero, 'dynamic_visible': zero, 'dynamic': zero}
  f_t_visible, f_t_infrared, (instances_visible, instances_infrared) = teacher
  values = []
  for features, labels, table, capacity, num_valid in (
      (f_t_infrared, y_infrared, instances_infrared, capacities[1], num_infrared),
      (f_t_visible, y_visible, instances_visible, capacities[0], num_visible)):
    if table.shape[0] % capacity:
      raise ValueError(f'an instance table has num_instances x K\' rows with K\' = {capacity} '
                       f'(its hybrid table\'s half); got {table.shape[0]} rows')
    values.append(instances_lib.dynamic_loss(
        features, labels, table, num_instances=table.shape[0] // capacity,
        temperature=temperature, num_valid=num_valid))
  return {'dynamic_infrared': values[0], 'dynamic_visible': values[1],
          'dynamic': values[0] + values[1]}


def main_terms(f_visible: jax.Array, f_infrared: jax.Array, y_visible: ArrayLike,
               y_infrared: ArrayLike, memories: Tables, visible_to_infrared: ArrayLike,
               infrared_to_visible: ArrayLike, epoch: Union[int, jax.Array], *,
               teacher: Optional[Teacher] = None, temperature: float = 0.05,
               momentum: float = 0.1, margin: float = 0.2, cross_weight: float = 0.25,
               num_visible: Optional[ArrayLike] = None,
               num_infrared: Optional[ArrayLike] = None) -> Tuple[Terms, Tables]:
  """Stage 2's main step (TRN:150-184): terms and (M_v', M_i').

  Args:
    f_visible: (2B, C) student visible features [view A; view B]; f_infrared: (B_i, C).
    y_visible: (2B,) or (B,) visible labels; y_infrared: (B_i,).
    memories: (M_v (2K_v', C), M_i (2K_i', C)) hybrid tables.
    visible_to_infrared: (K_v',) int infrared partner of each visible cluster, -1 none (all -1:
      no association this epoch, L_x = 0); infrared_to_visible: (K_i',).
    epoch: the stage-2 epoch; its parity picks the cross direction (odd: infrared features
      against M_v). A Python int picks it when tracing; a traced int compiles both.
    teacher: None, or (f_t_visible (2B, C), f_t_infrared (B_i, C), (I_v (16 K_v', C),
      I_i (16 K_i', C))): adds the dynamic term D, a constant.
    temperature, momentum, margin, cross_weight: 0.05, 0.1, 0.2, 0.25.
    num_visible, num_infrared: () int real clusters of padded tables; None = unpadded.

  Returns:
    ({'infrared', 'visible', 'cross', 'dynamic_infrared', 'dynamic_visible', 'dynamic',
      'total'}, (M_v', M_i')). `jax.grad` of 'total' w.r.t. the features is the authors'.
  """
  memory_visible, memory_infrared = (jnp.asarray(m, jnp.float32) for m in memories)
  y_visible = row_labels(y_visible, f_visible.shape[0], 'y_visible')
  y_infrared = jnp.asarray(y_infrared, jnp.int32)
  # Both maps are looked up every step whatever the parity (TRN:155-156).
  rgb2ir = jnp.asarray(visible_to_infrared, jnp.int32)[y_visible]
  ir2rgb = jnp.asarray(infrared_to_visible, jnp.int32)[y_infrared]
  options = dict(temperature=temperature, margin=margin)
  visible_terms = lambda f, y, backward=None: memory.hybrid_terms(
      f, y, memory_visible, backward_table=backward, num_valid=num_visible, **options)['loss']
  infrared_terms = lambda f, y, backward=None: memory.hybrid_terms(
      f, y, memory_infrared, backward_table=backward, num_valid=num_infrared, **options)['loss']
  update = lambda table, f, y: memory.hybrid_update(table, f, y, momentum)

  def odd_epoch():  # cross term: infrared features against the visible memory
    loss_cross = visible_terms(f_infrared, ir2rgb)
    visible_after_cross = update(memory_visible, f_infrared, ir2rgb)
    loss_visible = visible_terms(f_visible, y_visible, visible_after_cross)
    loss_infrared = infrared_terms(f_infrared, y_infrared)
    tables = (update(visible_after_cross, f_visible, y_visible),
              update(memory_infrared, f_infrared, y_infrared))
    return (loss_infrared, loss_visible, loss_cross), tables

  def even_epoch():  # cross term: visible features against the infrared memory
    loss_cross = infrared_terms(f_visible, rgb2ir)
    infrared_after_cross = update(memory_infrared, f_visible, rgb2ir)
    loss_visible = visible_terms(f_visible, y_visible)
    loss_infrared = infrared_terms(f_infrared, y_infrared, infrared_after_cross)
    tables = (update(memory_visible, f_visible, y_visible),
              update(infrared_after_cross, f_infrared, y_infrared))
    return (loss_infrared, loss_visible, loss_cross), tables

  if isinstance(epoch, (int, np.integer)):
    (loss_infrared, loss_visible, loss_cross), tables = (
        odd_epoch() if epoch % 2 == 1 else even_epoch())
  else:  # a traced epoch: both directions compiled, one run
    (loss_infrared, loss_visible, loss_cross), tables = jax.lax.cond(
        jnp.asarray(epoch) % 2 == 1, odd_epoch, even_epoch)
  dynamic = _dynamic_terms(teacher, y_visible, y_infrared,
                           (memory_visible.shape[0] // 2, memory_infrared.shape[0] // 2),
                           temperature, num_visible, num_infrared)
  total = loss_infrared + loss_visible + cross_weight * loss_cross + dynamic['dynamic']
  terms = {'infrared': loss_infrared, 'visible': loss_visible, 'cross': loss_cross,
           **dynamic, 'total': total}
  return terms, tables


def joint_terms(f_joint_visible: jax.Array, f_joint_infrared: jax.Array,
                y_joint_visible: ArrayLike, y_joint_infrared: ArrayLike,
                memory_joint: jax.Array, *, temperature: float = 0.05, momentum: float = 0.1,
                margin: float = 0.2,
                num_joint: Optional[ArrayLike] = None) -> Tuple[Terms, jax.Array]:
  """Stage 2's joint step (TRN:202-209): ({'joint_infrared', 'joint_visible', 'total'}, M_all').

  Args:
    f_joint_visible: (2B, C) visible features of the joint batch [view A; view B];
      f_joint_infrared: (B_i, C).
    y_joint_visible: (2B,) or (B,) joint-cluster labels; y_joint_infrared: (B_i,).
    memory_joint: (2K_all', C) hybrid table of every joint cluster.
    temperature, momentum, margin: 0.05, 0.1, 0.2.
    num_joint: () int real joint clusters of a padded table; None = unpadded.
  """
  table = jnp.asarray(memory_joint, jnp.float32)
  y_visible = row_labels(y_joint_visible, f_joint_visible.shape[0], 'y_joint_visible')
  y_infrared = jnp.asarray(y_joint_infrared, jnp.int32)
  options = dict(temperature=temperature, margin=margin, num_valid=num_joint)
  # The visible call was created last, so its backward runs first.
  loss_visible = memory.hybrid_terms(f_joint_visible, y_visible, table, **options)['loss']
  after_visible = memory.hybrid_update(table, f_joint_visible, y_visible, momentum)
  loss_infrared = memory.hybrid_terms(f_joint_infrared, y_infrared, table,
                                      backward_table=after_visible, **options)['loss']
  table = memory.hybrid_update(after_visible, f_joint_infrared, y_infrared, momentum)
  terms = {'joint_infrared': loss_infrared, 'joint_visible': loss_visible,
           'total': loss_infrared + loss_visible}
  return terms, table


def pclhd_stage2_losses(f_visible: jax.Array, f_infrared: jax.Array, y_visible: ArrayLike,
                        y_infrared: ArrayLike, f_joint_visible: jax.Array,
                        f_joint_infrared: jax.Array, y_joint_visible: ArrayLike,
                        y_joint_infrared: ArrayLike,
                        memories: Tuple[jax.Array, jax.Array, jax.Array],
                        visible_to_infrared: ArrayLike, infrared_to_visible: ArrayLike,
                        epoch: Union[int, jax.Array], *, teacher: Optional[Teacher] = None,
                        temperature: float = 0.05, momentum: float = 0.1, margin: float = 0.2,
                        cross_weight: float = 0.25
                        ) -> Tuple[Tuple[jax.Array, jax.Array],
                                   Tuple[jax.Array, jax.Array, jax.Array]]:
  """One stage-2 iteration's two losses and the three tables after both backward passes.

  `main_terms` then `joint_terms` (TRN:150-209); unpadded tables. The joint features come from
  a second forward pass with the parameters after the first Adam step, so `jax.grad` of
  loss_main w.r.t. (f_visible, f_infrared) and of loss_joint w.r.t. (f_joint_visible,
  f_joint_infrared) are the authors' two gradients (the other pairs' are zero).

  Args:
    memories: (M_v (2K_v, C), M_i (2K_i, C), M_all (2K_all, C)) hybrid tables.
    Others: as `main_terms` and `joint_terms`.

  Returns:
    ((loss_main (), loss_joint ()), (M_v', M_i', M_all')).
  """
  memory_visible, memory_infrared, memory_joint = memories
  options = dict(temperature=temperature, momentum=momentum, margin=margin)
  main, (visible, infrared) = main_terms(
      f_visible, f_infrared, y_visible, y_infrared, (memory_visible, memory_infrared),
      visible_to_infrared, infrared_to_visible, epoch, teacher=teacher,
      cross_weight=cross_weight, **options)
  joint, memory_joint = joint_terms(f_joint_visible, f_joint_infrared, y_joint_visible,
                                    y_joint_infrared, memory_joint, **options)
  return (main['total'], joint['total']), (visible, infrared, memory_joint)
