"""Loss primitives shared by the methods: cross-entropy over memory logits, symmetric KL.

Each method composes its own loss from these in `vireid_jax/methods/<name>/losses.py`.
"""

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Batch mean of -log softmax(logits)[label] (torch F.cross_entropy). logits (B, K)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels.astype(jnp.int32)[:, None], axis=-1)
  return -jnp.mean(picked)


def _clamped_softmax(logits: jax.Array, clamp: float) -> jax.Array:
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  # torch.clamp(min=) passes the gradient where probs >= clamp; jnp.maximum would halve it at ties.
  return jnp.where(probs >= clamp, probs, clamp)


def symmetric_kl(p_logits: jax.Array, q_logits: jax.Array, clamp: float = 1e-12) -> jax.Array:
  """(KL(q || p) + KL(p || q)) / 2 of the row softmaxes, averaged over the batch.

  As the reference: both probability tables are clamped below at `clamp` and the clamped values
  are used both as weights and inside the logs; KL sums over classes and divides by the batch
  size ('batchmean'); gradients flow through both sides. Masked (-inf) columns of padded memories
  give probability 0 on both sides, clamp to the same value and add exactly nothing.

  Args:
    p_logits: (B, K) logits.
    q_logits: (B, K) logits.
    clamp: lower bound of the probabilities (1e-12).

  Returns:
    () float32.
  """
  p = _clamped_softmax(p_logits, clamp)
  q = _clamped_softmax(q_logits, clamp)
  log_p, log_q = jnp.log(p), jnp.log(q)
  kl_qp = jnp.sum(q * (log_q - log_p), axis=-1)
  kl_pq = jnp.sum(p * (log_p - log_q), axis=-1)
  return jnp.mean((kl_qp + kl_pq) / 2)
