"""How good the pseudo labels and the matching are, where true identities are known.

For the synthetic set, or for studying the method on a labelled training set; training never
reads these numbers. Each function returns a flat dict of floats for the epoch log.
"""

import numpy as np
from sklearn import metrics


def majority_identities(pseudo_labels: np.ndarray, true_pids: np.ndarray) -> np.ndarray:
  """(K,) int64: the most frequent true identity in each cluster (ties: the smallest pid)."""
  pseudo_labels = np.asarray(pseudo_labels)
  true_pids = np.asarray(true_pids)
  clustered = pseudo_labels >= 0
  num_clusters = int(pseudo_labels.max(initial=-1)) + 1
  pids, pid_index = np.unique(true_pids[clustered], return_inverse=True)
  counts = np.zeros((num_clusters, len(pids)), np.int64)
  np.add.at(counts, (pseudo_labels[clustered], pid_index), 1)
  return pids[counts.argmax(axis=1)] if len(pids) else np.zeros(num_clusters, np.int64)


def cluster_diagnostics(pseudo_labels: np.ndarray, true_pids: np.ndarray | None) -> dict:
  """Counts, and purity / NMI / ARI against the true identities when they are given.

  Args:
    pseudo_labels: (N,) int, -1 for outliers.
    true_pids: (N,) int true identities, or None (then only the counts).

  Returns:
    clusters, outliers, outlier_fraction; with identities also identities (distinct true ids),
    purity (fraction of clustered samples carrying their cluster's majority identity), and nmi
    and ari between pseudo labels and identities over the clustered samples.
  """
  pseudo_labels = np.asarray(pseudo_labels)
  clustered = pseudo_labels >= 0
  stats = {
      'clusters': float(pseudo_labels.max(initial=-1) + 1),
      'outliers': float(np.sum(~clustered)),
      'outlier_fraction': float(np.mean(~clustered)) if len(pseudo_labels) else 0.0,
  }
  if true_pids is None:
    return stats
  true_pids = np.asarray(true_pids)
  if len(true_pids) != len(pseudo_labels):
    raise ValueError(f'{len(true_pids)} identities for {len(pseudo_labels)} pseudo labels')
  stats['identities'] = float(len(np.unique(true_pids)))
  if not clustered.any():
    stats.update(purity=float('nan'), nmi=float('nan'), ari=float('nan'))
    return stats
  majority = majority_identities(pseudo_labels, true_pids)
  labels, pids = pseudo_labels[clustered], true_pids[clustered]
  stats['purity'] = float(np.mean(majority[labels] == pids))
  stats['nmi'] = float(metrics.normalized_mutual_info_score(pids, labels))
  stats['ari'] = float(metrics.adjusted_rand_score(pids, labels))
  return stats


def match_diagnostics(match_mask: np.ndarray, labels_visible: np.ndarray,
                      pids_visible: np.ndarray | None, labels_infrared: np.ndarray,
                      pids_infrared: np.ndarray | None,
                      one_to_one: np.ndarray | None = None) -> dict:
  """How many cluster pairs were matched and how many of them share a majority identity.

  MBCCM's relaxed mask gives each cluster several partners, so the share of matched pairs
  with the same identity stays low even when matching works; the two per-cluster measures say
  whether it does: is the Hungarian partner right, and is a right partner among the matched?

  Args:
    match_mask: (K_i, K_v) bool from `mbccm_match`.
    labels_visible, labels_infrared: (N_v,), (N_i,) pseudo labels, -1 for outliers.
    pids_visible, pids_infrared: the true identities, or None (then only the pair count).
    one_to_one: (P, 2) int (infrared, visible) cluster pairs of the one-to-one (Hungarian)
      assignment, `MatchResult.one_to_one`; None leaves out one_to_one_precision.

  Returns:
    pairs (matched cluster pairs); with identities also pair_precision (fraction of matched
    pairs whose two majority identities agree), infrared_with_true_partner (fraction of
    infrared clusters with at least one matched visible cluster of their majority identity)
    and, given one_to_one, one_to_one_precision (fraction of its pairs whose majority
    identities agree).
  """
  match_mask = np.asarray(match_mask, bool)
  stats = {'pairs': float(match_mask.sum())}
  if pids_visible is None or pids_infrared is None:
    return stats
  majority_visible = majority_identities(labels_visible, pids_visible)
  majority_infrared = majority_identities(labels_infrared, pids_infrared)
  expected = (len(majority_infrared), len(majority_visible))
  if match_mask.shape != expected:
    raise ValueError(f'match mask has shape {match_mask.shape}, the labels give {expected}')
  same_identity = majority_infrared[:, None] == majority_visible[None, :]  # (K_i, K_v)
  agree = same_identity[match_mask]
  stats['pair_precision'] = float(agree.mean()) if len(agree) else float('nan')
  true_partner = (match_mask & same_identity).any(axis=1)
  stats['infrared_with_true_partner'] = (float(true_partner.mean()) if len(true_partner)
                                         else float('nan'))
  if one_to_one is not None:
    pairs = np.asarray(one_to_one, np.int64).reshape(-1, 2)
    stats['one_to_one_precision'] = (float(same_identity[pairs[:, 0], pairs[:, 1]].mean())
                                     if len(pairs) else float('nan'))
  return stats
