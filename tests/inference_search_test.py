"""`--mode search`: top-k by the evaluation's distance, its CSV and picture, Rank-k / mAP from
identities in the paths, and galleries of embeddings files."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import vireid_jax
from vireid_jax.evaluation import metrics
from vireid_jax.inference import cli
from vireid_jax.inference import search as search_lib
from vireid_jax.inference import store
from vireid_jax.inference.errors import InferenceError

from inference_fixtures import run, write_image  # pylint: disable=unused-import


def _unit_rows(rng, n, dim=16):
  rows = rng.normal(size=(n, dim)).astype(np.float32)
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_top_k_is_numpys_ranking_of_minus_cosine_ties_by_gallery_order():
  rng = np.random.default_rng(0)
  # Small integers: every product is exact in float32, so ties are exact and many.
  query = rng.integers(-3, 4, (37, 16)).astype(np.float32)
  gallery = rng.integers(-3, 4, (300, 16)).astype(np.float32)
  distance = -(query.astype(np.float64) @ gallery.T.astype(np.float64))
  # More queries than one block holds, so the blocking is exercised too.
  search_lib._BLOCK_ELEMENTS, saved = 300 * 5, search_lib._BLOCK_ELEMENTS  # pylint: disable=protected-access
  try:
    for k in (1, 7, 300, 1000):
      result = search_lib.search(query, gallery, top_k=k)
      expected = np.argsort(distance, axis=1, kind='stable')[:, :min(k, 300)]
      np.testing.assert_array_equal(result.indices, expected)
      np.testing.assert_array_equal(result.distances,
                                    np.take_along_axis(distance, expected, axis=1))
  finally:
    search_lib._BLOCK_ELEMENTS = saved  # pylint: disable=protected-access


def test_csv_has_one_row_per_query_and_rank(tmp_path):
  result = search_lib.SearchResult(np.array([[1, 0], [0, 1]]),
                                   np.array([[-0.9, -0.5], [-0.8, 0.25]], np.float32))
  path = search_lib.write_csv(str(tmp_path / 's.csv'), ['q0.jpg', 'q,1.jpg'],
                              ['g0.jpg', 'g1.jpg'], result)
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  assert rows == [['query', 'rank', 'gallery', 'distance'],
                  ['q0.jpg', '1', 'g1.jpg', '-0.900000'], ['q0.jpg', '2', 'g0.jpg', '-0.500000'],
                  ['q,1.jpg', '1', 'g0.jpg', '-0.800000'], ['q,1.jpg', '2', 'g1.jpg', '0.250000']]


@pytest.mark.parametrize('pattern,paths,pids,cams', [
    ('sysu', ['x/SYSU-MM01/cam3/0012/0001.jpg', 'cam1/0007/0020.jpg'], ['0012', '0007'], [3, 1]),
    ('market', ['bounding_box_test/0005_c3_0012.jpg', '-1_c1s1_000401_03.jpg'], ['0005', '-1'],
     [3, 1]),
    ('folder', ['people/anna/1.png', 'bob/x.bmp'], ['anna', 'bob'], None),
    (r'id(?P<pid>\d+)_cam(?P<cam>\d)', ['a/id7_cam2.jpg', 'id12_cam1_x.jpg'], ['7', '12'], [2, 1]),
])
def test_identity_patterns(pattern, paths, pids, cams):
  found, found_cams = search_lib.identities(paths, search_lib.compile_pattern(pattern), 'query')
  assert found == pids
  assert (found_cams is None and cams is None) or found_cams.tolist() == cams


def test_identity_codes_join_numbers_by_value_and_names_by_name():
  q, g = search_lib.identity_codes(['0001', '12'], ['1', '0012', '3'])
  assert q.tolist() == [1, 12] and g.tolist() == [1, 12, 3]
  q, g = search_lib.identity_codes(['bob', 'anna'], ['anna', 'carl', 'bob'])
  assert q.tolist() == [1, 0] and g.tolist() == [0, 2, 1]


@pytest.mark.parametrize('rules', ['none', 'sysu', 'llcm'])
def test_scores_are_the_evaluation_metrics_of_the_same_distances(rules):
  rng = np.random.default_rng(1)
  query, gallery = _unit_rows(rng, 40), _unit_rows(rng, 120)
  q_pids, g_pids = rng.integers(0, 15, 40), rng.integers(0, 15, 120)
  q_cams, g_cams = rng.choice([3, 6], 40), rng.choice([1, 2, 4, 5], 120)
  gallery[:40] = query + 0.3 * _unit_rows(rng, 40)  # some structure to rank
  g_pids[:40] = q_pids
  scores = search_lib.score(query, gallery, q_pids, g_pids, q_cams, g_cams, rules, max_rank=20)
  distmat = -(query @ gallery.T)
  if rules == 'none':
    cmc, mean_ap, mean_inp = metrics.eval_regdb(distmat, q_pids, g_pids, 20)
  else:
    evaluate = metrics.eval_sysu if rules == 'sysu' else metrics.eval_llcm
    cmc, mean_ap, mean_inp = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, 20)
  expected = {'rank1': cmc[0], 'rank5': cmc[4], 'rank10': cmc[9], 'rank20': cmc[19],
              'mAP': mean_ap, 'mINP': mean_inp}
  assert scores.values.keys() == expected.keys()
  for key, value in expected.items():
    assert scores.values[key] == pytest.approx(100 * value, abs=1e-9)
  assert 0 < scores.values['mAP'] < 100


def _people(folder, count_ids, per_id, seed):
  """Market-style files <pid>_c<cam>_<n>.png: the same picture per person, varied slightly."""
  rng = np.random.default_rng(seed)
  paths = []
  for pid in range(count_ids):
    base = rng.integers(0, 256, (4, 2, 3), np.uint8)
    for n in range(per_id):
      noisy = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255)
      image = Image.fromarray(noisy.astype(np.uint8)).resize((24, 48), Image.Resampling.BILINEAR)
      path = os.path.join(folder, f'{pid:04d}_c{1 + n % 2}_{n:04d}.png')
      os.makedirs(folder, exist_ok=True)
      image.save(path)
      paths.append(path)
  return paths


def test_mode_search_ranks_a_saved_gallery_and_scores_it(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  gallery_paths = _people(str(tmp_path / 'gallery'), 6, 3, seed=0)
  query_paths = _people(str(tmp_path / 'query'), 6, 1, seed=0)
  saved = str(tmp_path / 'gallery.npz')
  cli.run('embed', workdir, None, cli.Options(images=[str(tmp_path / 'gallery')],
                                             modality='visible', out=saved))
  out = tmp_path / 'out'
  text = cli.run('search', workdir, None, cli.Options(
      query=[str(tmp_path / 'query')], query_modality='infrared', gallery=[saved],
      top_k=5, id_pattern='market', out=str(out), ranklist_queries=3))
  # The query side embedded now, the gallery's rows read from the file: numpy ranks them.
  query = vireid_jax.Model.from_workdir(workdir).embed(str(tmp_path / 'query'), 'infrared')
  gallery = store.load(saved)
  distance = -(query @ gallery.features.T)
  order = np.argsort(distance, axis=1, kind='stable')[:, :5]
  with open(out / 'search.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6 * 5
  for row in rows:
    q = query_paths.index(row['query'])
    g = order[q, int(row['rank']) - 1]
    assert row['gallery'] == gallery.paths[g]
    assert float(row['distance']) == pytest.approx(distance[q, g], abs=1e-6)
  with Image.open(out / 'ranklist.png') as picture:
    assert picture.width > 6 * 50 and picture.height > 3 * 50
  # Rank-k and mAP: evaluation.metrics on the same distances, identities from the names.
  scores = json.loads((out / 'scores.json').read_text())
  q_pids = [int(os.path.basename(p)[:4]) for p in query_paths]
  g_pids = [int(os.path.basename(p)[:4]) for p in gallery.paths]
  cmc, mean_ap, mean_inp = metrics.eval_regdb(distance, q_pids, g_pids, 20)
  assert scores['values']['rank1'] == pytest.approx(100 * cmc[0], abs=1e-6)
  assert scores['values']['mAP'] == pytest.approx(100 * mean_ap, abs=1e-6)
  assert scores['values']['mINP'] == pytest.approx(100 * mean_inp, abs=1e-6)
  assert f'Rank-1 {100 * cmc[0]:.2f}' in text and f'mAP {100 * mean_ap:.2f}' in text


def test_a_gallery_of_another_checkpoint_is_refused_unless_forced(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  write_image(tmp_path / 'images' / 'a.jpg', seed=1)
  write_image(tmp_path / 'images' / 'b.jpg', seed=2)
  other = str(tmp_path / 'latest.npz')
  cli.run('embed', workdir, None, cli.Options(images=[str(tmp_path / 'images')],
                                             modality='visible', out=other,
                                             checkpoint='latest'))
  options = cli.Options(query=[str(tmp_path / 'images')], query_modality='infrared',
                        gallery=[other], out=str(tmp_path / 'out'), ranklist_queries=0)
  with pytest.raises(InferenceError) as error:
    cli.run('search', workdir, None, options)
  message = str(error.value)
  assert '\n' not in message and other in message and '--force' in message
  assert os.path.join('checkpoints', 'latest', '2') in message
  assert os.path.join('checkpoints', 'best', '1') in message
  options.force = True
  assert 'ranked 2 visible gallery image(s) for 2 infrared' in cli.run('search', workdir, None,
                                                                       options)
