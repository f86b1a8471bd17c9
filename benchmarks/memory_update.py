"""Milliseconds of one step's memory updates, per update form ('sequential', 'by_rank').

  python benchmarks/memory_update.py               # the paper's batch: 144 pairs, 2048 features
  python benchmarks/memory_update.py --clusters 4 --instances 2 --dim 64 --repeats 2  # CPU smoke

Times MBCCM's `update_memories` (vireid_jax/methods/mbccm/memories.py) alone, jitted, with the memories donated as the train
step donates them: stage 1 (M_v <- 288 visible features, M_i <- 144 infrared) and stage 2 (also
M_vi and M_iv <- 432 each). Labels have the step's structure: `--clusters` distinct labels,
each `--instances` times per modality, and the by-rank form gets the static bound the trainer
computes from such a plan (`memory.label_repeats`: `label_repeats` = 12 at the defaults), so
it runs 24 + 12 (stage 1) and also 36 + 36 (stage 2) rounds, trip counts XLA knows. The
reference spends ~205 ms of its stage-2 step here (docs/mbccm.md, "Speed the reference
reaches"); the target is < 1 ms. `auto` (the trainer's default) picks the form named in the
`auto_method` key.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--clusters', type=int, default=12, help='clusters per step (12)')
  parser.add_argument('--instances', type=int, default=12, help='images per cluster (12)')
  parser.add_argument('--dim', type=int, default=2048, help='feature width (2048)')
  parser.add_argument('--memory-clusters', type=int, nargs=2, default=(500, 400),
                      metavar=('VISIBLE', 'INFRARED'), help='memory rows before padding')
  parser.add_argument('--calls', type=int, default=50, help='updates dispatched per repeat')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  import functools
  import jax
  import numpy as np
  from vireid_jax import memory
  from vireid_jax.methods.mbccm import memories as mbccm_memories

  rng = np.random.default_rng(args.seed)
  pairs = args.clusters * args.instances
  tables = [rng.standard_normal((n, args.dim)).astype(np.float32) for n in args.memory_clusters]
  tables = [t / np.linalg.norm(t, axis=1, keepdims=True) for t in tables]
  capacities = [memory.memory_capacity(n) for n in args.memory_clusters]
  features = [jax.device_put(rng.standard_normal((pairs, args.dim)).astype(np.float32))
              for _ in range(3)]
  labels = [jax.device_put(np.repeat(rng.choice(n, args.clusters, replace=False),
                                     args.instances).astype(np.int32))
            for n in args.memory_clusters]
  auto_method = memory.resolve_update_method('auto')
  label_repeats = memory.label_repeats(*(np.asarray(y) for y in labels), unit=args.instances)
  context = dict(common.device_description(), precision='float32', batch=pairs, dim=args.dim,
                 memory_rows=capacities, auto_method=auto_method, label_repeats=label_repeats)

  records = []
  for stage in (1, 2):
    for method in ('sequential', 'by_rank'):
      update = jax.jit(functools.partial(mbccm_memories.update_memories, stage=stage,
                                         momentum=0.1, method=method,
                                         label_repeats=label_repeats), donate_argnums=0)

      def fresh_memories():
        return mbccm_memories.Memories.from_centers(
            *(memory.pad_rows(t, c) for t, c in zip(tables, capacities)), *args.memory_clusters)

      def run_calls(memories, calls):
        for _ in range(calls):
          memories = update(memories, *features, *labels)
        return jax.block_until_ready(memories)

      compile_s, memories = common.timed(lambda: run_calls(fresh_memories(), 1))
      times = []
      for _ in range(args.repeats):
        elapsed, memories = common.timed(lambda: run_calls(memories, args.calls))
        times.append(1e3 * elapsed / args.calls)
      unit_rows = bool(np.allclose(np.linalg.norm(np.asarray(memories.visible)[:len(tables[0])],
                                                  axis=1), 1, atol=1e-4))
      records.append(common.emit({
          'what': f'memory_update/stage{stage}/{method}', 'median_ms': common.median(times),
          'min_ms': min(times), 'compile_s': compile_s, 'calls_per_repeat': args.calls,
          'repeats': args.repeats, 'unit_norm_rows': unit_rows}, context))
  return records


if __name__ == '__main__':
  main()
