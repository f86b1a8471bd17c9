r"""The optimised program of every phase of every method's train step, to compare two checkouts.

  python benchmarks/step_hlo.py dump /tmp/hlo/after                 # this checkout
  python /path/to/this/step_hlo.py dump /tmp/hlo/before --tree /path/to/older/checkout
  python benchmarks/step_hlo.py compare /tmp/hlo/before /tmp/hlo/after

`dump` compiles each phase's step (tests/export_test.py's tiny sizes, 8 virtual CPU devices,
the step as the trainer builds it) and writes XLA's optimised HLO without its source-location
metadata, one file per method and phase. `compare` prints, per phase, how many instruction lines
differ once the entry parameters' numbering is set aside (a refactor that reorders the step's
arguments renumbers them): 0 means the same program, so the same numbers and the same speed on
any backend. A refactor of the core that claims to leave the methods' steps alone shows it this
way (docs/new_method.md).
"""

import argparse
import difflib
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('mbccm', 'cluster_contrast', 'pgm')


def dump(tree: str, out: str, names) -> None:
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.path[:0] = [tree, os.path.join(tree, 'tests')]
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np
  import export_test
  from vireid_jax import methods, models, train_state
  try:
    from vireid_jax.runtime import sharding
  except ImportError:  # checkouts before the runtime/ folder
    from vireid_jax import sharding
  streams = hasattr(train_state, 'plan_arrays')  # images as a dict since the opened interface
  os.makedirs(out, exist_ok=True)
  for name in names:
    config = export_test.tiny_config(name)
    method = methods.load(name)
    model = models.build_model(config.model)
    mesh = sharding.make_mesh()
    state = train_state.abstract_train_state(config, model, mesh)
    for schedule in export_test._phases(method, config):  # pylint: disable=protected-access
      plan, memories = export_test._epoch_inputs(method, config, schedule)[:2]  # pylint: disable=protected-access
      step = train_state.make_train_step(model, config, mesh, schedule.phase)
      images = np.zeros((export_test.NUM_IMAGES, export_test.HEIGHT, export_test.WIDTH, 3),
                        np.uint8)
      inputs = train_state.put_epoch_inputs(plan, schedule.epoch, 0, mesh,
                                            lr_epoch=schedule.lr_epoch)
      memories = jax.tree.map(np.asarray, memories)
      if streams:
        lowered = step.lower(state, memories, {'visible': images, 'infrared': images}, inputs)
      else:
        lowered = step.lower(state, memories, images, images, inputs)
      text = re.sub(r', metadata=\{[^}]*\}', '', lowered.compile().as_text())
      path = os.path.join(out, f'{name}_{schedule.phase}.hlo')
      with open(path, 'w', encoding='utf-8') as f:
        f.write(text)
      print(f'{path}: {len(text.splitlines())} lines', flush=True)


def _instructions(path: str) -> list[str]:
  """The program's lines without its source tables, names of ops and parameter numbers."""
  lines, skipping = [], False
  with open(path, encoding='utf-8') as f:
    text = f.read().splitlines()
  for line in text[1:]:  # the module header lists argument aliases, renumbered by a reorder
    if re.match(r'^(FileNames|FunctionNames|FileLocations|StackFrames)\b', line):
      skipping = True
      continue
    if skipping and (not line.strip() or line[0].isspace() or line[0].isdigit()):
      continue
    skipping = False
    line = re.sub(r'op_name="[^"]*"|, stack_frame_id=\d+', '', line)
    line = re.sub(r'parameter\(\d+\)', 'parameter(#)', line)
    if line.startswith('ENTRY'):
      line = 'ENTRY'
    lines.append(line)
  return lines


def compare(before: str, after: str) -> int:
  differing_total = 0
  for path in sorted(glob.glob(os.path.join(before, '*.hlo'))):
    other = os.path.join(after, os.path.basename(path))
    if not os.path.exists(other):
      print(f'{os.path.basename(path)}: missing in {after}')
      differing_total += 1
      continue
    a, b = _instructions(path), _instructions(other)
    differing = [l for l in difflib.unified_diff(a, b, lineterm='', n=0)
                 if l.startswith(('+', '-')) and not l.startswith(('+++', '---'))]
    differing_total += len(differing)
    print(f'{os.path.basename(path)}: {len(a)} / {len(b)} lines, {len(differing)} differ')
    for line in differing[:5]:
      print(f'    {line[:200]}')
  return differing_total


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  dumping = sub.add_parser('dump', help='write the optimised HLO of every phase')
  dumping.add_argument('out')
  dumping.add_argument('--tree', default=HERE, help='the checkout whose code compiles')
  dumping.add_argument('--methods', nargs='+', default=METHODS)
  comparing = sub.add_parser('compare', help='compare two dumps')
  comparing.add_argument('before')
  comparing.add_argument('after')
  args = parser.parse_args(argv)
  if args.command == 'dump':
    dump(os.path.abspath(args.tree), args.out, args.methods)
  else:
    sys.exit(1 if compare(args.before, args.after) else 0)


if __name__ == '__main__':
  main()
