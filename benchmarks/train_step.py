"""Milliseconds of the full stage-1 and stage-2 train steps, compilation excluded.

  python benchmarks/train_step.py                      # the paper's batch: 12 x 12 per modality
  python benchmarks/train_step.py --method pgm         # PGM's: 128 visible (x2 views) + 256
  python benchmarks/train_step.py --method pclhd --stage 2   # both updates and the teacher
  python benchmarks/train_step.py --stage 2 --profile /tmp/trace   # also a jax.profiler trace
  python benchmarks/train_step.py --compile-only       # XLA's memory plan only (any backend)
  python benchmarks/train_step.py --stage 2 --linear-transform-loop fixed \
      --xla-command-buffer +WHILE,+CONDITIONAL --profile /tmp/trace   # the loop variants
  python benchmarks/train_step.py --image-size 32 16 --clusters 4 --instances 2 --width 8 \
      --block basic --stage-sizes 1 1 1 1 --num-images 64 --memory-clusters 8 8 \
      --steps 3 --repeats 2                            # the CPU smoke size of the test suite

The step is the trainer's own (`vireid_jax.train_state.make_train_step`): gather of the uint8
images, on-device augmentation, forward, every loss, backward, Adam and the memory updates, on
a batch of 2 x B visible views + B infrared images (B = clusters x instances; 432 images at the
paper's sizes). Both ways of getting the images are measured (`--images`): resident on the
device (`images=device`, gathered inside the step) and fed from host memory with the trainer's
prefetching (`images=host`, `config.data.images_on_device=False`). Steps are dispatched back to
back as `Trainer.train_epoch` does (metrics fetched once at the end) and each repeat of
`--steps` steps is timed with `jax.block_until_ready`; the median over repeats is reported per
step. Compilation is timed apart (ahead of time, so it is not run twice), with
XLA's memory plan of the step. `dispatch_ms` is the host time spent issuing one step: while it
stays well below `median_ms`, the accelerator never waits on the host (on the CPU backend the
host and the "device" share the cores, so there it means little). `--profile` also prints the
device's busy fraction over a traced repeat and its most expensive ops.

Inputs are synthetic: uint8 noise images, cluster labels i mod K, random unit centres matched
by the real MBCCM matching. Speed does not depend on their content, except the multiplicative
rectangles of visible view A, whose loop length depends on the image (noise is typical).

Host round trips: each `.../compile` line counts the step's while loops, those whose trip
count XLA does not know (`unknown_trip_count_loops`, with their JAX op names) and its
conditionals; XLA:GPU reads the predicate of each of those on the host, every iteration, and the
host can then not run ahead of the device. The `.../profile` line has `d2h_copies_per_step`
from the trace (those reads, plus the metrics fetched once per repeat: 5 scalars per step).
Variants to compare: `--linear-transform-loop` (config.augment.linear_transform_loop),
`--memory-update` (config.memory.update_method) and `--xla-command-buffer` (XLA's
`--xla_gpu_enable_command_buffer`, added to XLA_FLAGS before jax starts: with WHILE and
CONDITIONAL, XLA:GPU evaluates loop predicates on the device); each line names them.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_model_flags(parser)
  parser.add_argument('--stage', type=int, nargs='+', choices=(1, 2), default=(1, 2),
                      help='which train steps to measure')
  parser.add_argument('--steps', type=int, default=20, help='steps per timed repeat')
  parser.add_argument('--num-images', type=int, default=4096,
                      help='resident uint8 images per modality the step gathers from')
  parser.add_argument('--memory-clusters', type=int, nargs=2, default=(512, 320),
                      metavar=('VISIBLE', 'INFRARED'),
                      help='clusters of the memories (SYSU epochs: a few hundred per modality)')
  parser.add_argument('--images', nargs='+', choices=('device', 'host'),
                      default=('device', 'host'),
                      help='training images resident on the device, fed from the host, or both')
  parser.add_argument('--compile-only', action='store_true',
                      help="only compile and print XLA's memory plan of each step (any backend)")
  parser.add_argument('--profile', default='',
                      help='also write a jax.profiler trace of one repeat per stage under here')
  parser.add_argument('--linear-transform-loop', choices=('while', 'fixed', 'two_phase'),
                      default=None, help='config.augment.linear_transform_loop (default: config)')
  parser.add_argument('--memory-update', choices=('auto', 'sequential', 'by_rank'),
                      default='auto', help='config.memory.update_method')
  parser.add_argument('--xla-command-buffer', default='', metavar='TYPES',
                      help="XLA:GPU command buffer types, e.g. '+WHILE,+CONDITIONAL' (added to "
                           "XLA's default list) or 'FUSION,CUBLAS,WHILE,CONDITIONAL'; '' = "
                           "XLA's default")
  return parser.parse_args(argv)


def measure_stage(stage: int, where: str, args, config, mesh, model, state, clusters,
                  host_images, context):
  """Compiles and times one stage's step with images resident ('device') or fed ('host');
  returns (state, its records)."""
  import jax
  import numpy as np
  from vireid_jax.data import host_feed
  from vireid_jax import methods
  from vireid_jax.runtime import sharding
  from vireid_jax import train_state
  from vireid_jax.runtime import xla_loops

  on_device = where == 'device'
  _, inputs_per_step = common.step_inputs(config)
  batch = methods.for_config(config).batch_sizes(config)
  epoch = common.first_epoch_of_stage(config, stage)
  schedule, plan = common.method_plan(config, clusters, epoch)
  memories = common.method_memories(config, clusters, schedule, mesh)
  label_repeats = train_state.step_label_repeats(config, plan)  # as the trainer compiles it
  plan = methods.as_plan(plan)
  step_fn = train_state.make_train_step(model, config, mesh, schedule.phase,
                                        images_on_device=on_device, label_repeats=label_repeats)
  if on_device:
    resident = {modality: sharding.put_replicated(images, mesh)
                for modality, images in zip(('visible', 'infrared'), host_images)}
    batches = lambda: iter(lambda: resident, None)  # the same arrays every step
  else:
    batches = lambda: host_feed.step_batches(dict(zip(('visible', 'infrared'), host_images)),
                                             plan, mesh)
  name = f'train_step/stage{stage}' + ('' if on_device else '/host_fed')

  def inputs_at_state():  # the epoch starts where the state stands, as in the trainer
    return train_state.put_epoch_inputs(plan, epoch, int(jax.device_get(state.step)), mesh,
                                        lr_epoch=schedule.lr_epoch)

  common.log(f'stage {stage}, images on the {where}: compiling the step ({inputs_per_step} '
             f'network inputs)')
  first_batch = next(batches())
  compile_s, compiled = common.timed(lambda: step_fn.lower(
      state, memories, first_batch, inputs_at_state()).compile())
  context = dict(context, batch=inputs_per_step, method=config.method, images=where,
                 visible_images=batch.visible_images, infrared_images=batch.infrared_images)
  if batch.visible_images == batch.infrared_images:  # MBCCM's paired positions
    context['pairs'] = batch.visible_images
  records = [common.emit({'what': f'{name}/compile', 'seconds': compile_s,
                          'label_repeats': (None if label_repeats is None
                                            else dict(label_repeats.counts)),
                          **xla_loops.host_predicates(compiled.as_text()),
                          **common.memory_analysis_mb(compiled)}, context)]
  if args.compile_only:
    return state, records

  def run_repeat():
    nonlocal state, memories
    inputs = inputs_at_state()
    start = time.perf_counter()
    state, memories, per_step = common.dispatch_steps(compiled, state, memories, batches(),
                                                      inputs, args.steps)
    dispatched = time.perf_counter() - start
    per_step = jax.device_get(per_step)  # blocks: the trainer fetches metrics once per epoch
    jax.block_until_ready((state, memories))
    return time.perf_counter() - start, dispatched, per_step

  run_repeat()  # warm-up: first execution, allocator growth
  seconds, dispatch_seconds = [], []
  for repeat in range(args.repeats):
    elapsed, dispatched, per_step = run_repeat()
    seconds.append(elapsed / args.steps)
    dispatch_seconds.append(dispatched / args.steps)
    common.log(f'stage {stage} ({where}): repeat {repeat + 1}/{args.repeats}: '
               f'{1e3 * seconds[-1]:.1f} ms/step')
  step_s = common.median(seconds)
  losses = np.array([m['total'] for m in per_step], np.float64)
  records.append(common.emit({
      'what': name, 'median_ms': 1e3 * step_s,
      'min_ms': 1e3 * min(seconds), 'images_per_s': inputs_per_step / step_s,
      'dispatch_ms': 1e3 * common.median(dispatch_seconds),
      'steps_per_repeat': args.steps, 'repeats': args.repeats,
      'last_loss': float(losses[-1]), 'finite_losses': bool(np.isfinite(losses).all()),
  }, context))
  if args.profile:
    trace = {}
    with common.profile(args.profile, f'train_step_stage{stage}_{where}', trace):
      run_repeat()
    if 'd2h_copies' in trace:
      trace['d2h_copies_per_step'] = trace['d2h_copies'] / args.steps
    records.append(common.emit({'what': f'{name}/profile',
                                'steps': args.steps, **trace}, context))
  return state, records


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  if args.xla_command_buffer:
    if 'jax' in sys.modules:  # XLA reads its flags once, when the backend starts
      common.log('--xla-command-buffer: jax was imported before main(); the flag may be ignored')
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_gpu_enable_command_buffer={args.xla_command_buffer}')
  from vireid_jax import memory
  from vireid_jax import models
  from vireid_jax.runtime import sharding
  from vireid_jax import train_state

  config = common.make_config(args)
  config.sampler.steps_per_epoch = args.steps
  config.memory.update_method = args.memory_update
  if args.linear_transform_loop:
    config.augment.linear_transform_loop = args.linear_transform_loop
  mesh = sharding.make_mesh()
  from vireid_jax import methods
  batch = methods.for_config(config).batch_sizes(config)
  for modality, images in (('visible', batch.visible_images), ('infrared', batch.infrared_images)):
    sharding.check_divisible(images, mesh, f'{modality} images per step')
  model = models.build_model(config.model)
  height, width = args.image_size
  host_images = tuple(  # (visible, infrared), each (num_images, H, W, 3) uint8 on the host
      common.random_images(args.num_images, height, width, seed)
      for seed in (args.seed, args.seed + 1))
  clusters = common.synthetic_clusters(args.num_images, args.num_images, *args.memory_clusters,
                                       dim=model.num_features, seed=args.seed, config=config)
  state = train_state.create_train_state(config, model, mesh, say=common.log)
  context = dict(common.device_description(), precision=common.precision(config),
                 memory_update=memory.resolve_update_method(config.memory.update_method),
                 linear_transform_loop=config.augment.linear_transform_loop,
                 xla_command_buffer=args.xla_command_buffer)
  records = []
  for stage in args.stage:
    for where in args.images:
      state, stage_records = measure_stage(stage, where, args, config, mesh, model, state,
                                           clusters, host_images, context)
      records.extend(stage_records)
  return records


if __name__ == '__main__':
  main()
