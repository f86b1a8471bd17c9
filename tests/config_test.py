"""The config tree: every shipped config validates, impossible values name their field."""

import importlib.util
import os

import pytest

from vireid_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('name', ['sysu', 'regdb', 'llcm', 'demo'])
def test_shipped_configs_validate(name):
  config = load(name)
  config.data.root = config.data.root or '/data'
  config_lib.validate(config)


def test_llcm_config_keeps_the_sysu_settings_but_the_dataset():
  llcm, sysu = load('llcm'), load('sysu')
  assert (llcm.data.dataset, llcm.eval.llcm_setting) == ('llcm', 'infrared_to_visible')
  llcm.data.dataset = 'sysu'
  assert llcm.to_dict() == sysu.to_dict()


@pytest.mark.parametrize('field,value', [('data.dataset', 'llcm2'),
                                         ('eval.llcm_setting', 'thermal_to_visible'),
                                         ('data.train_resize', 'bilinear'),
                                         ('cluster.rank_by', 'cosine')])
def test_unknown_choices_name_the_field(field, value):
  config = load('llcm')
  config.data.root = '/data'
  group, leaf = field.split('.')
  config[group][leaf] = value
  with pytest.raises(config_lib.ConfigError, match=rf'config\.{field} = .*{value}'):
    config_lib.validate(config)


def test_paper_configs_start_from_imagenet_and_the_demo_from_its_stand_in():
  for name in ('sysu', 'regdb', 'llcm'):
    assert load(name).model.pretrained == 'imagenet', name
  assert load('demo').model.pretrained == 'synthetic_imagenet'


@pytest.mark.parametrize('value,valid', [('imagenet', True), ('none', True), ('', True),
                                         ('synthetic_imagenet', True), ('/w/r50.pth', True),
                                         ('~/w/R50.PTH.TAR', True), ('w.safetensors', True),
                                         ('ImageNet', False), ('random', False),
                                         ('/w/resnet50', False)])
def test_pretrained_is_a_keyword_or_a_weights_file(value, valid):
  config = load('sysu')
  config.data.root = '/data'
  config.model.pretrained = value
  if valid:
    config_lib.validate(config)
  else:
    with pytest.raises(config_lib.ConfigError, match=r"config\.model\.pretrained = .*'none'"):
      config_lib.validate(config)


@pytest.mark.parametrize('groups', [1, 2, 3, 4, 144])
def test_bn_groups_that_divide_both_modalities_validate(groups):
  config = load('sysu')  # 12 x 12 = 144 infrared, 288 visible rows per step
  config.data.root = '/data'
  config.model.bn_groups = groups
  config_lib.validate(config)


@pytest.mark.parametrize('name,groups,message', [
    ('sysu', 5, r'bn_groups = 5 does not divide the visible batch of 288 rows'),
    ('sysu', 288, r'bn_groups = 288 does not divide the infrared batch of 144'),
    ('demo', 3, r'bn_groups = 3 does not divide the visible batch of 64 rows.*infrared 32'),
    ('sysu', 0, r'bn_groups = 0; expected a positive int'),
    ('sysu', True, r'bn_groups = True; expected a positive int'),
])
def test_bn_groups_that_do_not_divide_the_batch_name_the_field(name, groups, message):
  config = load(name)
  config.data.root = '/data'
  with config.ignore_type():
    config.model.bn_groups = groups
  with pytest.raises(config_lib.ConfigError, match=rf'config\.model\.{message}'):
    config_lib.validate(config)


def test_non_local_settings_are_checked():
  config = load('sysu')
  config.data.root = '/data'
  config.model.non_local = True
  config_lib.validate(config)
  config.model.non_local_blocks = (0, 2, 3)
  with pytest.raises(config_lib.ConfigError, match=r'config\.model\.non_local_blocks'):
    config_lib.validate(config)
  config.model.non_local_blocks = (0, 2, -1, 0)
  with pytest.raises(config_lib.ConfigError, match=r'four counts >= 0'):
    config_lib.validate(config)
