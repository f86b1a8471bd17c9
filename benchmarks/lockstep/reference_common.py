"""What both reference runners share: the run's position, the labels fed, the state read back.

`Lockstep` holds where the authors' loop is (epoch, step), what the current epoch has recorded
so far, our side's record it is fed from, and the map from our cluster numbering to theirs.
Their clustering runs over `sorted(trainset)`, i.e. in the order of the file paths their
dataset classes build (MBCCM: the raw layout's camX/<id>/<file>, camera first; PGM: the
Market-style <id>_c<cam>_<file>.jpg of its prepare_sysu.py, identity first); ours in the
reader's order (identity, camera, file). Everything recorded per image is put back into our
order here, so that the comparison sees both sides' images in one order.
"""

import contextlib
import sys
import types

import numpy as np
import torch

from benchmarks.lockstep import compare
from benchmarks.lockstep import torch_cpu

MODALITIES = ('visible', 'infrared')


class Lockstep:
  """The state the patches of one reference run share.

  Args:
    feed: our side's record.Recording (initial weights, images, per-step inputs and labels).
    sink: where the reference's reports go (a compare.Comparison, or a record.Tee).
    their_paths: modality -> the path strings their dataset gives our images, in our order.
    log_path: where their printed log goes.
  """

  def __init__(self, settings, feed, sink, their_paths: dict, log_path: str):
    self.settings = settings
    self.feed = feed
    self.sink = sink
    self.log_path = log_path
    self.data = feed.read_data()
    self.initial = feed.read_initial()
    self.sizes = {m: len(self.data[f'{m}/paths']) for m in MODALITIES}
    if self.sizes['visible'] == self.sizes['infrared']:
      raise ValueError('the lockstep tells the modalities apart by their sizes: use a set with '
                       'different numbers of visible and infrared training images')
    self.their_paths = {m: np.asarray(their_paths[m]).astype(str) for m in MODALITIES}
    # perm[m][j]: our index of the image at position j of their sorted(trainset)
    self.perm = {m: np.argsort(self.their_paths[m], kind='stable') for m in MODALITIES}
    self.epoch = -1  # advanced where each epoch starts (its visible extraction)
    self.step = 0
    self.record = {}
    self.maps = {}
    self.model = None
    self.trainer = None
    self.jaccard_calls = {}

  def modality_of(self, n: int) -> str:
    return 'visible' if n == self.sizes['visible'] else 'infrared'

  def to_ours(self, array, modality: str) -> np.ndarray:
    """Rows in their clustering order -> rows in our image order."""
    array = np.asarray(array)
    out = np.empty_like(array)
    out[self.perm[modality]] = array
    return out

  def ours_epoch(self) -> dict:
    return self.feed.read_epoch(self.epoch)

  def labels(self, modality: str, theirs: np.ndarray, distance, eps: float) -> np.ndarray:
    """Their DBSCAN labels (their order) to continue with: theirs, or ours (in their order)
    where the partitions differ. Records both and the map from our clusters to theirs."""
    ours = np.asarray(self.ours_epoch()[f'labels/{modality}'])
    theirs_ours_order = self.to_ours(theirs, modality)
    self.record[f'labels/{modality}'] = theirs_ours_order
    same, mapping = compare.partition_map(ours, theirs_ours_order)
    if same:
      self.maps[modality] = mapping
      return theirs
    distance = np.asarray(distance)
    upper = np.triu_indices(len(distance), 1)
    self.record[f'near_eps_pairs/{modality}'] = int(
        np.sum(np.abs(distance[upper] - eps) <= compare.EPS_MARGIN))
    self.record[f'labels_used/{modality}'] = ours
    self.maps[modality] = np.arange(ours.max() + 1)
    return ours[self.perm[modality]].astype(np.asarray(theirs).dtype)

  def their_labels(self, modality: str, ours) -> np.ndarray:
    """Our cluster labels (of a step) in their numbering."""
    return self.maps[modality][np.asarray(ours, np.int64)]

  def state(self) -> dict:
    """The network's tensors that ours has, under the same names (float64 if theirs is)."""
    module = self.model.module if hasattr(self.model, 'module') else self.model
    current = module.state_dict()
    return {name: current[name].detach().numpy().copy() for name in self.initial}

  def finish_step(self, record: dict, tables) -> None:
    """Adds the parameters, statistics and memory tables after the optimiser step to
    `record` and reports it; `tables`: (our table name, their trainer's memory attribute)."""
    record.update({f'state/{k}': v for k, v in self.state().items()})
    for ours, theirs in tables:
      record[f'memories/{ours}'] = getattr(self.trainer, theirs).features.numpy().copy()
    self.sink.step(self.step, record)
    self.step += 1


def state_setup(model, initial: dict) -> None:
  """Their network starting from exactly our weights: what their constructor loads from the
  ImageNet file came from ours already; the neck (N(1, 0.01) there), the non-local blocks and
  everything else ours has are copied in here."""
  module = model.module if hasattr(model, 'module') else model
  own = module.state_dict()
  missing = sorted(set(initial) - set(own))
  if missing:
    raise KeyError(f'the authors\' network has no {missing[:5]}')
  with torch.no_grad():
    for name, value in initial.items():
      own[name].copy_(torch.from_numpy(np.asarray(value)))


class LogFile:
  """Their `Logger(path)`: their printing goes to the lockstep's reference log instead."""

  def __init__(self, path: str):
    self.file = open(path, 'a')  # pylint: disable=consider-using-with

  def write(self, text: str) -> None:
    self.file.write(text)

  def flush(self) -> None:
    self.file.flush()


def recording_dbscan(ls: Lockstep, real_dbscan, real_jaccard, dtype):
  """Their `DBSCAN(...)` with a `fit_predict` that records the partition (see Lockstep.labels)
  and, as a decisive check of the clustering code, the partition their own Jaccard distance and
  DBSCAN give on OUR features with OUR neighbour table (their search handed it): equal to ours,
  the two clusterings compute the same thing. The neighbour search is checked on its own: our
  table against an exact search of the same features, the differences measured as the largest
  difference of squared distance between entries the two rankings swap (near-ties when tiny).
  `ls.jaccard_calls[m]` holds the arguments of their last `compute_jaccard_distance` call."""

  class RecordingDBSCAN:
    def __init__(self, eps, min_samples=5, metric='euclidean', n_jobs=None, **kwargs):
      self.eps = eps
      self.settings = dict(eps=eps, min_samples=min_samples, metric=metric, n_jobs=n_jobs,
                           **kwargs)
      self.real = real_dbscan(**self.settings)

    def fit_predict(self, distance):
      modality = ls.modality_of(len(distance))
      theirs = self.real.fit_predict(distance)
      args, kwargs = ls.jaccard_calls[modality]
      ours = ls.ours_epoch()
      perm = ls.perm[modality]
      features = np.asarray(ours[f'features/{modality}'])
      table = ours.get(f'neighbors/{modality}')
      check = contextlib.nullcontext()
      if table is not None:
        # Our neighbour search against an exact one on the same features: where the rankings
        # differ, by how much the squared distances of the swapped entries differ.
        exact = torch_cpu.exact_knn(features, features, table.shape[1])[1]
        rows = np.flatnonzero((exact != table).any(1))
        f64 = np.asarray(features, np.float64)
        gap = 0.0
        for r in rows:
          d = lambda idx: np.sum((f64[idx] - f64[r])**2, 1)
          gap = max(gap, float(np.max(np.abs(d(table[r]) - d(exact[r])))))
        ls.record[f'neighbor_rows_differ/{modality}'] = len(rows)
        ls.record[f'neighbor_gap/{modality}'] = gap
        inverse = np.argsort(perm)  # our index -> their position
        check = torch_cpu.forced_neighbors(inverse[table[perm]])
      with check:  # their Jaccard distance and DBSCAN on our features and neighbour table
        on_ours = real_dbscan(**self.settings).fit_predict(real_jaccard(
            torch.from_numpy(np.ascontiguousarray(features[perm])).to(dtype), *args, **kwargs))
      same, _ = compare.partition_map(ours[f'labels/{modality}'],
                                      ls.to_ours(on_ours, modality))
      ls.record[f'partition_on_our_features/{modality}'] = bool(same)
      return ls.labels(modality, theirs, distance, self.eps)

  return RecordingDBSCAN


def params_of(optimizer) -> list:
  return [p for group in optimizer.param_groups for p in group['params']]


def tensor(array, dtype) -> torch.Tensor:
  return torch.from_numpy(np.asarray(array)).to(dtype)


def locals_of(code) -> dict:
  """The locals of the innermost running frame of `code` (their training loop's, read at its
  optimizer.step() call: the step's loss terms)."""
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None and frame.f_code is not code:
    frame = frame.f_back
  if frame is None:
    raise RuntimeError(f'optimizer.step() was not called from {code.co_name}')
  return frame.f_locals


def record_steps(optimizer, before, after) -> None:
  """Makes `optimizer.step()` run `context = before()` (the step's gradients, learning rate and
  loss terms are there to read), the real step, then `after(context)` (the state after it).
  A bound method, so that torch's LR schedulers can wrap it as they wrap the real one."""
  real_step = optimizer.step

  def step(self, closure=None):
    del self
    context = before()
    result = real_step(closure) if closure is not None else real_step()
    after(context)
    return result

  optimizer.step = types.MethodType(step, optimizer)


def in_their_numbering(table, mapping) -> np.ndarray:
  """Our table (row k: our cluster k) with rows in their numbering (row mapping[k])."""
  table = np.asarray(table)
  out = np.empty_like(table)
  out[mapping] = table
  return out
