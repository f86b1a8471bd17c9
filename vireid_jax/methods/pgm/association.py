"""PGM's cross-modality association of a stage-2 epoch: progressive graph matching.

The reference's stage 2: docs/pgm.md, "Stage 2".

The matching itself is `matching.pgm_match`; this module applies the run's settings (rounds,
what happens when the infrared side has more clusters), stops with one clear line where the
authors' code would crash, and measures the pairs against the true identities where they are
known.
"""

import numpy as np

from vireid_jax import methods
from vireid_jax.clustering.diagnostics import match_diagnostics
from vireid_jax.methods.pgm.matching import pgm_match

VISIBLE_TO_INFRARED = 'visible_to_infrared'
INFRARED_TO_VISIBLE = 'infrared_to_visible'


class UnmatchedClusters(methods.MethodStop):
  """`pgm.rounds=2` left clusters without a partner: the authors' training stops there too."""


def _oracle_maps(clusters, pids) -> tuple[np.ndarray, np.ndarray]:
  """Clusters are identities (`cluster.oracle`): each one's partner is the same identity."""
  visible_ids = np.unique(pids[0])
  infrared_ids = np.unique(pids[1])
  index_of = {pid: i for i, pid in enumerate(infrared_ids)}
  visible_to_infrared = np.array([index_of.get(pid, -1) for pid in visible_ids], np.int64)
  index_of = {pid: i for i, pid in enumerate(visible_ids)}
  infrared_to_visible = np.array([index_of.get(pid, -1) for pid in infrared_ids], np.int64)
  del clusters
  return visible_to_infrared, infrared_to_visible


def _pair_mask(visible_to_infrared, infrared_to_visible) -> np.ndarray:
  """(K_i, K_v) bool: the pairs the two maps make."""
  mask = np.zeros((len(infrared_to_visible), len(visible_to_infrared)), bool)
  matched = visible_to_infrared >= 0
  mask[visible_to_infrared[matched], np.flatnonzero(matched)] = True
  matched = infrared_to_visible >= 0
  mask[np.flatnonzero(matched), infrared_to_visible[matched]] = True
  return mask


def associate(config, schedule, clusters, pids) -> tuple[dict, dict]:
  """Stage 2: ({visible_to_infrared (K_v,), infrared_to_visible (K_i,)}, statistics); stage 1
  and epochs whose cross term is skipped: ({}, statistics)."""
  if schedule.stage == 1:
    return {}, {}
  num_visible, num_infrared = len(clusters.visible_centers), len(clusters.infrared_centers)
  if num_infrared > num_visible and config.pgm.more_infrared == 'skip':
    # train_sysu.py has no branch for it: the maps stay empty and the cross term is 0.
    return {}, {'match/skipped': 1.0}
  if config.cluster.oracle:
    visible_to_infrared, infrared_to_visible = _oracle_maps(clusters, pids)
  else:
    rounds = config.pgm.rounds  # 'until_all' or a count (a string on the command line)
    visible_to_infrared, infrared_to_visible = pgm_match(
        clusters.visible_centers, clusters.infrared_centers,
        rounds=rounds if rounds == 'until_all' else int(rounds))
  for side, partners in (('visible', visible_to_infrared), ('infrared', infrared_to_visible)):
    if np.any(partners < 0):
      raise UnmatchedClusters(
          f'epoch {schedule.epoch + 1}: PGM\'s {config.pgm.rounds} matching rounds left '
          f'{int(np.sum(partners < 0))} of {len(partners)} {side} clusters without a partner '
          f'({num_visible} visible, {num_infrared} infrared clusters; the authors\' code stops '
          f'here with a KeyError). Use --config.pgm.rounds=until_all to match them all.')
  smaller_is_infrared = num_infrared <= num_visible
  if smaller_is_infrared:  # round 1: the smaller side's one-to-one partners
    one_to_one = np.stack([np.arange(num_infrared), infrared_to_visible], 1)
  else:
    one_to_one = np.stack([visible_to_infrared, np.arange(num_visible)], 1)
  mask = _pair_mask(visible_to_infrared, infrared_to_visible)
  stats = {f'match/{k}': v for k, v in match_diagnostics(
      mask, clusters.visible_labels, pids[0], clusters.infrared_labels, pids[1],
      one_to_one=one_to_one).items()}
  stats['match/skipped'] = 0.0
  return {VISIBLE_TO_INFRARED: visible_to_infrared,
          INFRARED_TO_VISIBLE: infrared_to_visible}, stats
