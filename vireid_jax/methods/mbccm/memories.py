"""MBCCM's four cluster memories and the order its reference updates them.

The reference's memories: docs/mbccm.md, "Step 4: memories".

  visible            M_v   (K_v, C)  visible centres, labelled by visible cluster
  infrared           M_i   (K_i, C)  infrared centres, labelled by infrared cluster
  agnostic_visible   M_vi  (K_v, C)  starts as the visible centres; scored by both modalities
  agnostic_infrared  M_iv  (K_i, C)  starts as the infrared centres; scored by both modalities

Rebuilt from the cluster centres every epoch; after every optimiser step each memory takes the
normalised features it scored, one sample at a time in the reference's order
(`update_memories`), with the core's momentum update (vireid_jax/memory.py).
"""

import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from vireid_jax.memory import ArrayLike, normalize_rows, rounds_bound, update_memory


@flax.struct.dataclass
class Memories:
  """The four cluster memories of an epoch, a pytree that the jitted step carries.

  Attributes:
    visible: (K_v, C) float32 M_v.
    infrared: (K_i, C) float32 M_i.
    agnostic_visible: (K_v, C) float32 M_vi, labelled by visible cluster.
    agnostic_infrared: (K_i, C) float32 M_iv, labelled by infrared cluster.
    num_visible: () int32 real visible clusters; rows from here on are padding.
    num_infrared: () int32 real infrared clusters.
  """

  visible: jax.Array
  infrared: jax.Array
  agnostic_visible: jax.Array
  agnostic_infrared: jax.Array
  num_visible: jax.Array
  num_infrared: jax.Array

  @classmethod
  def from_centers(cls, centers_visible: ArrayLike, centers_infrared: ArrayLike,
                   num_visible: Optional[int] = None,
                   num_infrared: Optional[int] = None) -> 'Memories':
    """Builds the four memories of an epoch from the cluster centres.

    Args:
      centers_visible: (K_v, C) visible cluster centres (rows are L2-normalised here; all-zero
        padding rows stay zero).
      centers_infrared: (K_i, C) infrared cluster centres.
      num_visible: real visible clusters when the table is padded; None = every row is real.
      num_infrared: the same for the infrared table.

    Returns:
      Memories with M_vi starting as the visible and M_iv as the infrared centres.
    """
    visible = normalize_rows(centers_visible)
    infrared = normalize_rows(centers_infrared)
    num_visible = visible.shape[0] if num_visible is None else num_visible
    num_infrared = infrared.shape[0] if num_infrared is None else num_infrared
    for name, num, table in (('num_visible', num_visible, visible),
                             ('num_infrared', num_infrared, infrared)):
      if not 0 < num <= table.shape[0]:
        raise ValueError(f'{name} = {num} must lie in [1, {table.shape[0]}] (the table rows)')
    # Separate copies, so that donating the memories to the jitted step never donates one
    # buffer twice.
    return cls(visible=visible, infrared=infrared, agnostic_visible=jnp.array(visible),
               agnostic_infrared=jnp.array(infrared),
               num_visible=jnp.asarray(num_visible, jnp.int32),
               num_infrared=jnp.asarray(num_infrared, jnp.int32))


# Which memory takes which (feature, label) sequence, in which order. The reference updates a
# memory inside the backward pass of each call that scored it, and autograd runs those backward
# nodes in reverse order of the forward calls (checked on the reference's autograd graph):
#   forward calls:  M_v(f_a), M_v(f_b), M_i(f_r), [stage 2:] M_vi(f_a), M_vi(f_b), M_vi(f_r),
#                   M_iv(f_a), M_iv(f_b), M_iv(f_r)
#   updates:        M_v  <- f_b, then f_a        (labels y_v)
#                   M_i  <- f_r                  (labels y_i)
#                   M_vi <- f_r, f_b, then f_a   (labels y_v; stage 2 only)
#                   M_iv <- f_r, f_b, then f_a   (labels y_i; stage 2 only)
# In stage 1 the agnostic memories are never scored, so they are not updated.
def update_memories(memories: Memories, f_a: jax.Array, f_b: jax.Array, f_r: jax.Array,
                    y_v: jax.Array, y_i: jax.Array, stage: int, momentum: float, *,
                    method: str = 'auto', label_repeats: Optional[int] = None) -> Memories:
  """Momentum-updates every memory with the samples it scored this step, in reference order.

  Args:
    memories: the memories the step's logits were computed with.
    f_a: (B, C) visible view A training features (un-normalised).
    f_b: (B, C) visible view B training features.
    f_r: (B, C) infrared training features.
    y_v: (B,) int32 visible cluster label of each pair position.
    y_i: (B,) int32 infrared cluster label of each pair position.
    stage: 1 or 2 (a Python int; stage 1 leaves the agnostic memories alone).
    momentum: weight of the old row (0.1).
    method: how each table is updated, see `update_memory`.
    label_repeats: static bound of how often one label occurs in y_v or in y_i (see
      `label_repeats`); each by_rank update runs that many rounds per copy of the step's
      labels it takes. None: as many rounds as samples (always enough, slower).

  Returns:
    The updated Memories.
  """
  if stage not in (1, 2):
    raise ValueError(f'stage must be 1 or 2, got {stage!r}')
  update = functools.partial(update_memory, momentum=momentum, method=method)
  rounds = functools.partial(rounds_bound, label_repeats)
  visible = update(memories.visible, jnp.concatenate([f_b, f_a]), jnp.concatenate([y_v, y_v]),
                   max_rounds=rounds(2))
  infrared = update(memories.infrared, f_r, y_i, max_rounds=rounds(1))
  if stage == 1:
    return memories.replace(visible=visible, infrared=infrared)
  all_features = jnp.concatenate([f_r, f_b, f_a])
  agnostic_visible = update(memories.agnostic_visible, all_features,
                            jnp.concatenate([y_v, y_v, y_v]), max_rounds=rounds(3))
  agnostic_infrared = update(memories.agnostic_infrared, all_features,
                             jnp.concatenate([y_i, y_i, y_i]), max_rounds=rounds(3))
  return memories.replace(visible=visible, infrared=infrared, agnostic_visible=agnostic_visible,
                          agnostic_infrared=agnostic_infrared)
