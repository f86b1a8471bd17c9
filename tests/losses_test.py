"""MBCCM losses against a NumPy composition of the same terms, and against a PyTorch re-creation
of the reference's autograd graph (memories updated in place inside the backward pass)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax import memory as core_memory
from vireid_jax.methods.mbccm import losses
from vireid_jax.methods.mbccm import memories as memory

TEMPERATURE = 0.05
MOMENTUM = 0.1
ALPHA, BETA = 0.9, 0.5
B, C, K_V, K_I = 6, 8, 4, 3


# --- NumPy composition ----------------------------------------------------------------------

def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(logits):
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _ce(logits, labels):
  log_probs = np.log(_softmax(logits))
  return -np.mean(log_probs[np.arange(len(labels)), labels])


def _skl(p_logits, q_logits, clamp=1e-12):
  p = np.maximum(_softmax(p_logits), clamp)
  q = np.maximum(_softmax(q_logits), clamp)
  kl_qp = (q * (np.log(q) - np.log(p))).sum(axis=1)
  kl_pq = (p * (np.log(p) - np.log(q))).sum(axis=1)
  return np.mean((kl_qp + kl_pq) / 2)


def _numpy_losses(f_a, f_b, f_r, y_v, y_i, tables, unnormalized_cross):
  m_v, m_i, m_vi, m_iv = (np.asarray(t, np.float64) for t in tables)
  score = lambda f, m: _normalize(f) @ m.T / TEMPERATURE
  cross = (lambda f, m: f @ m.T / TEMPERATURE) if unnormalized_cross else score
  ms = _ce(score(f_a, m_v), y_v) + _ce(score(f_b, m_v), y_v) + _ce(score(f_r, m_i), y_i)
  ma = sum(_ce(score(f, m_vi), y_v) + _ce(score(f, m_iv), y_i) for f in (f_a, f_b, f_r))
  cc = (_skl(score(f_a, m_v), score(f_a, m_vi)) + _skl(score(f_b, m_v), score(f_b, m_vi))
        + _skl(score(f_a, m_iv), cross(f_a, m_i)) + _skl(score(f_b, m_iv), cross(f_b, m_i))
        + _skl(score(f_r, m_vi), cross(f_r, m_v)) + _skl(score(f_r, m_i), score(f_r, m_iv)))
  return ms, ma, cc


def _problem(seed=0, feature_scale=2.0):
  rng = np.random.default_rng(seed)
  f_a, f_b, f_r = (rng.normal(size=(B, C)).astype(np.float32) * feature_scale
                   for _ in range(3))
  y_v = np.array([0, 0, 3, 3, 1, 1], np.int32)
  y_i = np.array([2, 2, 0, 0, 2, 1], np.int32)
  tables = [_normalize(rng.normal(size=(k, C))).astype(np.float32)
            for k in (K_V, K_I, K_V, K_I)]
  return f_a, f_b, f_r, y_v, y_i, tables


def _memories(tables):
  m_v, m_i, m_vi, m_iv = (jnp.asarray(t) for t in tables)
  return memory.Memories(m_v, m_i, m_vi, m_iv, jnp.int32(len(m_v)), jnp.int32(len(m_i)))


_stage1 = jax.jit(losses.stage1_loss,
                  static_argnames=('temperature', 'reference_memory_gradients', 'momentum'))
_stage2 = jax.jit(losses.stage2_loss,
                  static_argnames=('temperature', 'alpha', 'beta', 'unnormalized_cross_logits',
                                   'kl_clamp', 'reference_memory_gradients', 'momentum'))


def test_symmetric_kl_matches_numpy_including_clamped_probabilities():
  rng = np.random.default_rng(1)
  p, q = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
  p[0, 0] = 80.0  # the other classes of row 0 fall below 1e-12 and are clamped
  got = losses.symmetric_kl(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32))
  np.testing.assert_allclose(got, _skl(p, q), rtol=1e-5)
  np.testing.assert_allclose(got, losses.symmetric_kl(jnp.asarray(q, jnp.float32),
                                                      jnp.asarray(p, jnp.float32)), rtol=1e-6)
  assert float(losses.symmetric_kl(jnp.asarray(p), jnp.asarray(p))) == 0.0


def test_symmetric_kl_gradient_flows_through_both_sides():
  rng = np.random.default_rng(2)
  p, q = (jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for _ in range(2))
  grad_p, grad_q = jax.grad(losses.symmetric_kl, argnums=(0, 1))(p, q)
  assert np.abs(grad_p).max() > 1e-3 and np.abs(grad_q).max() > 1e-3


def test_stage1_loss_matches_numpy():
  f_a, f_b, f_r, y_v, y_i, tables = _problem()
  loss, metrics = _stage1(f_a, f_b, f_r, y_v, y_i, _memories(tables), TEMPERATURE)
  ms, _, _ = _numpy_losses(f_a, f_b, f_r, y_v, y_i, tables, True)
  np.testing.assert_allclose(loss, ms, rtol=1e-5)
  assert set(metrics) == {'ms', 'ma', 'cc', 'total'}
  np.testing.assert_allclose(metrics['ms'], ms, rtol=1e-5)
  assert float(metrics['ma']) == 0.0 and float(metrics['cc']) == 0.0


@pytest.mark.parametrize('unnormalized_cross', [True, False])
def test_stage2_loss_matches_numpy(unnormalized_cross):
  f_a, f_b, f_r, y_v, y_i, tables = _problem(seed=3)
  loss, metrics = _stage2(f_a, f_b, f_r, y_v, y_i, _memories(tables), TEMPERATURE, ALPHA, BETA,
                          unnormalized_cross_logits=unnormalized_cross)
  ms, ma, cc = _numpy_losses(f_a, f_b, f_r, y_v, y_i, tables, unnormalized_cross)
  for name, want in (('ms', ms), ('ma', ma), ('cc', cc)):
    np.testing.assert_allclose(metrics[name], want, rtol=1e-4, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(loss, ms + ALPHA * ma + BETA * cc, rtol=1e-4)
  np.testing.assert_allclose(metrics['total'], loss, rtol=1e-7)


def test_stage2_cross_logit_switch_changes_the_loss():
  f_a, f_b, f_r, y_v, y_i, tables = _problem(seed=3)
  raw, _ = _stage2(f_a, f_b, f_r, y_v, y_i, _memories(tables), TEMPERATURE, ALPHA, BETA,
                   unnormalized_cross_logits=True)
  normed, _ = _stage2(f_a, f_b, f_r, y_v, y_i, _memories(tables), TEMPERATURE, ALPHA, BETA,
                      unnormalized_cross_logits=False)
  assert abs(float(raw) - float(normed)) > 1e-2


def test_padded_memories_give_the_same_loss_and_gradient():
  f_a, f_b, f_r, y_v, y_i, tables = _problem(seed=4)
  pad = lambda t: np.concatenate([t, np.zeros((5, C), np.float32)])
  padded = memory.Memories(*(jnp.asarray(pad(t)) for t in tables), jnp.int32(K_V),
                           jnp.int32(K_I))
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda feats, mems: losses.stage2_loss(*feats, y_v, y_i, mems, TEMPERATURE, ALPHA,
                                             BETA)[0]))
  feats = tuple(jnp.asarray(f) for f in (f_a, f_b, f_r))
  loss, grads = value_and_grad(feats, _memories(tables))
  loss_padded, grads_padded = value_and_grad(feats, padded)
  np.testing.assert_allclose(loss_padded, loss, rtol=1e-6)
  for g_padded, g in zip(grads_padded, grads):
    np.testing.assert_allclose(g_padded, g, rtol=1e-5, atol=1e-7)


# --- PyTorch re-creation of the reference step ------------------------------------------------

def _torch_reference_step(f_a, f_b, f_r, y_v, y_i, tables, stage, live_updates):
  """Loss, feature gradients and final memories of one reference step.

  Memories are updated inside the backward pass of each call that scored them, reading and
  writing the shared table in place (live_updates=True, as the reference). With
  live_updates=False every call's backward sees the step's table and the updates run afterwards
  in the same order: the textbook gradient.
  """
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  pending = []

  class ScoreAndUpdate(torch.autograd.Function):

    @staticmethod
    def forward(ctx, normalized, labels, table):
      ctx.table = table  # the live buffer, deliberately not saved (no version check)
      ctx.snapshot = table.clone()  # the step's table, for live_updates=False
      ctx.save_for_backward(normalized, labels)
      return normalized.mm(table.t())

    @staticmethod
    def backward(ctx, grad):
      normalized, labels = ctx.saved_tensors
      grad_features = grad.mm(ctx.table) if live_updates else grad.mm(ctx.snapshot)
      pending.append((ctx.table, normalized, labels))
      if live_updates:
        _apply(*pending.pop())
      return grad_features, None, None

  @torch.no_grad()
  def _apply(table, normalized, labels):
    for x, y in zip(normalized, labels):
      table[y] = MOMENTUM * table[y] + (1 - MOMENTUM) * x
      table[y] /= table[y].norm()

  def scored(features, table, labels):
    return ScoreAndUpdate.apply(F.normalize(features, dim=1), labels, table) / TEMPERATURE

  feats = [torch.tensor(f, requires_grad=True) for f in (f_a, f_b, f_r)]
  t_a, t_b, t_r = feats
  lv, li = torch.tensor(y_v, dtype=torch.long), torch.tensor(y_i, dtype=torch.long)
  m_v, m_i, m_vi, m_iv = (torch.tensor(t) for t in tables)
  ce, skl = F.cross_entropy, _torch_skl
  o1, o2, o3 = scored(t_a, m_v, lv), scored(t_b, m_v, lv), scored(t_r, m_i, li)
  c1, c2 = t_a.mm(m_i.t()) / TEMPERATURE, t_b.mm(m_i.t()) / TEMPERATURE
  c3 = t_r.mm(m_v.t()) / TEMPERATURE
  loss_ms = ce(o1, lv) + ce(o2, lv) + ce(o3, li)
  if stage == 1:
    loss = loss_ms
  else:
    a1, a2, a3 = scored(t_a, m_vi, lv), scored(t_b, m_vi, lv), scored(t_r, m_vi, lv)
    b1, b2, b3 = scored(t_a, m_iv, li), scored(t_b, m_iv, li), scored(t_r, m_iv, li)
    loss_ma = (ce(a1, lv) + ce(a2, lv) + ce(a3, lv)) + (ce(b1, li) + ce(b2, li) + ce(b3, li))
    loss_cc = (skl(o1, a1) + skl(o2, a2) + skl(b1, c1) + skl(b2, c2) + skl(a3, c3)
               + skl(o3, b3))
    loss = loss_ms + ALPHA * loss_ma + BETA * loss_cc
  loss.backward()
  for item in pending:  # deferred updates, in the order the backward nodes ran
    _apply(*item)
  return (loss.item(), [f.grad.numpy() for f in feats],
          [t.numpy() for t in (m_v, m_i, m_vi, m_iv)])


def _torch_skl(pred, label):
  p = pred.softmax(dim=1).clamp(min=1e-12)
  t = label.softmax(dim=1).clamp(min=1e-12)
  return ((t * (t.log() - p.log())).sum(1).mean() + (p * (p.log() - t.log())).sum(1).mean()) / 2


@pytest.mark.parametrize('stage', [1, 2])
@pytest.mark.parametrize('reference_gradients', [True, False])
def test_step_matches_the_reference_graph(stage, reference_gradients):
  f_a, f_b, f_r, y_v, y_i, tables = _problem(seed=5)
  want_loss, want_grads, want_tables = _torch_reference_step(
      f_a, f_b, f_r, y_v, y_i, tables, stage, live_updates=reference_gradients)

  def loss_fn(feats):
    args = (*feats, y_v, y_i, _memories(tables), TEMPERATURE)
    kwargs = dict(reference_memory_gradients=reference_gradients, momentum=MOMENTUM)
    if stage == 1:
      return losses.stage1_loss(*args, **kwargs)[0]
    return losses.stage2_loss(*args, ALPHA, BETA, **kwargs)[0]

  feats = tuple(jnp.asarray(f) for f in (f_a, f_b, f_r))
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(feats)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for name, got, want in zip(('f_a', 'f_b', 'f_r'), grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
  updated = jax.jit(memory.update_memories, static_argnames=('stage', 'momentum'))(
      _memories(tables), *feats, jnp.asarray(y_v), jnp.asarray(y_i), stage=stage,
      momentum=MOMENTUM)
  for name, want in zip(('visible', 'infrared', 'agnostic_visible', 'agnostic_infrared'),
                        want_tables):
    np.testing.assert_allclose(getattr(updated, name), want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_reference_gradients_differ_from_textbook_gradients():
  f_a, f_b, f_r, y_v, y_i, tables = _problem(seed=6)
  grad = lambda ref: jax.jit(jax.grad(lambda fa: losses.stage2_loss(
      fa, f_b, f_r, y_v, y_i, _memories(tables), TEMPERATURE, ALPHA, BETA,
      reference_memory_gradients=ref, momentum=MOMENTUM)[0]))(jnp.asarray(f_a))
  assert np.abs(grad(True) - grad(False)).max() > 1e-3


def test_reference_gradients_need_the_momentum():
  f_a, f_b, f_r, y_v, y_i, tables = _problem()
  with pytest.raises(ValueError, match='momentum'):
    losses.stage1_loss(f_a, f_b, f_r, y_v, y_i, _memories(tables), TEMPERATURE,
                       reference_memory_gradients=True)



def test_reference_gradients_through_the_accelerator_memory_update(monkeypatch):
  """On GPU/TPU the partial tables come from update_memory_by_rank (a while loop) under grad."""
  f_a, f_b, f_r, y_v, y_i, tables = _problem(seed=7)
  grads = lambda: jax.jit(jax.grad(lambda feats: losses.stage2_loss(
      *feats, y_v, y_i, _memories(tables), TEMPERATURE, ALPHA, BETA,
      reference_memory_gradients=True, momentum=MOMENTUM)[0]))(
          tuple(jnp.asarray(f) for f in (f_a, f_b, f_r)))
  on_cpu = grads()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  for got, want in zip(grads(), on_cpu):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_reference_gradients_with_bounded_by_rank_rounds_match_the_reference_graph():
  """The accelerator path as the train step runs it: by_rank updates with the step's bound
  (3: y_i holds label 2 three times), every partial table and every update of stage 2."""
  f_a, f_b, f_r, y_v, y_i, tables = _problem(seed=8)
  want_loss, want_grads, want_tables = _torch_reference_step(
      f_a, f_b, f_r, y_v, y_i, tables, 2, live_updates=True)
  repeats = core_memory.label_repeats(y_v, y_i)
  assert repeats == 3
  settings = dict(momentum=MOMENTUM, memory_update='by_rank', label_repeats=repeats)

  def loss_fn(feats):
    return losses.stage2_loss(*feats, y_v, y_i, _memories(tables), TEMPERATURE, ALPHA, BETA,
                              reference_memory_gradients=True, **settings)[0]

  feats = tuple(jnp.asarray(f) for f in (f_a, f_b, f_r))
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(feats)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for name, got, want in zip(('f_a', 'f_b', 'f_r'), grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
  updated = jax.jit(functools.partial(memory.update_memories, stage=2, momentum=MOMENTUM,
                                      method='by_rank', label_repeats=repeats))(
      _memories(tables), *feats, jnp.asarray(y_v), jnp.asarray(y_i))
  for name, want in zip(('visible', 'infrared', 'agnostic_visible', 'agnostic_infrared'),
                        want_tables):
    np.testing.assert_allclose(getattr(updated, name), want, rtol=1e-5, atol=1e-6, err_msg=name)
