"""pclhd_config: the settings the pieces and the training wiring read, per dataset.

What the numbers are is the authors' (each cited in vireid_jax/methods/pclhd/config.py); here,
that the settings fit together: the views' "no ColorJitter" is an identity for the port's
ColorJitter, batches split into the DataParallel groups and the sampler's blocks, the
dataset-dependent values follow the dataset and the rest is shared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax import config as config_lib
from vireid_jax.augment import color_jitter
from vireid_jax.methods.pclhd import association
from vireid_jax.methods.pclhd.config import pclhd_config

DATASETS = ('sysu', 'regdb', 'llcm')


def test_no_colour_jitter_is_the_identity():
  config = pclhd_config('sysu')
  strengths = tuple(config.augment.color_jitter)
  assert len(strengths) == 4 and not any(strengths) and not config.augment.ir_jitter_stage1
  images = jax.random.randint(jax.random.key(0), (4, 12, 6, 3), 0, 256).astype(jnp.uint8)
  keys = jax.random.split(jax.random.key(1), 4)
  jittered = jax.vmap(lambda k, x: color_jitter.color_jitter(k, x, *strengths))(keys, images)
  np.testing.assert_array_equal(jittered, images)
  # PGM's strengths, for contrast, change the image: the check can see a jitter.
  changed = jax.vmap(lambda k, x: color_jitter.color_jitter(k, x, 0.5, 0.5, 0.5, 0.5))(keys,
                                                                                      images)
  assert np.any(np.asarray(changed) != np.asarray(images))


@pytest.mark.parametrize('dataset', DATASETS)
def test_batches_fit_the_groups_and_the_sampler(dataset):
  config = pclhd_config(dataset)
  s, groups = config.sampler, config.model.bn_groups
  for images in (s.visible_images, s.infrared_images, s.visible_images_stage1):
    assert images % s.instances_per_cluster == 0
  for inputs in (2 * s.visible_images, 2 * s.visible_images_stage1, s.infrared_images):
    assert inputs % groups == 0  # two views per visible image
  assert config.memory.stage1 in ('hybrid', 'centroid')
  assert config.pclhd.match in association.VARIANTS
  assert config.pclhd.dynamic_term in ('constant', 'off')
  assert config.pclhd.more_infrared in ('skip', 'stop')
  assert config.pclhd.joint_eps == config.cluster.eps
  assert config.schedule.stage2_start * 2 == config.schedule.epochs
  assert config.method == 'pclhd' and config.data.dataset == dataset


def test_datasets_differ_where_the_authors_runs_do():
  sysu, regdb, llcm = (pclhd_config(d) for d in DATASETS)
  assert (sysu.cluster.eps, regdb.cluster.eps) == (0.6, 0.3)
  assert (sysu.sampler.visible_images_stage1, regdb.sampler.visible_images_stage1) == (128, 64)
  assert (sysu.sampler.steps_per_epoch, regdb.sampler.steps_per_epoch) == (200, 100)
  assert (sysu.pclhd.match, regdb.pclhd.match) == ('sysu', 'regdb')
  # LLCM: SYSU-MM01's settings but the dataset.
  llcm.data.dataset = 'sysu'
  assert llcm.to_dict() == sysu.to_dict()
  # Besides the dataset's own values, RegDB shares every setting.
  for config in (sysu, regdb):
    config.data.dataset = config.cluster.eps = config.pclhd.joint_eps = None
    config.sampler.visible_images_stage1 = config.sampler.steps_per_epoch = None
    config.pclhd.match = None
  assert regdb.to_dict() == sysu.to_dict()


def test_the_core_groups_are_kept_and_unknown_datasets_are_refused():
  config = pclhd_config('regdb')
  assert config_lib.base_config().to_dict().keys() <= config.to_dict().keys()
  with pytest.raises(ValueError, match='PCLHD settings exist'):
    pclhd_config('market')
