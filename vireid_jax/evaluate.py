"""The evaluation driver: features of the test split -> the standard protocols -> reports.

Used by the trainer every `eval_every` epochs (a cheap subset: trial 0, the configured shots)
and by `python main.py --mode eval`, which restores a checkpoint and runs the full protocol
(SYSU-MM01 all/indoor x single/multi-shot over trials 0-9; RegDB both directions; LLCM both
directions over trials 0-9) and writes JSON, a Markdown table, a CMC plot and a rank-list image
into <workdir>/eval/.

With several processes every process extracts its share of the features (gathered to all);
process 0 alone scores them and writes, and `shared_headline` hands its numbers to the others.
"""

from typing import Callable, Optional, Sequence

import ml_collections
import numpy as np

from vireid_jax import checkpoint
from vireid_jax import evaluation
from vireid_jax import files
from vireid_jax import multihost
from vireid_jax import sharding
from vireid_jax import train_state
from vireid_jax.data.types import INFRARED, VISIBLE, ImageSet

# Extracts (N, C) normalised features: f(images, modality, description).
ExtractFn = Callable[[np.ndarray, str, str], np.ndarray]


def selection_setting(config: ml_collections.ConfigDict) -> str:
  """The protocol setting whose mAP picks the best checkpoint."""
  if config.data.dataset == 'sysu':
    return evaluation.setting_name(config.eval.sysu_mode, config.eval.sysu_shots)
  if config.data.dataset == 'llcm':
    return config.eval.llcm_setting
  return 'visible_to_thermal'


def evaluate_features(config: ml_collections.ConfigDict, extract: ExtractFn,
                      test_visible: ImageSet, test_infrared: ImageSet, trials: Sequence[int],
                      full: bool = False) -> Optional[dict]:
  """Runs the dataset's protocol on freshly extracted test features (results in percent).

  SYSU-MM01: infrared queries against visible galleries drawn per trial from one extraction
  of all visible test images; `full` adds multi-shot to the configured shots. RegDB: both
  directions over the trial's test images (`trials` is ignored: a RegDB trial is a split).
  LLCM: both directions, galleries drawn per trial from one extraction of each modality.
  Every process extracts; the results are returned on process 0 and None elsewhere.
  """
  max_rank = config.eval.max_rank
  if config.data.dataset == 'sysu':
    query = extract(test_infrared.images, INFRARED, 'extract query (infrared)')
    gallery = extract(test_visible.images, VISIBLE, 'extract gallery (visible)')
    shots = (1, 10) if full else (config.eval.sysu_shots,)
    if not multihost.is_main():
      return None
    return evaluation.evaluate_sysu(
        query, test_infrared.pids, test_infrared.cams, gallery, test_visible.pids,
        test_visible.cams, modes=('all', 'indoor'), shots=shots, trials=list(trials),
        max_rank=max_rank, gallery_paths=test_visible.paths)
  if config.data.dataset == 'llcm':
    visible = extract(test_visible.images, VISIBLE, 'extract visible')
    infrared = extract(test_infrared.images, INFRARED, 'extract infrared')
    if not multihost.is_main():
      return None
    return evaluation.evaluate_llcm(
        visible, test_visible.pids, test_visible.cams, infrared, test_infrared.pids,
        test_infrared.cams, trials=list(trials), max_rank=max_rank,
        visible_paths=test_visible.paths, infrared_paths=test_infrared.paths)
  visible = extract(test_visible.images, VISIBLE, 'extract visible')
  thermal = extract(test_infrared.images, INFRARED, 'extract thermal')
  if not multihost.is_main():
    return None
  return evaluation.evaluate_regdb(visible, test_visible.pids, thermal, test_infrared.pids,
                                   max_rank=max_rank, trial=config.data.trial)


def headline(config: ml_collections.ConfigDict, results: dict) -> dict:
  """Mean Rank-1/5/10/20, mAP, mINP (percent) of the selection setting."""
  return {k: float(v) for k, v in results[selection_setting(config)]['mean'].items()}


def shared_headline(config: ml_collections.ConfigDict, results: Optional[dict]) -> dict:
  """Process 0's headline on every process (called by all; `results` may be None elsewhere)."""
  values = np.zeros(len(evaluation.METRIC_KEYS), np.float32)
  if results is not None:
    h = headline(config, results)
    values[:] = [h[key] for key in evaluation.METRIC_KEYS]
  values = multihost.broadcast(values)
  return {key: float(v) for key, v in zip(evaluation.METRIC_KEYS, values)}


def format_headline(config: ml_collections.ConfigDict, h: dict) -> str:
  """One line of a headline dict (see `headline`)."""
  return (f'{selection_setting(config)}: Rank-1 {h["rank1"]:.2f}  mAP {h["mAP"]:.2f}  '
          f'mINP {h["mINP"]:.2f}')


def _restore_variables(config, model, workdir: str, mesh) -> tuple[dict, dict]:
  abstract = train_state.abstract_train_state(config, model, mesh)
  which = config.eval.checkpoint
  if which in (checkpoint.BEST, checkpoint.LATEST):
    state, record = checkpoint.restore(workdir, which, abstract)
  else:
    state, record = checkpoint.restore_path(which, abstract)
  return {'params': state.params, 'batch_stats': state.batch_stats}, record


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> Optional[str]:
  """`--mode eval`: the full protocol on a checkpoint; returns the Markdown table (process 0;
  None elsewhere)."""
  from vireid_jax import extract as extract_lib
  from vireid_jax.data import shared as shared_data
  from vireid_jax import models

  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  variables, record = _restore_variables(config, model, workdir, mesh)
  test_visible, test_infrared = shared_data.load_test_on_every_process(config.data)
  extract_batch = extract_lib.make_extract_fn(model, tuple(config.data.mean),
                                              tuple(config.data.std), config.eval.flip)
  cache = {}

  def extract(images, modality, desc):
    cache[modality] = extract_lib.extract_features(extract_batch, variables, images, modality,
                                                   config.eval.batch_size, mesh, desc=desc)
    return cache[modality]

  results = evaluate_features(config, extract, test_visible, test_infrared,
                              trials=config.eval.trials, full=True)
  if results is None:  # not process 0
    return None
  out_dir = files.path(workdir) / 'eval'
  which = config.eval.checkpoint if config.eval.checkpoint in ('best', 'latest') else 'checkpoint'
  name = f'{config.data.dataset}_{which}'
  if config.data.dataset == 'regdb':
    name += f'_trial{config.data.trial}'
  _, markdown_path = evaluation.write_results(results, out_dir, name)
  evaluation.plot_cmc(results, out_dir / f'{name}_cmc.png')
  if config.eval.ranklist_queries:
    _save_ranklist(config, cache, test_visible, test_infrared, out_dir / f'{name}_ranklist.png')
  table = files.read_text(markdown_path)
  return (f'checkpoint: {config.eval.checkpoint} (after epoch {record["epoch"]})\n{table}\n'
          f'written to {out_dir}/')


def _save_ranklist(config, features: dict, test_visible: ImageSet, test_infrared: ImageSet,
                   path: str) -> None:
  """Top-10 of a few queries: SYSU infrared queries against the all-search trial-0 gallery,
  LLCM infrared queries against the trial-0 visible gallery, RegDB visible queries against all
  thermal images."""
  if config.data.dataset in ('sysu', 'llcm'):
    query, gallery = test_infrared, test_visible
    query_features, gallery_features = features[INFRARED], features[VISIBLE]
    if config.data.dataset == 'sysu':
      keep = evaluation.gallery_indices(gallery.pids, gallery.cams, 'all', 1, 0, gallery.paths)
    else:
      keep = evaluation.one_per_identity_camera(gallery.pids, gallery.cams, 0,
                                                paths=gallery.paths)
    gallery, gallery_features = gallery.subset(keep), gallery_features[keep]
  else:
    query, gallery = test_visible, test_infrared
    query_features, gallery_features = features[VISIBLE], features[INFRARED]
  chosen = evaluation.choose_queries(query.pids, config.eval.ranklist_queries, seed=config.seed)
  similarity = query_features[chosen] @ gallery_features.T
  evaluation.save_ranklist(query.images[chosen], gallery.images, similarity, query.pids[chosen],
                           gallery.pids, query.cams[chosen], gallery.cams, path,
                           rules=config.data.dataset, is_similarity=True)


def aggregate_runs(workdir: str) -> str:
  """`--mode aggregate`: pools `eval/regdb_best_trial<k>.json` of every run under `workdir`."""
  paths = sorted(str(p) for p in files.path(workdir).glob('*/eval/regdb_best_trial*.json'))
  if not paths:
    raise FileNotFoundError(
        f'no RegDB results under {workdir}/*/eval/: run `--mode eval` in each trial\'s workdir '
        f'(e.g. {workdir}/trial1 ... {workdir}/trial10) first')
  pooled = evaluation.aggregate_files(paths)
  _, markdown_path = evaluation.write_results(pooled, workdir, 'regdb_all_trials')
  return (f'{len(paths)} trial results pooled:\n{files.read_text(markdown_path)}\nwritten to '
          f'{markdown_path}')


def summary_after_training(workdir: str) -> str:
  workdir = files.path(workdir)
  return f'done. report: {workdir / "report.md"}, curves: {workdir / "curves.png"}'
