"""ema_update against the reference's `_update_ema_variables` (clustercontrast/trainers.py:
249-251) on two torch networks of AGW's structure with random states.

The twin is tests/models_torch_test.py's small two-stream network with AGW's non-local blocks
(every kind of parameter the real one has, at a tiny size); both networks' state dicts map into
the Flax network's variables as that file maps them. The teacher's BatchNorm statistics under a
no_grad train-mode forward with unequal modality groups (PCLHD's 2-GPU DataParallel: 128
visible + 64 infrared images per GPU) are models_torch_test's
`test_bn_groups_match_data_parallel` (bn_groups 2 with twice as many visible as infrared rows);
nothing PCLHD-specific remains to check there.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is not installed: the check against the '
                            "reference's EMA needs it (pip install -r requirements-test.txt)")
import pclhd_reference  # pylint: disable=g-import-not-at-top
from models_torch_test import NON_LOCAL_BLOCKS  # pylint: disable=g-import-not-at-top
from models_torch_test import SMALL  # pylint: disable=g-import-not-at-top
from models_torch_test import SMALL_IMAGE_SHAPE  # pylint: disable=g-import-not-at-top
from models_torch_test import TorchBasicBlock  # pylint: disable=g-import-not-at-top
from models_torch_test import TorchTwoStream  # pylint: disable=g-import-not-at-top
from models_torch_test import _import_twin  # pylint: disable=g-import-not-at-top
from models_torch_test import _numpy_state  # pylint: disable=g-import-not-at-top

from vireid_jax import models  # pylint: disable=g-import-not-at-top
from vireid_jax.methods.pclhd.teacher import ema_update  # pylint: disable=g-import-not-at-top


def _random_twin(seed):
  """A small AGW twin whose every parameter and buffer is random (the neck's bias stays 0: it
  is frozen there in the reference, and the Flax neck has none)."""
  torch.manual_seed(seed)
  net = TorchTwoStream(layers=SMALL['stage_sizes'], block=TorchBasicBlock, width=SMALL['width'],
                       non_layers=NON_LOCAL_BLOCKS)
  with torch.no_grad():
    for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
      if name == 'bottleneck.bias' or not tensor.is_floating_point():
        continue
      if 'running_var' in name:
        tensor.uniform_(0.5, 2.0)
      else:
        tensor.normal_(0.0, 1.0)
  return net


@pytest.fixture(scope='module')
def twins():
  model = models.TwoStreamResNet(**SMALL, bn_groups=2, non_local=True,
                                 non_local_blocks=NON_LOCAL_BLOCKS, dtype=jnp.float32)
  dummy = jnp.zeros((1, *SMALL_IMAGE_SHAPE, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
  student, teacher = _random_twin(1), _random_twin(2)
  as_flax = lambda net: _import_twin(_numpy_state(net), shapes, net)
  return dict(student=student, teacher=teacher, as_flax=as_flax)


def test_ema_equals_the_reference_to_one_ulp(twins):
  student, teacher, as_flax = twins['student'], twins['teacher'], twins['as_flax']
  student_vars, teacher_vars = as_flax(student), as_flax(teacher)
  pclhd_reference.update_ema_variables(student, teacher, 0.999)
  expected = flax.traverse_util.flatten_dict(as_flax(teacher))

  got = jax.jit(ema_update)(teacher_vars, student_vars)
  flat_got = flax.traverse_util.flatten_dict(got)
  flat_before = flax.traverse_util.flatten_dict(teacher_vars)
  flat_student = flax.traverse_util.flatten_dict(student_vars)
  assert flat_got.keys() == expected.keys()
  params = [p for p in flat_got if p[0] == 'params']
  assert len(params) > 50 and any('non_local' in '/'.join(p) for p in params)
  exact = [np.mean(np.asarray(flat_got[p]) == np.asarray(expected[p])) for p in params]
  assert min(exact) > 0.999  # the rounding emulated; 1 ulp left for the rare double rounding
  for path, value in flat_got.items():
    name = '/'.join(path)
    assert value.dtype == jnp.float32, name
    if path[0] == 'params':
      # Moved by 0.1 % of the way to the student's value, as torch moved it (to 1 ulp: its
      # vectorised add may fuse the last multiply-add).
      np.testing.assert_array_max_ulp(np.asarray(value), np.asarray(expected[path]), maxulp=1)
      assert np.any(np.asarray(value) != np.asarray(flat_before[path])), name
      want = 0.999 * np.float64(flat_before[path]) + 0.001 * np.float64(flat_student[path])
      np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7, err_msg=name)
    else:  # buffers: untouched, by both
      np.testing.assert_array_equal(value, flat_before[path], err_msg=name)
      np.testing.assert_array_equal(expected[path], flat_before[path], err_msg=name)


def test_plain_trees_and_frozen_dicts():
  rng = np.random.default_rng(0)
  teacher = {'a': rng.normal(size=(3, 2)).astype(np.float32),
             'b': [rng.normal(size=4).astype(np.float32)]}
  student = jax.tree.map(lambda x: x + 1.0, teacher)
  got = ema_update(teacher, student, momentum=0.9)
  for g, t in zip(jax.tree.leaves(got), jax.tree.leaves(teacher)):
    np.testing.assert_allclose(g, np.float32(0.9) * t + np.float32(0.1) * (t + 1), rtol=1e-6)
  variables = flax.core.freeze({'params': teacher, 'batch_stats': {'m': np.ones(2, np.float32)}})
  got = ema_update(variables, {'params': student, 'batch_stats': {'m': np.zeros(2, np.float32)}},
                   momentum=0.9)
  assert isinstance(got, flax.core.FrozenDict)
  np.testing.assert_array_equal(got['batch_stats']['m'], 1.0)  # the teacher's, untouched
  with pytest.raises(ValueError, match='shape'):
    ema_update({'a': np.ones(2)}, {'a': np.ones(3)})
