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

from vireid_jax.runtime import checkpoint
from vireid_jax import evaluation
from vireid_jax.runtime import files
from vireid_jax.runtime import multihost
from vireid_jax.runtime import sharding
from vireid_jax import train_state
from vireid_jax.data.types import INFRARED, VISIBLE, ImageSet

_SELECT_LABEL = {'mAP': 'mAP', 'rank1': 'Rank-1'}
# Extracts (N, C) normalised features: f(images, modality, description).
ExtractFn = Callable[[np.ndarray, str, str], np.ndarray]


def selection_setting(config: ml_collections.ConfigDict) -> str:
  """The protocol setting whose mAP (or Rank-1: config.eval.select_by) picks the best
  checkpoint."""
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


BOTH = 'both'  # config.eval.checkpoint: the best and the latest checkpoint, side by side


def evaluated_variables(config: ml_collections.ConfigDict, method, epoch: int, state) -> dict:
  """The network's {'params', 'batch_stats'} that `method` evaluates after `epoch` (0-based;
  -1 before training): its `eval_variables` choice (e.g. PCLHD's teacher in stage 2), else the
  trained network."""
  variables = state.network_variables()
  if method.eval_variables is None or epoch < 0:
    return variables
  return method.eval_variables(config, epoch, variables, state.method_state)


def restore_variables(config, model, workdir: str, mesh, which: str) -> tuple[dict, dict]:
  """(variables, record) of checkpoint `which`: 'best', 'latest' or a checkpoint folder; the
  variables of the network the method evaluates (`evaluated_variables`).

  The one way to the variables a checkpoint evaluates: `--mode eval` and the inference code
  (vireid_jax/inference/) both call it, so which network a checkpoint stands for is decided
  here alone."""
  from vireid_jax import methods  # pylint: disable=import-outside-toplevel
  abstract = train_state.abstract_train_state(config, model, mesh)
  if which in (checkpoint.BEST, checkpoint.LATEST):
    state, record = checkpoint.restore(workdir, which, abstract)
  else:
    state, record = checkpoint.restore_path(which, abstract)
  return evaluated_variables(config, methods.for_config(config), record['epoch'] - 1,
                             state), record


def _checkpoints_to_evaluate(config, workdir: str) -> list[str]:
  which = config.eval.checkpoint
  if which != BOTH:
    return [which]
  found = [kind for kind in (checkpoint.BEST, checkpoint.LATEST)
           if checkpoint.latest_epoch(workdir, kind) is not None]
  if not found:  # restore names the folder and what to do
    return [checkpoint.LATEST]
  return found


def run_eval(config: ml_collections.ConfigDict, workdir: str) -> Optional[str]:
  """`--mode eval`: the full protocol on a checkpoint, or (config.eval.checkpoint 'both', the
  default) on the best and the latest side by side; returns what to print (process 0; None
  elsewhere).

  Writes into <workdir>/eval/ per checkpoint `<dataset>_<best|latest|checkpoint>[_trial<k>]`
  .json, .md, _cmc.png, _ranklist.png, and with 'both' `<dataset>_best_and_latest[...].md`.
  """
  from vireid_jax import extract as extract_lib
  from vireid_jax.data import shared as shared_data
  from vireid_jax import models

  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  # Every checkpoint first: a missing or unreadable one stops before the data is loaded.
  restored = [(which, *restore_variables(config, model, workdir, mesh, which))
              for which in _checkpoints_to_evaluate(config, workdir)]
  test_visible, test_infrared = shared_data.load_test_on_every_process(config.data)
  extract_batch = extract_lib.for_config(model, config)
  out_dir = files.path(workdir) / 'eval'
  trial = f'_trial{config.data.trial}' if config.data.dataset == 'regdb' else ''
  evaluated = []  # (label, record, results)
  for which, variables, record in restored:
    label = which if which in (checkpoint.BEST, checkpoint.LATEST) else 'checkpoint'
    cache = {}

    def extract(images, modality, desc, variables=variables, cache=cache):
      cache[modality] = extract_lib.extract_features(extract_batch, variables, images,
                                                     modality, config.eval.batch_size, mesh,
                                                     desc=desc)
      return cache[modality]

    results = evaluate_features(config, extract, test_visible, test_infrared,
                                trials=config.eval.trials, full=True)
    if results is None:  # not process 0
      continue
    name = f'{config.data.dataset}_{label}{trial}'
    evaluation.write_results(results, out_dir, name)
    evaluation.plot_cmc(results, out_dir / f'{name}_cmc.png')
    if config.eval.ranklist_queries:
      _save_ranklist(config, cache, test_visible, test_infrared, out_dir / f'{name}_ranklist.png')
    evaluated.append((label, record, results))
  if not multihost.is_main():
    return None
  note = _which_note(config, evaluated)
  if len(evaluated) == 1:
    label, record, _ = evaluated[0]
    table = files.read_text(out_dir / f'{config.data.dataset}_{label}{trial}.md')
    return (f'checkpoint: {config.eval.checkpoint} (after epoch {record["epoch"]})\n'
            + (f'{note}\n' if note else '') + f'{table}\nwritten to {out_dir}/')
  columns = [(f'{label} (epoch {record["epoch"]})', results)
             for label, record, results in evaluated]
  each = ', '.join(f'{config.data.dataset}_{label}{trial}.md' for label, _, _ in evaluated)
  text = (f'{evaluation.side_by_side_table(columns)}\n{note}\nPercent; with several trials, '
          f'mean ± sample standard deviation. Every setting and metric: {each}.\n')
  path = files.write_text(out_dir / f'{config.data.dataset}_best_and_latest{trial}.md', text)
  return f'{text}\nwritten to {out_dir}/ ({path.name}, and the files of each checkpoint)'


def _which_note(config, evaluated: list) -> str:
  """What 'best' and 'latest' mean: the best is chosen on test data."""
  notes = []
  for label, record, results in evaluated:
    if label == checkpoint.BEST:
      setting = selection_setting(config)
      if setting in results:
        setting = evaluation.display_name(results[setting])
      notes.append(
          f'best: after epoch {record["epoch"]}, the highest {setting} '
          f'{_SELECT_LABEL[config.eval.select_by]} of the evaluations '
          f'during training, which use the test set (as the authors\' code does): the best is '
          f'chosen on test data.')
    elif label == checkpoint.LATEST:
      notes.append(f'latest: after epoch {record["epoch"]} of {config.schedule.epochs}'
                   + (' (the last).' if record['epoch'] == config.schedule.epochs else
                      ' (training has not finished).'))
  return ' '.join(notes)


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


# The RegDB split the authors' code trains and tests (its RegDB.py hard-codes trial 1).
AUTHORS_REGDB_TRIAL = 1


def aggregate_runs(workdir: str) -> str:
  """`--mode aggregate`: pools `eval/regdb_<best|latest>_trial<k>.json` of every run under
  `workdir` (one run per RegDB split), for each checkpoint kind found.

  Writes `regdb_all_trials_<kind>.{json,md}` (the pooled results) and `regdb_all_trials.md`:
  per setting and checkpoint, split 1 alone (what the authors' code trains and tests) beside
  the mean ± std over every split. Returns that table and where the files are.
  """
  pooled, counts = [], []
  for kind in (checkpoint.BEST, checkpoint.LATEST):
    paths = sorted(str(p) for p in
                   files.path(workdir).glob(f'*/eval/regdb_{kind}_trial*.json'))
    if paths:
      results = evaluation.aggregate_files(paths)
      evaluation.write_results(results, workdir, f'regdb_all_trials_{kind}')
      pooled.append((kind, results))
      counts.append(f'{len(paths)} {kind}')
  if not pooled:
    raise FileNotFoundError(
        f'no RegDB results under {workdir}/*/eval/: run `--mode eval` in each trial\'s workdir '
        f'(e.g. {workdir}/trial1 ... {workdir}/trial10) first')
  table = evaluation.trial_and_mean_table(pooled, trial=AUTHORS_REGDB_TRIAL)
  text = (f'{table}\nTrial {AUTHORS_REGDB_TRIAL} is the split the authors\' code trains and '
          f'tests; the mean (± sample standard deviation) pools every split found. best: '
          f'chosen during training on the test set, as the authors\' code does; latest: after '
          f'the last epoch. Percent.\n')
  path = files.write_text(files.path(workdir) / 'regdb_all_trials.md', text)
  return (f'trial results pooled ({", ".join(counts)}):\n{text}\nwritten to {path} (and '
          f'regdb_all_trials_<best|latest>.json/.md beside it)')


def summary_after_training(workdir: str) -> str:
  workdir = files.path(workdir)
  return f'done. report: {workdir / "report.md"}, curves: {workdir / "curves.png"}'
