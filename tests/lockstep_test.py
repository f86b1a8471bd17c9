"""The lockstep harness (benchmarks/lockstep/), without the authors' code.

Its pure parts on small arrays: the authors' names for every variable of ours, partitions and
associations compared through each side's cluster numbering, the verdict against a yardstick
and without. Its CPU emulation of the authors' setting (torch): nn.DataParallel over k GPUs,
the exact search that stands in for faiss. And the harness end to end on a tiny network with the
project as its own "reference": it reports no difference at all, a learning rate changed at one
step and a memory update order swapped at one step are caught exactly at that step, and the
recording trainer's parameters after a run equal a plain Trainer's.
"""

import flax.traverse_util
import jax
import numpy as np
import pytest
import torch

from benchmarks.lockstep import compare
from benchmarks.lockstep import names
from benchmarks.lockstep import ours
from benchmarks.lockstep import record
from benchmarks.lockstep import settings as settings_lib
from benchmarks.lockstep import torch_cpu
from vireid_jax import models

# --- our variables under the authors' names -----------------------------------------------------


@pytest.mark.parametrize('non_local', [False, True])
def test_every_variable_has_one_authors_name(non_local):
  model = models.TwoStreamResNet(stage_sizes=(1, 2, 3, 1), block='bottleneck', width=4,
                                 non_local=non_local)
  image = jax.numpy.zeros((1, 32, 16, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), image, image, train=False))
  rng = np.random.default_rng(0)  # distinct values, so that a wrong mapping shows
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                           {k: shapes[k] for k in ('params', 'batch_stats')})
  flat = flax.traverse_util.flatten_dict(variables)
  state = names.reference_state(variables)
  assert len(state) == len(flat)
  assert 'bottleneck.weight' in state and 'bottleneck.running_var' in state
  assert 'visible_module.visible.conv1.weight' in state
  assert 'thermal_module.thermal.bn1.running_mean' in state
  assert 'base_resnet.base.layer3.2.downsample.0.weight' not in state  # only block 0 has one
  kernel = flat[('params', 'layer2', 'block0', 'conv2', 'kernel')]
  np.testing.assert_array_equal(state['base_resnet.base.layer2.0.conv2.weight'],
                                np.transpose(kernel, (3, 2, 0, 1)))
  if non_local:  # AGW: NL_2.{0,1} after layer2's blocks 0, 1; NL_3.{0,1,2} after 0, 1, 2
    assert {'NL_2.1.W.1.running_var', 'NL_3.2.g.0.weight', 'NL_3.0.W.0.bias'} <= set(state)
    np.testing.assert_array_equal(
        state['NL_3.2.theta.weight'],
        np.transpose(flat[('params', 'layer3', 'non_local2', 'theta', 'kernel')], (3, 2, 0, 1)))


# --- comparing through each side's numbering ----------------------------------------------------


def test_partition_map_finds_the_renumbering_and_rejects_other_partitions():
  ours_labels = np.array([0, 0, 1, -1, 2, 2, 1])
  theirs = np.array([2, 2, 0, -1, 1, 1, 0])
  same, mapping = compare.partition_map(ours_labels, theirs)
  assert same and mapping.tolist() == [2, 0, 1]
  assert not compare.partition_map(ours_labels, np.array([2, 2, 0, 0, 1, 1, 0]))[0]  # outlier
  assert not compare.partition_map(ours_labels, np.array([2, 2, 0, -1, 1, 0, 0]))[0]
  assert not compare.partition_map(ours_labels, np.array([0, 0, 0, -1, 1, 1, 0]))[0]  # merged


def test_tables_and_associations_compare_through_the_renumbering():
  rng = np.random.default_rng(0)
  maps = {'visible': np.array([2, 0, 1]), 'infrared': np.array([1, 0])}
  visible = rng.standard_normal((3, 5))
  theirs_visible = np.empty_like(visible)
  theirs_visible[maps['visible']] = visible
  mask = np.array([[1, 0, 1], [0, 1, 0]], bool)  # (infrared, visible), ours
  theirs_mask = np.zeros_like(mask)
  theirs_mask[np.ix_(maps['infrared'], maps['visible'])] = mask
  assert compare.memory_diffs({'memories/visible': visible},
                              {'memories/visible': theirs_visible}, maps) == {'visible': 0.0}
  assert compare.association_equal({'association/match_mask': mask},
                                   {'association/match_mask': theirs_mask}, maps)
  theirs_mask[0, 0] = ~theirs_mask[0, 0]
  assert not compare.association_equal({'association/match_mask': mask},
                                       {'association/match_mask': theirs_mask}, maps)
  v2i, i2v = np.array([1, 0, 0]), np.array([1, 0])  # ours: visible k -> infrared v2i[k]
  inv_v, inv_i = np.argsort(maps['visible']), np.argsort(maps['infrared'])
  theirs_maps = {'association/visible_to_infrared': maps['infrared'][v2i][inv_v],
                 'association/infrared_to_visible': maps['visible'][i2v][inv_i]}
  mine = {'association/visible_to_infrared': v2i, 'association/infrared_to_visible': i2v}
  assert compare.association_equal(mine, theirs_maps, maps)
  mine['association/infrared_to_visible'] = np.array([2, 0])
  assert not compare.association_equal(mine, theirs_maps, maps)


def test_until_all_extends_the_authors_two_rounds_and_nothing_else():
  """PGM's 'until_all' against their two rounds: equal wherever theirs pairs a cluster; the
  clusters theirs leaves without a partner (-1) are counted, any other departure is not."""
  maps = {'visible': np.array([2, 0, 1, 3]), 'infrared': np.array([1, 0])}
  v2i, i2v = np.array([1, 0, 0, 1]), np.array([1, 0])  # ours: every cluster has a partner
  mine = {'association/visible_to_infrared': v2i, 'association/infrared_to_visible': i2v}
  theirs_v2i = maps['infrared'][v2i]
  theirs_v2i[3] = -1  # our visible cluster 3 (their 3): no partner after their two rounds
  inv_v, inv_i = np.argsort(maps['visible']), np.argsort(maps['infrared'])
  theirs = {'association/visible_to_infrared': theirs_v2i[inv_v],
            'association/infrared_to_visible': maps['visible'][i2v][inv_i]}
  assert not compare.association_equal(mine, theirs, maps)
  assert compare.association_extends(mine, theirs, maps) == 1
  other = dict(mine, **{'association/visible_to_infrared': np.array([0, 0, 0, 1])})
  assert compare.association_extends(other, theirs, maps) is None  # a pair theirs makes, changed
  row = compare.Row('epoch', 2, 2, 2)
  row.flags.update(association=False, association_on_our_centres=True,
                   association_unmatched_by_theirs=1, association_forced=True)
  compare.judge([row], None)
  assert row.passed and any('without a partner' in note for note in row.notes)


def _step_row(index, **values):
  row = compare.Row('step', index, 0, 1)
  for q, v in values.items():
    row.put(q, v)
  return row


def test_judge_against_the_yardstick_and_without():
  rows = [_step_row(0, loss=1e-6, total=1e-6, params=3e-5), _step_row(1, loss=3e-5, total=1e-5,
                                                                       params=2e-4)]
  yardstick = [_step_row(0, loss=2e-6, total=1e-7, params=1e-5),
               _step_row(1, loss=1e-5, total=2e-6, params=1e-5)]
  judged = compare.judge(rows, yardstick)
  assert judged[0].passed
  assert judged[0].limits['params'] == pytest.approx(4e-5)
  # the total is judged against its terms' rounding too (a sum's can cancel by chance)
  assert judged[1].limits['total'] == pytest.approx(4e-5)
  assert [f.split()[0] for f in judged[1].failures] == ['params']
  fixed = compare.judge([_step_row(0, loss=5e-5)])
  assert fixed[0].passed and fixed[0].limits['loss'] == compare.FALLBACK['loss'][0]


def test_partition_differences_are_notes_only_when_explained():
  def epoch_row(**flags):
    row = compare.Row('epoch', 1, 1, 2)
    row.flags.update({'partition/visible': True, 'partition/infrared': True,
                      'association': True, **flags})
    return row
  unexplained = compare.judge([epoch_row(**{'partition/visible': False})])[0]
  assert not unexplained.passed
  at_eps = compare.judge([epoch_row(**{'partition/visible': False,
                                       'near_eps_pairs/visible': 2})])[0]
  assert at_eps.passed and 'at eps' in at_eps.notes[0]
  yard = epoch_row(**{'partition/visible': False})
  rounding = compare.judge([epoch_row(**{'partition/visible': False})], [yard])[0]
  assert rounding.passed and 'float32 rounding' in rounding.notes[0]


# --- the authors' setting on a CPU ----------------------------------------------------------------


class _TwoInputs(torch.nn.Module):
  """(x1, x2, label=) -> (features of x1 rows, features of x2 rows, label), a BatchNorm over
  both, as the authors' networks."""

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    self.bn = torch.nn.BatchNorm2d(4)

  def forward(self, x1, x2, label=None):
    y = self.bn(self.conv(torch.cat([x1, x2]))).mean((2, 3))
    return y[:len(x1)], y[len(x1):], label


def test_emulated_data_parallel_is_k_replicas_with_replica_zeros_statistics():
  torch.manual_seed(0)
  net = _TwoInputs().train()
  x1, x2 = torch.randn(8, 3, 5, 4), torch.randn(4, 3, 5, 4)
  label = torch.arange(8)
  reference = [_TwoInputs().train() for _ in range(2)]
  for r in reference:
    r.load_state_dict(net.state_dict())
  torch_cpu.EmulatedDataParallel.replicas = 2
  out1, out2, labels = torch_cpu.EmulatedDataParallel(net)(x1, x2, label=label)
  (out1.sum() + (out2**2).sum()).backward()
  expected1, expected2, grads = [], [], 0
  for j, r in enumerate(reference):
    a, b, _ = r(x1.chunk(2)[j], x2.chunk(2)[j])
    (a.sum() + (b**2).sum()).backward()
    expected1.append(a)
    expected2.append(b)
    grads = grads + r.conv.weight.grad
  torch.testing.assert_close(out1, torch.cat(expected1))
  torch.testing.assert_close(out2, torch.cat(expected2))
  torch.testing.assert_close(labels, label)
  torch.testing.assert_close(net.conv.weight.grad, grads)
  torch.testing.assert_close(net.bn.running_mean, reference[0].bn.running_mean)  # GPU 0's
  torch.testing.assert_close(net.bn.running_var, reference[0].bn.running_var)
  net.eval()  # evaluation: the replicas' outputs gathered, whatever the batch
  odd = torch.randn(3, 3, 5, 4)
  a, _, _ = torch_cpu.EmulatedDataParallel(net)(odd, odd[:0])
  torch.testing.assert_close(a, net(odd, odd[:0])[0])


def test_exact_search_ranks_by_squared_l2_with_ties_to_the_lower_index():
  base = np.array([[0., 0.], [1., 0.], [0., 1.], [2., 2.], [1., 0.]], np.float32)
  distances, index = torch_cpu.exact_knn(base, base[:2], 3)
  assert index.tolist() == [[0, 1, 2], [1, 4, 0]]
  np.testing.assert_allclose(distances, [[0, 1, 1], [0, 0, 1]])
  faiss = torch_cpu.ExactIndexFlatL2(2)
  faiss.add(base)
  assert faiss.search(base[3:4], 2)[1].tolist() == [[3, 1]]


def test_to_tensor_normalize_is_torchvisions_arithmetic():
  images = np.arange(2 * 3 * 2 * 3, dtype=np.uint8).reshape(2, 3, 2, 3) * 7
  x = torch_cpu.to_tensor_normalize(images, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
  expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
              - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / torch.tensor(
                  [0.2, 0.25, 0.3])[:, None, None]
  torch.testing.assert_close(x, expected, rtol=0, atol=0)


# --- the harness on the project itself ------------------------------------------------------------

TINY = dict(network='tiny', image_size=(32, 16), synthetic_ids=18, stage1_epochs=1,
            stage2_epochs=1, steps_per_epoch=2, k1=6, k2=2, eval_batch=48)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """Our side's recording of a tiny MBCCM run (2 epochs of 2 steps), and how to run it again."""
  root = tmp_path_factory.mktemp('lockstep')
  run_settings = settings_lib.defaults('mbccm', **TINY)
  data = str(root / 'data')
  recording = record.Recording(str(root / 'ours'))
  ours.run(run_settings, data, str(root / 'workdir'), recording)

  def again(name, plant=None, max_epochs=None):
    comparison = compare.Comparison(recording)
    ours.run(run_settings, data, str(root / name), comparison, plant=plant,
             max_epochs=max_epochs)
    return compare.judge(comparison.rows)

  return dict(settings=run_settings, recording=recording, again=again, root=root, data=data)


def test_a_run_against_itself_shows_no_difference(tiny_run):
  rows = tiny_run['again']('self')
  steps = [r for r in rows if r.kind == 'step']
  assert len(steps) == tiny_run['settings'].steps == 4
  assert [r.kind for r in rows] == ['initial', 'epoch', 'step', 'step', 'epoch', 'step', 'step']
  for row in rows:
    assert row.passed, row.failures
    assert all(value == 0 for value in row.values.values()), (row.kind, row.index, row.values)
  epoch = rows[4]
  assert epoch.flags['partition/visible'] and epoch.flags['association']
  first = tiny_run['recording'].read_step(0)
  assert first['inputs/visible'].shape == (32, 3, 32, 16)  # views A and B of 16 images
  assert first['inputs/infrared'].shape == (16, 3, 32, 16)
  assert {'loss/ms', 'loss/ma', 'loss/cc', 'loss/total'} <= set(first)
  assert {'memories/visible', 'memories/agnostic_infrared'} <= set(first)


def test_a_learning_rate_changed_at_one_step_is_caught_at_that_step(tiny_run):
  rows = tiny_run['again']('lr', plant=('lr', 1, 1.01), max_epochs=1)
  assert compare.first_failure(rows).kind == 'step'
  assert compare.first_failure(rows).index == 1
  assert compare.first_failure(rows, 'lr').index == 1
  assert [r for r in rows if r.kind == 'step'][0].passed


@pytest.mark.slow
def test_a_swapped_memory_update_order_is_caught_at_that_step(tiny_run):
  planted = tiny_run['settings'].stage1_epochs * tiny_run['settings'].steps_per_epoch
  rows = tiny_run['again']('order', plant=('memory_order', planted))
  first = compare.first_failure(rows)
  assert (first.kind, first.index) == ('step', planted)
  assert [f.split()[0] for f in first.failures] == ['memories']
  assert all(r.passed for r in rows if r.kind == 'step' and r.index < planted)


@pytest.mark.slow
def test_the_recording_trainer_trains_as_the_trainer_does(tiny_run):
  params = ours.plain_run_params(tiny_run['settings'], tiny_run['data'],
                                 str(tiny_run['root'] / 'plain'), max_epochs=2)
  last = tiny_run['recording'].read_step(tiny_run['settings'].steps - 1)
  assert set(params) == {k[len('state/'):] for k in last if k.startswith('state/')}
  for name, value in params.items():  # bit for bit
    np.testing.assert_array_equal(last[f'state/{name}'], value, err_msg=name)


# --- a difference the lockstep found: the order images are clustered in --------------------------


def test_cluster_order_path_clusters_in_sorted_path_order():
  """MBCCM clusters its training list sorted by path (train_mbccm.py:79): DBSCAN's border points
  and the cluster numbering follow that order. `cluster.order='path'` gives exactly the
  clustering of the sorted features, labels put back in the reader's order."""
  from vireid_jax.clustering import epoch as epoch_clustering  # pylint: disable=import-outside-toplevel
  from vireid_jax.methods.mbccm import config as mbccm_config  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((6, 16))
  features = (np.repeat(centres, 8, 0) + 0.35 * rng.standard_normal((48, 16))).astype(np.float32)
  features /= np.linalg.norm(features, axis=1, keepdims=True)
  pids = np.repeat(np.arange(6), 8)
  paths = np.array([f'cam{1 + i % 2}/{p:04d}/{i:04d}.jpg' for i, p in enumerate(pids)])
  config = mbccm_config.mbccm_config('sysu')
  config.cluster.k1, config.cluster.k2 = 6, 2
  config.cluster.order = 'path'
  got = epoch_clustering.cluster_epoch(config, features, features[:24], pids, pids[:24],
                                       paths=(paths, paths[:24]))
  order = np.argsort(paths, kind='stable')
  config.cluster.order = 'reader'
  ordered = epoch_clustering.cluster_epoch(config, features[order], features[:24], pids[order],
                                           pids[:24])
  np.testing.assert_array_equal(got.visible_labels[order], ordered.visible_labels)
  np.testing.assert_array_equal(got.visible_centers, ordered.visible_centers)
  assert got.visible_labels.max() >= 1  # clusters were found


def test_a_missing_reference_is_one_line_before_any_training(tmp_path):
  """Without the authors' code below --reference the tool says so at once (exit 2), before our
  side's minutes of training."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / 'clone' / 'sub').mkdir(parents=True)
  (tmp_path / 'clone' / 'sub' / 'train_mbccm.py').write_text('')  # MBCCM's, not PGM's
  result = subprocess.run(
      [sys.executable, os.path.join(root, 'benchmarks', 'lockstep.py'), '--method', 'pgm',
       '--reference', str(tmp_path / 'clone'), '--out', str(tmp_path / 'out')],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'no train_sysu.py below it' in lines[0], result.stderr
  assert not (tmp_path / 'out' / 'ours').exists()
