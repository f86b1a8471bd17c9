"""PGM's training loss and the memory updates of one step (docs/pgm.md, "Stage 1", "Stage 2").

f_v = [f_A; f_B]: (2B, C) visible features, both views; f_i: (B_i, C) infrared; y_v (2B,), y_i
(B_i,) their cluster labels; M_v (K_v, C), M_i (K_i, C) the two memories; CE(M(f), y) the batch
mean of the cross-entropy of normalise(f) . M^T / temperature (one mean over all 2B visible rows).

  L = CE(M_i(f_i), y_i) + CE(M_v(f_v), y_v) + cross_weight * L_x
  stage 1 (no matching):   L_x = 0
  stage-2 epoch e odd:     L_x = CE(M_v(f_i), infrared_to_visible[y_i])
  stage-2 epoch e even:    L_x = CE(M_i(f_v), visible_to_infrared[y_v])

The reference (clustercontrast/trainers.py:76-104, models/cm.py) updates each memory inside the
backward pass of each call that scored it, right after that call computed its feature gradient
from the table as it was then; autograd runs the calls in reverse: cross term, then visible, then
infrared. So, with `update` the sequential or the hard momentum update:

  odd e:   M_v <- f_i (labels infrared_to_visible[y_i]), then <- f_v (y_v); M_i <- f_i (y_i).
           The visible term's gradient reads M_v after the infrared update.
  even e:  M_i <- f_v (labels visible_to_infrared[y_v]), then <- f_i (y_i); M_v <- f_v (y_v).
           The infrared term's gradient reads M_i after the visible update.
  stage 1: M_v <- f_v (y_v); M_i <- f_i (y_i); each gradient reads its step's table.

Every forward value (the loss) reads the step's tables. `jax.grad` of the loss with respect to the
features is the reference's gradient (via `memory_logits(backward_centers=)`).

Unmatched clusters (-1 in a map, possible only with `pgm_match(rounds=2)`, where the reference
stops with a KeyError): their rows leave the cross term, whose mean runs over the rows with a
partner (0 if none), as torch's `ignore_index`; they do not update the memory either.
"""

from typing import Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from vireid_jax.losses import cross_entropy
from vireid_jax.memory import memory_logits, rounds_bound, update_memory, update_memory_hard

Tables = Tuple[jax.Array, jax.Array]


def cross_entropy_matched(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy over the rows whose target is >= 0 (0 when there is none).

  Args:
    logits: (N, K) logits.
    targets: (N,) int targets; -1 = no partner, the row is left out.

  Returns:
    () float32; equal to `cross_entropy` when every target is >= 0.
  """
  matched = targets >= 0
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.where(matched, targets, 0)[:, None], axis=-1)[:, 0]
  count = jnp.sum(matched)
  return -jnp.sum(jnp.where(matched, picked, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)


def _visible_labels(y_visible: jax.Array, num_rows: int) -> jax.Array:
  y_visible = jnp.asarray(y_visible, jnp.int32)
  if y_visible.shape == (num_rows,):
    return y_visible
  if 2 * y_visible.shape[0] == num_rows and y_visible.ndim == 1:  # one label per image: both views
    return jnp.concatenate([y_visible, y_visible])
  raise ValueError(f'y_visible must hold one label per row of f_visible ({num_rows},) or per '
                   f'visible image ({num_rows // 2},), got shape {y_visible.shape}')


def pgm_loss_terms(f_visible: jax.Array, f_infrared: jax.Array, y_visible: jax.Array,
                   y_infrared: jax.Array, memories: Tables,
                   visible_to_infrared: Optional[jax.Array],
                   infrared_to_visible: Optional[jax.Array], epoch: Union[int, jax.Array], *,
                   hard: bool, temperature: float = 0.05, momentum: float = 0.2,
                   cross_weight: float = 0.25, num_visible: Optional[jax.Array] = None,
                   num_infrared: Optional[jax.Array] = None, update_method: str = 'auto',
                   label_repeats: Optional[Tuple[int, int]] = None
                   ) -> Tuple[Dict[str, jax.Array], Tables]:
  """`pgm_losses` with the loss's terms: ({'infrared', 'visible', 'cross', 'total'}, tables).

  `update_method` and `label_repeats` choose how the sequential update runs (the same numbers
  either way): `memory.update_memory`'s method, and the static bounds (visible, infrared) of
  how often one label occurs in y_visible (per image) and y_infrared, which bound the by-rank
  rounds of the same-modality updates (the cross update, whose labels are mapped, loops N).
  """
  memory_visible, memory_infrared = (jnp.asarray(m, jnp.float32) for m in memories)
  y_visible = _visible_labels(y_visible, f_visible.shape[0])
  y_infrared = jnp.asarray(y_infrared, jnp.int32)
  repeats_visible, repeats_infrared = label_repeats or (None, None)
  visible_rounds = rounds_bound(repeats_visible, 2)  # y_visible holds both views' labels
  infrared_rounds = rounds_bound(repeats_infrared, 1)

  def update(table, f, y, max_rounds=None):  # None: N rounds (the mapped cross labels)
    if hard:
      return update_memory_hard(table, f, y, momentum)
    return update_memory(table, f, y, momentum, method=update_method, max_rounds=max_rounds)
  logits_visible = lambda f, table, backward=None: memory_logits(
      f, table, temperature, num_valid=num_visible, backward_centers=backward)
  logits_infrared = lambda f, table, backward=None: memory_logits(
      f, table, temperature, num_valid=num_infrared, backward_centers=backward)

  if (visible_to_infrared is None) != (infrared_to_visible is None):
    raise ValueError('give both matching maps (stage 2) or neither (stage 1), got one of them')
  if visible_to_infrared is None:
    loss_infrared = cross_entropy(logits_infrared(f_infrared, memory_infrared), y_infrared)
    loss_visible = cross_entropy(logits_visible(f_visible, memory_visible), y_visible)
    terms = {'infrared': loss_infrared, 'visible': loss_visible,
             'cross': jnp.zeros((), jnp.float32), 'total': loss_infrared + loss_visible}
    return terms, (update(memory_visible, f_visible, y_visible, visible_rounds),
                   update(memory_infrared, f_infrared, y_infrared, infrared_rounds))

  # Both maps are looked up every step whatever the parity, as the reference does.
  rgb2ir = jnp.asarray(visible_to_infrared, jnp.int32)[y_visible]
  ir2rgb = jnp.asarray(infrared_to_visible, jnp.int32)[y_infrared]

  def odd_epoch():  # cross term: infrared features against the visible memory
    loss_cross = cross_entropy_matched(logits_visible(f_infrared, memory_visible), ir2rgb)
    visible_after_cross = update(memory_visible, f_infrared, ir2rgb)
    loss_visible = cross_entropy(
        logits_visible(f_visible, memory_visible, visible_after_cross), y_visible)
    loss_infrared = cross_entropy(logits_infrared(f_infrared, memory_infrared), y_infrared)
    tables = (update(visible_after_cross, f_visible, y_visible, visible_rounds),
              update(memory_infrared, f_infrared, y_infrared, infrared_rounds))
    return (loss_infrared, loss_visible, loss_cross), tables

  def even_epoch():  # cross term: visible features against the infrared memory
    loss_cross = cross_entropy_matched(logits_infrared(f_visible, memory_infrared), rgb2ir)
    infrared_after_cross = update(memory_infrared, f_visible, rgb2ir)
    loss_visible = cross_entropy(logits_visible(f_visible, memory_visible), y_visible)
    loss_infrared = cross_entropy(
        logits_infrared(f_infrared, memory_infrared, infrared_after_cross), y_infrared)
    tables = (update(memory_visible, f_visible, y_visible, visible_rounds),
              update(infrared_after_cross, f_infrared, y_infrared, infrared_rounds))
    return (loss_infrared, loss_visible, loss_cross), tables

  if isinstance(epoch, (int, np.integer)):
    (loss_infrared, loss_visible, loss_cross), tables = (
        odd_epoch() if epoch % 2 == 1 else even_epoch())
  else:  # a traced epoch: both directions compiled, one run
    (loss_infrared, loss_visible, loss_cross), tables = jax.lax.cond(
        jnp.asarray(epoch) % 2 == 1, odd_epoch, even_epoch)
  total = loss_infrared + loss_visible + cross_weight * loss_cross
  terms = {'infrared': loss_infrared, 'visible': loss_visible, 'cross': loss_cross,
           'total': total}
  return terms, tables


def pgm_losses(f_visible: jax.Array, f_infrared: jax.Array, y_visible: jax.Array,
               y_infrared: jax.Array, memories: Tables, visible_to_infrared: Optional[jax.Array],
               infrared_to_visible: Optional[jax.Array], epoch: Union[int, jax.Array], *,
               hard: bool, temperature: float = 0.05, momentum: float = 0.2,
               cross_weight: float = 0.25, num_visible: Optional[jax.Array] = None,
               num_infrared: Optional[jax.Array] = None) -> Tuple[jax.Array, Tables]:
  """PGM's loss of one step and the memories after it (the reference's trainer step).

  Args:
    f_visible: (2B, C) un-normalised visible features, [view A; view B].
    f_infrared: (B_i, C) un-normalised infrared features.
    y_visible: (2B,) int visible cluster labels of the rows of f_visible ((B,) is taken as one
      label per image and repeated for the two views).
    y_infrared: (B_i,) int infrared cluster labels.
    memories: ((K_v, C), (K_i, C)) float32 visible and infrared memory tables (L2-normalised rows).
    visible_to_infrared: (K_v,) int infrared partner of each visible cluster (`pgm_match`), -1 =
      none; None in stage 1.
    infrared_to_visible: (K_i,) int visible partner of each infrared cluster; None in stage 1.
    epoch: the stage-2 epoch, whose parity picks the cross direction (odd: infrared features
      against the visible memory). A Python int picks it when tracing; a traced int32 compiles
      both and picks at run time. Unused in stage 1.
    hard: the memory update: False = sequential (CM), True = hard (CM_Hard).
    temperature: softmax temperature (0.05).
    momentum: memory momentum, weight of the old row (0.2).
    cross_weight: weight of the cross term (0.25).
    num_visible: () int, real rows of a padded visible table (later columns get -inf); None = all.
    num_infrared: the same for the infrared table.

  Returns:
    (loss () float32, (memory_visible', memory_infrared')): the reference's total loss and its
    tables after the step's backward pass. `jax.grad` of the loss with respect to f_visible and
    f_infrared equals the reference's autograd gradient (see the module docstring).
  """
  terms, tables = pgm_loss_terms(
      f_visible, f_infrared, y_visible, y_infrared, memories, visible_to_infrared,
      infrared_to_visible, epoch, hard=hard, temperature=temperature, momentum=momentum,
      cross_weight=cross_weight, num_visible=num_visible, num_infrared=num_infrared)
  return terms['total'], tables
