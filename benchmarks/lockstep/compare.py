"""Differences between the two sides of a lockstep run, the tolerances, and the verdict.

Pure functions on recorded arrays (record.py's keys), independent of both implementations.
Every difference is relative, computed in float64: |a - b| / |b| for scalars and
||a - b|| / ||b|| (Frobenius) for arrays, b being the reference's value; 0 / 0 counts as 0.
Cluster numbering is each side's own: `partition_map` finds the one-to-one map between two
labelings of the same partition, and tables and associations are compared through it.

What is measured (a `Row` per compared epoch and step):

  epoch  features/{visible,infrared}  the features clustered
         partition/{...}, association  identical or not (flags), with an explanation where not
         memories_init                 the largest difference of a memory table as initialised
         start                         all parameters the epoch starts from, together
  step   lr, grad_norm, total          the learning rate, the gradient norm, the loss
         loss                          the largest difference of a loss term
         params                        all parameters after the optimiser step, together
         params_max                    the largest difference of a single parameter tensor
         bn_stats                      all BatchNorm running statistics, together
         bn_stats_max                  the largest difference of a single statistic tensor
         memories                      the largest difference of a memory table after the step

How it is judged (`judge`; docs/verification.md, "How it is judged"): float32 rounding alone
moves this network's numbers further than any fixed small tolerance allows (the authors' own
code in float32 against itself in float64, fed the same inputs, differs by about 1e-2 in
single gradient tensors after one step, and Adam's first steps turn float32-noise-level
gradient entries into parameter differences of up to twice the learning rate). So the yardstick is that run: the
reference run a second time in float64. A quantity passes when

    ours vs their float32  <=  max(FACTOR x (their float32 vs their float64, the largest so far),
                                   FLOOR[quantity])

i.e. the two float32 implementations differ by no more than a few times what float32 rounding
does to the authors' code by itself. FACTOR = 4 leaves room for two independent roundings
(the expected distance between two of them is sqrt(2) times either's distance from the exact
value) and for their scatter. Every epoch, their Jaccard distance and DBSCAN also run on OUR
features and OUR neighbour table: that partition must be ours (the clustering code computes
the same thing), and our neighbour table may differ from an exact search only at near-ties
(NEAR_TIE); where
the partitions of the two sides' own features differ anyway, the features' last bits decide
(a note). Without that check, a differing partition passes as a note only where the
yardstick's differs at the same epoch too or a pair lies within EPS_MARGIN of eps.
Likewise their matching runs on our centres and must give our association; where the two
sides' own associations differ anyway, the centres' last bits decide (a note). Without a yardstick run the fixed
schedule FALLBACK applies (base x growth^step), set from the yardstick measurements.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from benchmarks.lockstep import names

FACTOR = 4.0
# quantity -> the smallest tolerance (rounding of the value itself: float32 against float64)
FLOOR: Dict[str, float] = {
    'lr': 1e-6, 'loss': 1e-6, 'total': 1e-6, 'params': 1e-6,
    # The norm of gradients whose single tensors differ by about 1e-2 between float32 runs:
    # the authors' float32 and float64 norms were 5e-4 apart at PGM's first step, and a norm's
    # rounding can cancel by chance (2e-6 at MBCCM's), so the yardstick alone is not enough.
    'grad_norm': 2e-3,
    'params_max': 1e-6, 'bn_stats': 1e-6, 'bn_stats_max': 1e-6, 'memories': 1e-6,
    'features': 1e-6, 'memories_init': 1e-6, 'start': 1e-6,
}
# quantity -> (base, growth per step): the tolerance at step s without a yardstick run
FALLBACK: Dict[str, Tuple[float, float]] = {
    'lr': (1e-6, 1.0), 'loss': (1e-4, 2.0), 'total': (1e-4, 2.0), 'grad_norm': (1e-2, 1.5),
    'params': (1e-4, 1.5), 'params_max': (3.0, 1.0), 'bn_stats': (1e-4, 1.5),
    'bn_stats_max': (1e-2, 1.5), 'memories': (1e-3, 2.0), 'features': (1e-3, 2.0),
    'memories_init': (1e-3, 2.0), 'start': (1e-4, 1.5),
}
# A DBSCAN decision "at eps": a pair whose Jaccard distance lies this close to eps can fall on
# either side of it when the features differ in their last bits.
EPS_MARGIN = 1e-4
# Near-ties of the neighbour search: entries whose squared distances to the query differ by
# less than this can come in either order from a float32 search (a 2048-term float32 dot
# product of unit rows is good to about 1e-6; faiss computes |x|^2 + |y|^2 - 2 x.y in float32).
NEAR_TIE = 1e-5
# Memory tables and the modality whose cluster numbering labels their rows.
TABLE_MODALITY = {'visible': 'visible', 'infrared': 'infrared',
                  'agnostic_visible': 'visible', 'agnostic_infrared': 'infrared'}


def rel_diff(a, b) -> float:
  """||a - b|| / ||b|| in float64 (0 when both are 0; inf when only b is, or shapes differ)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape:
    return math.inf
  num = float(np.linalg.norm((a - b).ravel()))
  if num == 0.0:
    return 0.0
  den = float(np.linalg.norm(b.ravel()))
  return num / den if den > 0 else math.inf


def rel_diff_together(ours: dict, theirs: dict, keys) -> float:
  """The relative difference of several arrays taken as one vector."""
  num = den = 0.0
  for key in keys:
    if key not in theirs:
      return math.inf
    a = np.asarray(ours[key], np.float64)
    b = np.asarray(theirs[key], np.float64)
    if a.shape != b.shape:
      return math.inf
    num += float(np.sum((a - b)**2))
    den += float(np.sum(b**2))
  if num == 0.0:
    return 0.0
  return math.sqrt(num / den) if den > 0 else math.inf


def partition_map(ours, theirs) -> Tuple[bool, Optional[np.ndarray]]:
  """Whether two labelings (-1 = outlier) are the same partition, and if so the map
  `mapping[our cluster] = their cluster` (an int64 array over our clusters)."""
  ours = np.asarray(ours, np.int64)
  theirs = np.asarray(theirs, np.int64)
  if ours.shape != theirs.shape or not np.array_equal(ours < 0, theirs < 0):
    return False, None
  members = ours >= 0
  if not members.any():
    return True, np.zeros(0, np.int64)
  pairs = np.unique(np.stack([ours[members], theirs[members]], 1), axis=0)
  if (len(np.unique(pairs[:, 0])) != len(pairs) or len(np.unique(pairs[:, 1])) != len(pairs)
      or len(pairs) != ours.max() + 1):
    return False, None
  mapping = np.full(ours.max() + 1, -1, np.int64)
  mapping[pairs[:, 0]] = pairs[:, 1]
  return True, mapping


def partition_summary(ours, theirs) -> str:
  """Where two partitions differ, in a few words."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  n_ours = len(set(ours[ours >= 0].tolist()))
  n_theirs = len(set(theirs[theirs >= 0].tolist()))
  outliers = int(np.sum((ours < 0) != (theirs < 0)))
  return (f'{n_ours} vs {n_theirs} clusters, {int(np.sum(ours < 0))} vs '
          f'{int(np.sum(theirs < 0))} outliers ({outliers} images outlier on one side only)')


def table_in_our_order(table, mapping) -> np.ndarray:
  """The reference's table with row mapping[k] moved to row k (our numbering)."""
  return np.asarray(table)[mapping]


MAP_KEYS = ('association/visible_to_infrared', 'association/infrared_to_visible')


def _maps_in_our_numbering(ours: dict, theirs: dict, maps: dict) -> Optional[list]:
  """PGM's two maps as [(ours, theirs translated to our numbering)], -1 = no partner; None
  where a shape differs."""
  pairs = []
  for key, side, other_side in ((MAP_KEYS[0], 'visible', 'infrared'),
                                (MAP_KEYS[1], 'infrared', 'visible')):
    mine = np.asarray(ours[key], np.int64)
    other = np.asarray(theirs[key], np.int64)
    if other.shape != mine.shape:
      return None
    inverse = np.full(len(maps[other_side]), -1, np.int64)  # their cluster -> ours
    inverse[maps[other_side]] = np.arange(len(maps[other_side]))
    translated = other[maps[side]]
    pairs.append((mine, np.where(translated >= 0, inverse[np.maximum(translated, 0)], -1)))
  return pairs


def association_extends(ours: dict, theirs: dict, maps: dict) -> Optional[int]:
  """PGM's maps: where theirs gives a cluster a partner, ours gives it the same one; returns how
  many clusters theirs leaves without a partner (None where ours departs from theirs anywhere
  else). This is `pgm.rounds='until_all'` against the authors' two rounds (docs/pgm.md,
  "Reference quirks", 1): the same pairs, and partners for the clusters theirs leaves out."""
  if not all(k in ours and k in theirs for k in MAP_KEYS):
    return None
  pairs = _maps_in_our_numbering(ours, theirs, maps)
  if pairs is None:
    return None
  left = 0
  for mine, translated in pairs:
    paired = translated >= 0
    if not np.array_equal(mine[paired], translated[paired]) or (mine[~paired] < 0).any():
      return None
    left += int((~paired).sum())
  return left


def association_equal(ours: dict, theirs: dict, maps: dict) -> Optional[bool]:
  """Whether the epoch's associations are the same cluster pairs (None: neither has one)."""
  if 'association/match_mask' in ours or 'association/match_mask' in theirs:
    if 'association/match_mask' not in ours or 'association/match_mask' not in theirs:
      return False
    mine = np.asarray(ours['association/match_mask']).astype(bool)
    other = np.asarray(theirs['association/match_mask']).astype(bool)
    if other.shape != mine.shape:
      return False
    return bool(np.array_equal(mine, other[np.ix_(maps['infrared'], maps['visible'])]))
  present = [k in ours for k in MAP_KEYS] + [k in theirs for k in MAP_KEYS]
  if not any(present):
    return None
  if not all(present):
    return False
  pairs = _maps_in_our_numbering(ours, theirs, maps)
  return pairs is not None and all(np.array_equal(m, t) for m, t in pairs)


def memory_diffs(ours: dict, theirs: dict, maps: dict) -> dict:
  """table -> rel diff of the 'memories/<table>' arrays, the reference's rows in our cluster
  order (inf where a table is missing or the two sides' clusters differ)."""
  out = {}
  for key, value in ours.items():
    if key.startswith('memories/'):
      table = key[len('memories/'):]
      mapping = maps.get(TABLE_MODALITY[table])
      other = theirs.get(key)
      if other is None or mapping is None or len(mapping) != len(value):
        out[table] = math.inf
      else:
        out[table] = rel_diff(value, table_in_our_order(other, mapping))
  return out


def _largest(diffs: dict) -> Tuple[float, str]:
  if not diffs:
    return 0.0, ''
  name = max(diffs, key=lambda k: diffs[k])
  return diffs[name], name


@dataclasses.dataclass
class Row:
  """One compared epoch or step: values[quantity] = difference, where[quantity] = the tensor
  or table with the largest difference, flags (partitions, association), notes; `judge`
  fills limits[quantity] and failures."""
  kind: str  # 'epoch' | 'step' | 'initial'
  index: int
  epoch: int
  stage: int
  values: Dict[str, float] = dataclasses.field(default_factory=dict)
  limits: Dict[str, float] = dataclasses.field(default_factory=dict)
  where: Dict[str, str] = dataclasses.field(default_factory=dict)
  flags: Dict[str, object] = dataclasses.field(default_factory=dict)
  notes: List[str] = dataclasses.field(default_factory=list)
  failures: List[str] = dataclasses.field(default_factory=list)

  @property
  def passed(self) -> bool:
    return not self.failures

  def put(self, quantity: str, value: float, where: str = '') -> None:
    self.values[quantity] = float(value)
    if where:
      self.where[quantity] = where


def _state_quantities(row: Row, ours: dict, theirs: dict, prefix: str, together: str,
                      largest: Optional[str], stats: Optional[Tuple[str, str]]) -> None:
  params = [k for k in ours if k.startswith(prefix) and not names.is_running_stat(k)]
  running = [k for k in ours if k.startswith(prefix) and names.is_running_stat(k)]
  row.put(together, rel_diff_together(ours, theirs, params))
  if largest:
    value, where = _largest({k[len(prefix):]: rel_diff(ours[k], theirs.get(k, np.nan))
                             for k in params})
    row.put(largest, value, where)
  if stats and running:
    row.put(stats[0], rel_diff_together(ours, theirs, running))
    value, where = _largest({k[len(prefix):]: rel_diff(ours[k], theirs.get(k, np.nan))
                             for k in running})
    row.put(stats[1], value, where)


def compare_epoch(ours: dict, theirs: dict) -> Tuple[Row, dict]:
  """One epoch: features, partitions, association, initial memories, starting state. Returns
  the row and the maps {'visible', 'infrared'} (our cluster -> theirs) of the labels the
  reference trained on ('labels_used/...' where it was handed ours, else its own)."""
  row = Row('epoch', int(ours['epoch']), int(ours['epoch']), int(ours['stage']))
  maps = {}
  for modality in ('visible', 'infrared'):
    key = f'features/{modality}'
    if key in ours:
      row.put(key, rel_diff(ours[key], theirs.get(key, np.nan)))
    same, _ = partition_map(ours[f'labels/{modality}'], theirs[f'labels/{modality}'])
    row.flags[f'partition/{modality}'] = same
    row.flags[f'clusters/{modality}'] = int(np.max(ours[f'labels/{modality}'], initial=-1)) + 1
    if f'neighbor_gap/{modality}' in theirs:
      row.flags[f'neighbor_rows_differ/{modality}'] = int(theirs[f'neighbor_rows_differ/{modality}'])
      row.flags[f'neighbor_gap/{modality}'] = float(theirs[f'neighbor_gap/{modality}'])
    if f'partition_on_our_features/{modality}' in theirs:
      row.flags[f'partition_on_our_features/{modality}'] = bool(
          theirs[f'partition_on_our_features/{modality}'])
    if not same:
      row.flags[f'partition_summary/{modality}'] = partition_summary(
          ours[f'labels/{modality}'], theirs[f'labels/{modality}'])
      row.flags[f'near_eps_pairs/{modality}'] = int(theirs.get(f'near_eps_pairs/{modality}', 0))
    # The labels each side trained on: a reference handed ours trained on 'labels_used'.
    ours_used = ours.get(f'labels_used/{modality}', ours[f'labels/{modality}'])
    used = theirs.get(f'labels_used/{modality}', theirs[f'labels/{modality}'])
    same_used, mapping = partition_map(ours_used, used)
    row.flags[f'trained_on_ours/{modality}'] = bool(same_used)
    if same_used:
      maps[modality] = mapping
  row.flags['association'] = association_equal(ours, theirs, maps) if len(maps) == 2 else False
  row.flags['association_forced'] = bool(theirs.get('association_forced', False))
  if 'association_on_our_centres' in theirs:
    row.flags['association_on_our_centres'] = bool(theirs['association_on_our_centres'])
    row.flags['association_unmatched_by_theirs'] = int(
        theirs.get('association_unmatched_by_theirs', 0))
  mem = memory_diffs(ours, theirs, maps)
  if mem:
    value, where = _largest(mem)
    row.put('memories_init', value, where)
  if any(k.startswith('start/') for k in ours):
    _state_quantities(row, ours, theirs, 'start/', 'start', None, None)
  if 'restart/from_epoch' in ours:
    row.flags['restart_from'] = int(ours['restart/from_epoch'])
    row.flags['restart_same'] = (int(theirs.get('restart/from_epoch', -2)) ==
                                 int(ours['restart/from_epoch']))
  return row, maps


def compare_step(step: int, ours: dict, theirs: dict, maps: dict) -> Row:
  """One step: loss terms, total, gradient norm, learning rate, parameters, BatchNorm
  statistics and memory tables after the updates."""
  row = Row('step', step, int(ours['epoch']), int(ours['stage']))
  row.put('lr', rel_diff(ours['lr'], theirs.get('lr', np.nan)))
  terms = {k[len('loss/'):]: rel_diff(v, theirs.get(k, np.nan))
           for k, v in ours.items() if k.startswith('loss/') and k != 'loss/total'}
  if terms:
    value, where = _largest(terms)
    row.put('loss', value, where)
  row.put('total', rel_diff(ours['loss/total'], theirs.get('loss/total', np.nan)))
  row.put('grad_norm', rel_diff(ours['grad_norm'], theirs.get('grad_norm', np.nan)))
  _state_quantities(row, ours, theirs, 'state/', 'params', 'params_max',
                    ('bn_stats', 'bn_stats_max'))
  value, where = _largest(memory_diffs(ours, theirs, maps))
  row.put('memories', value, where)
  return row


def compare_initial(ours: dict, theirs: dict) -> Row:
  """The starting weights: the reference must start from exactly ours."""
  row = Row('initial', -1, -1, 0)
  missing = sorted(set(ours) - set(theirs))
  row.flags['missing'] = len(missing)
  value, where = _largest({k: rel_diff(v, theirs[k]) for k, v in ours.items() if k in theirs})
  row.put('initial', value if not missing else math.inf, where or (missing[:1] or [''])[0])
  return row


class Comparison:
  """A sink for the reference side: measures each report against `ours` (a
  record.Recording of the other side) as it arrives; `rows` in order, `judge` them after."""

  def __init__(self, ours):
    self.ours = ours
    self.rows: List[Row] = []
    self.maps: dict = {}

  def initial(self, state) -> None:
    self.rows.append(compare_initial(self.ours.read_initial(), state))

  def data(self, arrays) -> None:
    del arrays

  def epoch(self, epoch: int, record) -> None:
    row, self.maps = compare_epoch(self.ours.read_epoch(epoch), record)
    self.rows.append(row)

  def step(self, step: int, record) -> None:
    self.rows.append(compare_step(step, self.ours.read_step(step), record, self.maps))


# --- the verdict -----------------------------------------------------------------------------

def _quantity_class(quantity: str) -> str:
  return 'features' if quantity.startswith('features/') else quantity


def _envelope(yardstick: List[Row]) -> Dict[Tuple[str, str, int], float]:
  """(kind, quantity, index) -> the largest yardstick value of that quantity up to index."""
  out, running = {}, {}
  for row in sorted(yardstick, key=lambda r: (r.kind, r.index)):
    for q, value in row.values.items():
      key = (row.kind, q)
      running[key] = max(running.get(key, 0.0), value if math.isfinite(value) else 0.0)
      out[(row.kind, q, row.index)] = running[key]
  return out


def _envelope_at(env, kind: str, quantity: str, index: int) -> Optional[float]:
  best = None
  for (k, q, i), value in env.items():
    if k == kind and q == quantity and i <= index and (best is None or i > best[0]):
      best = (i, value)
  return None if best is None else best[1]


# A sum's rounding can cancel by chance where its parts' does not: the loss's yardstick is also
# its terms'.
YARDSTICK_ALSO = {'total': ('loss',)}


def limit(quantity: str, row: Row, env=None) -> float:
  """The tolerance of `quantity` in `row` (see the module docstring)."""
  q = _quantity_class(quantity)
  if env is not None:
    y = max([_envelope_at(env, row.kind, name, row.index) or 0.0
             for name in (quantity,) + YARDSTICK_ALSO.get(quantity, ())])
    return max(FLOOR[q], FACTOR * y)
  base, growth = FALLBACK[q]
  steps = row.index if row.kind == 'step' else row.flags.get('first_step', 0)
  return base * growth**max(steps, 0)


def judge(rows: List[Row], yardstick: Optional[List[Row]] = None) -> List[Row]:
  """Fills each row's limits and failures (and notes): against the yardstick rows (their
  float32 against their float64) when given, else the fixed FALLBACK schedule."""
  env = _envelope(yardstick) if yardstick else None
  yard_epochs = {r.index: r for r in (yardstick or []) if r.kind == 'epoch'}
  steps_before = 0
  for row in rows:
    row.limits, row.failures, row.notes = {}, [], []
    if row.kind == 'step':
      steps_before = row.index + 1
    if row.kind == 'epoch':
      row.flags['first_step'] = steps_before
    if row.kind == 'initial':
      row.limits['initial'] = 0.0
      if row.values.get('initial', 0.0) != 0.0:
        row.failures.append(f'the reference does not start from our weights '
                            f'({row.values["initial"]:.3g}, {row.where.get("initial")})')
      continue
    for q, value in row.values.items():
      row.limits[q] = limit(q, row, env)
      if not value <= row.limits[q]:
        where = f' ({row.where[q]})' if q in row.where else ''
        row.failures.append(f'{q} {value:.3g} > {row.limits[q]:.3g}{where}')
    if row.kind == 'epoch':
      _judge_decisions(row, yard_epochs.get(row.index))
  return rows


def _judge_decisions(row: Row, yard: Optional[Row]) -> None:
  for modality in ('visible', 'infrared'):
    if not row.flags.get(f'trained_on_ours/{modality}', True):
      row.failures.append(f'{modality}: the reference trained on another partition than ours')
    if row.flags.get(f'partition_on_our_features/{modality}') is False:
      row.failures.append(f'{modality}: their Jaccard + DBSCAN on our features and neighbour '
                          f'table do not give our partition')
    gap = row.flags.get(f'neighbor_gap/{modality}', 0.0)
    if gap > NEAR_TIE:
      row.failures.append(f'{modality}: our neighbour search ranks differently from an exact '
                          f'one beyond near-ties (squared distances {gap:.2g} apart)')
    elif row.flags.get(f'neighbor_rows_differ/{modality}'):
      row.notes.append(f'{modality}: our neighbour search orders near-ties otherwise than an '
                       f'exact one in {row.flags[f"neighbor_rows_differ/{modality}"]} rows '
                       f'(swapped entries at most {gap:.1e} apart in squared distance)')
    if row.flags.get(f'partition/{modality}', True):
      continue
    summary = row.flags.get(f'partition_summary/{modality}', '')
    near = row.flags.get(f'near_eps_pairs/{modality}', 0)
    if row.flags.get(f'partition_on_our_features/{modality}'):
      features = row.values.get(f'features/{modality}', math.nan)
      row.notes.append(f'{modality} partition differs ({summary}), but their Jaccard + DBSCAN '
                       f'on our features give exactly our partition: the features decide '
                       f'(they differ by {features:.1e}: neighbour near-ties or pairs at eps), '
                       f"not the clustering; both continue from the project's labels")
    elif yard is not None and yard.flags.get(f'partition/{modality}') is False:
      row.notes.append(f'{modality} partition differs ({summary}); float32 rounding alone '
                       f'changes it too (their float32 against their float64); both continue '
                       f"from the project's labels")
    elif near:
      row.notes.append(f'{modality} partition differs ({summary}) at a DBSCAN decision at '
                       f'eps: {near} pairs lie within {EPS_MARGIN:g} of eps; both continue '
                       f"from the project's labels")
    else:
      row.failures.append(f'{modality} partition differs ({summary}), with no pair near eps')
  if row.flags.get('association_on_our_centres') is False:
    row.failures.append('their matching of our centres is not our association')
  elif row.flags.get('association_unmatched_by_theirs'):
    row.notes.append(
        f"their matching of our centres leaves {row.flags['association_unmatched_by_theirs']} "
        f"clusters without a partner (their two rounds; their code dies with a KeyError when "
        f"one is sampled); ours (pgm.rounds='until_all') equals theirs on every pair theirs "
        f"makes and gives those clusters a partner")
  if row.flags.get('association') is False:
    forced = row.flags.get('association_forced')
    then = "; the reference continued from the project's" if forced else ''
    if row.flags.get('association_on_our_centres') and row.flags.get(
        'association_unmatched_by_theirs'):
      row.notes.append(f'association differs where their rounds leave clusters without a '
                       f'partner (above){then}')
    elif row.flags.get('association_on_our_centres'):
      row.notes.append('association differs, but their matching of our centres gives exactly '
                       f'ours: the centres decide, not the matching{then}')
    elif yard is not None and yard.flags.get('association') is False:
      row.notes.append(f'association differs; float32 rounding alone changes it too{then}')
    else:
      row.failures.append(f'association differs{then}')
  if row.flags.get('restart_same') is False:
    row.failures.append('the reference restarted stage 2 from another stage-1 epoch')


def passed(rows: List[Row], expected_steps: int) -> bool:
  steps = [r for r in rows if r.kind == 'step']
  return len(steps) == expected_steps and all(r.passed for r in rows)


def first_failure(rows: List[Row], quantity: Optional[str] = None) -> Optional[Row]:
  """The first row that fails (on `quantity`, if given)."""
  for row in rows:
    if quantity is None and not row.passed:
      return row
    if quantity is not None and any(f.startswith(quantity) for f in row.failures):
      return row
  return None
