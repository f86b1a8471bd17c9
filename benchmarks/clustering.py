"""Seconds and peak memory of the per-epoch clustering: Jaccard distance, then DBSCAN.

  python benchmarks/clustering.py                         # N = 4,000, 12,000, 22,000; D = 2048
  python benchmarks/clustering.py --sizes 500 --dim 64    # seconds; the test suite's tiny mode

Features are noisy clusters on the unit sphere (N / 20 directions; `--noise` is the norm of the
noise added to a unit centre, 3.5 by default: most pairs end up below Jaccard distance 1, about
1 in 6 samples are DBSCAN outliers). Each size runs in a fresh process, so its peak resident
memory is its own; it counts the features and the Python/JAX runtime too. The Jaccard time is
split into the exact neighbour search (a blocked float32 product + top-k on the default JAX
backend: the floor on CPU) and the rest. Besides wall seconds the table shows CPU seconds (all
threads) and the load average, so that a run on a shared machine can still be read.

Compiled code is warmed up on a tiny input first; the first call at a new N still compiles the
search for that shape (well under a second), and that is counted, as in a run's first epoch.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def measure(n: int, args) -> dict:
  """One size in this process: times of each step, peak memory, what the clustering found."""
  from vireid_jax.clustering import sparse_dbscan
  from vireid_jax.clustering import jaccard
  from vireid_jax.clustering import neighbors

  k = min(args.k1, n)
  warm = common.sphere_clusters(64, args.dim, args.noise, seed=1)
  # Load the compiled Jaccard kernels (numba caches them on disk) and scikit-learn outside the
  # timing.
  sparse_dbscan.dbscan(jaccard.jaccard_distance(warm, args.k1, args.k2, args.eps), args.eps)
  features = common.sphere_clusters(n, args.dim, args.noise, seed=0)
  memory_before = common.peak_host_mb()
  t0, c0 = time.perf_counter(), time.process_time()
  index, similarities = neighbors.nearest_neighbors(features, k)
  t1, c1 = time.perf_counter(), time.process_time()
  distance = jaccard.jaccard_from_neighbors(features, index, similarities, args.k1, args.k2,
                                            max_distance=args.eps)
  t2 = time.perf_counter()
  labels = sparse_dbscan.dbscan(distance, args.eps, args.min_samples)
  t3, c3 = time.perf_counter(), time.process_time()
  return {
      'n': n, 'dim': args.dim, 'search_s': t1 - t0, 'jaccard_rest_s': t2 - t1,
      'jaccard_s': t2 - t0, 'dbscan_s': t3 - t2, 'total_s': t3 - t0,
      # CPU seconds of all threads: on a shared machine, wall time / CPU time shows contention.
      'search_cpu_s': c1 - c0, 'rest_cpu_s': c3 - c1, 'load_average': os.getloadavg()[0],
      'peak_mb': common.peak_host_mb(), 'features_and_runtime_mb': memory_before,
      'stored_fraction': distance.nnz / n / n, 'clusters': int(labels.max()) + 1,
      'outliers': int(np.sum(labels < 0)),
  }


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='4000,12000,22000', help='comma-separated N')
  parser.add_argument('--dim', type=int, default=2048)
  parser.add_argument('--noise', type=float, default=3.5,
                      help='noise norm relative to the unit centre (3.5: most pairs below 1)')
  parser.add_argument('--k1', type=int, default=30)
  parser.add_argument('--k2', type=int, default=6)
  parser.add_argument('--eps', type=float, default=0.6)
  parser.add_argument('--min-samples', type=int, default=4)
  parser.add_argument('--worker', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(measure(args.worker, args)))
    return []
  results = []
  print(f'{"N":>6} {"search s":>9} {"rest s":>7} {"Jaccard s":>9} {"DBSCAN s":>8} '
        f'{"total s":>7} {"peak MB":>8} {"stored":>7} {"clusters":>8} {"outliers":>8} '
        f'{"cpu s: search":>13} {"rest":>5} {"load":>5}', flush=True)
  for n in [int(size) for size in args.sizes.split(',')]:
    command = [sys.executable, os.path.abspath(__file__), '--worker', str(n),
               '--dim', str(args.dim), '--noise', str(args.noise), '--k1', str(args.k1),
               '--k2', str(args.k2), '--eps', str(args.eps),
               '--min-samples', str(args.min_samples)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    r = json.loads(output.strip().splitlines()[-1])
    results.append(r)
    print(f'{r["n"]:>6} {r["search_s"]:>9.2f} {r["jaccard_rest_s"]:>7.2f} '
          f'{r["jaccard_s"]:>9.2f} {r["dbscan_s"]:>8.2f} {r["total_s"]:>7.2f} '
          f'{r["peak_mb"]:>8.0f} {r["stored_fraction"]:>7.2%} {r["clusters"]:>8} '
          f'{r["outliers"]:>8} {r["search_cpu_s"]:>13.2f} {r["rest_cpu_s"]:>5.2f} '
          f'{r["load_average"]:>5.1f}', flush=True)
  return results


if __name__ == '__main__':
  main()
