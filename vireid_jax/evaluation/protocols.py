"""The SYSU-MM01, RegDB and LLCM test protocols, run on extracted features.

Every runner returns the same structure, so reports, plots and trial aggregation treat every
dataset alike. All numbers are PERCENT (like papers); the metric functions underneath return
fractions.

    {
      '<setting>': {                   # e.g. 'all_search_single_shot', 'visible_to_thermal',
                                       # 'infrared_to_visible'
        'dataset': 'sysu' | 'regdb' | 'llcm',
        'setting': '<setting>',
        'units': 'percent',
        'num_query': int,
        'max_rank': int,
        # SYSU only: 'mode': 'all' | 'indoor', 'shots': int
        # RegDB, LLCM: 'query_modality': 'visible' | 'thermal' | 'infrared', 'gallery_modality'
        'trials': [int | None, ...],   # the gallery draws (SYSU, LLCM) or RegDB splits averaged
        'mean': {'rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP'},  # over trials
        'std': {same keys},            # sample std over trials (ddof=1); 0 for one trial
        'cmc': [max_rank floats],      # CMC curve averaged over trials
        'per_trial': [{'trial', 'gallery_size', 'rank1', ..., 'mINP', 'cmc': [...]}, ...],
      },
      ...
    }

Rank-k keys are those of (1, 5, 10, 20) that are <= max_rank.
"""

import json
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from vireid_jax.runtime import files
from vireid_jax.evaluation import metrics
from vireid_jax.evaluation.galleries import gallery_indices
from vireid_jax.evaluation.galleries import one_per_identity_camera

REPORTED_RANKS = (1, 5, 10, 20)
METRIC_KEYS = ('rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP')
REGDB_SETTINGS = ('visible_to_thermal', 'thermal_to_visible')
# LLCM: (query modality, gallery modality); the gallery is drawn from the latter's test images.
LLCM_SETTINGS = {'infrared_to_visible': ('infrared', 'visible'),
                 'visible_to_infrared': ('visible', 'infrared')}


def setting_name(mode: str, shots: int) -> str:
  """SYSU setting key: 'all_search_single_shot', 'indoor_search_multi_shot', ..."""
  shot_name = {1: 'single_shot', 10: 'multi_shot'}.get(shots, f'{shots}_shot')
  return f'{mode}_search_{shot_name}'


def evaluate_sysu(query_features: np.ndarray, query_pids: np.ndarray, query_cams: np.ndarray,
                  gallery_features: np.ndarray, gallery_pids: np.ndarray,
                  gallery_cams: np.ndarray, modes: Sequence[str] = ('all', 'indoor'),
                  shots: Sequence[int] = (1, 10), trials: Iterable[int] = range(10),
                  max_rank: int = 20,
                  gallery_paths: Optional[Sequence[str]] = None) -> Dict[str, dict]:
  """SYSU-MM01: every (mode, shots) setting averaged over gallery draws, in percent.

  Features are extracted once, outside: each trial picks its gallery out of the whole visible
  test set with `gallery_indices`, and all draws share one similarity matrix.

  Args:
    query_features: (Q, D) L2-normalised infrared test features (cam3, cam6).
    query_pids: (Q,) their identities.
    query_cams: (Q,) their cameras.
    gallery_features: (N, D) L2-normalised features of ALL visible test images.
    gallery_pids: (N,) their identities.
    gallery_cams: (N,) their cameras.
    modes: search modes, 'all' and/or 'indoor'.
    shots: gallery images per (identity, camera): 1 single-shot, 10 multi-shot.
    trials: gallery draws to average (the standard report: 0-9).
    max_rank: length of the CMC curves.
    gallery_paths: (N,) paths of the visible test images, to draw the reference's galleries.

  Returns:
    {setting_name(mode, shots): result} in the structure of this module's docstring.
  """
  trials = list(trials)
  if not trials:
    raise ValueError('evaluate_sysu needs at least one trial')
  query_pids, query_cams = np.asarray(query_pids), np.asarray(query_cams)
  gallery_pids, gallery_cams = np.asarray(gallery_pids), np.asarray(gallery_cams)
  similarity = _similarity(query_features, gallery_features)  # (Q, N)
  draws = {(mode, shot_count, trial): gallery_indices(gallery_pids, gallery_cams, mode,
                                                      shot_count, trial, gallery_paths)
           for mode in modes for shot_count in shots for trial in trials}
  # A large draw (multi-shot) is ranked by restricting one ranking of the whole visible set
  # (the order sorting the draw alone gives, up to exactly tied scores); sorting a small one
  # (single-shot) alone is cheaper than that restriction.
  is_large = lambda index: 4 * len(index) >= len(gallery_pids)
  if any(is_large(index) for index in draws.values()):
    order = _rank_descending(similarity)  # (Q, N) int32

  def rank_gallery(index):
    return _restrict(order, index) if is_large(index) else _rank_descending(similarity[:, index])

  results = {}
  for mode in modes:
    for shot_count in shots:
      per_trial = []
      for trial in trials:
        index = draws[(mode, shot_count, trial)]
        cmc, mean_ap, mean_inp = metrics.ranked_metrics(
            rank_gallery(index), query_pids, gallery_pids[index], query_cams,
            gallery_cams[index], max_rank, rules='sysu')
        per_trial.append(_trial_entry(trial, len(index), cmc, mean_ap, mean_inp))
      name = setting_name(mode, shot_count)
      results[name] = _summarise(
          dict(dataset='sysu', setting=name, units='percent', num_query=len(query_pids),
               max_rank=max_rank, mode=mode, shots=int(shot_count)), per_trial)
  return results


def evaluate_regdb(visible_features: np.ndarray, visible_pids: np.ndarray,
                   thermal_features: np.ndarray, thermal_pids: np.ndarray,
                   max_rank: int = 20, trial: Optional[int] = None) -> Dict[str, dict]:
  """RegDB, one split: visible-to-thermal and thermal-to-visible over all test images.

  Args:
    visible_features: (Nv, D) L2-normalised visible test features of the split.
    visible_pids: (Nv,) their identities.
    thermal_features: (Nt, D) L2-normalised thermal test features.
    thermal_pids: (Nt,) their identities.
    max_rank: length of the CMC curves.
    trial: the split (1..10), recorded so that `aggregate_trials` can tell splits apart.

  Returns:
    {'visible_to_thermal': result, 'thermal_to_visible': result}, percent, one trial each.
  """
  visible_pids, thermal_pids = np.asarray(visible_pids), np.asarray(thermal_pids)
  similarity = _similarity(visible_features, thermal_features)  # (Nv, Nt)
  directions = {
      'visible_to_thermal': (-similarity, visible_pids, thermal_pids, 'visible', 'thermal'),
      'thermal_to_visible': (-similarity.T, thermal_pids, visible_pids, 'thermal', 'visible'),
  }
  results = {}
  for name, (distmat, q_pids, g_pids, q_modality, g_modality) in directions.items():
    cmc, mean_ap, mean_inp = metrics.eval_regdb(distmat, q_pids, g_pids, max_rank)
    results[name] = _summarise(
        dict(dataset='regdb', setting=name, units='percent', num_query=len(q_pids),
             max_rank=max_rank, query_modality=q_modality, gallery_modality=g_modality),
        [_trial_entry(trial, len(g_pids), cmc, mean_ap, mean_inp)])
  return results


def evaluate_llcm(visible_features: np.ndarray, visible_pids: np.ndarray,
                  visible_cams: np.ndarray, infrared_features: np.ndarray,
                  infrared_pids: np.ndarray, infrared_cams: np.ndarray,
                  settings: Sequence[str] = tuple(LLCM_SETTINGS),
                  trials: Iterable[int] = range(10), max_rank: int = 20,
                  visible_paths: Optional[Sequence[str]] = None,
                  infrared_paths: Optional[Sequence[str]] = None) -> Dict[str, dict]:
  """LLCM: both directions averaged over gallery draws, in percent.

  infrared_to_visible: every infrared test image is a query; trial t's gallery is one visible
  image per (identity, camera) drawn by `one_per_identity_camera(..., trial=t)`, the authors'
  `process_gallery_llcm(trial=t)`. visible_to_infrared: every visible test image is a query
  against one infrared image per (identity, camera). Both score with `metrics.eval_llcm`'s
  rules (no gallery image of the query's identity and camera; Rank-k counts identities once).
  The authors' code scores visible-to-infrared on the transposed matrix instead (docs/datasets.md,
  "LLCM"); this is the untransposed direction that unsupervised papers report.

  Args:
    visible_features: (Nv, D) L2-normalised features of ALL visible test images.
    visible_pids, visible_cams: (Nv,) their identities and cameras.
    infrared_features: (Ni, D) L2-normalised features of ALL infrared test images.
    infrared_pids, infrared_cams: (Ni,) their identities and cameras.
    settings: keys of LLCM_SETTINGS to score.
    trials: gallery draws to average (the standard report: 0-9).
    max_rank: length of the CMC curves.
    visible_paths, infrared_paths: image paths, to order each (identity, camera)'s images by
      file name as the authors' draw does.

  Returns:
    {setting: result} in the structure of this module's docstring.
  """
  trials = list(trials)
  if not trials:
    raise ValueError('evaluate_llcm needs at least one trial')
  unknown = sorted(set(settings) - set(LLCM_SETTINGS))
  if unknown:
    raise ValueError(f'unknown LLCM setting(s) {unknown}; expected {sorted(LLCM_SETTINGS)}')
  # One matrix for both directions: a pair scores the same whichever side queries.
  similarity = _similarity(visible_features, infrared_features)  # (Nv, Ni)
  sides = {'visible': (similarity, np.asarray(visible_pids), np.asarray(visible_cams),
                       visible_paths),
           'infrared': (similarity.T, np.asarray(infrared_pids), np.asarray(infrared_cams),
                        infrared_paths)}
  results = {}
  for name in settings:
    query_modality, gallery_modality = LLCM_SETTINGS[name]
    query_similarity, q_pids, q_cams, _ = sides[query_modality]
    _, g_pids, g_cams, g_paths = sides[gallery_modality]
    per_trial = []
    for trial in trials:
      index = one_per_identity_camera(g_pids, g_cams, trial, paths=g_paths)
      cmc, mean_ap, mean_inp = metrics.ranked_metrics(
          _rank_descending(query_similarity[:, index]), q_pids, g_pids[index], q_cams,
          g_cams[index], max_rank, rules='llcm')
      per_trial.append(_trial_entry(trial, len(index), cmc, mean_ap, mean_inp))
    results[name] = _summarise(
        dict(dataset='llcm', setting=name, units='percent', num_query=len(q_pids),
             max_rank=max_rank, query_modality=query_modality,
             gallery_modality=gallery_modality), per_trial)
  return results


def aggregate_trials(results: Sequence[Dict[str, dict]]) -> Dict[str, dict]:
  """Pools several result dicts (e.g. RegDB trials 1-10, each its own run) per setting.

  Every setting present in all inputs gets the per-trial entries of all of them and their
  mean and std; the metadata comes from the first input.

  Args:
    results: result dicts of `evaluate_regdb` / `evaluate_sysu` (or loaded from their JSON).

  Returns:
    One result dict in the same structure.
  """
  results = list(results)
  if not results:
    raise ValueError('aggregate_trials needs at least one result')
  settings = [name for name in results[0] if all(name in other for other in results[1:])]
  if not settings:
    raise ValueError('The results share no setting: '
                     f'{[sorted(result) for result in results]}')
  pooled = {}
  for name in settings:
    per_trial = [entry for result in results for entry in result[name]['per_trial']]
    labels = [entry['trial'] for entry in per_trial if entry['trial'] is not None]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
      raise ValueError(f'{name}: trial(s) {repeated} appear more than once; pass each '
                       'trial\'s results once')
    metadata = {key: value for key, value in results[0][name].items()
                if key not in ('trials', 'mean', 'std', 'cmc', 'per_trial')}
    pooled[name] = _summarise(metadata, per_trial)
  return pooled


def aggregate_files(paths: Sequence[str]) -> Dict[str, dict]:
  """`aggregate_trials` over result JSON files written by `report.write_results`."""
  loaded = []
  for path in paths:
    loaded.append(json.loads(files.read_text(path)))
  return aggregate_trials(loaded)


def _similarity(query_features, gallery_features) -> np.ndarray:
  query_features = np.asarray(query_features, np.float32)
  gallery_features = np.asarray(gallery_features, np.float32)
  if query_features.ndim != 2 or gallery_features.ndim != 2 or (
      query_features.shape[1] != gallery_features.shape[1]):
    raise ValueError(f'features must be (N, D) with one D: got query {query_features.shape}, '
                     f'gallery {gallery_features.shape}')
  similarity = query_features @ gallery_features.T
  if not np.isfinite(similarity).all():
    raise ValueError('The features hold NaN or inf: the model diverged or the checkpoint is '
                     'broken')
  return similarity


def _rank_descending(similarity: np.ndarray) -> np.ndarray:
  """(Q, N) int32 column indices per row, most similar first, sorted a block of rows at a time."""
  order = np.empty(similarity.shape, np.int32)
  rows = max(1, (1 << 20) // max(1, similarity.shape[1]))
  for start in range(0, len(similarity), rows):
    order[start:start + rows] = np.argsort(-similarity[start:start + rows], axis=1)
  return order


def _restrict(order: np.ndarray, index: np.ndarray) -> np.ndarray:
  """(Q, N) ranking of all columns -> (Q, M) ranking of the columns `index`, as 0..M-1."""
  local = np.full(order.shape[1], -1, np.int32)  # column -> its place in the draw, or -1
  local[index] = np.arange(len(index), dtype=np.int32)
  ranked = local[order]
  # Every row holds each drawn column once, so the kept entries reshape to (Q, M).
  return ranked[ranked >= 0].reshape(len(order), len(index))


def _trial_entry(trial, gallery_size, cmc, mean_ap, mean_inp) -> dict:
  entry = {'trial': None if trial is None else int(trial), 'gallery_size': int(gallery_size)}
  for rank in REPORTED_RANKS:
    if rank <= len(cmc):
      entry[f'rank{rank}'] = 100.0 * float(cmc[rank - 1])
  entry['mAP'] = 100.0 * mean_ap
  entry['mINP'] = 100.0 * mean_inp
  entry['cmc'] = [100.0 * float(value) for value in cmc]
  return entry


def _summarise(metadata: dict, per_trial: List[dict]) -> dict:
  """Adds trials, mean, std (ddof=1 over trials; 0 for one) and the mean CMC curve."""
  keys = [key for key in METRIC_KEYS if key in per_trial[0]]
  values = {key: np.array([entry[key] for entry in per_trial]) for key in keys}
  ddof = 1 if len(per_trial) > 1 else 0
  return dict(
      metadata,
      trials=[entry['trial'] for entry in per_trial],
      mean={key: float(values[key].mean()) for key in keys},
      std={key: float(values[key].std(ddof=ddof)) for key in keys},
      cmc=np.mean([entry['cmc'] for entry in per_trial], axis=0).tolist(),
      per_trial=per_trial,
  )
