"""The ImageNet stand-in: a tiny pretraining run, its file, its people, its way into the demo."""

import dataclasses
import importlib.util
import os

import flax.traverse_util
import jax
import numpy as np
import pytest

from vireid_jax import augment
from vireid_jax import config as config_lib
from vireid_jax.models import initial_weights
from vireid_jax import models
from vireid_jax.models import pretrain
from vireid_jax.runtime import sharding
from vireid_jax import train_state
from vireid_jax.data import render
from vireid_jax.data import synthetic
from vireid_jax.models import weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(name: str = 'demo'):
  spec = importlib.util.spec_from_file_location(f'{name}_config',
                                                os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(output_dir: str):
  """The demo's config with a tiny network, tiny images and a tiny population."""
  config = demo_config()
  config.data.image_height, config.data.image_width = 16, 8
  config.model.width = 4
  config.pretrain.update(num_ids=4, images_per_id=2, epochs=1, batch_size=8,
                         output_dir=output_dir)
  return config


def _flat(tree) -> dict:
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """(config, variables trained on the tiny population, the written file)."""
  config = tiny_config(str(tmp_path_factory.mktemp('pretrained')))
  variables, record = pretrain.pretrain_variables(config, progress=False)
  assert np.isfinite(record['last_epoch']['loss'])
  path = pretrain.save_state_dict(variables, pretrain.pretrained_path(config))
  return config, variables, path


def test_state_dict_is_torchvision_layout_and_loads_through_the_imagenet_import(pretrained):
  config, trained, path = pretrained
  state = weights.read_state_dict(path)
  assert {'conv1.weight', 'bn1.running_var', 'layer4.0.conv2.weight', 'fc.weight'} <= set(state)
  assert state['conv1.weight'].shape == (4, 3, 7, 7)  # torch OIHW
  assert state['fc.weight'].shape == (config.pretrain.num_ids, 32)  # (classes, features)

  model = models.build_model(config.model)
  initial = models.init_variables(model, jax.random.PRNGKey(0), (16, 8))
  loaded = weights.load_imagenet_resnet(path, initial)
  got, want = _flat(loaded), _flat(trained)
  for stem in ('visible_stem', 'infrared_stem'):  # both stems from conv1/bn1, as ImageNet
    for leaf in ('conv1/kernel', 'bn1/scale', 'bn1/bias'):
      np.testing.assert_array_equal(got[f'params/{stem}/{leaf}'],
                                    want[f'params/visible_stem/{leaf}'])
    for leaf in ('bn1/mean', 'bn1/var'):
      np.testing.assert_array_equal(got[f'batch_stats/{stem}/{leaf}'],
                                    want[f'batch_stats/visible_stem/{leaf}'])
  trunk = [k for k in want if '/layer' in k]
  assert len(trunk) > 10
  for key in trunk:  # every conv, BN weight and BN statistic of layer1..layer4
    np.testing.assert_array_equal(got[key], want[key])
  # The neck is not in an ImageNet file: it keeps its initialisation.
  np.testing.assert_array_equal(got['params/neck/scale'], _flat(initial)['params/neck/scale'])


def test_pretraining_people_are_not_the_demos_people():
  config = demo_config()
  assert config.pretrain.population_seed != synthetic.POPULATION_SEED

  def record(person):
    return tuple(np.asarray(v).tobytes() if isinstance(v, np.ndarray) else v
                 for v in dataclasses.astuple(person))

  num_demo = config.data.synthetic_ids or synthetic.SYSU_NUM_IDS
  demo_people = {record(render.sample_identity(synthetic.POPULATION_SEED, pid))
                 for pid in range(1, num_demo + 1)}
  pretraining_people = [record(render.sample_identity(config.pretrain.population_seed, int(pid)))
                        for pid in pretrain.population_pids(config.pretrain)]
  assert len(demo_people) == num_demo  # the comparison tells people apart at all
  assert len(pretraining_people) == config.pretrain.num_ids
  assert not demo_people & set(pretraining_people)
  # ... and it would see a shared person: the same (seed, pid) gives the same record.
  assert record(render.sample_identity(synthetic.POPULATION_SEED, 1)) in demo_people


def test_rendering_the_population_on_the_datasets_seed_is_refused():
  config = tiny_config('/unused')
  config.pretrain.population_seed = synthetic.POPULATION_SEED
  with pytest.raises(config_lib.ConfigError, match='population_seed'):
    pretrain.render_population(config.pretrain, (16, 8), progress=False)


def test_file_name_follows_every_setting_that_shapes_the_weights():
  config = tiny_config('/weights')
  path = pretrain.pretrained_path(config)
  assert path.startswith('/weights/synthetic_imagenet_') and path.endswith('.npz')
  for field, value in (('pretrain.epochs', 2), ('pretrain.grey_prob', 0.7),
                       ('pretrain.population_seed', 9), ('model.width', 8),
                       ('data.image_height', 32)):
    changed = tiny_config('/weights')
    group, leaf = field.split('.')
    changed[group][leaf] = value
    assert pretrain.pretrained_path(changed) != path, field
  same = tiny_config('/weights')
  same.seed = 5  # one stand-in for every training seed
  same.optim.learning_rate = 1.0
  assert pretrain.pretrained_path(same) == path


def test_demo_starts_from_the_stand_in_through_the_imagenet_import(pretrained, monkeypatch):
  config, trained, path = pretrained
  assert demo_config().model.pretrained == pretrain.SYNTHETIC_IMAGENET
  assert config.model.pretrained == pretrain.SYNTHETIC_IMAGENET
  calls = []
  real_import = weights.load_imagenet_resnet

  def spy(source, variables, cache_dir=None):
    calls.append(source)
    return real_import(source, variables, cache_dir=cache_dir)

  monkeypatch.setattr(weights, 'load_imagenet_resnet', spy)
  # The file exists (the fixture wrote it): nothing may be trained again.
  monkeypatch.setattr(pretrain, 'train_classifier', lambda *a, **k: pytest.fail('retrained'))
  model = models.build_model(config.model)
  state = train_state.create_train_state(config, model, sharding.make_mesh())
  assert calls == [path]
  np.testing.assert_array_equal(state.params['infrared_stem']['conv1']['kernel'],
                                trained['params']['visible_stem']['conv1']['kernel'])


def test_missing_stand_in_is_pretrained_once_and_then_reused(tmp_path, monkeypatch):
  config = tiny_config(str(tmp_path))
  trained = []
  real_train = pretrain.train_classifier

  def counting(*args, **kwargs):
    trained.append(1)
    return real_train(*args, **kwargs)

  monkeypatch.setattr(pretrain, 'train_classifier', counting)
  first = initial_weights.resolve(config)
  second = initial_weights.resolve(config)
  assert first == second == pretrain.pretrained_path(config) and os.path.isfile(first)
  assert len(trained) == 1
  assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(first),
                                                 os.path.basename(first)[:-4] + '.json'])
  config.model.pretrained = 'none'
  assert initial_weights.resolve(config) == ''


def test_augmentation_without_randomness_is_normalisation_and_grey_is_grey():
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 8, 3), dtype=np.uint8)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  identity = pretrain.PretrainAugment(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0),
                                      flip_prob=0.0, brightness=0.0, contrast=0.0,
                                      saturation=0.0, hue=0.0, grey_prob=0.0,
                                      invert_prob=0.0)
  out = pretrain.augment_pretrain_batch(jax.random.PRNGKey(0), images, identity, mean, std)
  np.testing.assert_allclose(out, augment.normalize(images, mean, std), atol=1e-5)
  flipped = pretrain.augment_pretrain_batch(
      jax.random.PRNGKey(0), images, dataclasses.replace(identity, flip_prob=1.0), mean, std)
  np.testing.assert_allclose(flipped, augment.normalize(images[:, :, ::-1], mean, std),
                             atol=1e-5)
  grey = pretrain.augment_pretrain_batch(
      jax.random.PRNGKey(1), images, dataclasses.replace(identity, grey_prob=1.0, brightness=0.4,
                                                          hue=0.5, crop_area=(0.3, 1.0)), mean, std)
  unit = np.asarray(grey) * np.array(std) + np.array(mean)
  np.testing.assert_allclose(unit[..., 0], unit[..., 1], atol=1e-5)
  np.testing.assert_allclose(unit[..., 0], unit[..., 2], atol=1e-5)
  assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


@pytest.mark.parametrize('name', ['demo', 'pgm_demo'])
def test_the_demos_find_their_stand_in_shipped_and_it_fits_their_network(name):
  config = demo_config(name)
  shipped = os.path.join(pretrain.SHIPPED_DIR, os.path.basename(pretrain.pretrained_path(config)))
  assert os.path.isfile(shipped), 'a changed demo setting needs `--mode pretrain` and a new asset'
  model = models.build_model(config.model)
  variables = models.init_variables(model, jax.random.PRNGKey(0),
                                    (config.data.image_height, config.data.image_width))
  loaded = weights.load_imagenet_resnet(shipped, variables)
  kernel = ('params', 'layer4', 'block0', 'conv1', 'kernel')
  assert not np.allclose(_flat(loaded)['/'.join(kernel)], _flat(variables)['/'.join(kernel)])


def test_a_shipped_stand_in_is_copied_not_pretrained(tmp_path, monkeypatch):
  config = tiny_config(str(tmp_path / 'out'))
  name = os.path.basename(pretrain.pretrained_path(config))
  shipped_dir = tmp_path / 'assets'
  shipped_dir.mkdir()
  (shipped_dir / name).write_bytes(b'weights')
  monkeypatch.setattr(pretrain, 'SHIPPED_DIR', str(shipped_dir))

  def no_pretraining(*args, **kwargs):
    raise AssertionError('pretrained although a shipped copy exists')

  monkeypatch.setattr(pretrain, 'pretrain_variables', no_pretraining)
  path = pretrain.pretrain(config, progress=False)
  assert path == pretrain.pretrained_path(config)
  assert open(path, 'rb').read() == b'weights'
  assert os.listdir(os.path.dirname(path)) == [name]  # no temporary file left beside it
  # `--mode pretrain` (use_shipped=False) makes it afresh when it is not already there.
  os.remove(path)
  with pytest.raises(AssertionError, match='pretrained although'):
    pretrain.pretrain(config, progress=False, use_shipped=False)
