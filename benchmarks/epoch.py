"""Seconds of one whole SYSU-sized training epoch, phase by phase, compilation excluded.

  python benchmarks/epoch.py                  # 22,258 visible + 11,909 infrared, 300 stage-2 steps
  python benchmarks/epoch.py --stage 1 --profile /tmp/trace
  python benchmarks/epoch.py --image-size 32 16 --clusters 4 --instances 2 --width 8 \
      --block basic --stage-sizes 1 1 1 1 --num-visible 96 --num-infrared 64 \
      --identities 4 --steps 3                # the CPU smoke size of the test suite

One epoch as `Trainer.run` does it, with the trainer's own functions: extract eval features of
every training image (`extract_features`), Jaccard + DBSCAN per modality and MBCCM matching
(`cluster_epoch`), the epoch's sampling plan (`plan_epoch`, shipped to the device once), the
memories rebuilt from the centres (`build_memories`), then `--steps` train steps dispatched
back to back with the metrics fetched once at the end. The images are uint8 noise of the real
sizes (4.3 GB at the defaults), resident on the device.

Clustering input: an untrained network on noise images gives features with no cluster
structure, so by default the clustering phase runs on synthetic clustered features of the same
shape (`--identities` noisy directions on the unit sphere, about the cluster count and outlier
share of a real SYSU epoch) instead of the extracted ones; `--cluster-features extracted`
clusters what the network produced (its time is then not typical, and DBSCAN may find nothing).
The extracted features are computed and fetched either way, so the extraction time is real.

The first epoch compiles everything (extraction, the neighbour search, the step) and is
reported apart ('epoch/first'); the next `--repeats` epochs are timed and their median per
phase is reported ('epoch'). Each epoch draws new features, so its cluster count varies as in
training; the step recompiles only when a memory crosses a power of two or, with by-rank
memory updates (GPU/TPU), when the plan's bound on a cluster's repeats in one step
(`label_repeats`) takes a value no earlier epoch had (both reported: `recompiled`,
`label_repeats`).

CPU note: at the default sizes this needs about 9 GB of RAM (the images twice: the host copy
and the CPU "device" copy) and hours of ResNet-50 on a CPU; use the small flags there.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

PHASES = ('extract', 'cluster', 'match', 'plan', 'memories', 'train', 'dispatch')


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_model_flags(parser)
  parser.set_defaults(repeats=1)
  parser.add_argument('--num-visible', type=int, default=common.SYSU_VISIBLE,
                      help='visible training images (22,258: SYSU-MM01)')
  parser.add_argument('--num-infrared', type=int, default=common.SYSU_INFRARED,
                      help='infrared training images (11,909: SYSU-MM01)')
  parser.add_argument('--steps', type=int, default=None,
                      help='train steps of the epoch (default: config, 300 for SYSU)')
  parser.add_argument('--stage', type=int, choices=(1, 2), default=2,
                      help='which step the epoch trains with (2: the costlier one)')
  parser.add_argument('--cluster-features', choices=('synthetic', 'extracted'),
                      default='synthetic', help='what the clustering phase clusters (see above)')
  parser.add_argument('--identities', type=int, default=common.SYSU_IDENTITIES,
                      help='directions of the synthetic clustered features (395: SYSU ids)')
  parser.add_argument('--cluster-noise', type=float, default=3.5,
                      help='noise norm of the synthetic features around their unit direction')
  parser.add_argument('--profile', default='',
                      help='also write a jax.profiler trace of one more epoch under here')
  return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  import jax
  import numpy as np
  from vireid_jax import clustering
  from vireid_jax import extract as extract_lib
  from vireid_jax import models
  from vireid_jax import methods
  from vireid_jax.runtime import sharding
  from vireid_jax import train_state
  from vireid_jax.clustering import epoch as epoch_clustering
  from vireid_jax.data.types import INFRARED, VISIBLE

  config = common.make_config(args)
  # Random images have no paths to sort by; the order costs nothing either way.
  config.cluster.order = 'reader'
  if args.steps is not None:
    config.sampler.steps_per_epoch = args.steps
  steps = config.sampler.steps_per_epoch
  mesh = sharding.make_mesh()
  pairs = config.sampler.clusters_per_step * config.sampler.instances_per_cluster
  sharding.check_divisible(pairs, mesh, 'images per modality per step (--clusters x --instances)')
  model = models.build_model(config.model)
  height, width = args.image_size

  common.log(f'epoch: {args.num_visible:,} visible + {args.num_infrared:,} infrared uint8 '
             f'images of {height}x{width} onto the device')
  visible_images = sharding.put_replicated(
      common.random_images(args.num_visible, height, width, seed=args.seed), mesh)
  infrared_images = sharding.put_replicated(
      common.random_images(args.num_infrared, height, width, seed=args.seed + 1), mesh)
  images_mb = (visible_images.nbytes + infrared_images.nbytes) / 2**20
  state = train_state.create_train_state(config, model, mesh, say=common.log)
  extract_batch = extract_lib.make_extract_fn(model, tuple(config.data.mean),
                                              tuple(config.data.std), config.eval.flip)
  step_fns = {}  # label_repeats -> the step, as the trainer keeps them
  epoch_offset = common.first_epoch_of_stage(config, args.stage)
  phase = methods.for_config(config).schedule(config, epoch_offset).phase
  compiled_variants = set()

  def run_epoch(epoch: int) -> dict:
    """One epoch of the trainer; returns the seconds of each phase."""
    nonlocal state
    times = {}
    start = time.perf_counter()
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    features = {
        modality: extract_lib.extract_features(
            extract_batch, variables, images, modality, config.eval.batch_size, mesh,
            progress=False)
        for modality, images in ((VISIBLE, visible_images), (INFRARED, infrared_images))}
    times['extract'] = time.perf_counter() - start

    if args.cluster_features == 'synthetic':
      # Not timed: stands in for what a trained network would have produced.
      synthetic = {
          modality: common.sphere_clusters(len(features[modality]), model.num_features,
                                           args.cluster_noise, seed=args.seed + epoch,
                                           num_centers=args.identities, return_assignment=True)
          for modality in (VISIBLE, INFRARED)}
      features = {modality: f for modality, (f, _) in synthetic.items()}
      pids = {modality: p for modality, (_, p) in synthetic.items()}
    else:
      pids = {modality: np.zeros(len(f), np.int64) for modality, f in features.items()}
    start = time.perf_counter()
    try:
      clusters = epoch_clustering.cluster_epoch(config, features[VISIBLE], features[INFRARED],
                                     pids[VISIBLE], pids[INFRARED])
    except clustering.NoClustersError as error:
      raise SystemExit(f'epoch.py: {error} With --cluster-features {args.cluster_features} '
                       'there is nothing to train on: use --cluster-features synthetic, or a '
                       'smaller --cluster-noise.') from error
    # The method's association (MBCCM: the matching), timed on its own to show its share.
    times['match'], _ = common.timed(lambda: common.associate(
        config, clusters, epoch, (pids[VISIBLE], pids[INFRARED])))
    times['cluster'] = time.perf_counter() - start

    start = time.perf_counter()
    schedule, plan = common.method_plan(config, clusters, epoch)
    inputs = train_state.put_epoch_inputs(plan, epoch, int(jax.device_get(state.step)), mesh,
                                          lr_epoch=schedule.lr_epoch)
    label_repeats = train_state.step_label_repeats(config, plan)
    times['plan'] = time.perf_counter() - start
    if label_repeats not in step_fns:
      step_fns[label_repeats] = train_state.make_train_step(model, config, mesh, phase,
                                                            label_repeats=label_repeats)
    start = time.perf_counter()
    memories = jax.block_until_ready(common.method_memories(config, clusters, schedule, mesh))
    times['memories'] = time.perf_counter() - start

    start = time.perf_counter()
    state, memories, per_step = common.dispatch_steps(
        step_fns[label_repeats], state, memories,
        iter(lambda: {'visible': visible_images, 'infrared': infrared_images}, None),
        inputs, steps)
    times['dispatch'] = time.perf_counter() - start
    per_step = jax.device_get(per_step)  # one fetch per epoch, as the trainer does
    jax.block_until_ready(state)
    times['train'] = time.perf_counter() - start
    times['total'] = sum(times[phase] for phase in ('extract', 'cluster', 'plan', 'memories',
                                                    'train'))
    losses = np.array([m['total'] for m in per_step], np.float64)
    capacities = tuple(int(table.shape[0]) for table in jax.tree.leaves(memories)
                       if table.ndim == 2)
    times.update({
        'visible_clusters': int(clusters.visible_centers.shape[0]),
        'infrared_clusters': int(clusters.infrared_centers.shape[0]),
        'visible_outliers': int(np.sum(clusters.visible_labels < 0)),
        'infrared_outliers': int(np.sum(clusters.infrared_labels < 0)),
        'recompiled': (capacities, label_repeats) not in compiled_variants,
        'label_repeats': label_repeats,
        'finite_losses': bool(np.isfinite(losses).all()),
    })
    compiled_variants.add((capacities, label_repeats))
    return times

  context = dict(common.device_description(), precision=common.precision(config),
                 batch=3 * pairs, steps=steps, stage=args.stage,
                 num_visible=args.num_visible, num_infrared=args.num_infrared,
                 cluster_features=args.cluster_features, images_mb=images_mb)

  def summary(epochs: list[dict]) -> dict:
    record = {f'{phase}_s': common.median([e[phase] for e in epochs]) for phase in PHASES}
    record['seconds'] = common.median([e['total'] for e in epochs])
    record['step_ms'] = 1e3 * record['train_s'] / steps
    record['images_per_s'] = 3 * pairs * steps / record['train_s']  # training images
    # How long the host spent issuing steps, against the time they took to run.
    record['dispatch_fraction'] = record['dispatch_s'] / record['train_s']
    for key in ('visible_clusters', 'infrared_clusters', 'visible_outliers',
                'infrared_outliers', 'recompiled', 'label_repeats', 'finite_losses'):
      record[key] = epochs[-1][key]
    return record

  common.log('epoch: the first epoch compiles')
  records = [common.emit(dict(what='epoch/first', **summary([run_epoch(epoch_offset)])),
                         context)]
  timed_epochs = []
  for repeat in range(args.repeats):
    timed_epochs.append(run_epoch(epoch_offset + 1 + repeat))
    common.log(f'epoch: repeat {repeat + 1}/{args.repeats}: {timed_epochs[-1]["total"]:.2f} s')
  record = summary(timed_epochs)
  record['epochs_80_minutes'] = 80 * record['seconds'] / 60  # at this epoch's size
  records.append(common.emit(dict(what='epoch', repeats=args.repeats, **record), context))
  if args.profile:
    trace = {}
    with common.profile(args.profile, 'epoch', trace):
      run_epoch(epoch_offset + 1 + args.repeats)
    records.append(common.emit({'what': 'epoch/profile', **trace}, context))
  return records


if __name__ == '__main__':
  main()
