"""Optimisers, parameter groups and learning-rate schedules from `config.optim`.

The trainable tree is {'network': the two-stream network's params, 'method': the method's own
trainable params}; a parameter's path is its keys joined by '/', e.g.
'network/layer1/block0/conv1/kernel' or 'method/head/kernel'.

  name          'adam' (PyTorch Adam: weight decay added to the gradient, the authors'),
                'adamw' (PyTorch AdamW: decoupled decay, scaled by the learning rate),
                'sgd' (PyTorch SGD: weight decay added to the gradient, then momentum,
                optionally Nesterov; dampening 0)
  schedule      'step' (x lr_decay at each epoch of lr_boundaries, PyTorch MultiStepLR),
                'cosine' (from the rate to final_lr_factor x it over cosine_epochs),
                'constant'; each after a linear warm-up over warmup_epochs from
                warmup_factor x the rate (none at 0)
  per_step      the schedule reads the epoch and the fraction of it done (smooth warm-up and
                cosine), not the epoch alone (the authors' per-epoch schedulers)
  groups        {group: ConfigDict(pattern=<regex searched in the path>, and any of
                learning_rate, weight_decay, schedule, lr_boundaries, lr_decay, warmup_epochs,
                warmup_factor, cosine_epochs, final_lr_factor)}: the first group whose
                pattern matches takes the parameter; the others follow the top-level settings

The learning rate is applied outside the optax transformation (it changes by epoch): one
optimiser state is kept across epochs whatever the schedule, as PyTorch's param_groups do, and a
method may take several updates per step on the same state (the count advances per update, as
calling PyTorch's `optimizer.step()` twice does).
"""

import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

DEFAULT_GROUP = 'default'
NAMES = ('adam', 'adamw', 'sgd')
SCHEDULES = ('step', 'cosine', 'constant')
# Settings a group may override; the rest (the optimiser's kind, betas, eps, momentum) are the
# optimiser's and shared by every group.
GROUP_FIELDS = ('learning_rate', 'weight_decay', 'schedule', 'lr_boundaries', 'lr_decay',
                'warmup_epochs', 'warmup_factor', 'cosine_epochs', 'final_lr_factor')


def default_config() -> ml_collections.ConfigDict:
  """`config.optim`'s fields with the authors' Adam (MBCCM's and PGM's settings)."""
  optim = ml_collections.ConfigDict()
  optim.name = 'adam'
  optim.learning_rate = 3.5e-4
  optim.weight_decay = 5e-4  # adam / sgd: L2 added to the gradient; adamw: decoupled
  optim.b1 = 0.9  # adam / adamw
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.momentum = 0.9  # sgd
  optim.nesterov = False  # sgd
  optim.schedule = 'step'
  optim.lr_boundaries = (20, 50, 70)  # step: epochs where the rate is multiplied by lr_decay
  optim.lr_decay = 0.1
  optim.cosine_epochs = 0  # cosine: epochs from the peak to the end (must be set)
  optim.final_lr_factor = 0.0  # cosine: the rate it ends at, as a fraction of the peak
  optim.warmup_epochs = 0.0  # linear warm-up before the schedule (0: none)
  optim.warmup_factor = 0.1  # the warm-up starts at this fraction of the rate
  optim.per_step = False
  optim.groups = ml_collections.ConfigDict()
  return optim


def validate(optim: ml_collections.ConfigDict) -> None:
  """ConfigError (raised as ValueError by config.validate's caller) for settings that cannot
  work; each message names the field."""
  from vireid_jax.config import ConfigError  # pylint: disable=import-outside-toplevel
  if optim.name not in NAMES:
    raise ConfigError(f'config.optim.name = {optim.name!r}; expected one of {NAMES}')
  for where, settings in [('config.optim', optim)] + [
      (f'config.optim.groups.{name}', _group_settings(optim, name)) for name in optim.groups]:
    if settings['schedule'] not in SCHEDULES:
      raise ConfigError(f'{where}.schedule = {settings["schedule"]!r}; expected one of '
                        f'{SCHEDULES}')
    if settings['schedule'] == 'cosine' and not settings['cosine_epochs'] > 0:
      raise ConfigError(f'{where}.cosine_epochs must be > 0 with schedule \'cosine\' (the '
                        f'epochs from the peak rate to final_lr_factor x it)')
    if settings['warmup_epochs'] < 0:
      raise ConfigError(f'{where}.warmup_epochs must be >= 0')
  for name in optim.groups:
    group = optim.groups[name]
    if 'pattern' not in group or not isinstance(group.pattern, str):
      raise ConfigError(f'config.optim.groups.{name} needs a pattern: a regular expression '
                        f'searched in parameter paths such as \'network/layer4/...\' or '
                        f'\'method/head/...\'')
    try:
      re.compile(group.pattern)
    except re.error as error:
      raise ConfigError(f'config.optim.groups.{name}.pattern = {group.pattern!r}: {error}')
    unknown = sorted(set(group.keys()) - set(GROUP_FIELDS) - {'pattern'})
    if unknown:
      raise ConfigError(f'config.optim.groups.{name} sets {unknown}; a group may set pattern '
                        f'and {GROUP_FIELDS}')


def _group_settings(optim: ml_collections.ConfigDict, group: str) -> Dict[str, Any]:
  settings = {field: optim[field] for field in GROUP_FIELDS}
  if group != DEFAULT_GROUP:
    settings.update({k: v for k, v in optim.groups[group].items() if k != 'pattern'})
  return settings


def group_names(optim: ml_collections.ConfigDict) -> Tuple[str, ...]:
  return (DEFAULT_GROUP,) + tuple(optim.groups.keys())


def path_name(path) -> str:
  """'network/layer1/block0/conv1/kernel' from a jax key path."""
  parts = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def param_labels(optim: ml_collections.ConfigDict, trainable) -> Any:
  """The group of every parameter of `trainable` (a tree of group names, same structure)."""
  patterns = [(name, re.compile(optim.groups[name].pattern)) for name in optim.groups]

  def label(path, _):
    name = path_name(path)
    for group, pattern in patterns:
      if pattern.search(name):
        return group
    return DEFAULT_GROUP
  return jax.tree_util.tree_map_with_path(label, trainable)


def _transform(optim: ml_collections.ConfigDict, weight_decay: float
               ) -> optax.GradientTransformation:
  """The update direction of one group, without the learning rate (applied per step)."""
  if optim.name == 'adam':
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
  if optim.name == 'adamw':
    return optax.chain(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
                       optax.add_decayed_weights(weight_decay))
  # torch.optim.SGD: d = g + wd p; buf = momentum buf + d (buf = d at the first step);
  # d = d + momentum buf with Nesterov, else buf.
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.trace(decay=optim.momentum, nesterov=bool(optim.nesterov)))


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimiser of config.optim, learning rate excluded (see `apply_learning_rates`)."""
  if not optim.get('groups'):
    return _transform(optim, optim.weight_decay)
  transforms = {name: _transform(optim, _group_settings(optim, name)['weight_decay'])
                for name in group_names(optim)}
  return optax.multi_transform(transforms, lambda params: param_labels(optim, params))


def _schedule_factor(settings: Mapping[str, Any], t):
  """The multiplier of the peak rate at epoch position `t` (a Python number or a traced
  float32): warm-up, then the schedule."""
  kind = settings['schedule']
  if kind == 'step':
    passed = sum(t >= boundary for boundary in settings['lr_boundaries'])
    factor = settings['lr_decay']**passed
  elif kind == 'cosine':
    total = float(settings['cosine_epochs'])
    progress = jnp.clip(t / total, 0.0, 1.0) if isinstance(t, jax.Array) else min(
        max(t / total, 0.0), 1.0)
    cos = jnp.cos if isinstance(t, jax.Array) else math.cos
    final = settings['final_lr_factor']
    factor = final + (1.0 - final) * 0.5 * (1.0 + cos(math.pi * progress))
  else:
    factor = 1.0
  warmup = settings['warmup_epochs']
  if warmup > 0:
    start = settings['warmup_factor']
    ramp = start + (1.0 - start) * t / warmup
    if isinstance(t, jax.Array):
      factor = jnp.where(t < warmup, factor * ramp, factor)
    elif t < warmup:
      factor = factor * ramp
  return factor


def learning_rate(optim: ml_collections.ConfigDict, epoch, group: str = DEFAULT_GROUP):
  """The learning rate of `group` at `epoch` (a Python number: the host's report; or a traced
  value inside the step: an int32 epoch, or a float32 epoch position with `per_step`)."""
  settings = _group_settings(optim, group)
  return settings['learning_rate'] * _schedule_factor(settings, epoch)


def learning_rates(optim: ml_collections.ConfigDict, epoch) -> Dict[str, Any]:
  """{group: its learning rate at `epoch`} for every group."""
  return {name: learning_rate(optim, epoch, name) for name in group_names(optim)}


def epoch_position(optim: ml_collections.ConfigDict, lr_epoch, step_in_epoch,
                   steps_in_epoch: int):
  """What the schedule reads inside the step: the epoch, or with `per_step` the epoch plus the
  fraction of it done."""
  if not optim.get('per_step'):
    return lr_epoch
  return lr_epoch.astype(jnp.float32) + step_in_epoch.astype(jnp.float32) / steps_in_epoch


def apply_learning_rates(optim: ml_collections.ConfigDict, updates, rates: Mapping[str, Any],
                         labels: Optional[Any] = None):
  """updates x -rate of each parameter's group (`labels`: `param_labels`, needed with
  groups)."""
  if not optim.get('groups'):
    rate = rates[DEFAULT_GROUP]
    return jax.tree.map(lambda u: -rate * u, updates)
  return jax.tree.map(lambda u, group: -rates[group] * u, updates, labels)
