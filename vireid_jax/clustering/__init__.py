"""Host-side clustering of each epoch: building blocks every method may call.

  distance = jaccard_distance(features, k1=30, k2=6, max_distance=eps)  # sparse, exact
  pseudo_labels = dbscan(distance, eps, min_samples=4)                    # -1 = outlier
  centers = cluster_centers(features, pseudo_labels)

Cross-modality association is each method's (vireid_jax/methods/<name>/: MBCCM's
`mbccm_match`, PGM's `pgm_match`).

`cluster_features` runs the first three for one modality and raises `NoClustersError` when
every sample is an outlier. PGM clusters un-renormalised flip-mean features: it passes
`rank_by='l2'` (true squared-L2 neighbours, raw dot-product weights, FR:58-85) and keeps the
plain means (`cluster_centers(..., normalize=False)`).
"""

from vireid_jax.clustering.diagnostics import cluster_diagnostics
from vireid_jax.clustering.diagnostics import match_diagnostics
from vireid_jax.clustering.jaccard import jaccard_distance
from vireid_jax.clustering.jaccard import jaccard_from_neighbors
from vireid_jax.clustering.neighbors import nearest_neighbors
from vireid_jax.clustering.pseudo_labels import NoClustersError
from vireid_jax.clustering.pseudo_labels import cluster_centers
from vireid_jax.clustering.pseudo_labels import cluster_features
from vireid_jax.clustering.pseudo_labels import clustered_subset
from vireid_jax.clustering.sparse_dbscan import dbscan

__all__ = [
    'NoClustersError', 'cluster_centers', 'cluster_diagnostics',
    'cluster_features', 'clustered_subset', 'dbscan', 'jaccard_distance',
    'jaccard_from_neighbors', 'match_diagnostics', 'nearest_neighbors',
]
