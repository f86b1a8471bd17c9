"""The Python API: `vireid_jax.Model` gives what `--mode embed` writes, on arrays and on paths;
it is loaded only when asked for."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vireid_jax
from vireid_jax.inference import cli
from vireid_jax.inference import search as search_lib
from vireid_jax.inference import store

from inference_fixtures import run, write_folder  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def model(run):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  return vireid_jax.Model.from_workdir(workdir, checkpoint='best')


def test_embed_on_arrays_and_on_paths_equals_mode_embed(run, model, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, _ = run
  paths = write_folder(tmp_path / 'photos', 13, seed=3)
  out = str(tmp_path / 'photos.npz')
  cli.run('embed', workdir, None, cli.Options(images=[str(tmp_path / 'photos')],
                                             modality='visible', out=out))
  expected = store.load(out).features
  # Arrays of the files' pixels at their own sizes (greyscale ones as (H, W)), as a notebook
  # holds them: the API resizes them as the files are resized.
  arrays = [np.asarray(Image.open(path)) for path in paths]
  assert any(a.ndim == 2 for a in arrays) and len({a.shape[:2] for a in arrays}) > 1
  np.testing.assert_allclose(model.embed(arrays, 'visible'), expected, rtol=0, atol=1e-6)
  np.testing.assert_allclose(model.embed(str(tmp_path / 'photos'), 'visible'), expected,
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(model.embed(paths[4], 'visible'), expected[4:5], rtol=0, atol=1e-6)
  one = np.asarray(Image.open(paths[0]).convert('RGB'))
  np.testing.assert_allclose(model.embed(one, 'visible'), expected[:1], rtol=0, atol=1e-6)
  embedded = model.embed_files([str(tmp_path / 'photos')], 'visible', progress=False)
  assert embedded.paths.tolist() == paths
  np.testing.assert_array_equal(embedded.features, expected)


def test_search_and_what_the_model_says_of_itself(model):  # pylint: disable=redefined-outer-name
  rng = np.random.default_rng(0)
  query = rng.normal(size=(5, 32)).astype(np.float32)
  gallery = rng.normal(size=(40, 32)).astype(np.float32)
  for result in (model.search(query, gallery, top_k=4), vireid_jax.search(query, gallery, 4)):
    expected = search_lib.search(query, gallery, 4)
    np.testing.assert_array_equal(result.indices, expected.indices)
    np.testing.assert_array_equal(result.distances, expected.distances)
  assert model.image_size == (32, 16) and model.num_features == 32
  assert model.modalities == ('visible', 'infrared') and model.epoch == 1
  assert model.checkpoint.endswith(os.path.join('checkpoints', 'best', '1'))
  assert 'epoch 1' in repr(model)
  assert vireid_jax.Model.from_workdir(os.path.dirname(os.path.dirname(os.path.dirname(
      model.checkpoint))), checkpoint='latest').weights_sha256 != model.weights_sha256


@pytest.mark.slow
def test_the_api_is_imported_only_when_asked_for():
  code = ('import sys, vireid_jax.train; '
          'assert not [m for m in sys.modules if m.startswith("vireid_jax.inference")]; '
          'import vireid_jax; from vireid_jax.inference.model import Model; '
          'assert vireid_jax.Model is Model; print("ok")')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
  assert result.stdout.strip() == 'ok', result.stderr
