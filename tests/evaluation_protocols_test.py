"""Tests of the SYSU-MM01 and LLCM gallery draws and the protocol runners."""

import json
import os
import random

import numpy as np
import pytest

from vireid_jax import evaluation
from vireid_jax.evaluation import metrics


def visible_test_set(seed=0, num_ids=6, shuffle=True):
  """A SYSU-like visible test set: ids x cams 1, 2, 4, 5 with 3..14 images, raw-layout paths."""
  rng = np.random.default_rng(seed)
  pids, cams, paths = [], [], []
  for pid in range(1, num_ids + 1):
    for cam in (1, 2, 4, 5):
      if pid == 2 and cam == 4:
        continue  # a missing camera folder, as happens in SYSU-MM01
      for k in range(rng.integers(3, 15)):
        pids.append(pid)
        cams.append(cam)
        paths.append(f'cam{cam}/{pid:04d}/{k + 1:04d}.jpg')
  order = rng.permutation(len(pids)) if shuffle else np.arange(len(pids))
  return np.array(pids)[order], np.array(cams)[order], np.array(paths)[order]


def reference_draw(paths, mode, trial, shots):
  """The reference's draw, written from its file-list logic: chosen paths in its order."""
  cameras = {'all': (1, 2, 4, 5), 'indoor': (1, 2)}[mode]
  by_folder = {}
  for path in paths:
    cam, pid = path.split('/')[:2]
    by_folder.setdefault((pid, int(cam[3:])), []).append(path)
  random.seed(trial)
  np.random.seed(trial)
  chosen = []
  for pid in sorted({key[0] for key in by_folder}):
    for cam in cameras:
      if (pid, cam) in by_folder:
        files = sorted(by_folder[(pid, cam)])
        if shots == 1:
          chosen.append(random.choice(files))
        else:
          chosen.extend(np.random.choice(files, shots, replace=False))
  return chosen


@pytest.mark.parametrize('mode', ['all', 'indoor'])
@pytest.mark.parametrize('trial', [0, 3])
def test_single_shot_gallery_is_the_reference_draw(mode, trial):
  pids, cams, paths = visible_test_set()
  index = evaluation.gallery_indices(pids, cams, mode, 1, trial, paths)
  assert sorted(paths[index]) == sorted(reference_draw(paths, mode, trial, 1))
  assert np.all(np.diff(index) > 0)  # sorted, no repeats
  # One image per (identity, camera) of the mode, nothing else.
  cameras = {'all': {1, 2, 4, 5}, 'indoor': {1, 2}}[mode]
  groups = list(zip(pids[index], cams[index]))
  assert len(groups) == len(set(groups))
  assert set(groups) == {(p, c) for p, c in zip(pids, cams) if c in cameras}


def test_multi_shot_gallery_takes_ten_per_camera_or_all():
  pids, cams, paths = visible_test_set()
  index = evaluation.gallery_indices(pids, cams, 'all', 10, 1, paths)
  for pid in np.unique(pids):
    for cam in (1, 2, 4, 5):
      available = np.sum((pids == pid) & (cams == cam))
      assert np.sum((pids[index] == pid) & (cams[index] == cam)) == min(available, 10)


def test_multi_shot_gallery_is_numpy_seeded_by_trial():
  # With every camera holding >= 10 images, the draw equals the peer codebases' multi-shot
  # draw after np.random.seed(trial).
  pids, cams, paths = [], [], []
  for pid in (1, 2):
    for cam in (1, 2, 4, 5):
      for k in range(12 + pid + cam):
        pids.append(pid)
        cams.append(cam)
        paths.append(f'cam{cam}/{pid:04d}/{k + 1:04d}.jpg')
  pids, cams, paths = np.array(pids), np.array(cams), np.array(paths)
  index = evaluation.gallery_indices(pids, cams, 'all', 10, 5, paths)
  assert sorted(paths[index]) == sorted(reference_draw(paths, 'all', 5, 10))


def test_gallery_draw_is_deterministic_per_trial_and_differs_across_trials():
  pids, cams, paths = visible_test_set(num_ids=20)
  for shots in (1, 10):
    draws = [evaluation.gallery_indices(pids, cams, 'all', shots, trial, paths)
             for trial in range(4)]
    again = evaluation.gallery_indices(pids, cams, 'all', shots, 2, paths)
    np.testing.assert_array_equal(draws[2], again)
    assert len({tuple(draw) for draw in draws}) == 4


def test_gallery_draw_ignores_the_image_set_order_when_paths_are_given():
  pids, cams, paths = visible_test_set(shuffle=False)
  shuffled = visible_test_set(shuffle=True)
  a = evaluation.gallery_indices(pids, cams, 'all', 1, 7, paths)
  b = evaluation.gallery_indices(*shuffled[:2], 'all', 1, 7, shuffled[2])
  assert sorted(paths[a]) == sorted(shuffled[2][b])


def test_gallery_indices_rejects_unknown_mode():
  pids, cams, paths = visible_test_set()
  with pytest.raises(ValueError, match='indoor'):
    evaluation.gallery_indices(pids, cams, 'outdoor')


def normalised(x):
  # float32 like real features, so the test's similarities equal the runner's bit for bit.
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sysu_features(seed=0):
  rng = np.random.default_rng(seed)
  pids, cams, paths = visible_test_set(seed, num_ids=8)
  q_pids = rng.integers(1, 9, 60)
  q_cams = rng.choice([3, 6], 60)
  centers = rng.standard_normal((9, 16))
  q_features = normalised(centers[q_pids] + rng.standard_normal((60, 16)))
  g_features = normalised(centers[pids] + rng.standard_normal((len(pids), 16)))
  return q_features, q_pids, q_cams, g_features, pids, cams, paths


def test_evaluate_sysu_equals_eval_sysu_on_each_drawn_gallery():
  q_features, q_pids, q_cams, g_features, g_pids, g_cams, paths = sysu_features()
  results = evaluation.evaluate_sysu(q_features, q_pids, q_cams, g_features, g_pids, g_cams,
                                     trials=range(3), gallery_paths=paths)
  assert set(results) == {'all_search_single_shot', 'all_search_multi_shot',
                          'indoor_search_single_shot', 'indoor_search_multi_shot'}
  for mode in ('all', 'indoor'):
    for shots in (1, 10):
      result = results[evaluation.setting_name(mode, shots)]
      assert (result['mode'], result['shots'], result['units']) == (mode, shots, 'percent')
      assert result['trials'] == [0, 1, 2]
      for entry in result['per_trial']:
        index = evaluation.gallery_indices(g_pids, g_cams, mode, shots, entry['trial'], paths)
        cmc, mean_ap, mean_inp = metrics.eval_sysu(
            -q_features @ g_features[index].T, q_pids, g_pids[index], q_cams, g_cams[index])
        assert entry['gallery_size'] == len(index)
        np.testing.assert_allclose(entry['cmc'], 100 * cmc, atol=1e-9)
        assert entry['rank1'] == pytest.approx(100 * cmc[0])
        assert entry['rank10'] == pytest.approx(100 * cmc[9])
        assert entry['mAP'] == pytest.approx(100 * mean_ap)
        assert entry['mINP'] == pytest.approx(100 * mean_inp)
      for key in evaluation.METRIC_KEYS:
        values = [entry[key] for entry in result['per_trial']]
        assert result['mean'][key] == pytest.approx(np.mean(values))
        assert result['std'][key] == pytest.approx(np.std(values, ddof=1))


def test_evaluate_sysu_trials_are_deterministic_and_differ():
  q_features, q_pids, q_cams, g_features, g_pids, g_cams, paths = sysu_features(1)
  args = (q_features, q_pids, q_cams, g_features, g_pids, g_cams)
  first = evaluation.evaluate_sysu(*args, modes=('all',), shots=(1,), trials=range(4))
  second = evaluation.evaluate_sysu(*args, modes=('all',), shots=(1,), trials=range(4))
  assert first == second
  maps = [entry['mAP'] for entry in first['all_search_single_shot']['per_trial']]
  assert len(set(maps)) > 1
  # A lone draw is ranked on its own, many draws by restricting one ranking: same numbers.
  many = evaluation.evaluate_sysu(*args, trials=range(4))['all_search_single_shot']
  assert many['per_trial'] == first['all_search_single_shot']['per_trial']


def regdb_result(seed, trial):
  rng = np.random.default_rng(seed)
  pids = np.repeat(np.arange(10), 3)
  centers = rng.standard_normal((10, 16))
  visible = normalised(centers[pids] + rng.standard_normal((30, 16)))
  thermal = normalised(centers[pids] + rng.standard_normal((30, 16)))
  return evaluation.evaluate_regdb(visible, pids, thermal, pids, trial=trial), (
      visible, thermal, pids)


def test_evaluate_regdb_both_directions():
  results, (visible, thermal, pids) = regdb_result(0, trial=1)
  assert set(results) == set(evaluation.REGDB_SETTINGS)
  similarity = visible @ thermal.T
  for name, distmat in (('visible_to_thermal', -similarity),
                        ('thermal_to_visible', -similarity.T)):
    cmc, mean_ap, mean_inp = metrics.eval_regdb(distmat, pids, pids)
    result = results[name]
    assert result['trials'] == [1]
    assert result['mean']['rank1'] == pytest.approx(100 * cmc[0])
    assert result['mean']['mAP'] == pytest.approx(100 * mean_ap)
    assert result['mean']['mINP'] == pytest.approx(100 * mean_inp)
    assert result['std']['mAP'] == 0.0
  assert results['visible_to_thermal']['query_modality'] == 'visible'
  assert results['thermal_to_visible']['query_modality'] == 'thermal'


def test_aggregate_trials_pools_regdb_splits(tmp_path):
  runs = [regdb_result(seed, trial)[0] for seed, trial in ((0, 1), (1, 2), (2, 3))]
  pooled = evaluation.aggregate_trials(runs)
  for name in evaluation.REGDB_SETTINGS:
    maps = [run[name]['mean']['mAP'] for run in runs]
    assert pooled[name]['trials'] == [1, 2, 3]
    assert pooled[name]['mean']['mAP'] == pytest.approx(np.mean(maps))
    assert pooled[name]['std']['mAP'] == pytest.approx(np.std(maps, ddof=1))
    np.testing.assert_allclose(pooled[name]['cmc'],
                               np.mean([run[name]['cmc'] for run in runs], axis=0))
  # The same from the JSON files each run writes.
  files = [evaluation.write_results(run, str(tmp_path / f'trial{i}'), 'regdb')[0]
           for i, run in enumerate(runs)]
  assert evaluation.aggregate_files(files) == json.loads(json.dumps(pooled))
  with pytest.raises(ValueError, match='more than once'):
    evaluation.aggregate_trials([runs[0], runs[0]])


# --- LLCM -------------------------------------------------------------------------------------


def llcm_test_set(modality, seed=0, num_ids=6):
  """An LLCM-like test set of one modality: ids x some cameras, 2..6 images, release paths."""
  rng = np.random.default_rng(seed)
  folder, tag = {'visible': ('test_vis', 'vis'), 'infrared': ('test_nir', 'nir')}[modality]
  cameras = (1, 2, 3, 4, 5, 6, 7, 8, 9) if modality == 'visible' else (1, 2, 4, 5, 6, 7, 8, 9)
  pids, cams, paths = [], [], []
  for pid in range(1, num_ids + 1):
    for cam in sorted(rng.choice(cameras, 3, replace=False)):
      for frame in rng.choice(1000, rng.integers(2, 7), replace=False):
        pids.append(pid)
        cams.append(cam)
        paths.append(f'{folder}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_s1_f{frame:04d}_{tag}.jpg')
  order = rng.permutation(len(pids))  # the draw must not depend on the ImageSet's order
  return np.array(pids)[order], np.array(cams)[order], np.array(paths)[order]


def authors_llcm_draw(paths, modality, trial):
  """The LLCM authors' process_gallery_llcm, written from its file-list logic."""
  cameras = ([f'test_vis/cam{c}' for c in range(1, 10)] if modality == 'visible' else
             [f'test_nir/cam{c}' for c in (1, 2, 4, 5, 6, 7, 8, 9)])
  folders = {}
  for path in paths:
    folders.setdefault(os.path.dirname(path), []).append(path)
  random.seed(trial)
  chosen = []
  for pid in sorted({path.split('/')[2] for path in paths}):  # '%04d' strings, as theirs
    for cam in cameras:
      if f'{cam}/{pid}' in folders:
        chosen.append(random.choice(sorted(folders[f'{cam}/{pid}'])))
  return chosen


@pytest.mark.parametrize('modality', ['visible', 'infrared'])
def test_llcm_gallery_is_the_authors_draw_and_differs_across_trials(modality):
  pids, cams, paths = llcm_test_set(modality)
  draws = []
  for trial in range(4):
    index = evaluation.one_per_identity_camera(pids, cams, trial, paths=paths)
    assert sorted(paths[index]) == sorted(authors_llcm_draw(paths, modality, trial))
    groups = list(zip(pids[index], cams[index]))
    assert len(groups) == len(set(groups)) == len(set(zip(pids, cams)))
    draws.append(tuple(index))
  again = evaluation.one_per_identity_camera(pids, cams, 2, paths=paths)
  assert tuple(again) == draws[2]  # deterministic per trial
  assert len(set(draws)) == 4  # and different across trials


def llcm_features(seed=0):
  """Integer-valued features: every dot product is exact, so any BLAS gives the same scores
  (and the same exact ties) to the runner and to this test."""
  rng = np.random.default_rng(seed)
  sets = {}
  for modality in ('visible', 'infrared'):
    pids, cams, paths = llcm_test_set(modality, seed)
    centers = rng.integers(-2, 3, (7, 8))
    features = (centers[pids] + rng.integers(-2, 3, (len(pids), 8))).astype(np.float32)
    sets[modality] = (features, pids, cams, paths)
  return sets


def test_evaluate_llcm_equals_eval_llcm_on_each_drawn_gallery():
  sets = llcm_features()
  (v_feat, v_pids, v_cams, v_paths), (i_feat, i_pids, i_cams, i_paths) = (
      sets['visible'], sets['infrared'])
  results = evaluation.evaluate_llcm(v_feat, v_pids, v_cams, i_feat, i_pids, i_cams,
                                     trials=range(3), visible_paths=v_paths,
                                     infrared_paths=i_paths)
  assert set(results) == set(evaluation.LLCM_SETTINGS)
  for name, (query, gallery) in evaluation.LLCM_SETTINGS.items():
    result = results[name]
    q_feat, q_pids, q_cams, _ = sets[query]
    g_feat, g_pids, g_cams, g_paths = sets[gallery]
    # Every test image of the query modality queries (untransposed, both directions).
    assert (result['dataset'], result['num_query']) == ('llcm', len(q_pids))
    assert (result['query_modality'], result['gallery_modality']) == (query, gallery)
    assert result['trials'] == [0, 1, 2]
    for entry in result['per_trial']:
      index = evaluation.one_per_identity_camera(g_pids, g_cams, entry['trial'], paths=g_paths)
      assert entry['gallery_size'] == len(index) == len(set(zip(g_pids, g_cams)))
      cmc, mean_ap, mean_inp = evaluation.eval_llcm(-q_feat @ g_feat[index].T, q_pids,
                                                    g_pids[index], q_cams, g_cams[index])
      np.testing.assert_allclose(entry['cmc'], 100 * cmc, atol=1e-9)
      assert entry['rank1'] == pytest.approx(100 * cmc[0])
      assert entry['mAP'] == pytest.approx(100 * mean_ap)
      assert entry['mINP'] == pytest.approx(100 * mean_inp)
    for key in evaluation.METRIC_KEYS:
      values = [entry[key] for entry in result['per_trial']]
      assert result['mean'][key] == pytest.approx(np.mean(values))
      assert result['std'][key] == pytest.approx(np.std(values, ddof=1))
  maps = [entry['mAP'] for entry in results['infrared_to_visible']['per_trial']]
  assert len(set(maps)) > 1  # the draws differ, and so do the numbers


def test_evaluate_llcm_rejects_unknown_settings():
  sets = llcm_features()
  with pytest.raises(ValueError, match='thermal_to_visible'):
    evaluation.evaluate_llcm(*sets['visible'][:3], *sets['infrared'][:3],
                             settings=('thermal_to_visible',))
