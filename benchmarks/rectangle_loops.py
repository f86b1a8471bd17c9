"""Milliseconds of visible view A's augmentation per form of its rectangles loop, and whether
every form gives the 'while' form's outputs bit for bit on this device.

  python benchmarks/rectangle_loops.py              # the paper's batch: 144 images of 288x144
  python benchmarks/rectangle_loops.py --xla-command-buffer +WHILE,+CONDITIONAL
  python benchmarks/rectangle_loops.py --batch 8 --image-size 32 16 --calls 2 --repeats 2  # CPU

Times `mbccm_views.augment_visible_a_batch` (flip, pad + crop, the multiplicative rectangles with
probability 0.8, normalise, erase) jitted, on uint8 noise images, `--calls` calls dispatched
back to back per repeat, for each `config.augment.linear_transform_loop`: 'while' (until the
slowest image stops: XLA:GPU reads the predicate on the host every rectangle), 'fixed' (64
rectangles for every image, stopped ones masked), 'two_phase' (`--first-phase` for the batch,
the rest for the images still drawing, compacted into `--straggler-slots`). Each line says
whether its outputs equal the 'while' outputs for the same keys (`equal_to_while`, required)
and what the compiled function reads on the host (`unknown_trip_count_loops`,
`conditionals`). `rectangles_max` is the most rectangles one image of the batch drew (noise
images; the count depends on the content, not the device).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

LOOPS = ('while', 'fixed', 'two_phase')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=144, help='images (12 x 12)')
  parser.add_argument('--image-size', type=int, nargs=2, default=(288, 144), metavar=('H', 'W'))
  parser.add_argument('--first-phase', type=int, default=None,
                      help='config.augment.linear_transform_first_phase (default: config)')
  parser.add_argument('--straggler-slots', type=int, default=None,
                      help='config.augment.linear_transform_straggler_slots (default: config)')
  parser.add_argument('--calls', type=int, default=20, help='calls dispatched per repeat')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--xla-command-buffer', default='', metavar='TYPES',
                      help="XLA:GPU command buffer types added to XLA_FLAGS, e.g. "
                           "'+WHILE,+CONDITIONAL'; '' = XLA's default")
  return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  if args.xla_command_buffer:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_gpu_enable_command_buffer={args.xla_command_buffer}')
  import dataclasses
  import jax
  import numpy as np
  from vireid_jax import augment
  from vireid_jax import config as config_lib
  from vireid_jax.methods.mbccm import views as mbccm_views
  from vireid_jax.runtime import xla_loops

  base = augment.AugmentConfig.from_config(augment.default_config())
  if args.first_phase is not None:
    base = dataclasses.replace(base, linear_transform_first_phase=args.first_phase)
  if args.straggler_slots is not None:
    base = dataclasses.replace(base, linear_transform_straggler_slots=args.straggler_slots)
  data = config_lib.base_config().data
  mean, std = tuple(data.mean), tuple(data.std)
  images = jax.device_put(common.random_images(args.batch, *args.image_size, seed=args.seed))
  keys = jax.random.split(jax.random.PRNGKey(args.seed), args.batch)
  context = dict(common.device_description(), precision='float32', batch=args.batch,
                 image_size=list(args.image_size), xla_command_buffer=args.xla_command_buffer,
                 first_phase=base.linear_transform_first_phase,
                 straggler_slots=base.linear_transform_straggler_slots)

  # Rectangles per image with the keys and crops of view A (as augment_visible_a_batch
  # splits them), every image transformed.
  view_keys = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  k_loop = jax.vmap(jax.random.split)(view_keys[:, 1])[:, 1]
  unit = jax.vmap(lambda k, x: augment.to_unit(augment.flip_pad_crop(
      k, x, base.flip_prob, base.pad)))(view_keys[:, 0], images)
  counts = np.asarray(jax.jit(lambda k, x: augment.multiply_rectangles_batch(
      k, x, base)[2])(k_loop, unit))

  records, reference = [], None
  for loop in LOOPS:
    cfg = dataclasses.replace(base, linear_transform_loop=loop)
    fn = jax.jit(lambda k, x, cfg=cfg: mbccm_views.augment_visible_a_batch(k, x, cfg, mean, std))
    compile_s, compiled = common.timed(lambda: fn.lower(keys, images).compile())
    out = np.asarray(jax.block_until_ready(compiled(keys, images)))
    if reference is None:
      reference = out
    times = []
    for _ in range(args.repeats):
      elapsed, _ = common.timed(lambda: jax.block_until_ready(
          [compiled(keys, images) for _ in range(args.calls)]))
      times.append(1e3 * elapsed / args.calls)
    records.append(common.emit({
        'what': f'rectangle_loops/{loop}', 'median_ms': common.median(times),
        'min_ms': min(times), 'compile_s': compile_s, 'calls_per_repeat': args.calls,
        'repeats': args.repeats, 'equal_to_while': bool(np.array_equal(out, reference)),
        'max_abs_diff_to_while': float(np.max(np.abs(out - reference))),
        'rectangles_mean': float(counts.mean()), 'rectangles_max': int(counts.max()),
        **xla_loops.host_predicates(compiled.as_text())}, context))
  return records


if __name__ == '__main__':
  main()
