r"""Whole-run lockstep comparison of vireid_jax with the authors' own training loops, on a CPU.

  git clone https://github.com/FranklinLingfeng/MBCCM-master-MM-23 /tmp/mbccm   # commit 3492a38
  python benchmarks/lockstep.py --method mbccm --reference /tmp/mbccm
  git clone https://github.com/zesenwu23/USL-VI-ReID /tmp/pgm && git -C /tmp/pgm checkout 3448f52
  python benchmarks/lockstep.py --method pgm --reference /tmp/pgm

Runs the project's whole training run at small sizes (benchmarks/lockstep/settings.py), recording
every epoch's features, partitions, association and memories and every step's loss terms,
gradient norm, learning rate, parameters, BatchNorm statistics and memory tables; then runs the
authors' training loop (their `main`, patched only to run on a CPU and to take the project's
data, batches and network inputs), comparing each of those as it goes. Writes
<out>/lockstep.md (the per-step table and the verdict) and <out>/lockstep.png, and exits 0
exactly when every comparison passes (1 when one fails, 2 when a side could not run).

The reference side runs in its own process (their modules have generic names: model, utils,
trainer, ...). Our side's per-step records (about 100 MB a step with the authors' ResNet-50) are
deleted after the comparison unless --keep. What is compared, the tolerances, the patches and
the results: docs/verification.md, "The runs".
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--method', choices=('mbccm', 'pgm'), required=True)
  parser.add_argument('--reference', required=True,
                      help="the authors' code: a checkout of FranklinLingfeng/MBCCM-master-MM-23 "
                           '(mbccm) or zesenwu23/USL-VI-ReID at 3448f52 (pgm)')
  parser.add_argument('--out', default=None, help='output folder (runs/lockstep/<method>)')
  parser.add_argument('--data', default=os.path.join(ROOT, 'data', 'lockstep'),
                      help='where the synthetic SYSU-MM01 is written (generated when missing)')
  group = parser.add_argument_group('sizes (defaults: benchmarks/lockstep/settings.py)')
  group.add_argument('--image-size', type=int, nargs=2, metavar=('H', 'W'))
  group.add_argument('--synthetic-ids', type=int)
  group.add_argument('--steps-per-epoch', type=int)
  group.add_argument('--stage1-epochs', type=int)
  group.add_argument('--stage2-epochs', type=int)
  group.add_argument('--bn-groups', type=int,
                     help='GPUs of their nn.DataParallel (MBCCM 1, PGM 4)')
  group.add_argument('--k1', type=int)
  group.add_argument('--k2', type=int)
  group.add_argument('--seed', type=int)
  group.add_argument('--learning-rate', type=float)
  parser.add_argument('--no-yardstick', action='store_true',
                      help="skip the run of their code in float64 that measures what float32 "
                           'rounding alone does (the tolerances are then a fixed schedule)')
  parser.add_argument('--reference-dtype', choices=('float32', 'float64'), default='float32',
                      help=argparse.SUPPRESS)
  parser.add_argument('--reuse-ours', action='store_true',
                      help='keep a finished record of our side in <out>/ours and run only the '
                           'reference')
  parser.add_argument('--keep', action='store_true', help="keep our side's per-step records")
  parser.add_argument('--dump-reference', action='store_true',
                      help="also keep the reference's records in <out>/reference (debugging)")
  parser.add_argument('--side', choices=('all', 'ours', 'reference', 'report'), default='all',
                      help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def settings_of(args):
  from benchmarks.lockstep import settings  # pylint: disable=import-outside-toplevel
  overrides = {}
  for field in ('synthetic_ids', 'steps_per_epoch', 'stage1_epochs', 'stage2_epochs',
                'bn_groups', 'k1', 'k2', 'seed', 'learning_rate'):
    value = getattr(args, field)
    if value is not None:
      overrides[field] = value
  if args.image_size is not None:
    overrides['image_size'] = tuple(args.image_size)
  return settings.defaults(args.method, **overrides)


def run_ours(args, run_settings) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_default_matmul_precision', 'highest')
  from benchmarks.lockstep import ours, record  # pylint: disable=import-outside-toplevel
  directory = os.path.join(args.out, 'ours')
  shutil.rmtree(directory, ignore_errors=True)
  workdir = os.path.join(args.out, 'ours_workdir')
  shutil.rmtree(workdir, ignore_errors=True)
  sink = record.Recording(directory)
  ours.run(run_settings, args.data, workdir, sink)
  with open(os.path.join(directory, 'settings.json'), 'w') as f:
    json.dump(dataclasses.asdict(run_settings), f)
  shutil.rmtree(workdir, ignore_errors=True)


def run_reference(args, run_settings) -> None:
  """Their loop in float32, measured against ours and (if there) their own float64 run; or,
  with --reference-dtype float64, that float64 run, recorded."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks.lockstep import compare, record  # pylint: disable=import-outside-toplevel
  feed = record.Recording(os.path.join(args.out, 'ours'))
  if args.reference_dtype == 'float64':
    comparisons = []
    sink = record.Recording(os.path.join(args.out, 'reference64'))
    dtype = torch.float64
  else:
    comparisons = [compare.Comparison(feed)]
    yardstick = os.path.join(args.out, 'reference64')
    if os.path.exists(os.path.join(yardstick, 'index.json')):
      comparisons.append(compare.Comparison(record.Recording(yardstick)))
    sink = comparisons[0] if len(comparisons) == 1 else record.Tee(*comparisons)
    dtype = torch.float32
  if args.dump_reference:
    sink = record.Tee(sink, record.Recording(os.path.join(args.out, 'reference')))
  if args.method == 'mbccm':
    from benchmarks.lockstep import reference_mbccm as reference  # pylint: disable=import-outside-toplevel
  else:
    from benchmarks.lockstep import reference_pgm as reference  # pylint: disable=import-outside-toplevel
  error = None
  try:
    reference.run(os.path.abspath(args.reference), run_settings, feed, sink, args.out,
                  dtype=dtype)
  except Exception as e:  # pylint: disable=broad-except  # the rows so far are still reported
    import traceback  # pylint: disable=import-outside-toplevel
    error = ''.join(traceback.format_exception(e))
    print(error, file=sys.stderr)
  if args.reference_dtype == 'float64':
    if error:
      raise SystemExit(2)
    return
  payload = {'rows': [dataclasses.asdict(r) for r in comparisons[0].rows], 'error': error,
             'yardstick': ([dataclasses.asdict(r) for r in comparisons[1].rows]
                           if len(comparisons) > 1 else None)}
  with open(os.path.join(args.out, 'comparison.json'), 'w') as f:
    json.dump(payload, f)


def main(argv=None) -> int:
  args = parse_args(argv)
  args.out = os.path.abspath(args.out or os.path.join(ROOT, 'runs', 'lockstep', args.method))
  args.data = os.path.abspath(args.data)
  os.makedirs(args.out, exist_ok=True)
  run_settings = settings_of(args)
  if args.side == 'ours':
    run_ours(args, run_settings)
    return 0
  if args.side == 'reference':
    run_reference(args, run_settings)
    return 0
  started = time.time()
  if args.side == 'all':
    marker = {'mbccm': 'train_mbccm.py', 'pgm': 'train_sysu.py'}[args.method]
    if not any(marker in files for _, _, files in os.walk(args.reference)):
      # Said before our side's minutes of training, not after them.
      print(f"error: {args.reference}: no {marker} below it; fetch the authors' code "
            f'(docs/verification.md, "Rerunning it")', file=sys.stderr)
      return 2
    finished = (os.path.exists(os.path.join(args.out, 'ours', 'settings.json')) and
                os.path.exists(os.path.join(args.out, 'ours', 'step_0000.npz')))
    if not (args.reuse_ours and finished):
      code = subprocess.call([sys.executable, os.path.abspath(__file__), *_forward(argv),
                              '--side', 'ours'])
      if code:
        print(f'error: our side stopped (exit {code})', file=sys.stderr)
        return 2
    ours_seconds = time.time() - started
    side = lambda *extra: subprocess.call([sys.executable, os.path.abspath(__file__),
                                           *_forward(argv), '--side', 'reference', *extra])
    shutil.rmtree(os.path.join(args.out, 'reference64'), ignore_errors=True)
    if not args.no_yardstick and side('--reference-dtype', 'float64'):
      print('error: the reference side stopped in float64', file=sys.stderr)
      return 2
    yardstick_seconds = time.time() - started - ours_seconds
    code = side()
    if code:
      print(f'error: the reference side stopped (exit {code})', file=sys.stderr)
      return 2
    timing = {'ours_s': ours_seconds, 'yardstick_s': yardstick_seconds,
              'reference_s': time.time() - started - ours_seconds - yardstick_seconds}
  else:
    timing = {}
  from benchmarks.lockstep import report  # pylint: disable=import-outside-toplevel
  passed, summary = report.write(args.out, run_settings, timing=timing)
  print(summary)
  if not args.keep and args.side == 'all':
    shutil.rmtree(os.path.join(args.out, 'reference64'), ignore_errors=True)
    for name in os.listdir(os.path.join(args.out, 'ours')):
      if name.startswith('step_'):
        os.remove(os.path.join(args.out, 'ours', name))
  return 0 if passed else 1


def _forward(argv):
  """The command line, for the side processes."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if '--side' in argv:
    i = argv.index('--side')
    del argv[i:i + 2]
  return argv


if __name__ == '__main__':
  sys.exit(main())
