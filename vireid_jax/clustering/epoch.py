"""One epoch's pseudo labels (SPEC.md step 2) and the method's association, shared by every process.

`cluster_epoch` clusters each modality (Jaccard + DBSCAN), or takes the true identities with
`config.cluster.oracle`. `shared_cluster_epoch` runs it and the method's cross-modality
association (`associate`, e.g. MBCCM's bilateral matching) on process 0 only and hands the
result to every process, so every process samples the same batches. Sharing rather than
recomputing on each host is deliberate: the Jaccard kernels use fastmath and matchings break
ties on exact floats, so two hosts could disagree without any error, and their batches would
silently differ.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np

from vireid_jax import methods
from vireid_jax.runtime import multihost
from vireid_jax.clustering.diagnostics import cluster_diagnostics
from vireid_jax.clustering.pseudo_labels import NoClustersError
from vireid_jax.clustering.pseudo_labels import cluster_centers
from vireid_jax.clustering.pseudo_labels import cluster_features
from vireid_jax.data.types import INFRARED, VISIBLE


@dataclasses.dataclass
class EpochClusters:
  """What clustering and the method's association produced for one epoch (host side).

  Attributes:
    visible_labels: (Nv,) int, -1 = outlier.
    infrared_labels: (Ni,) int.
    visible_centers: (Kv, C) float32 cluster centres.
    infrared_centers: (Ki, C).
    association: the method's cross-modality association, a dict of numpy arrays (e.g. MBCCM's
      'match_mask' (Ki, Kv) bool); {} before the method has associated.
    stats: diagnostics for the epoch log (process 0 only; empty elsewhere).
  """
  visible_labels: np.ndarray
  infrared_labels: np.ndarray
  visible_centers: np.ndarray
  infrared_centers: np.ndarray
  association: dict = dataclasses.field(default_factory=dict)
  stats: dict = dataclasses.field(default_factory=dict)


def cluster_epoch(config, visible_features, infrared_features, visible_pids,
                  infrared_pids) -> EpochClusters:
  """Jaccard + DBSCAN per modality; raises NoClustersError.

  With `config.cluster.oracle` the true identities are the clusters (an upper bound for
  studies).
  """
  c = config.cluster
  labels, centers, stats = {}, {}, {}
  for modality, features, pids in ((VISIBLE, visible_features, visible_pids),
                                   (INFRARED, infrared_features, infrared_pids)):
    if c.oracle:
      labels[modality] = np.unique(pids, return_inverse=True)[1]
      centers[modality] = cluster_centers(features, labels[modality],
                                          normalize=c.normalize_centers)
    else:
      labels[modality], centers[modality] = cluster_features(
          features, k1=c.k1, k2=c.k2, eps=c.eps, min_samples=c.min_samples, modality=modality,
          rank_by=c.rank_by, normalize_centers=c.normalize_centers)
    for key, value in cluster_diagnostics(labels[modality], pids).items():
      stats[f'{modality}/{key}'] = value
  return EpochClusters(labels[VISIBLE], labels[INFRARED], centers[VISIBLE], centers[INFRARED],
                       stats=stats)


Associate = Callable[[EpochClusters], tuple[dict, dict]]


def shared_cluster_epoch(config, visible_features, infrared_features, visible_pids,
                         infrared_pids, associate: Optional[Associate] = None) -> EpochClusters:
  """`cluster_epoch` and `associate` on process 0, shared with every process (called by all).

  Every process passes the same (gathered) features. `associate(clusters)` returns the
  method's (association arrays, diagnostics); its arrays land in `clusters.association`, its
  diagnostics after the clustering ones in `clusters.stats`. Raises NoClustersError on every
  process when process 0 found no cluster.
  """

  def on_main() -> EpochClusters:
    clusters = cluster_epoch(config, visible_features, infrared_features, visible_pids,
                             infrared_pids)
    if associate is not None:
      arrays, stats = associate(clusters)
      clusters.association = dict(arrays)
      clusters.stats.update(stats)
    return clusters

  clusters = multihost.share_from_main(on_main, 'clustering',
                                       shared_errors=(NoClustersError, methods.MethodStop))
  if not multihost.is_main():
    clusters.stats = {}  # diagnostics are process 0's to print
  return clusters
