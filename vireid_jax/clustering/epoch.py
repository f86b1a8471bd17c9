"""One epoch's pseudo labels and cluster matching (SPEC.md steps 2-3), shared by every process.

`cluster_epoch` clusters each modality (Jaccard + DBSCAN) and matches the two sides (MBCCM), or
takes the true identities with `config.cluster.oracle`. `shared_cluster_epoch` runs it on
process 0 only and broadcasts the result, so every process of a multi-process run samples the
same batches. Broadcasting rather than recomputing on each host is deliberate: the Jaccard
kernels use fastmath and the matching breaks ties on exact floats, so two hosts could disagree
without any error, and their batches would silently differ.
"""

import dataclasses

import numpy as np

from vireid_jax import multihost
from vireid_jax.clustering.diagnostics import cluster_diagnostics
from vireid_jax.clustering.diagnostics import match_diagnostics
from vireid_jax.clustering.matching import MatchResult
from vireid_jax.clustering.matching import match_result
from vireid_jax.clustering.matching import mbccm_match
from vireid_jax.clustering.pseudo_labels import NoClustersError
from vireid_jax.clustering.pseudo_labels import cluster_centers
from vireid_jax.clustering.pseudo_labels import cluster_features
from vireid_jax.data.types import INFRARED, VISIBLE


@dataclasses.dataclass
class EpochClusters:
  """What clustering and matching produced for one epoch (host side)."""
  visible_labels: np.ndarray  # (Nv,) int, -1 = outlier
  infrared_labels: np.ndarray  # (Ni,) int
  visible_centers: np.ndarray  # (Kv, C) float32, L2-normalised
  infrared_centers: np.ndarray  # (Ki, C)
  match: MatchResult
  stats: dict  # diagnostics for the epoch log (process 0 only; empty elsewhere)


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


def cluster_epoch(config, visible_features, infrared_features, visible_pids,
                  infrared_pids) -> EpochClusters:
  """Jaccard + DBSCAN per modality, then MBCCM matching; raises NoClustersError.

  With `config.cluster.oracle` the true identities replace both (an upper bound for studies).
  """
  c = config.cluster
  labels, centers, stats = {}, {}, {}
  for modality, features, pids in ((VISIBLE, visible_features, visible_pids),
                                   (INFRARED, infrared_features, infrared_pids)):
    if c.oracle:
      labels[modality] = np.unique(pids, return_inverse=True)[1]
      centers[modality] = cluster_centers(features, labels[modality])
    else:
      labels[modality], centers[modality] = cluster_features(
          features, k1=c.k1, k2=c.k2, eps=c.eps, min_samples=c.min_samples, modality=modality)
    for key, value in cluster_diagnostics(labels[modality], pids).items():
      stats[f'{modality}/{key}'] = value
  if c.oracle:
    match = oracle_match(visible_pids, infrared_pids)
  else:
    match = mbccm_match(centers[VISIBLE], centers[INFRARED])
  stats['match/mean_partners_infrared'] = float(match.mean_partners_infrared)
  stats['match/mean_partners_visible'] = float(match.mean_partners_visible)
  stats.update({f'match/{k}': v for k, v in match_diagnostics(
      match.mask, labels[VISIBLE], visible_pids, labels[INFRARED], infrared_pids,
      one_to_one=match.one_to_one).items()})
  return EpochClusters(labels[VISIBLE], labels[INFRARED], centers[VISIBLE], centers[INFRARED],
                       match, stats)


def shared_cluster_epoch(config, visible_features, infrared_features, visible_pids,
                         infrared_pids) -> EpochClusters:
  """`cluster_epoch` on process 0, broadcast to every process (called by all of them).

  Every process passes the same (gathered) features. Raises NoClustersError on every process
  when process 0 found no cluster.
  """
  if multihost.process_count() == 1:
    return cluster_epoch(config, visible_features, infrared_features, visible_pids,
                         infrared_pids)
  clusters, error = None, None
  if multihost.is_main():
    try:
      clusters = cluster_epoch(config, visible_features, infrared_features, visible_pids,
                               infrared_pids)
    except NoClustersError as e:
      error = e
  header = np.zeros(3, np.int32)  # (failed, visible clusters, infrared clusters)
  if clusters is not None:
    header[1:] = len(clusters.visible_centers), len(clusters.infrared_centers)
  header[0] = error is not None
  failed, num_visible, num_infrared = (int(v) for v in multihost.broadcast(header))
  if failed:
    raise error or NoClustersError('DBSCAN found no cluster in a modality (process 0 says '
                                   'which).')
  dim = visible_features.shape[1]
  pairs = (min(num_visible, num_infrared), max(num_visible, num_infrared))
  if clusters is not None:
    payload = (clusters.visible_labels, clusters.infrared_labels, clusters.visible_centers,
               clusters.infrared_centers, clusters.match.mask, clusters.match.one_to_one,
               clusters.match.many_to_one)
  else:
    payload = (np.zeros(len(visible_features)), np.zeros(len(infrared_features)),
               np.zeros((num_visible, dim)), np.zeros((num_infrared, dim)),
               np.zeros((num_infrared, num_visible)), np.zeros((pairs[0], 2)),
               np.zeros((pairs[1], 2)))
  kinds = (np.int32, np.int32, np.float32, np.float32, np.int32, np.int32, np.int32)
  payload = multihost.broadcast(tuple(np.asarray(a, k) for a, k in zip(payload, kinds)))
  if clusters is not None:
    return clusters
  visible_labels, infrared_labels, visible_centers, infrared_centers, mask, one, many = payload
  return EpochClusters(visible_labels.astype(np.int64), infrared_labels.astype(np.int64),
                       visible_centers, infrared_centers, match_result(mask, one, many), {})
