"""Eval-feature extraction: batching, padding, sharding and flip-averaging change nothing else."""

import jax
import numpy as np
import pytest

from vireid_jax import augment
from vireid_jax import extract
from vireid_jax import models
from vireid_jax.runtime import sharding
from vireid_jax.data.types import INFRARED, VISIBLE

from train_test import tiny_config


@pytest.fixture(scope='module')
def setup():
  config = tiny_config()
  model = models.build_model(config.model)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (16, 8))
  images = np.random.default_rng(0).integers(0, 256, (21, 16, 8, 3), dtype=np.uint8)
  return config, model, variables, images


def direct(model, variables, images, modality, config, flip=False):
  x = augment.normalize(images, config.data.mean, config.data.std)
  apply = lambda x: (model.apply(variables, x, None, train=False) if modality == VISIBLE
                     else model.apply(variables, None, x, train=False))
  features = apply(x)
  if flip:
    features = features + apply(x[:, :, ::-1])
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
  return np.asarray(features)


@pytest.mark.parametrize('modality', [VISIBLE, INFRARED])
@pytest.mark.parametrize('flip', [False, True])
def test_sharded_padded_batches_equal_one_direct_call(setup, modality, flip):
  config, model, variables, images = setup
  mesh = sharding.make_mesh()  # 8 virtual devices; batch 5 rounds up to 8, 21 images pad to 24
  fn = extract.make_extract_fn(model, config.data.mean, config.data.std, flip)
  features = extract.extract_features(fn, sharding.put_replicated(variables, mesh), images,
                                      modality, batch_size=5, mesh=mesh, progress=False)
  expected = direct(model, variables, images, modality, config, flip)
  assert features.shape == expected.shape == (21, model.num_features)
  np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('modality', [VISIBLE, INFRARED])
def test_clustering_flip_is_the_plain_mean_of_the_unit_features(setup, modality):
  """renormalize=False: (f(x) + f(flip x)) / 2 of the per-image unit features, not renormalised
  (PGM's clustering features, EV:43-49)."""
  config, model, variables, images = setup
  mesh = sharding.make_mesh()
  fn = extract.make_extract_fn(model, config.data.mean, config.data.std, flip=True,
                               renormalize=False)
  features = extract.extract_features(fn, sharding.put_replicated(variables, mesh), images,
                                      modality, batch_size=5, mesh=mesh, progress=False)
  # Independently: each image and its mirror through the network one by one, then numpy.
  plain = direct(model, variables, images, modality, config).astype(np.float64)
  mirrored = direct(model, variables, np.ascontiguousarray(images[:, :, ::-1]), modality,
                    config).astype(np.float64)
  np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, rtol=1e-5)
  expected = (plain + mirrored) / 2
  np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
  norms = np.linalg.norm(features, axis=1)
  # Not renormalised: |mean| = cos(half the angle between f(x) and f(flip x)) < 1.
  np.testing.assert_allclose(norms, np.linalg.norm(expected, axis=1), rtol=1e-5)
  assert norms.max() < 1 - 1e-4 and norms.min() > 0


def test_unknown_modality_is_rejected(setup):
  config, model, variables, images = setup
  fn = extract.make_extract_fn(model, config.data.mean, config.data.std, False)
  with pytest.raises(ValueError, match='modality'):
    extract.extract_features(fn, variables, images, 'thermal', 8, sharding.make_mesh(),
                             progress=False)
