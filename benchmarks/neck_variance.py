r"""The BatchNorm neck's training variance, one pass against two, and what each costs.

  python benchmarks/neck_variance.py --config configs/demo.py [--workdir runs/demo] [--batches 8]

Takes the network a run starts from (the demo's: the ImageNet stand-in) or, with --workdir, a
run's latest checkpoint, and feeds it training batches of the config's step size (2B visible
inputs, B infrared, B = clusters x instances; normalised images, no augmentation) in train
mode. On the neck's input (the GeM-pooled features, identical for every form) it computes the
neck's batch variance and normalised output four ways: float64 (the exact value), the one-pass
float32 form E[x^2] - E[x]^2 (`BatchNorm(two_pass=False)`, Flax's fast variance), the two-pass
float32 form mean((x - mean)^2) (`two_pass=True`), and PyTorch's float32 BatchNorm1d. Prints the
relative error of each against float64 (the median over batches) and the channels' mean / std
ratio (the one-pass form cancels where means dwarf the spread). Then it times the network's
jitted train-mode gradient with the neck in each form. One JSON line per result.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from vireid_jax import augment  # pylint: disable=wrong-import-position
from vireid_jax import models  # pylint: disable=wrong-import-position
from vireid_jax import train_state  # pylint: disable=wrong-import-position
from vireid_jax.data import shared as shared_data  # pylint: disable=wrong-import-position
from vireid_jax.runtime import checkpoint  # pylint: disable=wrong-import-position
from vireid_jax.runtime import sharding  # pylint: disable=wrong-import-position


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def neck_forms(pooled: np.ndarray, scale: np.ndarray, eps: float) -> dict:
  """{form: (batch variance (C,), normalised output (N, C))} of one batch of neck inputs."""
  out = {}
  x64 = pooled.astype(np.float64)
  var64 = x64.var(0)
  out['float64'] = (var64, (x64 - x64.mean(0)) / np.sqrt(var64 + eps) * scale)
  for name, two_pass in (('one_pass', False), ('two_pass', True)):
    bn = models.resnet.BatchNorm(use_bias=False, two_pass=two_pass)
    variables = {'params': {'scale': jnp.asarray(scale)},
                 'batch_stats': {'mean': jnp.zeros_like(scale), 'var': jnp.ones_like(scale)}}
    y, _ = jax.jit(lambda v, x, bn=bn: bn.apply(v, x, True, mutable=['batch_stats']))(
        variables, jnp.asarray(pooled))
    # The variance as BatchNorm computes it (its own expressions, in float32).
    variance = jax.jit(lambda x, two_pass=two_pass: (
        jnp.mean(jnp.square(x - jnp.mean(x, 0)), 0) if two_pass else
        jnp.maximum(jnp.mean(jnp.square(x), 0) - jnp.square(jnp.mean(x, 0)), 0.0)))
    out[name] = (np.asarray(variance(jnp.asarray(pooled))), np.asarray(y))
  import torch  # pylint: disable=import-outside-toplevel
  bn = torch.nn.BatchNorm1d(pooled.shape[1], eps=eps, momentum=1.0)
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(scale))
    bn.bias.zero_()
    y = bn(torch.from_numpy(pooled))
  n = len(pooled)
  out['pytorch'] = (bn.running_var.double().numpy() * (n - 1) / n, y.numpy())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'demo.py'))
  parser.add_argument('--workdir', default=None, help="a run whose latest checkpoint to load")
  parser.add_argument('--batches', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=5, help='timed repeats of each step')
  args = parser.parse_args()
  jax.config.update('jax_default_matmul_precision', 'highest')
  config = load_config(args.config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  model = models.build_model(config.model)
  state = train_state.create_train_state(config, model, mesh, say=lambda line: None)
  source = 'start'
  if args.workdir:
    abstract = train_state.abstract_train_state(config, model, mesh)
    restored = checkpoint.restore_newest_readable(args.workdir, abstract)
    if restored is None:
      raise SystemExit(f'{args.workdir}: no checkpoint')
    state, record, _ = restored
    source = f'{args.workdir} after epoch {record["epoch"]}'
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  visible_set, infrared_set = shared_data.load_train_on_every_process(config.data)
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  from vireid_jax import methods  # pylint: disable=import-outside-toplevel
  sizes = methods.for_config(config).batch_sizes(config)
  rng = np.random.default_rng(0)
  forward = jax.jit(lambda v, a, b: model.apply(v, a, b, train=True, mutable=['batch_stats'])[0][1])
  scale = np.asarray(state.params['neck']['scale'], np.float32)
  errors = {}
  ratios = []
  for _ in range(args.batches):
    vis = visible_set.images[rng.choice(len(visible_set), sizes.visible_inputs)]
    inf = infrared_set.images[rng.choice(len(infrared_set), sizes.infrared_inputs)]
    pooled = np.asarray(forward(variables, augment.normalize(jnp.asarray(vis), mean, std),
                                augment.normalize(jnp.asarray(inf), mean, std)), np.float32)
    forms = neck_forms(pooled, scale, models.resnet.BN_EPS)
    var64, y64 = forms['float64']
    for name, (var, y) in forms.items():
      if name != 'float64':
        errors.setdefault(name, []).append((rel(var, var64), rel(y, y64)))
    x64 = pooled.astype(np.float64)
    ratios.append(float(np.median(np.abs(x64.mean(0)) / x64.std(0))))
  for name, values in errors.items():
    values = np.array(values)
    print(json.dumps({'what': 'neck_variance', 'form': name, 'source': source,
                      'rows': sizes.visible_inputs + sizes.infrared_inputs,
                      'variance_rel_error': float(np.median(values[:, 0])),
                      'output_rel_error': float(np.median(values[:, 1])),
                      'batches': args.batches}))
  print(json.dumps({'what': 'neck_mean_over_std', 'median_over_channels_and_batches':
                    float(np.median(ratios))}))
  # Cost: the network's train-mode gradient with each neck form.
  vis = augment.normalize(jnp.asarray(visible_set.images[:sizes.visible_inputs]), mean, std)
  inf = augment.normalize(jnp.asarray(infrared_set.images[:sizes.infrared_inputs]), mean, std)
  for two_pass in (False, True):
    variant = model.clone(neck_two_pass=two_pass)

    def loss(params, variant=variant):
      (neck, _), _ = variant.apply({'params': params, 'batch_stats': state.batch_stats}, vis,
                                   inf, train=True, mutable=['batch_stats'])
      return jnp.sum(neck**2)

    grad = jax.jit(jax.grad(loss))
    jax.block_until_ready(grad(state.params))
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(grad(state.params))
      times.append(time.perf_counter() - start)
    print(json.dumps({'what': 'train_gradient_time', 'neck_two_pass': two_pass,
                      'median_ms': 1e3 * float(np.median(times)), 'repeats': args.repeats,
                      'device': jax.devices()[0].device_kind}))


if __name__ == '__main__':
  main()
