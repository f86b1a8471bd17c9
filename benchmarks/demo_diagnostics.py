r"""Why the demo's matching reaches what it reaches: feature and matching measures of a network.

  python benchmarks/demo_diagnostics.py                          # the pretrained start
  python benchmarks/demo_diagnostics.py --workdir runs/demo      # a run's best checkpoint
  python benchmarks/demo_diagnostics.py --workdir runs/demo --checkpoint latest

For the network of configs/demo.py (or --config) at the start or in a run's checkpoint, on the
synthetic training set (where the true identities are known; the trainer never reads them):
  * cross_same / cross_diff: mean cosine similarity of infrared-visible pairs of the same and
    of different identities (and the same within each modality): how far apart the
    modalities are, and how much identity the features carry across them;
  * train_ir_to_visible_mAP: infrared queries against all visible training images;
  * the epoch's own clustering and matching (purity, one-to-one same-identity rate, infrared
    clusters with a same-identity partner), computed as an epoch computes them;
  * true_clusters_match: MBCCM's matching run on the true identity clusters' centres: what
    matching can do with these features when the clustering is perfect.
Prints one JSON object.
"""

import argparse
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'demo.py'))
  parser.add_argument('--workdir', default='', help='a run; empty: the (pretrained) start')
  parser.add_argument('--checkpoint', choices=('best', 'latest'), default='best')
  parser.add_argument('--seed', type=int, default=0, help='config.seed of the start')
  return parser.parse_args(argv)


def _similarities(features_a, pids_a, features_b, pids_b) -> dict:
  similarity = features_a @ features_b.T
  same = pids_a[:, None] == pids_b[None, :]
  return {'same': float(similarity[same].mean()), 'diff': float(similarity[~same].mean())}


def main(argv=None) -> dict:
  args = parse_args(argv)
  # pylint: disable=import-outside-toplevel
  import numpy as np
  from vireid_jax.runtime import checkpoint
  from vireid_jax import clustering
  from vireid_jax.methods.mbccm import matching as mbccm_matching
  from vireid_jax import data as data_lib
  from vireid_jax import evaluation
  from vireid_jax import extract as extract_lib
  from vireid_jax import models
  from vireid_jax.runtime import sharding
  from vireid_jax import train_state
  from vireid_jax.clustering import epoch as epoch_clustering
  from vireid_jax.methods.mbccm import association as mbccm_association
  from vireid_jax.data.types import INFRARED, VISIBLE

  spec = importlib.util.spec_from_file_location('diagnostics_config', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.seed = args.seed
  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  out = {'network': args.workdir or f'start ({config.model.pretrained or "random"})'}
  if args.workdir:
    abstract = train_state.abstract_train_state(config, model, mesh)
    state, record = checkpoint.restore(args.workdir, args.checkpoint, abstract)
    out['epoch'] = record['epoch'] + 1
  else:
    state = train_state.create_train_state(config, model, mesh)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  extract_fns = extract_lib.make_extract_fn(model, tuple(config.data.mean),
                                            tuple(config.data.std), False)
  visible, infrared = data_lib.load_train(config.data)
  fv, fi = (extract_lib.extract_features(extract_fns, variables, s.images, m,
                                         config.eval.batch_size, mesh, progress=False)
            for s, m in ((visible, VISIBLE), (infrared, INFRARED)))
  cross = _similarities(fi, infrared.pids, fv, visible.pids)
  out['cross_same'], out['cross_diff'] = cross['same'], cross['diff']
  within_v = _similarities(fv, visible.pids, fv, visible.pids)
  within_i = _similarities(fi, infrared.pids, fi, infrared.pids)
  out['visible_same'], out['visible_diff'] = within_v['same'], within_v['diff']
  out['infrared_same'], out['infrared_diff'] = within_i['same'], within_i['diff']
  # Every visible training image is in the gallery; nothing is dropped (RegDB's rules).
  _, mean_ap, _ = evaluation.eval_regdb(-(fi @ fv.T), infrared.pids, visible.pids)
  out['train_ir_to_visible_mAP'] = 100 * mean_ap
  epoch = epoch_clustering.cluster_epoch(config, fv, fi, visible.pids, infrared.pids,
                                         paths=(visible.paths, infrared.paths))
  _, match_stats = mbccm_association.associate(config, None, epoch,
                                               (visible.pids, infrared.pids))
  epoch.stats.update(match_stats)
  out['epoch_clustering'] = {k: round(float(v), 3) for k, v in epoch.stats.items()
                             if k.startswith(('visible/purity', 'infrared/purity', 'match/'))}
  true_v = np.unique(visible.pids, return_inverse=True)[1]
  true_i = np.unique(infrared.pids, return_inverse=True)[1]
  match = mbccm_matching.mbccm_match(clustering.cluster_centers(fv, true_v),
                                 clustering.cluster_centers(fi, true_i))
  out['true_clusters_match'] = {
      k: round(float(v), 3) for k, v in clustering.match_diagnostics(
          match.mask, true_v, visible.pids, true_i, infrared.pids,
          one_to_one=match.one_to_one).items()}
  print(json.dumps(out, indent=1))
  return out


if __name__ == '__main__':
  main()
