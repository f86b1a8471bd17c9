"""One epoch's pseudo labels, the method's refinement and association, shared by every process.

`cluster_epoch` clusters each modality (Jaccard + DBSCAN) and, when the method asks for it
(`methods.Clustering.joint_distance`), both modalities together with the method's distance; or
takes the true identities with `config.cluster.oracle`. `shared_cluster_epoch` runs it, the
method's `refine` and its cross-modality `associate` on process 0 only and hands the result to
every process, so every process samples the same batches. Sharing rather than recomputing on
each host is deliberate: the Jaccard kernels use fastmath and matchings break ties on exact
floats, so two hosts could disagree without any error, and their batches would silently differ.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np

from vireid_jax import methods
from vireid_jax.clustering.diagnostics import cluster_diagnostics
from vireid_jax.clustering.pseudo_labels import NoClustersError
from vireid_jax.clustering.pseudo_labels import cluster_centers
from vireid_jax.clustering.pseudo_labels import cluster_features
from vireid_jax.clustering.sparse_dbscan import dbscan
from vireid_jax.data.types import INFRARED, VISIBLE
from vireid_jax.runtime import multihost

JOINT = 'joint'


@dataclasses.dataclass
class EpochClusters:
  """What clustering, the method's refinement and its association produced for one epoch.

  Attributes:
    visible_labels: (Nv,) int, -1 = outlier.
    infrared_labels: (Ni,) int.
    visible_centers: (Kv, C) float32 cluster centres.
    infrared_centers: (Ki, C).
    association: the method's cross-modality association, a dict of numpy arrays (e.g. MBCCM's
      'match_mask' (Ki, Kv) bool); {} before the method has associated.
    stats: diagnostics for the epoch log (process 0 only; empty elsewhere).
    joint_labels: (Nv + Ni,) int labels of the joint clustering over [visible; infrared], or
      None when the method clusters no jointly.
    joint_centers: (K, C) float32 plain means of the joint clusters (config.cluster.
      normalize_centers applies), or None.
    extra: arrays the method's `refine` adds (soft labels, per-image weights, ...).
  """
  visible_labels: np.ndarray
  infrared_labels: np.ndarray
  visible_centers: np.ndarray
  infrared_centers: np.ndarray
  association: dict = dataclasses.field(default_factory=dict)
  stats: dict = dataclasses.field(default_factory=dict)
  joint_labels: Optional[np.ndarray] = None
  joint_centers: Optional[np.ndarray] = None
  extra: dict = dataclasses.field(default_factory=dict)


def _joint_clusters(config, method: methods.Method, visible_features, infrared_features,
                    visible_pids, infrared_pids) -> tuple[np.ndarray, np.ndarray, dict]:
  """(labels over [visible; infrared], centres, diagnostics) of the method's joint clustering."""
  c = config.cluster
  features = np.concatenate([visible_features, infrared_features]).astype(np.float32)
  is_infrared = np.concatenate([np.zeros(len(visible_features), bool),
                                np.ones(len(infrared_features), bool)])
  pids = np.concatenate([visible_pids, infrared_pids])
  if c.oracle:
    labels = np.unique(pids, return_inverse=True)[1]
  else:
    eps = c.eps if method.clustering.joint_eps is None else method.clustering.joint_eps(config)
    distance = method.clustering.joint_distance(config, features, is_infrared)
    labels = dbscan(distance, eps=eps, min_samples=c.min_samples)
    if labels.max(initial=-1) < 0:
      raise NoClustersError(
          f'DBSCAN found no joint cluster among the {len(features)} visible and infrared '
          f'features (eps={eps}, min_samples={c.min_samples}): every sample is an outlier.')
  centers = cluster_centers(features, labels, normalize=c.normalize_centers)
  stats = {f'{JOINT}/{k}': v for k, v in cluster_diagnostics(labels, pids).items()}
  clustered = labels >= 0
  modalities_of = np.zeros((labels.max() + 1, 2), bool)
  modalities_of[labels[clustered], is_infrared[clustered].astype(int)] = True
  stats[f'{JOINT}/mixed_share'] = float(modalities_of.all(axis=1).mean())
  return labels, centers, stats


def clustering_order(order: str, paths) -> Optional[np.ndarray]:
  """The permutation that puts a modality's images in `config.cluster.order` (None: the
  reader's own order). 'path' sorts by the path relative to the dataset root."""
  if order == 'reader':
    return None
  if order == 'path':
    if paths is None:
      raise ValueError("config.cluster.order = 'path' needs the images' paths")
    return np.argsort(np.asarray(paths).astype(str), kind='stable')
  raise ValueError(f"config.cluster.order must be 'reader' or 'path', got {order!r}")


def cluster_epoch(config, visible_features, infrared_features, visible_pids,
                  infrared_pids, method: Optional[methods.Method] = None,
                  schedule: Optional[methods.EpochSchedule] = None,
                  paths=(None, None)) -> EpochClusters:
  """Jaccard + DBSCAN per modality (and jointly, when `method` asks for it in the epoch of
  `schedule`); raises NoClustersError.

  With `config.cluster.oracle` the true identities are the clusters (an upper bound for
  studies). `paths` (visible, infrared): the images' paths, which `config.cluster.order =
  'path'` clusters each modality in the order of; labels come back in the images' own order.
  """
  c = config.cluster
  spec = method.clustering if method is not None else methods.Clustering()
  joint_labels = joint_centers = None
  stats = {}
  joint = spec.joint_distance is not None and (
      spec.joint_when is None or schedule is None or spec.joint_when(config, schedule))
  if not spec.per_modality and not joint:
    raise ValueError('methods.Clustering(per_modality=False) needs a joint clustering in every '
                     'epoch (joint_distance, and joint_when true)')
  if joint:
    joint_labels, joint_centers, stats = _joint_clusters(
        config, method, visible_features, infrared_features, visible_pids, infrared_pids)
  labels, centers = {}, {}
  for modality, features, pids, image_paths in (
      (VISIBLE, visible_features, visible_pids, paths[0]),
      (INFRARED, infrared_features, infrared_pids, paths[1])):
    if c.oracle:
      labels[modality] = np.unique(pids, return_inverse=True)[1]
      centers[modality] = cluster_centers(features, labels[modality],
                                          normalize=c.normalize_centers)
    elif spec.per_modality:
      order = clustering_order(c.order, image_paths)
      ordered = features if order is None else np.asarray(features)[order]
      ordered_labels, centers[modality] = cluster_features(
          ordered, k1=c.k1, k2=c.k2, eps=c.eps, min_samples=c.min_samples, modality=modality,
          rank_by=c.rank_by, normalize_centers=c.normalize_centers)
      if order is None:
        labels[modality] = ordered_labels
      else:
        labels[modality] = np.empty_like(ordered_labels)
        labels[modality][order] = ordered_labels
    else:  # the joint label space stands in for each modality's
      split = len(visible_features)
      labels[modality] = (joint_labels[:split] if modality == VISIBLE
                          else joint_labels[split:])
      centers[modality] = joint_centers
    for key, value in cluster_diagnostics(labels[modality], pids).items():
      stats[f'{modality}/{key}'] = value
  return EpochClusters(labels[VISIBLE], labels[INFRARED], centers[VISIBLE], centers[INFRARED],
                       stats=stats, joint_labels=joint_labels, joint_centers=joint_centers)


Associate = Callable[[EpochClusters], tuple[dict, dict]]
Refine = Callable[[EpochClusters], EpochClusters]


def shared_cluster_epoch(config, visible_features, infrared_features, visible_pids,
                         infrared_pids, associate: Optional[Associate] = None,
                         method: Optional[methods.Method] = None,
                         refine: Optional[Refine] = None,
                         schedule: Optional[methods.EpochSchedule] = None,
                         paths=(None, None)) -> EpochClusters:
  """`cluster_epoch`, `refine` and `associate` on process 0, shared with every process (called
  by all).

  Every process passes the same (gathered) features (and `paths`, see `cluster_epoch`).
  `refine(clusters)` returns the clusters the method trains on (relabelled, with `extra`
  arrays); `associate(clusters)` returns the
  method's (association arrays, diagnostics); its arrays land in `clusters.association`, its
  diagnostics after the clustering ones in `clusters.stats`. Raises NoClustersError or the
  method's MethodStop on every process when process 0 met one.
  """

  def on_main() -> EpochClusters:
    clusters = cluster_epoch(config, visible_features, infrared_features, visible_pids,
                             infrared_pids, method=method, schedule=schedule, paths=paths)
    if refine is not None:
      clusters = refine(clusters)
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
