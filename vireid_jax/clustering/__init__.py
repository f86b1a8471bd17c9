"""Host-side clustering of each epoch (SPEC.md steps 2 and 3).

  distance = jaccard_distance(features, k1=30, k2=6, max_distance=eps)  # sparse, exact
  pseudo_labels = dbscan(distance, eps, min_samples=4)                    # -1 = outlier
  centers = cluster_centers(features, pseudo_labels)
  match = mbccm_match(centers_visible, centers_infrared)                  # match.mask (K_i, K_v)
  visible_to_infrared, infrared_to_visible = pgm_match(centers_visible, centers_infrared)  # PGM

`cluster_features` runs the first three for one modality and raises `NoClustersError` when
every sample is an outlier. PGM clusters un-renormalised flip-mean features: it passes
`rank_by='l2'` (true squared-L2 neighbours, raw dot-product weights, FR:58-85) and keeps the
plain means (`cluster_centers(..., normalize=False)`).
"""

from vireid_jax.clustering.diagnostics import cluster_diagnostics
from vireid_jax.clustering.diagnostics import match_diagnostics
from vireid_jax.clustering.jaccard import jaccard_distance
from vireid_jax.clustering.jaccard import jaccard_from_neighbors
from vireid_jax.clustering.matching import MatchResult
from vireid_jax.clustering.matching import mbccm_match
from vireid_jax.clustering.neighbors import nearest_neighbors
from vireid_jax.clustering.pgm_matching import pgm_match
from vireid_jax.clustering.pseudo_labels import NoClustersError
from vireid_jax.clustering.pseudo_labels import cluster_centers
from vireid_jax.clustering.pseudo_labels import cluster_features
from vireid_jax.clustering.pseudo_labels import clustered_subset
from vireid_jax.clustering.sparse_dbscan import dbscan

__all__ = [
    'MatchResult', 'NoClustersError', 'cluster_centers', 'cluster_diagnostics',
    'cluster_features', 'clustered_subset', 'dbscan', 'jaccard_distance',
    'jaccard_from_neighbors', 'match_diagnostics', 'mbccm_match', 'nearest_neighbors',
    'pgm_match',
]
