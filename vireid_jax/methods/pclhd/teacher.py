"""PCLHD's teacher: an exponential moving average of the student's parameters.

After both Adam steps of every stage-2 iteration (clustercontrast/trainers.py "TRN":211,249-251):

  for ema_param, param in zip(ema_model.parameters(), model.parameters()):
      ema_param.data.mul_(alpha).add_(param.data, alpha=1 - alpha)      alpha = 0.999

i.e. theta_t <- alpha theta_t + (1 - alpha) theta_s in float32, for every parameter (frozen ones
too: `parameters()` does not filter on requires_grad). Buffers are not touched: the teacher's
BatchNorm running statistics come only from its own train-mode forward under `torch.no_grad()`
each iteration (TRN:126,173-176), which in Flax is the teacher's `batch_stats` returned by a
train-mode `apply` (not this module's job).
"""

from typing import Any, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _split(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """x = hi + lo exactly, hi with the top 12 significant bits of x and lo with the rest (at most
  12): every product of two such halves is exact in float32. Bit masking, so no compiler
  rewrite can change it."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
  return hi, x - hi


def _two_sum(a: jax.Array, b: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(s, e): s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum; additions only)."""
  s = a + b
  b_virtual = s - a
  return s, (a - (s - b_virtual)) + (b - b_virtual)


def _mul_add_rounded_once(x: jax.Array, y: jax.Array, c: float) -> jax.Array:
  """fl(x + y c) with one rounding, as a fused multiply-add gives it, whatever XLA fuses.

  y c is the sum of four exact float32 products of halves (`_split`); they are added to x with
  TwoSum, the rounding errors collected and added last, which gives the correctly rounded
  sum (or, at worst, its neighbour when the exact sum lies within 2^-48 relative of a rounding
  boundary)."""
  c = np.float32(c)
  c_hi = (np.array(c).view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)[()]
  c_lo = c - c_hi  # exact, as in _split
  y_hi, y_lo = _split(y)
  total, error = x, jnp.zeros_like(x)
  for part in (y_hi * c_hi, y_hi * c_lo, y_lo * c_hi, y_lo * c_lo):
    total, e = _two_sum(total, part)
    error = error + e
  return total + error


def _ema(teacher: PyTree, student: PyTree, momentum: float) -> PyTree:
  """Leafwise fl(fl(alpha t) + (1 - alpha) s): torch's `mul_(alpha)` rounds, then its
  `add_(s, alpha=1 - alpha)` runs as one fused multiply-add (CUDA's and the vectorised CPU
  kernel's contraction of a + alpha b; checked on torch CPU), float32(1 - alpha) taken from
  the double 1 - alpha as Python computes it."""
  keep, take = np.float32(momentum), np.float32(1.0 - momentum)

  def leaf(t, s):
    if jnp.shape(t) != jnp.shape(s):
      raise ValueError(f'teacher and student parameters differ in shape: {jnp.shape(t)} vs '
                       f'{jnp.shape(s)}')
    dtype = jnp.asarray(t).dtype
    # The barrier keeps the product rounded on its own (XLA would fuse it into the sum).
    scaled = jax.lax.optimization_barrier(jnp.asarray(t, jnp.float32) * keep)
    return _mul_add_rounded_once(scaled, jnp.asarray(s, jnp.float32), take).astype(dtype)

  return jax.tree.map(leaf, teacher, student)


def ema_update(teacher_params: PyTree, student_params: PyTree,
               momentum: float = 0.999) -> PyTree:
  """The teacher after one EMA step: alpha teacher + (1 - alpha) student (TRN:249-251).

  Args:
    teacher_params: the teacher's parameters: a pytree of arrays, or a Flax variables mapping
      ({'params': ..., 'batch_stats': ...}), whose 'params' alone move.
    student_params: the student's, of the same structure (a variables mapping: its 'params'
      are read, its other collections ignored).
    momentum: alpha, the teacher's weight (0.999, TRN:211).

  Returns:
    The teacher's new parameters, same structure and dtypes; in a variables mapping every
    collection but 'params' (the BatchNorm statistics) is returned unchanged.
  """
  if isinstance(teacher_params, Mapping) and 'params' in teacher_params:
    student = (student_params['params'] if isinstance(student_params, Mapping)
               and 'params' in student_params else student_params)
    # A FrozenDict and a dict of the same tree are different pytrees: compare plain dicts.
    updated = _ema(flax.core.unfreeze(teacher_params['params']), flax.core.unfreeze(student),
                   momentum)
    if isinstance(teacher_params, flax.core.FrozenDict):
      return teacher_params.copy({'params': updated})
    return {**teacher_params, 'params': updated}
  return _ema(teacher_params, student_params, momentum)
