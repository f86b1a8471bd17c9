"""instance_table and dynamic_loss against the reference (train_sysu.py:891-902,934-935 and
ClusterMemory(mode='CMhard')'s 'encoder_ema' path, clustercontrast/models/cm.py:181-191)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's memory needs it (pip install -r requirements-test.txt)")
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

import pclhd_reference  # pylint: disable=g-import-not-at-top

from vireid_jax.methods.pclhd import instances  # pylint: disable=g-import-not-at-top


def test_instance_table_draws_as_the_reference():
  rng = np.random.default_rng(0)
  labels = rng.integers(-1, 5, 60)
  labels[:5] = np.arange(5)  # every cluster has a member; cluster 4 has few
  labels[labels == 4] = 3
  labels[7] = 4
  features = rng.normal(size=(60, 8)).astype(np.float32)
  np.random.seed(3)  # the reference draws from numpy's global stream
  expected = F.normalize(pclhd_reference.generate_random_features(
      labels, torch.from_numpy(features), 5, 16), dim=1).numpy()
  got = instances.instance_table(features, labels, 5, np.random.RandomState(3))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  # Padded to 8 clusters per block: the same rows at i + k * 8, zeros elsewhere.
  padded = instances.instance_table(features, labels, 5, np.random.RandomState(3), capacity=8)
  blocks = padded.reshape(16, 8, 8)
  np.testing.assert_array_equal(blocks[:, :5].reshape(80, 8), got)
  np.testing.assert_array_equal(blocks[:, 5:], 0)
  with pytest.raises(ValueError, match='no member'):
    instances.instance_table(features, labels, 6, np.random.RandomState(3))


@pytest.mark.parametrize('num_clusters,capacity', [(5, None), (5, 8)])
def test_dynamic_loss_equals_the_reference_and_is_a_constant(num_clusters, capacity):
  rng = np.random.default_rng(1)
  table = rng.normal(size=(16 * num_clusters, 12)).astype(np.float32)
  table /= np.linalg.norm(table, axis=1, keepdims=True)
  labels = rng.integers(0, num_clusters, 20)
  teacher = rng.normal(size=(20, 12)).astype(np.float32) * 2
  module = pclhd_reference.memory(np.zeros((2 * num_clusters, 12)), 'CMhard', instances=table)
  with torch.no_grad():
    f_t = torch.from_numpy(teacher)
  expected = module(f_t, torch.from_numpy(labels), model_name='encoder_ema')
  assert not expected.requires_grad
  if capacity is not None:  # the same clusters in blocks of `capacity` rows
    padded = np.zeros((16, capacity, 12), np.float32)
    padded[:, :num_clusters] = table.reshape(16, num_clusters, 12)
    table = padded.reshape(-1, 12)
  fn = lambda f: instances.dynamic_loss(f, jnp.asarray(labels), jnp.asarray(table),
                                        num_valid=None if capacity is None else num_clusters)
  got = fn(jnp.asarray(teacher))
  np.testing.assert_allclose(got, expected.item(), rtol=1e-5)
  np.testing.assert_array_equal(jax.grad(fn)(jnp.asarray(teacher)), 0)
