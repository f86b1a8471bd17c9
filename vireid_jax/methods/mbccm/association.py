"""MBCCM's cross-modality association of an epoch: bilateral cluster matching.

The reference's matching: docs/mbccm.md, "Step 3: match".

The matching itself is `matching.mbccm_match`; this module picks it or,
with `config.cluster.oracle`, the true identities, and measures the result against the true
identities where they are known.
"""

import numpy as np

from vireid_jax.clustering.diagnostics import match_diagnostics
from vireid_jax.methods.mbccm.matching import MatchResult
from vireid_jax.methods.mbccm.matching import match_result
from vireid_jax.methods.mbccm.matching import mbccm_match


def oracle_match(visible_pids: np.ndarray, infrared_pids: np.ndarray) -> MatchResult:
  """The match of `cluster.oracle`: clusters are identities, matched when they are the same."""
  visible_ids, infrared_ids = np.unique(visible_pids), np.unique(infrared_pids)
  mask = infrared_ids[:, None] == visible_ids[None, :]
  unmatched = sorted(int(pid) for pid in set(visible_ids) ^ set(infrared_ids))
  if unmatched:
    raise ValueError(f'cluster.oracle needs every identity in both modalities; missing a '
                     f'partner: {unmatched[:10]}')
  pairs = np.argwhere(mask)
  return match_result(mask, pairs, pairs)


def associate(config, schedule, clusters, pids) -> tuple[dict, dict]:
  """({'match_mask': (Ki, Kv) bool}, match statistics) of the epoch's clusters.

  Computed every epoch, stage 1 included (stage 1 does not use it, but its statistics show how
  far the modalities are apart before stage 2 starts).
  """
  del schedule  # the same matching in both stages
  visible_pids, infrared_pids = pids
  if config.cluster.oracle:
    match = oracle_match(visible_pids, infrared_pids)
  else:
    match = mbccm_match(clusters.visible_centers, clusters.infrared_centers)
  stats = {'match/mean_partners_infrared': float(match.mean_partners_infrared),
           'match/mean_partners_visible': float(match.mean_partners_visible)}
  stats.update({f'match/{k}': v for k, v in match_diagnostics(
      match.mask, clusters.visible_labels, visible_pids, clusters.infrared_labels,
      infrared_pids, one_to_one=match.one_to_one).items()})
  return {'match_mask': match.mask}, stats
