"""Tests for vireid_jax.methods.pgm.sampler against the reference's camera-aware sampler.

`ReferenceSampler` transcribes RandomMultipleGallerySampler (clustercontrast/utils/data/
sampler.py:46-106) with its random calls (torch.randperm, random.choice, np.random.choice)
behind a small `draws` object; `reference_epoch` runs it as train_sysu.py does (a torch
DataLoader with drop_last=True inside IterLoader, clustercontrast/utils/data/__init__.py).
With the real random calls the two samplers are compared statistically (their streams differ);
with the calls answered from this module's passes ("replay"), the reference must reproduce this
module's plans exactly, which checks every structural rule: the clusters of a pass, the anchors,
the candidate sets, the replacement rule, the singletons, the batching and the passes running on
across steps.
"""

import collections
import random

import numpy as np
import pytest
import torch

from vireid_jax.methods.pgm import sampler

NUM_INSTANCES = 16

# --------------------------------------------------------------------------------------------
# Transcription of the reference


def _runs(sequence, labels):
  """A pass split into its clusters' runs (consecutive images of one cluster)."""
  sequence = np.asarray(sequence)
  return np.split(sequence, np.flatnonzero(np.diff(labels[sequence])) + 1)


class RealDraws:
  randperm = staticmethod(lambda n: torch.randperm(n))
  choice = staticmethod(random.choice)
  np_choice = staticmethod(np.random.choice)


def _no_index(a, b):
  return [i for i, j in enumerate(a) if j != b]


class ReferenceSampler(torch.utils.data.Sampler):
  """RandomMultipleGallerySampler(data_source, num_instances), random calls through `draws`."""

  def __init__(self, data_source, num_instances, draws=RealDraws):
    super().__init__()  # torch 2 takes no data_source here (torch 1.8 ignored it)
    self.data_source = data_source
    self.index_pid = collections.defaultdict(int)
    self.pid_cam = collections.defaultdict(list)
    self.pid_index = collections.defaultdict(list)
    self.num_instances = num_instances
    self.draws = draws
    for index, (_, pid, cam) in enumerate(data_source):
      if pid < 0:
        continue
      self.index_pid[index] = pid
      self.pid_cam[pid].append(cam)
      self.pid_index[pid].append(index)
    self.pids = list(self.pid_index.keys())
    self.num_samples = len(self.pids)

  def __len__(self):
    return self.num_samples * self.num_instances

  def __iter__(self):
    indices = self.draws.randperm(len(self.pids)).tolist()
    ret = []
    for kid in indices:
      i = self.draws.choice(self.pid_index[self.pids[kid]])
      _, i_pid, i_cam = self.data_source[i]
      ret.append(i)
      pid_i = self.index_pid[i]
      cams = self.pid_cam[pid_i]
      index = self.pid_index[pid_i]
      select_cams = _no_index(cams, i_cam)
      if select_cams:
        if len(select_cams) >= self.num_instances:
          cam_indexes = self.draws.np_choice(select_cams, size=self.num_instances - 1,
                                             replace=False)
        else:
          cam_indexes = self.draws.np_choice(select_cams, size=self.num_instances - 1,
                                             replace=True)
        for kk in cam_indexes:
          ret.append(index[kk])
      else:
        select_indexes = _no_index(index, i)
        if not select_indexes:
          continue
        if len(select_indexes) >= self.num_instances:
          ind_indexes = self.draws.np_choice(select_indexes, size=self.num_instances - 1,
                                             replace=False)
        else:
          ind_indexes = self.draws.np_choice(select_indexes, size=self.num_instances - 1,
                                             replace=True)
        for kk in ind_indexes:
          ret.append(index[kk])
    return iter(ret)


def reference_epoch(reference_sampler, batch_size, steps):
  """(steps, batch_size) indices: get_train_loader_* then IterLoader.new_epoch + `steps` next()."""
  loader = torch.utils.data.DataLoader(
      list(range(len(reference_sampler.data_source))), batch_size=batch_size,
      sampler=reference_sampler, shuffle=False, drop_last=True)
  iterator = iter(loader)  # new_epoch
  batches = []
  for _ in range(steps):
    try:
      batch = next(iterator)
    except StopIteration:  # IterLoader.next: a new pass
      iterator = iter(loader)
      batch = next(iterator)
    batches.append(batch.numpy())
  return np.stack(batches)


def _data_source(labels, cameras):
  return [(f'img{i}', int(label), int(camera)) for i, (label, camera) in
          enumerate(zip(labels, cameras))]


class ReplayDraws:
  """Answers the reference's random calls with the choices found in this module's passes."""

  def __init__(self, passes, labels):
    self.passes = list(passes)
    self.labels = labels
    self.sampler = None  # the ReferenceSampler asking
    self.runs, self.current = [], None

  def randperm(self, n):
    sequence = self.passes.pop(0)
    self.runs = _runs(sequence, self.labels)
    order = [int(self.labels[run[0]]) for run in self.runs]
    assert n == len(order) and sorted(order) == sorted(self.sampler.pids)  # each cluster once
    self.runs.reverse()
    return torch.tensor([self.sampler.pids.index(pid) for pid in order])

  def choice(self, members):
    self.current = self.runs.pop().tolist()
    assert self.current[0] in members
    return self.current[0]

  def np_choice(self, candidates, size, replace):
    chosen = self.current[1:]
    assert len(chosen) == size
    members = self.sampler.pid_index[int(self.labels[self.current[0]])]
    positions = [members.index(m) for m in chosen]
    assert set(positions) <= set(candidates), 'a draw outside the candidate set'
    if not replace:
      assert len(set(positions)) == size, 'duplicates where the reference draws without replacement'
    return np.asarray(positions)


def replay_epoch(labels, cameras, batch_size, steps, seed):
  """The reference's epoch with its random calls answered from this module's passes (seed)."""
  groups = sampler._group(labels, cameras, 'test')
  generator = np.random.default_rng(seed)
  passes = [sampler._one_pass(groups, NUM_INSTANCES, generator) for _ in range(steps + 1)]
  draws = ReplayDraws(passes, labels)
  draws.sampler = ReferenceSampler(_data_source(labels, cameras), NUM_INSTANCES, draws)
  return reference_epoch(draws.sampler, batch_size, steps)


# --------------------------------------------------------------------------------------------
# Inputs


def _clusters():
  """Labels and cameras covering every branch, shuffled, with outliers.

  0: 40 members over cameras 0-3          (typical)
  1: 16 on camera 0 + 15 on camera 1      (anchor on 0: exactly 15 candidates, with replacement;
                                           anchor on 1: 16, without)
  2: 10 members, all camera 2             (no other camera: 9 others, with replacement)
  3: 20 members, all camera 0             (no other camera: 19 others, without)
  4: 1 member                             (singleton: the anchor only)
  5: 2 members on cameras 0 and 1         (1 candidate, drawn 15 times)
  6: 17 on camera 3 + 1 on camera 2       (anchor on 2: 17 candidates; on 3: 1)
  """
  rng = np.random.default_rng(123)
  parts = [(0, rng.integers(0, 4, 40)), (1, [0] * 16 + [1] * 15), (2, [2] * 10), (3, [0] * 20),
           (4, [1]), (5, [0, 1]), (6, [3] * 17 + [2]), (-1, rng.integers(0, 4, 12))]
  labels = np.concatenate([[label] * len(cams) for label, cams in parts])
  cameras = np.concatenate([np.asarray(cams) for _, cams in parts])
  order = rng.permutation(len(labels))
  return labels[order].astype(np.int64), cameras[order].astype(np.int64)


# --------------------------------------------------------------------------------------------
# Structure of a pass


def test_a_pass_visits_every_cluster_once_with_sixteen_images_or_one():
  labels, cameras = _clusters()
  groups = sampler._group(labels, cameras, 'test')
  generator = np.random.default_rng(0)
  firsts = collections.Counter()
  for _ in range(300):
    sequence = sampler._one_pass(groups, NUM_INSTANCES, generator)
    runs = _runs(sequence, labels)
    run_labels = [int(labels[run[0]]) for run in runs]
    assert sorted(run_labels) == list(range(7))
    for run in runs:
      assert (labels[run] == labels[run[0]]).all()
      assert len(run) == (1 if labels[run[0]] == 4 else NUM_INSTANCES)
    assert len(sequence) == sampler.pass_length(labels) == 6 * 16 + 1
    firsts[run_labels[0]] += 1
  assert set(firsts) == set(range(7))  # the cluster order is random


def test_the_fifteen_avoid_the_anchors_camera_when_possible():
  labels, cameras = _clusters()
  groups = sampler._group(labels, cameras, 'test')
  generator = np.random.default_rng(1)
  duplicates = collections.defaultdict(list)  # (cluster, candidates) -> any duplicate, per pass
  for _ in range(400):
    for run in _runs(sampler._one_pass(groups, NUM_INSTANCES, generator), labels):
      anchor, rest = run[0], run[1:]
      members = np.flatnonzero(labels == labels[anchor])
      others = members[cameras[members] != cameras[anchor]]
      candidates = others if len(others) else members[members != anchor]
      assert np.isin(rest, candidates).all() and anchor not in rest
      if len(rest):
        duplicates[int(labels[anchor]), len(candidates)].append(len(set(rest)) < len(rest))
  # Without replacement iff >= 16 candidates: 16 and more never repeat; exactly 15 (cluster 1,
  # anchor on camera 0) repeat in practice always (no repeat has probability 15!/15^15 ~ 3e-6).
  for (cluster, candidates), repeated in duplicates.items():
    if candidates >= NUM_INSTANCES:
      assert not any(repeated), (cluster, candidates)
    else:
      assert all(repeated), (cluster, candidates)
  assert {(1, 15), (1, 16), (2, 9), (3, 19), (5, 1), (6, 1), (6, 17)} <= set(duplicates)


def test_one_camera_per_modality_draws_the_other_members():
  # RegDB: every image of a modality has the same camera.
  labels = np.repeat(np.arange(6), [10, 16, 17, 30, 1, 3])
  cameras = np.zeros_like(labels)
  groups = sampler._group(labels, cameras, 'test')
  generator = np.random.default_rng(2)
  for _ in range(100):
    for run in _runs(sampler._one_pass(groups, NUM_INSTANCES, generator), labels):
      members = np.flatnonzero(labels == labels[run[0]])
      assert np.isin(run[1:], members[members != run[0]]).all()
      if len(members) - 1 >= NUM_INSTANCES:
        assert len(set(run[1:])) == NUM_INSTANCES - 1


# --------------------------------------------------------------------------------------------
# The epoch: batching, passes across steps, determinism


def test_plan_is_the_passes_cut_into_full_batches():
  labels, cameras = _clusters()
  plan = sampler.camera_aware_plan(labels, cameras, steps=9, batch_size=40, rng=5)
  generator = np.random.default_rng(5)
  groups = sampler._group(labels, cameras, 'test')
  rows = []
  while len(rows) < 9:
    sequence = sampler._one_pass(groups, NUM_INSTANCES, generator)
    rows += list(sequence[:len(sequence) // 40 * 40].reshape(-1, 40))  # 97 -> 2 batches
  np.testing.assert_array_equal(plan.index, np.stack(rows[:9]))
  np.testing.assert_array_equal(plan.label, labels[plan.index])
  assert plan.index.dtype == plan.label.dtype == np.int32
  assert plan.index.shape == (9, 40)
  assert (labels[plan.index] >= 0).all()


@pytest.mark.parametrize('batch_size,steps', [(32, 7), (48, 5), (97, 3), (16, 13)])
def test_reference_replayed_on_our_draws_gives_our_plan(batch_size, steps):
  labels, cameras = _clusters()
  plan = sampler.camera_aware_plan(labels, cameras, steps, batch_size, rng=11)
  np.testing.assert_array_equal(replay_epoch(labels, cameras, batch_size, steps, seed=11),
                                plan.index)


def test_reference_replay_on_sysu_sized_clusters():
  rng = np.random.default_rng(3)
  sizes = rng.integers(1, 60, 120)
  labels = np.repeat(np.arange(120), sizes)
  cameras = rng.integers(0, 4, len(labels))
  cameras[labels % 7 == 0] = 2  # some single-camera clusters
  labels[rng.random(len(labels)) < 0.05] = -1  # outliers
  plan = sampler.camera_aware_plan(labels, cameras, 20, 256, rng=4)
  np.testing.assert_array_equal(replay_epoch(labels, cameras, 256, 20, seed=4), plan.index)
  # Clusters straddle batch borders (passes are not multiples of a batch) and the epoch spans
  # more than one pass.
  assert (plan.label[:-1, -1] == plan.label[1:, 0]).any()
  assert 20 * 256 > sampler.pass_length(labels)


def test_same_seed_same_plan_and_fresh_passes_per_epoch():
  labels, cameras = _clusters()
  first = sampler.camera_aware_plan(labels, cameras, 6, 32, rng=7)
  again = sampler.camera_aware_plan(labels, cameras, 6, 32, rng=np.random.default_rng(7))
  other = sampler.camera_aware_plan(labels, cameras, 6, 32, rng=8)
  np.testing.assert_array_equal(first.index, again.index)
  assert (first.index != other.index).any()


def test_plan_epoch_draws_both_modalities_with_their_batches():
  labels, cameras = _clusters()
  plan = sampler.plan_epoch(labels, cameras, labels, cameras % 2, steps=4, rng=0,
                            visible_batch=32, infrared_batch=64)
  assert plan.visible_index.shape == plan.visible_label.shape == (4, 32)
  assert plan.infrared_index.shape == plan.infrared_label.shape == (4, 64)
  np.testing.assert_array_equal(plan.infrared_label, labels[plan.infrared_index])


def test_bad_inputs_raise_one_clear_error():
  labels, cameras = _clusters()
  with pytest.raises(ValueError, match='fewer than a batch'):
    sampler.camera_aware_plan(labels, cameras, 3, 98, rng=0)
  with pytest.raises(ValueError, match='outlier'):
    sampler.camera_aware_plan(-np.ones(5, int), np.zeros(5, int), 3, 2, rng=0)
  with pytest.raises(ValueError, match='cameras'):
    sampler.camera_aware_plan(labels, cameras[:-1], 3, 2, rng=0)
  with pytest.raises(ValueError, match='batch_size'):
    sampler.camera_aware_plan(labels, cameras, 3, 0, rng=0)


# --------------------------------------------------------------------------------------------
# Distributions against the reference with its own random calls


def _statistics(passes, labels):
  """Per cluster: anchor counts per member, draw counts per member, mean distinct draws."""
  anchors, drawn = collections.Counter(), collections.Counter()
  distinct = collections.defaultdict(list)
  for sequence in passes:
    for run in _runs(np.asarray(sequence), labels):
      anchors[int(run[0])] += 1
      drawn.update(int(i) for i in run[1:])
      if len(run) > 1:
        distinct[int(labels[run[0]])].append(len(set(run[1:].tolist())))
  return anchors, drawn, {k: np.mean(v) for k, v in distinct.items()}


def _expected(labels, cameras):
  """Exact per-pass expectations: anchor probability and mean draws of each member, and the
  mean number of distinct draws of each cluster."""
  anchor_p, draws, distinct = {}, collections.Counter(), collections.defaultdict(float)
  for cluster in range(7):
    members = np.flatnonzero(labels == cluster)
    for anchor in members:
      anchor_p[int(anchor)] = 1 / len(members)
      others = members[cameras[members] != cameras[anchor]]
      candidates = others if len(others) else members[members != anchor]
      n = len(candidates)
      for m in candidates:
        draws[int(m)] += (NUM_INSTANCES - 1) / n / len(members)
      if n:
        mean = (NUM_INSTANCES - 1 if n >= NUM_INSTANCES
                else n * (1 - (1 - 1 / n) ** (NUM_INSTANCES - 1)))
        distinct[cluster] += mean / len(members)
  return anchor_p, draws, distinct


def test_draws_follow_the_same_distribution_as_the_reference():
  labels, cameras = _clusters()
  num_passes = 3000
  groups = sampler._group(labels, cameras, 'test')
  generator = np.random.default_rng(9)
  ours = [sampler._one_pass(groups, NUM_INSTANCES, generator) for _ in range(num_passes)]
  torch.manual_seed(0)
  random.seed(0)
  np.random.seed(0)
  reference = ReferenceSampler(_data_source(labels, cameras), NUM_INSTANCES)
  theirs = [list(iter(reference)) for _ in range(num_passes)]
  anchor_p, draws, distinct = _expected(labels, cameras)
  for name, passes in (('ours', ours), ('reference', theirs)):
    anchors, drawn, mean_distinct = _statistics(passes, labels)
    for member, p in anchor_p.items():  # binomial counts within 5 standard deviations
      assert abs(anchors[member] - num_passes * p) < 5 * np.sqrt(num_passes * p * (1 - p)) + 1, (
          name, member)
    for member, mean in draws.items():
      # at most 15 draws of one member per pass: a loose bound on its variance
      bound = 5 * np.sqrt(num_passes * mean * (NUM_INSTANCES - 1)) + 1
      assert abs(drawn[member] - num_passes * mean) < bound, (name, member)
    assert set(drawn) == set(draws)  # nothing outside the candidates
    for cluster, mean in distinct.items():
      assert abs(mean_distinct[cluster] - mean) < 0.15, (name, cluster, mean_distinct[cluster])
  # Position of the clusters in a pass: uniform in both.
  for passes in (ours, theirs):
    first = collections.Counter(int(labels[p[0]]) for p in passes)
    assert all(abs(first[k] - num_passes / 7) < 5 * np.sqrt(num_passes / 7) for k in range(7))
