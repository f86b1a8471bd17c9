"""PCLHD's step losses against a transcription of the reference's trainers (torch autograd).

The reference (tests/pclhd_reference.py: clustercontrast/trainers.py:150-209 with the memories
of models/cm.py, at 8a376cd) computes the main loss, runs its backward (the memories update
themselves inside it, in autograd's order), then the joint loss and its backward; ours must give
the same two losses and logged terms, the same four feature gradients and the same three
tables. Stage 1 (trainers.py:77-82) likewise, with hybrid and with centroid memories.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's training step needs it (pip install -r "
                            'requirements-test.txt)')
import pclhd_reference  # pylint: disable=g-import-not-at-top

from vireid_jax.methods.pclhd import association  # pylint: disable=g-import-not-at-top
from vireid_jax.methods.pclhd import losses  # pylint: disable=g-import-not-at-top

DIM = 32
INSTANCES = 16


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _hybrid(rng, num_clusters):
  """A hybrid table whose hard rows differ from the centroid rows (as after some steps)."""
  centroids = _normalize(rng.normal(size=(num_clusters, DIM)))
  hard = _normalize(centroids + 0.6 * rng.normal(size=(num_clusters, DIM)))
  return np.concatenate([centroids, hard]).astype(np.float32)


def _labels(rng, num_clusters, num_images, per_cluster=4):
  """Images of a few clusters, `per_cluster` each (the sampler's blocks), one cluster with a
  single image, and clusters absent from the batch."""
  blocks = rng.choice(num_clusters, num_images // per_cluster, replace=False)
  labels = np.repeat(blocks, per_cluster)
  labels[-1] = rng.choice(np.setdiff1d(np.arange(num_clusters), blocks)) if (
      num_clusters > len(blocks)) else labels[-1]
  return labels.astype(np.int32)


def _features(rng, table, labels, noise=1.0):
  centroids = table[:len(table) // 2]
  return ((centroids[labels] + noise * rng.normal(size=(len(labels), DIM)) / np.sqrt(DIM) * 3)
          * rng.uniform(0.5, 3, size=(len(labels), 1))).astype(np.float32)


def _problem(seed, num_visible, num_infrared, num_joint, maps='random', images=8):
  rng = np.random.default_rng(seed)
  tables = [_hybrid(rng, k) for k in (num_visible, num_infrared, num_joint)]
  instances = [_normalize(rng.normal(size=(INSTANCES * k, DIM))).astype(np.float32)
               for k in (num_visible, num_infrared)]
  y = _labels(rng, num_visible, images)
  y_visible = np.concatenate([y, y])
  y_infrared = _labels(rng, num_infrared, images)
  y_joint = _labels(rng, num_joint, images)
  y_joint_visible = np.concatenate([y_joint, y_joint])
  y_joint_infrared = _labels(rng, num_joint, images)
  if maps == 'random':
    visible_to_infrared = rng.integers(0, num_infrared, num_visible)
    infrared_to_visible = rng.integers(0, num_visible, num_infrared)
  elif maps == 'matched':  # the SYSU matching of the two tables' centroids
    visible_to_infrared, infrared_to_visible = association.pclhd_match(
        tables[0][:num_visible], tables[1][:num_infrared], variant='sysu')
  else:  # no association this epoch
    visible_to_infrared = np.full(num_visible, -1)
    infrared_to_visible = np.full(num_infrared, -1)
  return dict(
      f_visible=_features(rng, tables[0], y_visible), f_infrared=_features(rng, tables[1],
                                                                           y_infrared),
      y_visible=y_visible, y_infrared=y_infrared,
      f_teacher_visible=_features(rng, tables[0], y_visible),
      f_teacher_infrared=_features(rng, tables[1], y_infrared),
      f_joint_visible=_features(rng, tables[2], y_joint_visible),
      f_joint_infrared=_features(rng, tables[2], y_joint_infrared),
      y_joint_visible=y_joint_visible, y_joint_infrared=y_joint_infrared, tables=tables,
      instances=instances, visible_to_infrared=np.asarray(visible_to_infrared, np.int32),
      infrared_to_visible=np.asarray(infrared_to_visible, np.int32))


def _reference(p, epoch):
  memory_rgb = pclhd_reference.memory(p['tables'][0], 'CMhard', instances=p['instances'][0])
  memory_ir = pclhd_reference.memory(p['tables'][1], 'CMhard', instances=p['instances'][1])
  memory_all = pclhd_reference.memory(p['tables'][2], 'CMhybrid')
  maps = {}
  if np.any(p['visible_to_infrared'] >= 0):
    maps = dict(r2i={k: int(v) for k, v in enumerate(p['visible_to_infrared'])},
                i2r={k: int(v) for k, v in enumerate(p['infrared_to_visible'])})
  out = pclhd_reference.reference_stage2_step(
      p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'], p['f_teacher_visible'],
      p['f_teacher_infrared'], p['f_joint_visible'], p['f_joint_infrared'],
      p['y_joint_visible'], p['y_joint_infrared'], memory_rgb, memory_ir, memory_all, epoch,
      maps.get('i2r', {}), maps.get('r2i', {}))
  # The dynamic term's table is never updated (its backward never runs: quirk 1).
  np.testing.assert_array_equal(memory_rgb.features_ema.numpy(), p['instances'][0])
  np.testing.assert_array_equal(memory_ir.features_ema.numpy(), p['instances'][1])
  assert not out['ema_requires_grad']
  out['tables'] = tuple(m.features.numpy() for m in (memory_rgb, memory_ir, memory_all))
  return out


def _main_and_joint(f_visible, f_infrared, f_joint_visible, f_joint_infrared, rest, epoch):
  (y_v, y_i, y_jv, y_ji, tables, v2i, i2v, teacher) = rest

  def main(fv, fi):
    terms, new = losses.main_terms(fv, fi, y_v, y_i, tables[:2], v2i, i2v, epoch,
                                   teacher=teacher)
    return terms['total'], (terms, new)

  def joint(fv, fi):
    terms, new = losses.joint_terms(fv, fi, y_jv, y_ji, tables[2])
    return terms['total'], (terms, new)

  (_, (main_terms, (visible, infrared))), main_grads = jax.value_and_grad(
      main, argnums=(0, 1), has_aux=True)(f_visible, f_infrared)
  (_, (joint_terms, joint_table)), joint_grads = jax.value_and_grad(
      joint, argnums=(0, 1), has_aux=True)(f_joint_visible, f_joint_infrared)
  return main_terms, joint_terms, main_grads + joint_grads, (visible, infrared, joint_table)


# The epoch an int32 argument: one compilation (both parities) serves every case; the
# composition test checks the Python-int path (parity chosen while tracing) against it.
_JITTED = jax.jit(_main_and_joint)


def _rest(p, teacher=True):
  teacher = ((jnp.asarray(p['f_teacher_visible']), jnp.asarray(p['f_teacher_infrared']),
              tuple(jnp.asarray(t) for t in p['instances'])) if teacher else None)
  return (jnp.asarray(p['y_visible']), jnp.asarray(p['y_infrared']),
          jnp.asarray(p['y_joint_visible']), jnp.asarray(p['y_joint_infrared']),
          tuple(jnp.asarray(t) for t in p['tables']), jnp.asarray(p['visible_to_infrared']),
          jnp.asarray(p['infrared_to_visible']), teacher)


def _ours(p, epoch):
  return _JITTED(jnp.asarray(p['f_visible']), jnp.asarray(p['f_infrared']),
                 jnp.asarray(p['f_joint_visible']), jnp.asarray(p['f_joint_infrared']),
                 _rest(p), jnp.int32(epoch))


def _close(got, want, name, rtol=1e-5, atol=1e-6):
  np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol, err_msg=name)


def _assert_equal(ours, ref):
  main, joint, grads, tables = ours
  _close(main['total'], ref['loss'], 'loss')
  _close(joint['total'], ref['loss2'], 'loss2')
  for key, ref_key in (('infrared', 'loss_ir'), ('visible', 'loss_rgb'), ('cross', 'cross_loss'),
                       ('dynamic_infrared', 'loss_ir_ema'),
                       ('dynamic_visible', 'loss_rgb_ema')):
    _close(main[key], ref[ref_key], key)
  _close(joint['joint_infrared'], ref['loss_all_ir'], 'joint_infrared')
  _close(joint['joint_visible'], ref['loss_all_rgb'], 'joint_visible')
  for got, name in zip(grads, ('grad_rgb', 'grad_ir', 'grad_all_rgb', 'grad_all_ir')):
    want = ref[name]
    _close(got, want, name, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  for got, want, name in zip(tables, ref['tables'], ('M_v', 'M_i', 'M_all')):
    _close(got, want, name)


# (K_v, K_i, K_all, maps), one set of shapes (one compilation): 'matched' is the SYSU matching
# with K_v = 2 K_i, a many-to-one visible_to_infrared (round 2' and the overwritten inverse).
CASES = {'random_maps': (10, 5, 7, 'random'), 'kv_twice_ki': (10, 5, 7, 'matched'),
         'no_association': (10, 5, 7, 'none')}


@pytest.mark.parametrize('case', list(CASES))
@pytest.mark.parametrize('epoch', [3, 4], ids=['odd', 'even'])
def test_both_steps_equal_the_reference(case, epoch):
  p = _problem(7 * epoch + len(case), *CASES[case])
  if case == 'kv_twice_ki':  # many-to-one: some infrared cluster has several visible partners
    assert np.bincount(p['visible_to_infrared']).max() >= 2
  ref = _reference(p, epoch)
  ours = _ours(p, epoch)
  _assert_equal(ours, ref)
  assert (float(ours[0]['cross']) == 0.0) == (case == 'no_association')
  assert ref['cross_loss'] != 0.0 or case == 'no_association'


@pytest.mark.parametrize('epoch', [3, 4], ids=['odd', 'even'])
def test_the_cases_exercise_the_update_order(epoch):
  """The reference with frozen tables (momentum 1: every update keeps its row) gives visibly
  other gradients where a call's gradient reads a table an earlier backward call updated: the
  same-modality call of the cross term's memory, and the joint infrared call."""
  p = _problem(7 * epoch + len('random_maps'), *CASES['random_maps'])
  ref = _reference(p, epoch)
  frozen = [pclhd_reference.memory(p['tables'][0], 'CMhard', momentum=1.0,
                                   instances=p['instances'][0]),
            pclhd_reference.memory(p['tables'][1], 'CMhard', momentum=1.0,
                                   instances=p['instances'][1]),
            pclhd_reference.memory(p['tables'][2], 'CMhybrid', momentum=1.0)]
  stale = pclhd_reference.reference_stage2_step(
      p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'], p['f_teacher_visible'],
      p['f_teacher_infrared'], p['f_joint_visible'], p['f_joint_infrared'],
      p['y_joint_visible'], p['y_joint_infrared'], *frozen, epoch,
      dict(enumerate(p['infrared_to_visible'].tolist())),
      dict(enumerate(p['visible_to_infrared'].tolist())))
  moved = 'grad_rgb' if epoch % 2 == 1 else 'grad_ir'
  for name in (moved, 'grad_all_ir'):
    assert np.abs(stale[name] - ref[name]).max() > 0.05 * np.abs(ref[name]).max(), name
  for name in ({'grad_rgb', 'grad_ir'} - {moved}) | {'grad_all_rgb'}:
    np.testing.assert_allclose(stale[name], ref[name], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize('epoch', [3, 4], ids=['odd', 'even'])
def test_the_composition_with_a_python_epoch(epoch):
  """pclhd_stage2_losses = main_terms then joint_terms (eager: the parity chosen in Python)."""
  p = _problem(23, *CASES['random_maps'])
  main, joint, _, tables = _ours(p, epoch)
  (loss_main, loss_joint), got_tables = losses.pclhd_stage2_losses(
      p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'], p['f_joint_visible'],
      p['f_joint_infrared'], p['y_joint_visible'], p['y_joint_infrared'], tuple(p['tables']),
      p['visible_to_infrared'], p['infrared_to_visible'], epoch,
      teacher=(p['f_teacher_visible'], p['f_teacher_infrared'], tuple(p['instances'])))
  _close(loss_main, main['total'], 'loss_main')
  _close(loss_joint, joint['total'], 'loss_joint')
  for got, want in zip(got_tables, tables):
    _close(got, want, 'tables')
  # Without a teacher D is 0 and nothing else changes (it is a constant).
  (no_teacher, _), _ = losses.pclhd_stage2_losses(
      p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'], p['f_joint_visible'],
      p['f_joint_infrared'], p['y_joint_visible'], p['y_joint_infrared'], tuple(p['tables']),
      p['visible_to_infrared'], p['infrared_to_visible'], epoch)
  _close(no_teacher, main['total'] - main['dynamic'], 'without D')
  assert float(main['dynamic']) > 0.1
  # The parity matters: the other one gives other tables.
  other = _ours(p, epoch + 1)[3]
  assert np.abs(np.asarray(other[0]) - np.asarray(tables[0])).max() > 1e-3


def _pad(table, capacity, halves=2):
  """A table of `halves` blocks of K rows as blocks of `capacity` rows (zeros after K)."""
  rows = len(table) // halves
  out = np.zeros((halves * capacity, table.shape[1]), np.float32)
  for h in range(halves):
    out[h * capacity:h * capacity + rows] = table[h * rows:(h + 1) * rows]
  return out


def test_padded_tables_and_per_image_labels():
  p = _problem(25, *CASES['random_maps'])
  epoch = 4
  main, joint, grads, tables = _ours(p, epoch)
  caps = (16, 8, 16)
  teacher = (p['f_teacher_visible'], p['f_teacher_infrared'],
             tuple(_pad(t, c, INSTANCES) for t, c in zip(p['instances'], caps)))
  padded = [_pad(t, c) for t, c in zip(p['tables'], caps)]
  maps = [np.concatenate([m, np.full(c - len(m), -1, np.int32)])
          for m, c in zip((p['visible_to_infrared'], p['infrared_to_visible']), caps)]
  half = len(p['y_visible']) // 2  # one label per visible image: repeated for both views

  def main_fn(fv, fi):
    terms, new = losses.main_terms(fv, fi, p['y_visible'][:half], p['y_infrared'], padded[:2],
                                   *maps, epoch, teacher=teacher, num_visible=10,
                                   num_infrared=5)
    return terms['total'], (terms, new)

  (_, (got_main, (visible, infrared))), got_grads = jax.jit(jax.value_and_grad(
      main_fn, argnums=(0, 1), has_aux=True))(p['f_visible'], p['f_infrared'])
  for key in main:
    _close(got_main[key], main[key], key)
  for got, want in zip(got_grads, grads[:2]):
    _close(got, want, 'grad', atol=1e-7)
  for got, want, cap in ((visible, tables[0], 16), (infrared, tables[1], 8)):
    got = np.asarray(got)
    k = len(want) // 2
    _close(got[:k], want[:k], 'centroids')
    _close(got[cap:cap + k], want[k:], 'hard rows')
    np.testing.assert_array_equal(got[k:cap], 0)
    np.testing.assert_array_equal(got[cap + k:], 0)
  got_joint, got_table = losses.joint_terms(
      p['f_joint_visible'], p['f_joint_infrared'], p['y_joint_visible'][:half],
      p['y_joint_infrared'], padded[2], num_joint=7)
  _close(got_joint['total'], joint['total'], 'joint')
  _close(np.asarray(got_table)[16:23], tables[2][7:], 'joint hard rows')


def _stage1_reference(p, mode):
  tables = p['tables'][:2] if mode == 'CMhybrid' else [t[:len(t) // 2] for t in p['tables'][:2]]
  memory_rgb = pclhd_reference.memory(tables[0], mode)
  memory_ir = pclhd_reference.memory(tables[1], mode)
  loss, grad_rgb, grad_ir = pclhd_reference.reference_stage1_step(
      p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'], memory_rgb, memory_ir)
  return loss, grad_rgb, grad_ir, memory_rgb.features.numpy(), memory_ir.features.numpy(), tables


@pytest.mark.parametrize('mode', ['hybrid', 'centroid'])
def test_stage1_equals_the_reference(mode):
  p = _problem(27, *CASES['random_maps'])
  loss, grad_rgb, grad_ir, ref_visible, ref_infrared, tables = _stage1_reference(
      p, 'CMhybrid' if mode == 'hybrid' else 'CM')

  def fn(fv, fi):
    terms, new = losses.stage1_terms(fv, fi, p['y_visible'], p['y_infrared'], tables,
                                     mode=mode)
    return terms['total'], new

  (got_loss, (visible, infrared)), grads = jax.jit(jax.value_and_grad(
      fn, argnums=(0, 1), has_aux=True))(p['f_visible'], p['f_infrared'])
  _close(got_loss, loss, 'loss')
  for got, want in zip(grads, (grad_rgb, grad_ir)):
    _close(got, want, 'grad', rtol=1e-4, atol=1e-5 * np.abs(want).max())
  _close(visible, ref_visible, 'M_v')
  _close(infrared, ref_infrared, 'M_i')


def test_bad_arguments():
  p = _problem(29, *CASES['random_maps'])
  with pytest.raises(ValueError, match='y_visible'):
    losses.main_terms(p['f_visible'], p['f_infrared'], p['y_visible'][:3], p['y_infrared'],
                      p['tables'][:2], p['visible_to_infrared'], p['infrared_to_visible'], 3)
  with pytest.raises(ValueError, match='mode'):
    losses.stage1_terms(p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'],
                        p['tables'][:2], mode='hard')
  with pytest.raises(ValueError, match='instance table'):
    losses.main_terms(p['f_visible'], p['f_infrared'], p['y_visible'], p['y_infrared'],
                      p['tables'][:2], p['visible_to_infrared'], p['infrared_to_visible'], 3,
                      teacher=(p['f_teacher_visible'], p['f_teacher_infrared'],
                               (p['instances'][0][:-1], p['instances'][1])))
