"""`--mode embed`: which files, read as the test protocol reads them, embedded as the evaluation
extracts them, streamed in batches into an embeddings file, bad images named and skipped."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from vireid_jax import extract as extract_lib
from vireid_jax.data import decode
from vireid_jax.evaluation import driver
from vireid_jax.inference import cli
from vireid_jax.inference import embedding
from vireid_jax.inference import images as images_lib
from vireid_jax.inference import run as run_lib
from vireid_jax.inference import store
from vireid_jax.inference.errors import BadImage

from inference_fixtures import HEIGHT, WIDTH, run, write_folder, write_image  # pylint: disable=unused-import


@pytest.fixture(scope='module')
def opened(run):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  return run_lib.load_run(workdir, 'best')


def test_files_folders_and_list_files_give_their_images_in_order(tmp_path):
  folder = write_folder(tmp_path / 'photos', 7)
  (tmp_path / 'photos' / 'notes.txt').write_text('not an image')
  single = write_image(tmp_path / 'one.PNG', seed=9)
  listed = tmp_path / 'lists' / 'mine.txt'
  listed.parent.mkdir()
  # Relative to the list file's folder; comments and blank lines skipped; `path label` lines.
  listed.write_text('# mine\n../one.PNG\n\n../photos/b/002.bmp 7\n' + f'{folder[0]}\n')
  assert images_lib.list_images(str(tmp_path / 'photos')) == folder
  found = images_lib.list_images([single, str(tmp_path / 'photos'), str(listed)])
  assert found == [single, *folder, str(tmp_path / 'lists' / '../one.PNG'),
                   str(tmp_path / 'lists' / '../photos/b/002.bmp'), folder[0]]


def test_images_are_read_as_the_test_protocol_decodes_them(tmp_path):
  paths = write_folder(tmp_path, 8, sizes=((40, 80), (24, 40), (WIDTH, HEIGHT)))
  for path in paths:
    expected = decode.decode_resize(path, HEIGHT, WIDTH)  # what the prepared test sets hold
    np.testing.assert_array_equal(images_lib.read_image(path, HEIGHT, WIDTH), expected)
    # An array of the file's pixels (PNG, BMP: lossless) is made the same.
    if not path.endswith('.jpg'):
      pixels = np.asarray(Image.open(path))
      np.testing.assert_array_equal(images_lib.prepare_array(pixels, HEIGHT, WIDTH), expected)


def _evaluation_features(workdir, paths, modality, flip=True):
  """The evaluation's extraction (driver.restore_variables, extract.for_config,
  extract_features) of the images as the prepared test set decodes them."""
  run = run_lib.load_run(workdir, 'best')
  variables, _ = driver.restore_variables(run.config, run.model, workdir, run.mesh, 'best')
  pixels = np.stack(list(decode.decode_images(paths, HEIGHT, WIDTH)))
  config = run.config.copy_and_resolve_references()
  config.eval.flip = flip
  return extract_lib.extract_features(extract_lib.for_config(run.model, config), variables,
                                      pixels, modality, run.config.eval.batch_size, run.mesh,
                                      progress=False)


def test_mode_embed_writes_the_evaluations_features_with_their_paths(run, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  folder = write_folder(tmp_path / 'photos', 21)
  out = str(tmp_path / 'photos.npz')
  text = cli.run('embed', workdir, None, cli.Options(images=[str(tmp_path / 'photos')],
                                                    modality='infrared', out=out))
  assert text.startswith('embedded 21 infrared image(s) with ') and out in text
  with np.load(out, allow_pickle=False) as data:
    assert data['paths'].tolist() == folder
    assert str(data['modality']) == 'infrared' and len(data['skipped']) == 0
    assert str(data['checkpoint']) == os.path.join(workdir, 'checkpoints', 'best', '1')
    assert int(data['checkpoint_epoch']) == 1
    assert json.loads(str(data['extraction']))['flip'] is True
    assert json.loads(str(data['config']))['data']['image_height'] == HEIGHT
    features = data['features']
  assert features.dtype == np.float32 and features.shape == (21, 32)
  expected = _evaluation_features(workdir, folder, 'infrared')
  np.testing.assert_allclose(features, expected, rtol=0, atol=1e-6)
  # The evaluation flips (eval.flip): without it the features are others; and so are those of
  # the other modality's stem.
  assert np.abs(features - _evaluation_features(workdir, folder, 'infrared', flip=False)
                ).max() > 1e-3
  assert np.abs(features - _evaluation_features(workdir, folder, 'visible')).max() > 1e-3


def _bad_images(folder):
  """Four images that cannot be used, by name -> the words their line must hold."""
  os.makedirs(folder, exist_ok=True)
  good = write_image(os.path.join(folder, 'good.jpg'), seed=1)
  with open(good, 'rb') as f:
    data = f.read()
  with open(os.path.join(folder, 'truncated.jpg'), 'wb') as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(folder, 'text.png'), 'w') as f:
    f.write('not an image')
  write_image(os.path.join(folder, 'tiny.png'), size=(2, 3))
  write_image(os.path.join(folder, 'cmyk.jpg'), mode='CMYK')
  return {'truncated.jpg': 'cannot be read', 'text.png': 'cannot be read',
          'tiny.png': 'too small', 'cmyk.jpg': 'neither RGB nor greyscale'}


def test_bad_images_are_named_in_one_line_each_skipped_and_counted(run, tmp_path, capsys):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  bad = _bad_images(tmp_path / 'mixed')
  good = write_folder(tmp_path / 'mixed' / 'people', 5, seed=20)
  out = str(tmp_path / 'mixed.npz')
  capsys.readouterr()
  text = cli.run('embed', workdir, None, cli.Options(images=[str(tmp_path / 'mixed')],
                                                    modality='visible', out=out))
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('skipped')]
  assert len(lines) == 4
  for name, words in bad.items():
    line, = [line for line in lines if os.path.join(str(tmp_path / 'mixed'), name) in line]
    assert words in line
  assert 'skipped 4 image(s)' in text and 'embedded 6 visible' in text
  loaded = store.load(out)
  kept = [str(tmp_path / 'mixed' / 'good.jpg'), *good]
  assert sorted(loaded.paths.tolist()) == sorted(kept) and len(loaded.skipped) == 4
  # Nothing else lost: the good images' features are those of embedding them alone.
  order = [loaded.paths.tolist().index(p) for p in kept]
  np.testing.assert_allclose(loaded.features[order],
                             _evaluation_features(workdir, kept, 'visible'), atol=1e-6)


def test_a_stream_hands_the_writer_batches_equal_to_extracting_in_memory(opened, tmp_path):
  paths = write_folder(tmp_path, 21)
  embedder = embedding.Embedder(opened, batch_size=8)
  batches = []
  summary = embedder.stream(paths, 'visible', lambda f, p: batches.append((f, list(p))),
                            progress=False)
  assert [len(p) for _, p in batches] == [8, 8, 5] and summary.embedded == 21
  assert sum((p for _, p in batches), []) == paths
  in_memory = embedder.arrays(np.stack([images_lib.read_image(p, HEIGHT, WIDTH)
                                        for p in paths]), 'visible')
  np.testing.assert_array_equal(np.concatenate([f for f, _ in batches]), in_memory)
  # And the file written from the stream holds the same rows.
  out = str(tmp_path / 'stream.npz')
  embedder.to_file(paths, 'visible', out, progress=False)
  np.testing.assert_array_equal(store.load(out).features, in_memory)
  assert not [n for n in os.listdir(tmp_path) if '.partial' in n]


def test_reading_ahead_is_bounded_whatever_the_number_of_paths(tmp_path, monkeypatch):
  """The stream pulls at most (prefetch + 1) batches of paths ahead of what it yielded: a
  million paths never mean a million images in memory."""
  monkeypatch.setattr(images_lib, 'read_image',
                      lambda path, h, w: np.zeros((h, w, 3), np.uint8))
  pulled = [0]

  def paths():
    for i in range(10_000):
      pulled[0] += 1
      yield f'image{i}.jpg'

  stream = images_lib.read_batches(paths(), HEIGHT, WIDTH, batch_size=16, workers=2,
                                   prefetch_batches=2)
  most = 0
  for count, batch in enumerate(stream, start=1):
    assert len(batch.images) == 16
    most = max(most, pulled[0] - 16 * count)
    if count == 50:
      break
  stream.close()
  assert most <= 3 * 16


def test_the_writer_assembles_batches_and_leaves_nothing_when_interrupted(opened, tmp_path):
  rng = np.random.default_rng(0)
  rows = [rng.normal(size=(n, 32)).astype(np.float32) for n in (5, 0, 7)]
  names = [[f'dir/ü{n}-{i}.jpg' for i in range(len(r))] for n, r in enumerate(rows)]
  out = str(tmp_path / 'e.npz')
  with store.EmbeddingsWriter(out, 32, store.metadata(opened, 'visible')) as writer:
    for features, paths in zip(rows, names):
      writer.write(features, paths)
    writer.close(['x: skipped'])
  loaded = store.load(out)
  np.testing.assert_array_equal(loaded.features, np.concatenate(rows))
  assert loaded.paths.tolist() == sum(names, [])
  assert loaded.skipped.tolist() == ['x: skipped']
  assert loaded.weights_sha256 == opened.weights_sha256
  assert loaded.extraction == opened.extraction()
  assert sorted(os.listdir(tmp_path)) == ['e.npz']
  with pytest.raises(RuntimeError):
    with store.EmbeddingsWriter(str(tmp_path / 'f.npz'), 32, {}) as writer:
      writer.write(rows[0], names[0])
      raise RuntimeError('interrupted')
  assert sorted(os.listdir(tmp_path)) == ['e.npz']


def test_an_unusable_array_is_named_in_one_line():
  for array, words in ((np.zeros((2, 2, 3), np.uint8), 'too small'),
                       (np.zeros((HEIGHT, WIDTH, 4), np.uint8), 'RGB'),
                       (np.zeros((HEIGHT, WIDTH, 3), np.float32), 'uint8')):
    with pytest.raises(BadImage) as error:
      images_lib.prepare_arrays([array], HEIGHT, WIDTH)
    assert words in str(error.value) and '\n' not in str(error.value)
