"""Optimisers, parameter groups and schedules from config.optim, against PyTorch's own."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vireid_jax import config as config_lib
from vireid_jax import optim

torch = pytest.importorskip('torch')


def _optim(**overrides) -> ml_collections.ConfigDict:
  config = optim.default_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def _params(rng):
  return {'network': {'conv': rng.normal(size=(3, 4)).astype(np.float32),
                      'neck': rng.normal(size=(4,)).astype(np.float32)},
          'method': {'head': {'kernel': rng.normal(size=(4, 2)).astype(np.float32)}}}


def _grads(rng, params, steps):
  return [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
          for _ in range(steps)]


def _ours(optim_cfg, params, grads, epochs):
  """Our updates, the learning rate applied outside as the train step does."""
  tx = optim.make_optimizer(optim_cfg)
  state = tx.init(params)
  labels = optim.param_labels(optim_cfg, params) if optim_cfg.groups else None
  for grad, epoch in zip(grads, epochs):
    updates, state = tx.update(grad, state, params)
    updates = optim.apply_learning_rates(optim_cfg, updates,
                                         optim.learning_rates(optim_cfg, epoch), labels)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return jax.tree.map(np.asarray, params)


def _torch(make, params, grads, group_of=None, group_spec=None, schedule=None):
  """PyTorch's updates: `make(param_groups)` builds the optimiser; with `group_of(path)` ->
  group name, each group gets `group_spec[name]` (lr, weight_decay)."""
  leaves = {path: torch.nn.Parameter(torch.tensor(np.array(value)))
            for path, value in _flat(params).items()}
  if group_of is None:
    optimizer = make([{'params': list(leaves.values())}])
  else:
    groups = {}
    for path, leaf in leaves.items():
      groups.setdefault(group_of(path), []).append(leaf)
    optimizer = make([dict(params=groups[name], **group_spec[name]) for name in sorted(groups)])
  for step, grad in enumerate(grads):
    for path, g in _flat(grad).items():
      leaves[path].grad = torch.tensor(np.array(g))
    if schedule is not None:
      schedule(optimizer, step)
    optimizer.step()
  return {path: leaf.detach().numpy() for path, leaf in leaves.items()}


def _flat(tree):
  return {optim.path_name(path): leaf for path, leaf in
          jax.tree_util.tree_leaves_with_path(tree)}


def _assert_close(ours, theirs):
  flat = _flat(ours)
  assert set(flat) == set(theirs)
  for path in flat:
    np.testing.assert_allclose(flat[path], theirs[path], rtol=2e-5, atol=2e-6, err_msg=path)


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_is_torch_sgd_with_momentum_and_coupled_weight_decay(nesterov):
  rng = np.random.default_rng(0)
  params = _params(rng)
  grads = _grads(rng, params, 4)
  cfg = _optim(name='sgd', learning_rate=0.1, momentum=0.9, nesterov=nesterov,
               weight_decay=0.01, lr_boundaries=(2,), lr_decay=0.5)
  ours = _ours(cfg, params, grads, epochs=[0, 1, 2, 3])

  def schedule(optimizer, step):  # MultiStepLR([2], 0.5) stepped once per 'epoch'
    for group in optimizer.param_groups:
      group['lr'] = 0.1 * (0.5 if step >= 2 else 1.0)
  theirs = _torch(lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9,
                                                 nesterov=nesterov, weight_decay=0.01),
                  params, grads, schedule=schedule)
  _assert_close(ours, theirs)


@pytest.mark.parametrize('name', ['adam', 'adamw'])
def test_adam_and_adamw_are_torchs(name):
  rng = np.random.default_rng(1)
  params = _params(rng)
  grads = _grads(rng, params, 3)
  cfg = _optim(name=name, learning_rate=1e-2, weight_decay=0.05)
  ours = _ours(cfg, params, grads, epochs=[0, 0, 0])
  kind = torch.optim.Adam if name == 'adam' else torch.optim.AdamW
  theirs = _torch(lambda groups: kind(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=0.05), params, grads)
  _assert_close(ours, theirs)


def test_parameter_groups_have_their_own_rate_and_weight_decay():
  rng = np.random.default_rng(2)
  params = _params(rng)
  grads = _grads(rng, params, 3)
  cfg = _optim(name='sgd', learning_rate=0.1, momentum=0.5, weight_decay=0.01)
  cfg.groups.head = ml_collections.ConfigDict(dict(pattern='^method/', learning_rate=0.3,
                                                   weight_decay=0.0))
  cfg.groups.neck = ml_collections.ConfigDict(dict(pattern='neck', learning_rate=0.02))
  labels = optim.param_labels(cfg, params)
  assert _flat(labels) == {'network/conv': 'default', 'network/neck': 'neck',
                           'method/head/kernel': 'head'}
  ours = _ours(cfg, params, grads, epochs=[0, 0, 0])
  spec = {'default': dict(lr=0.1, weight_decay=0.01), 'head': dict(lr=0.3, weight_decay=0.0),
          'neck': dict(lr=0.02, weight_decay=0.01)}
  group_of = _flat(labels).__getitem__
  theirs = _torch(lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.5), params, grads,
                  group_of=group_of, group_spec=spec)
  _assert_close(ours, theirs)


def test_schedules_warm_up_then_step_or_cosine():
  step = _optim(learning_rate=1.0, lr_boundaries=(3, 5), lr_decay=0.1, warmup_epochs=2.0,
                warmup_factor=0.2)
  expected = [0.2, 0.6, 1.0, 0.1, 0.1, 0.01]
  assert [optim.learning_rate(step, e) for e in range(6)] == pytest.approx(expected)
  cosine = _optim(learning_rate=2.0, schedule='cosine', cosine_epochs=10, final_lr_factor=0.1)
  for epoch in (0, 3, 10, 12):
    want = 2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(epoch, 10) / 10)))
    assert optim.learning_rate(cosine, epoch) == pytest.approx(want)
    # Traced inside the step: the same values.
    traced = jax.jit(lambda e: optim.learning_rate(cosine, e))(jnp.float32(epoch))
    assert float(traced) == pytest.approx(want, rel=1e-6)
  # torch's CosineAnnealingLR (eta_min = 0.2) gives the same curve epoch by epoch.
  parameter = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([parameter], lr=2.0)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.2)
  for epoch in range(10):
    assert opt.param_groups[0]['lr'] == pytest.approx(optim.learning_rate(cosine, epoch))
    opt.step()
    scheduler.step()
  per_step = _optim(per_step=True, warmup_epochs=1.0, warmup_factor=0.0, learning_rate=1.0)
  position = optim.epoch_position(per_step, jnp.int32(0), jnp.int32(5), 10)
  assert float(optim.learning_rate(per_step, position)) == pytest.approx(0.5)


def test_bad_optimiser_settings_are_one_line_config_errors():
  config = config_lib.base_config()
  config.optim.name = 'lamb'
  with pytest.raises(config_lib.ConfigError, match=r"config.optim.name = 'lamb'"):
    optim.validate(config.optim)
  config = config_lib.base_config()
  config.optim.schedule = 'cosine'
  with pytest.raises(config_lib.ConfigError, match='cosine_epochs must be > 0'):
    optim.validate(config.optim)
  config = config_lib.base_config()
  config.optim.groups.head = ml_collections.ConfigDict(dict(learning_rate=1.0))
  with pytest.raises(config_lib.ConfigError, match='groups.head needs a pattern'):
    optim.validate(config.optim)
  config.optim.groups.head = ml_collections.ConfigDict(dict(pattern='(', learning_rate=1.0))
  with pytest.raises(config_lib.ConfigError, match=r"pattern = '\('"):
    optim.validate(config.optim)
  config.optim.groups.head = ml_collections.ConfigDict(dict(pattern='x', momentum=0.5))
  with pytest.raises(config_lib.ConfigError, match=r"sets \['momentum'\]"):
    optim.validate(config.optim)
