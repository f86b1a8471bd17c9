"""pgm_losses against a transcription of the reference's training step (torch autograd).

The reference (tests/pgm_reference.py) computes the loss, runs `loss.backward()` (its memories
update themselves inside the backward pass, in autograd's order) and leaves the tables behind;
ours must give the same loss, the same feature gradients and the same tables.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's training step needs it (pip install -r "
                            'requirements-test.txt)')
import pgm_reference  # pylint: disable=g-import-not-at-top

from vireid_jax.methods.pgm.losses import pgm_losses  # pylint: disable=g-import-not-at-top

DIM = 16


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _labels(rng, num_clusters, num_images):
  """Labels with repeats, one cluster with a single member (the first row, when two or more
  clusters are present) and at least one cluster absent from the batch."""
  present = rng.choice(num_clusters, max(1, min(num_clusters - 1, num_images // 2)),
                       replace=False)
  labels = np.full(num_images, present[0])
  if len(present) > 1:
    labels[1:] = rng.choice(present[1:], num_images - 1)
  return labels


def _problem(seed, num_visible_images, num_infrared_images, num_visible, num_infrared):
  rng = np.random.default_rng(seed)
  tables = tuple(_normalize(rng.normal(size=(k, DIM))).astype(np.float32)
                 for k in (num_visible, num_infrared))
  y_visible_images = _labels(rng, num_visible, num_visible_images)
  y_visible = np.concatenate([y_visible_images, y_visible_images])
  y_infrared = _labels(rng, num_infrared, num_infrared_images)
  visible_to_infrared = rng.integers(0, num_infrared, num_visible)
  infrared_to_visible = rng.integers(0, num_visible, num_infrared)

  def features(table, labels):  # near their own row, of various norms
    return ((table[labels] + 0.8 * rng.normal(size=(len(labels), DIM)))
            * rng.uniform(0.5, 5, size=(len(labels), 1))).astype(np.float32)

  return dict(f_visible=features(tables[0], y_visible), f_infrared=features(tables[1], y_infrared),
              y_visible=y_visible, y_infrared=y_infrared, tables=tables,
              visible_to_infrared=visible_to_infrared, infrared_to_visible=infrared_to_visible)


def _reference(p, epoch, hard, drop_unmatched=False):
  memory_rgb = pgm_reference.memory(p['tables'][0], hard)
  memory_ir = pgm_reference.memory(p['tables'][1], hard)
  maps = {}
  if epoch is not None:
    maps = dict(r2i={k: int(v) for k, v in enumerate(p['visible_to_infrared'])},
                i2r={k: int(v) for k, v in enumerate(p['infrared_to_visible'])})
  loss, grad_visible, grad_infrared = pgm_reference.reference_step(
      p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'], memory_rgb, memory_ir,
      epoch, drop_unmatched=drop_unmatched, **maps)
  return loss, grad_visible, grad_infrared, memory_rgb.features.numpy(), memory_ir.features.numpy()


def _objective(f_visible, f_infrared, rest, epoch, hard):
  y_visible, y_infrared, tables, visible_to_infrared, infrared_to_visible, kwargs = rest
  return pgm_losses(f_visible, f_infrared, y_visible, y_infrared, tables, visible_to_infrared,
                    infrared_to_visible, epoch, hard=hard, **kwargs)


_value_and_grad = jax.value_and_grad(_objective, argnums=(0, 1), has_aux=True)
_JITTED = {False: jax.jit(_value_and_grad, static_argnums=(3, 4)),  # epoch static
           True: jax.jit(_value_and_grad, static_argnums=(4,))}  # epoch an int32 argument


def _ours(p, epoch, hard, *, jit=True, traced_epoch=False, **kwargs):
  """(loss, grad f_visible, grad f_infrared, table_visible', table_infrared') of pgm_losses,
  jitted (epoch static, or an int32 argument) or eager; epoch None = stage 1."""
  stage2 = epoch is not None
  maps = ((jnp.asarray(p['visible_to_infrared']), jnp.asarray(p['infrared_to_visible']))
          if stage2 else (None, None))
  rest = (jnp.asarray(p['y_visible']), jnp.asarray(p['y_infrared']),
          tuple(jnp.asarray(t) for t in p['tables']), *maps, kwargs)
  epoch = epoch if stage2 else 0
  value_and_grad = _JITTED[traced_epoch] if jit else _value_and_grad
  (loss, tables), grads = value_and_grad(jnp.asarray(p['f_visible']), jnp.asarray(p['f_infrared']),
                                         rest, jnp.int32(epoch) if traced_epoch else epoch, hard)
  return (loss, *grads, *tables)


def _assert_equal(ours, reference):
  loss, grad_visible, grad_infrared, table_visible, table_infrared = (np.asarray(x) for x in ours)
  ref_loss, ref_grad_visible, ref_grad_infrared, ref_visible, ref_infrared = reference
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for got, want in ((grad_visible, ref_grad_visible), (grad_infrared, ref_grad_infrared)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  np.testing.assert_allclose(table_visible, ref_visible, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(table_infrared, ref_infrared, rtol=1e-5, atol=1e-6)


# Visible images, infrared images, K_v, K_i. Later tests reuse the first (and its compilations).
SIZES = [(4, 8, 5, 4), (8, 16, 6, 9), (3, 5, 2, 3)]


@pytest.mark.parametrize('sizes', SIZES)
@pytest.mark.parametrize('epoch', [None, 3, 4], ids=['stage1', 'odd', 'even'])
@pytest.mark.parametrize('hard', [False, True], ids=['sequential', 'hard'])
def test_loss_gradients_and_tables_equal_the_reference(sizes, epoch, hard):
  p = _problem(sum(sizes) + 7 * (epoch or 0) + hard, *sizes)
  _assert_equal(_ours(p, epoch, hard), _reference(p, epoch, hard))


@pytest.mark.parametrize('epoch', [3, 4])
def test_the_gradient_reads_the_table_left_by_the_cross_call(epoch):
  """The partly updated tables matter: gradients from the step's tables are far off."""
  p = _problem(11, *SIZES[0])
  reference = _reference(p, epoch, False)
  stale = pgm_reference.memory(p['tables'][0], False), pgm_reference.memory(p['tables'][1], False)
  # The same call order with frozen tables: M' never updated in the backward.
  for module in stale:
    module.momentum = 1.0
  _, grad_visible, grad_infrared = pgm_reference.reference_step(
      p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'], *stale, epoch,
      r2i=dict(enumerate(p['visible_to_infrared'].tolist())),
      i2r=dict(enumerate(p['infrared_to_visible'].tolist())))
  moved = grad_visible if epoch % 2 == 1 else grad_infrared
  want = reference[1] if epoch % 2 == 1 else reference[2]
  assert np.abs(moved - want).max() > 0.05 * np.abs(want).max()
  _assert_equal(_ours(p, epoch, False), reference)


@pytest.mark.parametrize('hard', [False, True], ids=['sequential', 'hard'])
def test_jitted_with_a_static_or_traced_epoch_and_eager(hard):
  p = _problem(12, *SIZES[0])
  for epoch in (3, 4):
    static = _ours(p, epoch, hard)
    checks = [_ours(p, epoch, hard, traced_epoch=True)]
    if not hard and epoch == 3:  # eager compiles op by op: once is enough
      checks.append(_ours(p, epoch, hard, jit=False))
    for got in checks:
      for g, want in zip(got, static):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('epoch', [3, 4])
def test_unmatched_clusters_leave_the_cross_term(epoch):
  p = _problem(13, *SIZES[0])
  p['visible_to_infrared'][p['y_visible'][1]] = -1
  p['infrared_to_visible'][p['y_infrared'][2]] = -1
  _assert_equal(_ours(p, epoch, False), _reference(p, epoch, False, drop_unmatched=True))
  _assert_equal(_ours(p, epoch, True), _reference(p, epoch, True, drop_unmatched=True))


def test_padded_tables_and_per_image_labels():
  p = _problem(14, *SIZES[0])
  want = _ours(p, 3, False)
  padded = dict(p, tables=tuple(np.concatenate([t, np.zeros((3, DIM), np.float32)])
                                for t in p['tables']),
                visible_to_infrared=np.concatenate([p['visible_to_infrared'], [-1, -1, -1]]),
                infrared_to_visible=np.concatenate([p['infrared_to_visible'], [-1, -1, -1]]),
                y_visible=p['y_visible'][:4])  # one label per image: repeated for both views
  got = _ours(padded, 3, False, num_visible=jnp.int32(5), num_infrared=jnp.int32(4))
  for g, w in zip(got[:3], want[:3]):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[3][:5], want[3], rtol=1e-6)
  np.testing.assert_array_equal(got[3][5:], 0)
  np.testing.assert_allclose(got[4][:4], want[4], rtol=1e-6)
  with pytest.raises(ValueError, match='both matching maps'):
    pgm_losses(jnp.asarray(p['f_visible']), jnp.asarray(p['f_infrared']), p['y_visible'],
               p['y_infrared'], p['tables'], p['visible_to_infrared'], None, 3, hard=False)
