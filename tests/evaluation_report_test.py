"""Tests of the result files, the CMC plot and the rank-list image."""

import json

import numpy as np
import pytest
from PIL import Image

from vireid_jax import evaluation
from vireid_jax.evaluation import metrics
from vireid_jax.evaluation import ranklist


def fake_results():
  """A SYSU result (3 trials) and a RegDB one (1 trial), in the runners' structure."""

  def entry(trial, shift):
    return {'trial': trial, 'gallery_size': 384, 'rank1': 50.0 + shift, 'rank5': 70.0 + shift,
            'rank10': 80.0 + shift, 'rank20': 90.0 + shift, 'mAP': 45.0 + shift,
            'mINP': 30.0 + shift, 'cmc': list(np.linspace(50 + shift, 90 + shift, 20))}

  sysu_trials = [entry(t, s) for t, s in ((0, 0.0), (1, 1.0), (2, 2.0))]
  keys = evaluation.METRIC_KEYS
  return {
      'all_search_single_shot': {
          'dataset': 'sysu', 'setting': 'all_search_single_shot', 'units': 'percent',
          'num_query': 3803, 'max_rank': 20, 'mode': 'all', 'shots': 1, 'trials': [0, 1, 2],
          'mean': {k: float(np.mean([e[k] for e in sysu_trials])) for k in keys},
          'std': {k: float(np.std([e[k] for e in sysu_trials], ddof=1)) for k in keys},
          'cmc': list(np.mean([e['cmc'] for e in sysu_trials], axis=0)),
          'per_trial': sysu_trials},
      'visible_to_thermal': {
          'dataset': 'regdb', 'setting': 'visible_to_thermal', 'units': 'percent',
          'num_query': 2060, 'max_rank': 20, 'query_modality': 'visible',
          'gallery_modality': 'thermal', 'trials': [4],
          'mean': {k: entry(4, 10.0)[k] for k in keys}, 'std': {k: 0.0 for k in keys},
          'cmc': entry(4, 10.0)['cmc'], 'per_trial': [entry(4, 10.0)]},
  }


def test_write_results_json_and_markdown(tmp_path):
  results = fake_results()
  json_path, markdown_path = evaluation.write_results(results, str(tmp_path / 'out'), 'final')
  assert json_path.endswith('final.json') and markdown_path.endswith('final.md')
  with open(json_path) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  with open(markdown_path) as f:
    table = f.read().splitlines()
  assert table[0] == '| Setting | Trials | Rank-1 | Rank-5 | Rank-10 | Rank-20 | mAP | mINP |'
  # Three trials: mean ± sample std (51 ± 1); one trial: the plain value.
  assert table[2] == ('| SYSU-MM01 all-search single-shot | 3 (0-2) | 51.00 ± 1.00 | '
                      '71.00 ± 1.00 | 81.00 ± 1.00 | 91.00 ± 1.00 | 46.00 ± 1.00 | '
                      '31.00 ± 1.00 |')
  assert table[3] == ('| RegDB visible-to-thermal | 1 (4) | 60.00 | 80.00 | 90.00 | 100.00 | '
                      '55.00 | 40.00 |')


def test_plot_cmc_writes_a_png(tmp_path):
  path = evaluation.plot_cmc(fake_results(), str(tmp_path / 'plots' / 'cmc.png'))
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.size[0] > 300 and image.size[1] > 200


def test_ranked_gallery_applies_the_cam2_drop_only_for_cam3_queries():
  distmat_row = np.array([0.1, 0.2, 0.3, 0.4])
  g_pids, g_cams = np.array([1, 1, 2, 2]), np.array([2, 1, 2, 4])

  def ranked(rules, q_pid, q_cam):
    dropped = metrics.drop_mask(rules, np.array([q_pid]), g_pids, np.array([q_cam]), g_cams)
    return ranklist.ranked_gallery(distmat_row, dropped[0], 3)

  np.testing.assert_array_equal(ranked('sysu', 1, 3), [1, 3])
  np.testing.assert_array_equal(ranked('sysu', 1, 6), [0, 1, 2])
  np.testing.assert_array_equal(ranked('regdb', 1, 3), [0, 1, 2])
  # LLCM drops only the query's own identity seen by its own camera.
  np.testing.assert_array_equal(ranked('llcm', 1, 2), [1, 2, 3])
  np.testing.assert_array_equal(ranked('llcm', 2, 2), [0, 1, 3])


def colour_pixels(path, hex_colour):
  rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
  with Image.open(path) as image:
    pixels = np.asarray(image.convert('RGB')).reshape(-1, 3)
  return int(np.all(pixels == rgb, axis=1).sum())


def test_save_ranklist_marks_correct_matches_green_and_wrong_red(tmp_path):
  grey = np.full((4, 32, 16, 3), 128, np.uint8)
  q_pids, g_pids = np.array([1, 2]), np.array([1, 3, 1, 4])
  q_cams, g_cams = np.array([6, 3]), np.array([1, 2, 4, 5])
  similarity = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
  mixed = ranklist.save_ranklist(grey[:2], grey, similarity, q_pids, g_pids, q_cams, g_cams,
                                 str(tmp_path / 'mixed.png'), top_k=3, is_similarity=True)
  assert colour_pixels(mixed, ranklist._CORRECT) > 50
  assert colour_pixels(mixed, ranklist._WRONG) > 50
  # Query 2 has no match in the gallery: only red borders.
  wrong = ranklist.save_ranklist(grey[1:2], grey, -similarity[1:], q_pids[1:], g_pids,
                                 q_cams[1:], g_cams, str(tmp_path / 'wrong.png'), top_k=3)
  assert colour_pixels(wrong, ranklist._CORRECT) == 0
  assert colour_pixels(wrong, ranklist._WRONG) > 50


def test_save_ranklist_checks_shapes(tmp_path):
  grey = np.full((2, 32, 16, 3), 128, np.uint8)
  with pytest.raises(ValueError, match='num_query'):
    ranklist.save_ranklist(grey, grey, np.zeros((2, 3)), np.array([1, 2]), np.array([1, 2]),
                           None, None, str(tmp_path / 'x.png'), rules='regdb')


def test_choose_queries_picks_distinct_identities_deterministically():
  q_pids = np.repeat(np.arange(20), 5)
  chosen = evaluation.choose_queries(q_pids, 8, seed=3)
  assert len(chosen) == 8 and len(set(q_pids[chosen])) == 8
  np.testing.assert_array_equal(chosen, evaluation.choose_queries(q_pids, 8, seed=3))
  assert len(evaluation.choose_queries(q_pids, 50)) == 20


def _cells(table, setting):
  """The cells of the row of `setting`, split on '|'."""
  row, = [line for line in table.splitlines() if line.startswith(f'| {setting} ')]
  return [cell.strip() for cell in row.strip('|').split('|')]


def test_side_by_side_table_puts_each_checkpoint_in_its_columns():
  best = fake_results()
  latest = json.loads(json.dumps(best))
  for result in latest.values():  # another checkpoint: other numbers
    for entry in result['per_trial']:
      entry['mAP'] -= 5.0
    result['mean']['mAP'] = float(np.mean([e['mAP'] for e in result['per_trial']]))
  del latest['visible_to_thermal']  # a setting one checkpoint lacks
  table = evaluation.side_by_side_table([('best (epoch 12)', best), ('latest (epoch 16)',
                                                                    latest)])
  assert table.splitlines()[0] == ('| Setting | Trials | best (epoch 12): Rank-1 | mAP | mINP | '
                                   'latest (epoch 16): Rank-1 | mAP | mINP |')
  # SYSU, 3 draws: mean ± sample std of each checkpoint's own trials (46 ± 1, then 41 ± 1).
  assert _cells(table, 'SYSU-MM01 all-search single-shot') == [
      'SYSU-MM01 all-search single-shot', '3 (0-2)', '51.00 ± 1.00', '46.00 ± 1.00',
      '31.00 ± 1.00', '51.00 ± 1.00', '41.00 ± 1.00', '31.00 ± 1.00']
  assert _cells(table, 'RegDB visible-to-thermal') == [
      'RegDB visible-to-thermal', '1 (4)', '60.00', '55.00', '40.00', '-', '-', '-']


def regdb_trial(trial, shift):
  """A RegDB result of one split, in the runners' structure (one trial entry)."""
  results = {}
  for name, query, gallery in (('visible_to_thermal', 'visible', 'thermal'),
                               ('thermal_to_visible', 'thermal', 'visible')):
    entry = {'trial': trial, 'gallery_size': 2060, 'rank1': 80.0 + shift, 'rank5': 90.0,
             'rank10': 95.0, 'rank20': 98.0, 'mAP': 70.0 + 2 * shift, 'mINP': 50.0 - shift,
             'cmc': [80.0 + shift] * 20}
    keys = evaluation.METRIC_KEYS
    results[name] = {
        'dataset': 'regdb', 'setting': name, 'units': 'percent', 'num_query': 2060,
        'max_rank': 20, 'query_modality': query, 'gallery_modality': gallery,
        'trials': [trial], 'mean': {k: entry[k] for k in keys}, 'std': {k: 0.0 for k in keys},
        'cmc': entry['cmc'], 'per_trial': [entry]}
  return results


def test_regdb_aggregate_shows_trial_1_beside_the_mean_for_each_checkpoint(tmp_path):
  from vireid_jax.evaluation import driver as evaluate
  shifts = {'best': {1: 3.0, 2: -1.0, 3: 1.0}, 'latest': {1: 0.5, 2: 0.0, 3: -2.0}}
  for kind, by_trial in shifts.items():
    for trial, shift in by_trial.items():
      evaluation.write_results(regdb_trial(trial, shift), str(tmp_path / f'trial{trial}' / 'eval'),
                               f'regdb_{kind}_trial{trial}')
  text = evaluate.aggregate_runs(str(tmp_path))
  table = (tmp_path / 'regdb_all_trials.md').read_text()
  assert table in text and 'trains and tests' in table
  assert table.splitlines()[0] == (
      '| Setting | Checkpoint | trial 1: Rank-1 | mAP | mINP | Trials | mean: Rank-1 | mAP | '
      'mINP |')
  rows = [[cell.strip() for cell in line.strip('|').split('|')]
          for line in table.splitlines()[2:] if line.startswith('| RegDB')]
  assert [row[:2] for row in rows] == [
      ['RegDB visible-to-thermal', 'best'], ['RegDB visible-to-thermal', 'latest'],
      ['RegDB thermal-to-visible', 'best'], ['RegDB thermal-to-visible', 'latest']]
  for row in rows:
    by_trial = shifts[row[1]]
    maps = [70.0 + 2 * shift for shift in by_trial.values()]
    assert row[3] == f'{70.0 + 2 * by_trial[1]:.2f}'  # trial 1 alone
    assert row[5] == '3 (1-3)'
    assert row[7] == f'{np.mean(maps):.2f} ± {np.std(maps, ddof=1):.2f}'
  for kind in shifts:  # the pooled results of each checkpoint kind
    pooled = json.loads((tmp_path / f'regdb_all_trials_{kind}.json').read_text())
    assert pooled['visible_to_thermal']['trials'] == [1, 2, 3]
