"""hybrid_losses against the reference's ClusterMemory(mode='CMhybrid') (torch autograd).

The reference (tests/pclhd_reference.py, clustercontrast/models/cm.py at 8a376cd) computes the
hybrid loss, and its backward both returns the feature gradient and updates the table in place;
ours must give the same loss, the same gradient and the same table.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's memory needs it (pip install -r requirements-test.txt)")
import pclhd_reference  # pylint: disable=g-import-not-at-top

from vireid_jax.methods.pclhd import memory  # pylint: disable=g-import-not-at-top


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@jax.jit
def _jitted(features, labels, table, momentum, backward_table=None, num_valid=None):
  def loss_fn(f):
    return memory.hybrid_losses(f, labels, table, momentum=momentum,
                                backward_table=backward_table, num_valid=num_valid)
  (loss, updated), grad = jax.value_and_grad(loss_fn, has_aux=True)(features)
  terms = memory.hybrid_terms(features, labels, table, num_valid=num_valid)
  return loss, grad, updated, terms


def _ours(features, labels, table, momentum, backward_table=None, num_valid=None):
  """(loss, grad, table', terms); the momentum traced (float32(m) and float32(1) - float32(m)
  are the float32 values a Python float gives for 0.1 and 0.2), so one compilation serves both."""
  return _jitted(features, labels, table, jnp.float32(momentum), backward_table, num_valid)


def _reference(features, labels, table, momentum, backward_table=None):
  """(loss, grad, table') of one CMhybrid call; `backward_table` is written into the buffer
  between forward and backward, so the backward reads it (as an earlier backward node's update
  would leave it)."""
  module = pclhd_reference.memory(table, 'CMhybrid', momentum=momentum)
  inputs = torch.tensor(np.array(features, np.float32), requires_grad=True)
  loss = module(inputs, torch.tensor(np.asarray(labels, np.int64)))
  if backward_table is not None:
    module.features.copy_(torch.tensor(np.asarray(backward_table, np.float32)))
  loss.backward()
  return loss.item(), inputs.grad.numpy(), module.features.numpy()


def _reference_centroid_ce(features, labels, table, temperature=0.05):
  """The batch-mean centroid CE of the reference's forward (the relu's argument)."""
  f = torch.nn.functional.normalize(torch.tensor(features), dim=1)
  scores = f @ torch.tensor(table).T / temperature
  centroid, _ = torch.chunk(scores, 2, dim=1)
  return torch.nn.functional.cross_entropy(centroid, torch.tensor(labels, dtype=torch.int64)).item()


def _problem(seed, num_clusters, dim, image_labels, noise, two_views=True):
  """A hybrid table (centroid rows and hard rows differing, as after some training), labels
  ([y; y] for two views) and features around their centroid rows, of various norms."""
  rng = np.random.default_rng(seed)
  centroids = _normalize(rng.normal(size=(num_clusters, dim)))
  hard = _normalize(centroids + 0.5 * rng.normal(size=(num_clusters, dim)) / np.sqrt(dim) * 4)
  table = np.concatenate([centroids, hard]).astype(np.float32)
  labels = np.asarray(image_labels)
  if two_views:
    labels = np.concatenate([labels, labels])
  features = ((centroids[labels] + noise * rng.normal(size=(len(labels), dim)) / np.sqrt(dim))
              * rng.uniform(0.5, 3, size=(len(labels), 1))).astype(np.float32)
  return features, labels.astype(np.int32), table


def _assert_equal(ours, reference):
  loss, grad, table = (np.asarray(x) for x in ours[:3])
  ref_loss, ref_grad, ref_table = reference
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * np.abs(ref_grad).max())
  np.testing.assert_allclose(table, ref_table, rtol=1e-5, atol=1e-6)


# 16 per label, as the sampler draws them; two views each ([y; y]), so 32 rows per label.
SIXTEEN_EACH = np.repeat([3, 0, 5, 1], 16)
# Labels of various counts, one of them a single member (one image, no second view).
UNEVEN = np.array([2, 2, 4, 0, 2, 6, 4, 4, 0, 2, 2])


@pytest.mark.parametrize('momentum', [0.1, 0.2])
@pytest.mark.parametrize('relu', ['on', 'off'])
def test_sixteen_per_label_both_views(momentum, relu):
  # Far from the centroids the batch-mean centroid CE exceeds the margin (relu on); near them
  # it is below (relu off: only the hard half has a gradient).
  noise = 4.0 if relu == 'on' else 2.0
  features, labels, table = _problem(int(momentum * 10) + len(relu), 8, 64, SIXTEEN_EACH, noise)
  ce_centroid = _reference_centroid_ce(features, labels, table)
  assert (ce_centroid > 0.2) == (relu == 'on') and ce_centroid > 0.01, ce_centroid
  ours = _ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(table), momentum)
  _assert_equal(ours, _reference(features, labels, table, momentum))
  np.testing.assert_allclose(ours[3]['centroid'], ce_centroid, rtol=1e-5)
  # Every present cluster moved both rows; absent ones kept theirs.
  moved = np.any(np.asarray(ours[2]) != table, axis=1)
  present = np.isin(np.arange(8), labels)
  np.testing.assert_array_equal(moved, np.concatenate([present, present]))


@pytest.mark.parametrize('dim', [64, 2048])
def test_uneven_labels_and_a_single_member(dim):
  features, labels, table = _problem(dim, 7, dim, UNEVEN, 1.5, two_views=False)
  assert np.sum(labels == 6) == 1
  ours = _ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(table), 0.1)
  _assert_equal(ours, _reference(features, labels, table, 0.1))
  # The single member is its own mean and hardest member: both rows move towards it.
  x = _normalize(features[labels == 6][0])
  got = np.asarray(ours[2])
  np.testing.assert_allclose(got[6], _normalize(0.1 * table[6] + 0.9 * x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[13], _normalize(0.1 * table[13] + 0.9 * x), rtol=1e-5,
                             atol=1e-6)


def test_the_hard_row_takes_the_least_similar_member_before_the_update():
  """Not the mean, not the most similar: the choice shows in the table."""
  features, labels, table = _problem(5, 6, 32, SIXTEEN_EACH[:32], 3.0)
  got = np.asarray(_ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(table), 0.1)[2])
  unit = _normalize(features)
  for k in np.unique(labels):
    members = unit[labels == k]
    cosine = members @ table[k]
    hardest, easiest = members[np.argmin(cosine)], members[np.argmax(cosine)]
    np.testing.assert_allclose(got[6 + k], _normalize(0.1 * table[6 + k] + 0.9 * hardest),
                               rtol=1e-5, atol=1e-6)
    assert np.abs(got[6 + k] - _normalize(0.1 * table[6 + k] + 0.9 * easiest)).max() > 1e-2
    np.testing.assert_allclose(got[k], _normalize(0.1 * table[k] + 0.9 * members.mean(0)),
                               rtol=1e-5, atol=1e-6)


def test_ties_take_the_first_member_in_batch_order():
  table = np.concatenate([np.eye(3, 8), np.eye(3, 8, 3)]).astype(np.float32)
  tied = np.zeros((3, 8), np.float32)
  tied[0, [0, 1]] = (0.6, 0.8)  # cosine 0.6 with centroid row 0, both
  tied[1, [0, 2]] = (0.6, 0.8)
  tied[2, 0] = 1.0  # cosine 1: not the hardest
  for order in ([2, 0, 1], [1, 2, 0]):
    features = tied[order]
    labels = np.zeros(3, np.int32)
    ours = _ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(table), 0.1)
    _assert_equal(ours, _reference(features, labels, table, 0.1))
    first = features[np.flatnonzero(features[:, 0] < 1)[0]]
    np.testing.assert_allclose(np.asarray(ours[2])[3], _normalize(0.1 * table[3] + 0.9 * first),
                               rtol=1e-6, atol=1e-7)


def test_the_gradient_reads_the_backward_table():
  features, labels, table = _problem(9, 6, 32, UNEVEN % 6, 2.0, two_views=False)
  backward = _normalize(np.random.default_rng(1).normal(size=table.shape)).astype(np.float32)
  loss, grad, _, _ = _ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(table), 0.1,
                           backward_table=jnp.asarray(backward))
  ref_loss, ref_grad, _ = _reference(features, labels, table, 0.1, backward_table=backward)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * np.abs(ref_grad).max())
  plain = np.asarray(_ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(table),
                           0.1)[1])
  assert np.abs(plain - ref_grad).max() > 0.1 * np.abs(ref_grad).max()


def test_padded_table_equals_the_unpadded_one():
  features, labels, table = _problem(11, 7, 32, UNEVEN, 2.0, two_views=False)
  want = _ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(table), 0.1)
  capacity = 16
  padded = np.zeros((2 * capacity, 32), np.float32)
  padded[:7], padded[capacity:capacity + 7] = table[:7], table[7:]
  np.testing.assert_allclose(memory.hybrid_table(_normalize(table[:7]) * 3.0, capacity),
                             np.concatenate([padded[:capacity], padded[:capacity]]), atol=1e-6)
  got = _ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(padded), 0.1,
              num_valid=jnp.int32(7))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)
  got_table = np.asarray(got[2])
  np.testing.assert_allclose(got_table[:7], want[2][:7], rtol=1e-6)
  np.testing.assert_allclose(got_table[capacity:capacity + 7], want[2][7:], rtol=1e-6)
  np.testing.assert_array_equal(got_table[7:capacity], 0)
  np.testing.assert_array_equal(got_table[capacity + 7:], 0)
  # Without the mask the zero rows would count (score 0) and change the loss.
  unmasked = _ours(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(padded), 0.1)
  assert abs(float(unmasked[0]) - float(want[0])) > 1e-3


def test_unlabelled_rows_leave_the_loss_and_the_update():
  features, labels, table = _problem(12, 7, 32, UNEVEN, 2.0, two_views=False)
  partial = labels.copy()
  partial[[1, 5, 8]] = -1
  kept = partial >= 0
  loss, grad, got_table, _ = _ours(jnp.asarray(features), jnp.asarray(partial),
                                   jnp.asarray(table), 0.1)
  ref_loss, ref_grad, ref_table = _reference(features[kept], partial[kept], table, 0.1)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad)[kept], ref_grad, rtol=1e-4,
                             atol=1e-5 * np.abs(ref_grad).max())
  np.testing.assert_array_equal(np.asarray(grad)[~kept], 0)
  np.testing.assert_allclose(got_table, ref_table, rtol=1e-5, atol=1e-6)
  # No row left: no loss, no gradient, no update (an epoch without association).
  none = np.full_like(labels, -1)
  loss, grad, got_table, _ = _ours(jnp.asarray(features), jnp.asarray(none), jnp.asarray(table),
                                   0.1)
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grad, 0)
  np.testing.assert_array_equal(got_table, table)


def test_bad_tables_are_refused():
  with pytest.raises(ValueError, match='even number of rows'):
    memory.hybrid_losses(jnp.ones((2, 4)), jnp.zeros(2, jnp.int32), jnp.ones((5, 4)))
  with pytest.raises(ValueError, match='capacity'):
    memory.hybrid_table(np.ones((5, 4)), capacity=3)
