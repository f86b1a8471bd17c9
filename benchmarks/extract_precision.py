r"""What bfloat16 extraction changes where clustering decides: partitions, neighbours, mAP.

  python benchmarks/extract_precision.py --workdirs runs/ablation/full_MBCCM/seed{0,1,2}
  python benchmarks/extract_precision.py --sphere        # a SYSU-sized set: 22,258 x 2048

With `--workdirs` (trained demo runs; `--config` is their config): each run's checkpoint
(`--checkpoint`, default best) extracts the training images of both modalities and the test
images twice, once computing in float32 (the authors' precision) and once in bfloat16 (what
`model.dtype='auto'` computes on a GPU or TPU), from the same weights. Each feature set is
clustered as an epoch clusters it (config.cluster: Jaccard + DBSCAN), and the two are compared:
adjusted Rand index of the two DBSCAN partitions (outliers as singletons), share of rows whose
k1 nearest neighbours are identical (same order; and as sets), the relative size of the
feature difference |f_bf16 - f_f32| / |f_f32|, and SYSU-MM01 all-search single-shot mAP on
gallery draws 0-9 with each.

With `--sphere`: the benchmark's SYSU-sized clustered features (`common.sphere_clusters`: 22,258
unit rows of 2048 around 395 directions) stand in for a network's, and the bfloat16 error is
modelled two ways: the features rounded to bfloat16 (the output's own rounding, a lower bound),
and a perturbation of the relative size measured on the demo network (`--relative-error`,
default the mean the `--workdirs` runs print). Each is clustered at SYSU-MM01's settings (k1 30,
k2 6, eps 0.6, min_samples 4) and compared with the float32 partition.

One JSON line per comparison on stdout; progress on stderr.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdirs', nargs='*', default=())
  parser.add_argument('--config', default=os.path.join(common.ROOT, 'configs', 'demo.py'),
                      help='the config the --workdirs were trained with')
  parser.add_argument('--checkpoint', default='best', choices=('best', 'latest'))
  parser.add_argument('--sphere', action='store_true')
  parser.add_argument('--num', type=int, default=common.SYSU_VISIBLE, help='--sphere rows')
  parser.add_argument('--dim', type=int, default=2048, help='--sphere width')
  parser.add_argument('--identities', type=int, default=common.SYSU_IDENTITIES)
  parser.add_argument('--noise', type=float, default=0.9,
                      help='--sphere: norm of the noise around each direction')
  parser.add_argument('--relative-error', type=float, default=None,
                      help='--sphere: |f_bf16 - f_f32| / |f| to model (default: not run)')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def partition_agreement(labels_a, labels_b) -> float:
  """Adjusted Rand index, each outlier (-1) its own singleton cluster."""
  import numpy as np
  from sklearn import metrics

  def singletons(labels):
    labels = np.asarray(labels).copy()
    outliers = labels < 0
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(int(outliers.sum()))
    return labels

  return float(metrics.adjusted_rand_score(singletons(labels_a), singletons(labels_b)))


def neighbour_agreement(features_a, features_b, k: int, rank_by: str) -> dict:
  """Shares of rows whose k nearest neighbours are the same: in order, and as sets."""
  import numpy as np
  from vireid_jax import clustering
  a, _ = clustering.nearest_neighbors(features_a, k, rank_by=rank_by)
  b, _ = clustering.nearest_neighbors(features_b, k, rank_by=rank_by)
  same_order = np.all(a == b, axis=1)
  same_set = np.all(np.sort(a, axis=1) == np.sort(b, axis=1), axis=1)
  return {'same_neighbour_lists': float(same_order.mean()),
          'same_neighbour_sets': float(same_set.mean())}


def compare(features_a, features_b, cluster_cfg, what: str, context: dict) -> dict:
  import numpy as np
  from vireid_jax import clustering
  c = cluster_cfg
  labels = []
  for features in (features_a, features_b):
    try:
      labels.append(clustering.cluster_features(
          features, k1=c.k1, k2=c.k2, eps=c.eps, min_samples=c.min_samples,
          rank_by=c.rank_by)[0])
    except clustering.NoClustersError:
      labels.append(-np.ones(len(features), np.int64))
  record = {'what': what, 'num': len(features_a), 'dim': int(features_a.shape[1]),
            'ari': partition_agreement(*labels),
            'clusters': [int(l.max(initial=-1) + 1) for l in labels],
            'outliers': [int(np.sum(l < 0)) for l in labels],
            'relative_difference': float(np.mean(
                np.linalg.norm(features_b - features_a, axis=1)
                / np.maximum(np.linalg.norm(features_a, axis=1), 1e-12)))}
  record.update(neighbour_agreement(features_a, features_b, c.k1, c.rank_by))
  return common.emit(record, context)


def run_workdir(workdir: str, args, context: dict) -> list[dict]:
  import jax
  from vireid_jax.runtime import checkpoint
  from vireid_jax import evaluation
  from vireid_jax import extract as extract_lib
  from vireid_jax import models
  from vireid_jax.runtime import sharding
  from vireid_jax import train_state
  from vireid_jax import data as data_lib
  from vireid_jax.data.types import INFRARED, VISIBLE
  from vireid_jax.models import resnet

  config = common.load_config(args.config)
  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  abstract = train_state.abstract_train_state(config, model, mesh)
  state, record = checkpoint.restore(workdir, args.checkpoint, abstract)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  train_visible, train_infrared = data_lib.load_train(config.data)
  test_visible, test_infrared = data_lib.load_test(config.data)
  features = {}
  for dtype in ('float32', 'bfloat16'):
    fns = extract_lib.make_extract_fn(model.clone(dtype=resnet.compute_dtype(dtype)),
                                      tuple(config.data.mean), tuple(config.data.std),
                                      config.eval.flip, precision='highest')
    features[dtype] = {
        (split, modality): extract_lib.extract_features(
            fns, variables, images.images, modality, config.eval.batch_size, mesh,
            progress=False)
        for split, modality, images in (('train', VISIBLE, train_visible),
                                        ('train', INFRARED, train_infrared),
                                        ('test', VISIBLE, test_visible),
                                        ('test', INFRARED, test_infrared))}
  context = dict(context, workdir=workdir, checkpoint=f'{args.checkpoint}/{record["epoch"]}')
  records = []
  for modality in (VISIBLE, INFRARED):
    records.append(compare(features['float32'][('train', modality)],
                           features['bfloat16'][('train', modality)], config.cluster,
                           f'demo/train/{modality}', context))
  maps = {}
  for dtype, f in features.items():
    results = evaluation.evaluate_sysu(
        f[('test', INFRARED)], test_infrared.pids, test_infrared.cams, f[('test', VISIBLE)],
        test_visible.pids, test_visible.cams, modes=('all',), shots=(1,), trials=range(10),
        gallery_paths=test_visible.paths)
    maps[dtype] = results['all_search_single_shot']['mean']
  records.append(common.emit({'what': 'demo/test/mAP', 'float32': maps['float32']['mAP'],
                              'bfloat16': maps['bfloat16']['mAP'],
                              'rank1_float32': maps['float32']['rank1'],
                              'rank1_bfloat16': maps['bfloat16']['rank1']}, context))
  jax.clear_caches()
  return records


def run_sphere(args, context: dict) -> list[dict]:
  import ml_collections
  import numpy as np
  import ml_dtypes
  cluster_cfg = ml_collections.ConfigDict(dict(k1=30, k2=6, eps=0.6, min_samples=4,
                                               rank_by='dot'))
  common.log(f'sphere: {args.num} x {args.dim} around {args.identities} directions')
  features = common.sphere_clusters(args.num, args.dim, args.noise, args.seed,
                                    num_centers=args.identities)
  records = []
  rounded = features.astype(ml_dtypes.bfloat16).astype(np.float32)
  rounded /= np.linalg.norm(rounded, axis=1, keepdims=True)
  records.append(compare(features, rounded, cluster_cfg, 'sphere/bfloat16_rounding', context))
  if args.relative_error:
    rng = np.random.default_rng(args.seed + 1)
    noise = rng.standard_normal(features.shape, dtype=np.float32)
    noise *= (args.relative_error / np.linalg.norm(noise, axis=1, keepdims=True))
    perturbed = features + noise
    perturbed /= np.linalg.norm(perturbed, axis=1, keepdims=True)
    records.append(compare(features, perturbed, cluster_cfg,
                           f'sphere/relative_error_{args.relative_error:g}', context))
  return records


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  context = dict(common.device_description())
  records = []
  for workdir in args.workdirs:
    common.log(f'{workdir}: extracting in float32 and bfloat16')
    records += run_workdir(workdir, args, context)
  if args.sphere:
    records += run_sphere(args, context)
  return records


if __name__ == '__main__':
  main()
