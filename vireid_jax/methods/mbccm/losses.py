"""MBCCM's losses as pure functions of the step's features and the cluster memories.

The reference's losses: docs/mbccm.md, "Step 7: losses".

f_a, f_b: (B, C) BN-neck training features of visible views A and B; f_r: (B, C) infrared;
position i of the three is one matched (visible, infrared) pair with labels y_v[i], y_i[i].

  stage 1:  L = L_ms
  stage 2:  L = L_ms + alpha * L_ma + beta * L_cc
  L_ms = CE(M_v(f_a), y_v) + CE(M_v(f_b), y_v) + CE(M_i(f_r), y_i)
  L_ma = CE(M_vi(f_a), y_v) + CE(M_vi(f_b), y_v) + CE(M_vi(f_r), y_v)
       + CE(M_iv(f_a), y_i) + CE(M_iv(f_b), y_i) + CE(M_iv(f_r), y_i)
  L_cc = sKL(M_v(f_a), M_vi(f_a)) + sKL(M_v(f_b), M_vi(f_b)) + sKL(M_iv(f_a), X_i(f_a))
       + sKL(M_iv(f_b), X_i(f_b)) + sKL(M_vi(f_r), X_v(f_r)) + sKL(M_i(f_r), M_iv(f_r))

CE is the batch mean of the cross-entropy. X_i(f) = f . M_i^T / T and X_v(f) = f . M_v^T / T
score the UN-normalised feature in the reference (`unnormalized_cross_logits=True`, the default).

`reference_memory_gradients=True` reproduces one more reference detail: its memories are updated
in place inside the backward pass, so a memory scored twice or three times in a step hands the
later-processed calls a gradient computed with the partly updated table (see `_backward_tables`).
Forward values, and so the loss, are the same either way.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from vireid_jax.losses import cross_entropy, symmetric_kl
from vireid_jax.memory import memory_logits, update_memory
from vireid_jax.methods.mbccm.memories import Memories

Metrics = Dict[str, jax.Array]


def _backward_tables(f_a, f_b, f_r, y_v, y_i, memories: Memories, stage: int,
                     momentum: Optional[float], memory_update: str = 'auto',
                     label_repeats: Optional[int] = None) -> Dict[str, Optional[jax.Array]]:
  """Tables the reference's backward pass reads for each memory call (None = the step's table).

  Autograd runs the memory calls' backward nodes in reverse forward order, and each node first
  computes its feature gradient from the live table, then updates that table with its samples:
    M_v(f_b) sees M_v;  M_v(f_a) sees M_v after f_b;  M_i(f_r) sees M_i;
    M_vi(f_r) sees M_vi;  M_vi(f_b) sees M_vi after f_r;  M_vi(f_a) sees M_vi after f_r, f_b;
    M_iv likewise with y_i.
  The X_i / X_v cross logits are plain products whose backward runs before any update.
  Each partial update takes one copy of the step's labels: `label_repeats` rounds by rank.
  """
  if momentum is None:
    raise ValueError('reference_memory_gradients=True needs the memory momentum '
                     '(pass momentum=config.memory.momentum)')
  def update(table, features, labels):
    return update_memory(table, features, labels, momentum, method=memory_update,
                         max_rounds=label_repeats)

  tables = {'visible_b': None, 'visible_a': update(memories.visible, f_b, y_v)}
  if stage == 2:
    for name, table, labels in (('agnostic_visible', memories.agnostic_visible, y_v),
                                ('agnostic_infrared', memories.agnostic_infrared, y_i)):
      after_r = update(table, f_r, labels)
      tables[f'{name}_r'] = None
      tables[f'{name}_b'] = after_r
      tables[f'{name}_a'] = update(after_r, f_b, labels)
  return tables


def _modality_specific(f_a, f_b, f_r, y_v, y_i, memories: Memories, temperature: float,
                       backward: Dict[str, Optional[jax.Array]]):
  """L_ms and the three logits it is built from."""
  visible_a = memory_logits(f_a, memories.visible, temperature, num_valid=memories.num_visible,
                            backward_centers=backward.get('visible_a'))
  visible_b = memory_logits(f_b, memories.visible, temperature, num_valid=memories.num_visible,
                            backward_centers=backward.get('visible_b'))
  infrared_r = memory_logits(f_r, memories.infrared, temperature,
                             num_valid=memories.num_infrared)
  loss_ms = (cross_entropy(visible_a, y_v) + cross_entropy(visible_b, y_v)
             + cross_entropy(infrared_r, y_i))
  return loss_ms, (visible_a, visible_b, infrared_r)


def stage1_loss(f_a: jax.Array, f_b: jax.Array, f_r: jax.Array, y_v: jax.Array, y_i: jax.Array,
                memories: Memories, temperature: float, *,
                reference_memory_gradients: bool = False,
                momentum: Optional[float] = None, memory_update: str = 'auto',
                label_repeats: Optional[int] = None) -> Tuple[jax.Array, Metrics]:
  """Stage-1 loss L_ms (each modality against its own memory).

  Args:
    f_a, f_b, f_r: (B, C) un-normalised training features (visible A, visible B, infrared).
    y_v: (B,) int32 visible cluster labels (of the visible images).
    y_i: (B,) int32 infrared cluster labels (of the infrared images).
    memories: the step's memories (read only; update them afterwards with update_memories).
    temperature: softmax temperature (0.05).
    reference_memory_gradients: feature gradients read the partly updated tables, as the
      reference's in-place backward does (needs `momentum`).
    momentum: memory momentum, used only by reference_memory_gradients.
    memory_update, label_repeats: how reference_memory_gradients updates the partial tables
      (`update_memory`'s method; `memories.update_memories`' label_repeats).

  Returns:
    (loss () float32, metrics {'ms', 'ma', 'cc', 'total'}; ma and cc are 0 in stage 1).
  """
  backward = (_backward_tables(f_a, f_b, f_r, y_v, y_i, memories, 1, momentum, memory_update,
                               label_repeats)
              if reference_memory_gradients else {})
  loss_ms, _ = _modality_specific(f_a, f_b, f_r, y_v, y_i, memories, temperature, backward)
  zero = jnp.zeros((), jnp.float32)
  return loss_ms, {'ms': loss_ms, 'ma': zero, 'cc': zero, 'total': loss_ms}


def stage2_loss(f_a: jax.Array, f_b: jax.Array, f_r: jax.Array, y_v: jax.Array, y_i: jax.Array,
                memories: Memories, temperature: float, alpha: float, beta: float,
                unnormalized_cross_logits: bool = True, *, kl_clamp: float = 1e-12,
                reference_memory_gradients: bool = False,
                momentum: Optional[float] = None, memory_update: str = 'auto',
                label_repeats: Optional[int] = None) -> Tuple[jax.Array, Metrics]:
  """Stage-2 loss L_ms + alpha * L_ma + beta * L_cc.

  Args:
    f_a, f_b, f_r: (B, C) un-normalised training features (visible A, visible B, infrared).
    y_v: (B,) int32 visible cluster label of each matched pair position.
    y_i: (B,) int32 infrared cluster label of each matched pair position.
    memories: the step's memories (read only).
    temperature: softmax temperature (0.05).
    alpha: weight of L_ma (0.9).
    beta: weight of L_cc (0.5).
    unnormalized_cross_logits: X_i / X_v score the raw feature (reference); False normalises.
    kl_clamp: probability clamp inside the symmetric KL (1e-12).
    reference_memory_gradients: feature gradients read the partly updated tables, as the
      reference's in-place backward does (needs `momentum`).
    momentum: memory momentum, used only by reference_memory_gradients.
    memory_update, label_repeats: as in `stage1_loss`.

  Returns:
    (loss () float32, metrics {'ms', 'ma', 'cc', 'total'}).
  """
  backward = (_backward_tables(f_a, f_b, f_r, y_v, y_i, memories, 2, momentum, memory_update,
                               label_repeats)
              if reference_memory_gradients else {})
  loss_ms, (visible_a, visible_b, infrared_r) = _modality_specific(
      f_a, f_b, f_r, y_v, y_i, memories, temperature, backward)

  def agnostic(features, name, table, num_valid, view):
    return memory_logits(features, table, temperature, num_valid=num_valid,
                         backward_centers=backward.get(f'{name}_{view}'))

  agn_v = {view: agnostic(f, 'agnostic_visible', memories.agnostic_visible,
                          memories.num_visible, view) for view, f in zip('abr', (f_a, f_b, f_r))}
  agn_i = {view: agnostic(f, 'agnostic_infrared', memories.agnostic_infrared,
                          memories.num_infrared, view) for view, f in zip('abr', (f_a, f_b, f_r))}
  loss_ma = (cross_entropy(agn_v['a'], y_v) + cross_entropy(agn_v['b'], y_v)
             + cross_entropy(agn_v['r'], y_v) + cross_entropy(agn_i['a'], y_i)
             + cross_entropy(agn_i['b'], y_i) + cross_entropy(agn_i['r'], y_i))

  normalize_cross = not unnormalized_cross_logits
  cross_i = lambda f: memory_logits(f, memories.infrared, temperature,
                                    num_valid=memories.num_infrared,
                                    normalize_features=normalize_cross)
  cross_v = lambda f: memory_logits(f, memories.visible, temperature,
                                    num_valid=memories.num_visible,
                                    normalize_features=normalize_cross)
  skl = lambda p, q: symmetric_kl(p, q, kl_clamp)
  loss_cc = (skl(visible_a, agn_v['a']) + skl(visible_b, agn_v['b'])
             + skl(agn_i['a'], cross_i(f_a)) + skl(agn_i['b'], cross_i(f_b))
             + skl(agn_v['r'], cross_v(f_r)) + skl(infrared_r, agn_i['r']))

  total = loss_ms + alpha * loss_ma + beta * loss_cc
  return total, {'ms': loss_ms, 'ma': loss_ma, 'cc': loss_cc, 'total': total}
