"""update_memory_hard against the reference's CM_Hard backward (clustercontrast/models/cm.py).

The reference updates its table inside the backward pass of ClusterMemory's call; the tables
it leaves behind are compared with ours.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's memory needs it (pip install -r requirements-test.txt)")
import pgm_reference  # pylint: disable=g-import-not-at-top

from vireid_jax import memory  # pylint: disable=g-import-not-at-top

_update = jax.jit(memory.update_memory_hard, static_argnums=3)


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_hard(table, features, labels, momentum):
  """The table a hard ClusterMemory holds after one call's backward."""
  module = pgm_reference.memory(table, use_hard=True, momentum=momentum)
  inputs = torch.tensor(np.array(features, np.float32), requires_grad=True)
  module(inputs, torch.tensor(np.asarray(labels, np.int64))).backward()
  return module.features.numpy()


@pytest.mark.parametrize('num_rows,num_samples,seed', [(5, 13, 0), (8, 32, 1), (3, 3, 2),
                                                       (20, 12, 3)])
@pytest.mark.parametrize('momentum', [0.2, 0.5])
def test_hard_update_equals_the_reference(num_rows, num_samples, seed, momentum):
  rng = np.random.default_rng(seed)
  table = _normalize(rng.normal(size=(num_rows, 16))).astype(np.float32)
  # Members near their row, of various norms, so that "least similar" is a real choice.
  labels = rng.integers(0, num_rows, num_samples)
  labels[-1] = labels[0]  # at least one repeated label; some rows get none, some one member
  features = ((table[labels] + rng.normal(size=(num_samples, 16)) * 0.7)
              * rng.uniform(0.5, 4, size=(num_samples, 1))).astype(np.float32)
  expected = _reference_hard(table, features, labels, momentum)
  got = _update(jnp.asarray(table), jnp.asarray(features), jnp.asarray(labels, jnp.int32),
                momentum)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  absent = np.setdiff1d(np.arange(num_rows), labels)
  np.testing.assert_array_equal(np.asarray(got)[absent], table[absent])
  # Not the sequential update, nor the most similar member: the choice is visible.
  assert np.abs(np.asarray(got) - memory.update_memory_sequential(
      jnp.asarray(table), jnp.asarray(features), jnp.asarray(labels), momentum)).max() > 1e-3


def test_hard_update_ties_take_the_first_member_in_batch_order():
  table = np.eye(4, 8, dtype=np.float32)
  tied = np.zeros((2, 8), np.float32)
  tied[0, [0, 1]] = (0.6, 0.8)  # both cosine 0.6 with row 0
  tied[1, [0, 2]] = (0.6, 0.8)
  closer = np.eye(1, 8, 0, dtype=np.float32)  # cosine 1: not the hardest
  for features in (np.concatenate([closer, tied]), np.concatenate([tied[::-1], closer])):
    labels = np.zeros(3, np.int64)
    got = _update(jnp.asarray(table), jnp.asarray(features), jnp.asarray(labels, jnp.int32), 0.2)
    np.testing.assert_allclose(got, _reference_hard(table, features, labels, 0.2), rtol=1e-6,
                               atol=1e-7)
    first = features[np.flatnonzero(features[:, 0] < 1)[0]]
    np.testing.assert_allclose(np.asarray(got)[0], _normalize(0.2 * table[0] + 0.8 * first),
                               rtol=1e-6, atol=1e-7)


def test_hard_update_skips_labels_outside_the_table():
  rng = np.random.default_rng(4)
  table = _normalize(rng.normal(size=(4, 8))).astype(np.float32)
  features = rng.normal(size=(9, 8)).astype(np.float32)
  labels = np.array([1, -1, 3, 1, 4, 0, 1, 7, 3])
  kept = (labels >= 0) & (labels < 4)
  got = _update(jnp.asarray(table), jnp.asarray(features), jnp.asarray(labels, jnp.int32), 0.2)
  np.testing.assert_allclose(got, _reference_hard(table, features[kept], labels[kept], 0.2),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[2], table[2])
