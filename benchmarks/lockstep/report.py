"""The lockstep run's output: the verdict, a table per epoch and per step, a plot.

Reads <out>/comparison.json (the reference process's measured rows, compare.Row as dicts: ours
against their float32 run, and their float32 against their float64 run, the yardstick), judges
them (compare.judge) and writes <out>/lockstep.md and <out>/lockstep.png.
"""

import dataclasses
import json
import math
import os
from typing import List, Optional, Tuple

from benchmarks.lockstep import compare

STEP_COLUMNS = (('lr', 'lr'), ('loss', 'loss terms'), ('total', 'total'),
                ('grad_norm', 'grad norm'), ('params', 'parameters'),
                ('params_max', 'one parameter tensor'), ('bn_stats', 'BN statistics'),
                ('memories', 'memories'))
PLOT_QUANTITIES = ('loss', 'total', 'grad_norm', 'params', 'params_max', 'bn_stats',
                   'memories', 'lr')


def _fmt(value: Optional[float]) -> str:
  if value is None:
    return '-'
  if value == 0:
    return '0'
  if math.isinf(value) or math.isnan(value):
    return str(value)
  return f'{value:.1e}'


def _flag(value) -> str:
  return {True: 'identical', False: '**differs**', None: '-'}.get(value, str(value))


def _label(row: compare.Row) -> str:
  return {'initial': 'initial weights', 'epoch': f'epoch {row.index}',
          'step': f'step {row.index}'}[row.kind]


def load(out_dir: str) -> Tuple[List[compare.Row], Optional[List[compare.Row]], Optional[str]]:
  """(rows, yardstick rows or None, the reference's error or None), judged."""
  with open(os.path.join(out_dir, 'comparison.json')) as f:
    payload = json.load(f)
  rows = [compare.Row(**row) for row in payload['rows']]
  yardstick = payload.get('yardstick')
  yardstick = None if yardstick is None else [compare.Row(**row) for row in yardstick]
  return compare.judge(rows, yardstick), yardstick, payload.get('error')


def _yard(yardstick, row, quantity) -> Optional[float]:
  for y in yardstick or []:
    if y.kind == row.kind and y.index == row.index:
      return y.values.get(quantity)
  return None


def _cell(row, quantity, yardstick) -> str:
  value = row.values.get(quantity)
  text = _fmt(value)
  if yardstick is not None and value is not None:
    text += f' ({_fmt(_yard(yardstick, row, quantity))})'
  if quantity in row.limits and value is not None and not value <= row.limits[quantity]:
    text = f'**{text}**'
  return text


def epoch_table(rows, yardstick) -> List[str]:
  lines = ['| epoch | stage | features V / I | partitions V / I (our clusters) | association | '
           'memories as initialised | parameters at epoch start | passed |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    if r.kind != 'epoch':
      continue
    features = (f'{_cell(r, "features/visible", yardstick)} / '
                f'{_cell(r, "features/infrared", yardstick)}')
    partitions = (f'{_flag(r.flags.get("partition/visible"))} / '
                  f'{_flag(r.flags.get("partition/infrared"))} '
                  f'({r.flags.get("clusters/visible")} / {r.flags.get("clusters/infrared")})')
    start = _cell(r, 'start', yardstick)
    if 'restart_from' in r.flags:
      start += f'; restarted from epoch {r.flags["restart_from"]}'
    lines.append(f'| {r.index} | {r.stage} | {features} | {partitions} | '
                 f'{_flag(r.flags.get("association"))} | {_cell(r, "memories_init", yardstick)} '
                 f'| {start} | {"yes" if r.passed else "**no**"} |')
  return lines


def step_table(rows, yardstick) -> List[str]:
  header = ' | '.join(title for _, title in STEP_COLUMNS)
  lines = [f'| step | epoch | stage | {header} | passed |',
           '|' + '---|' * (len(STEP_COLUMNS) + 4)]
  for r in rows:
    if r.kind != 'step':
      continue
    cells = [_cell(r, q, yardstick) for q, _ in STEP_COLUMNS]
    lines.append(f'| {r.index} | {r.epoch} | {r.stage} | {" | ".join(cells)} | '
                 f'{"yes" if r.passed else "**no**"} |')
  return lines


def largest(rows: List[compare.Row]) -> dict:
  """quantity -> the row where its difference is largest relative to its tolerance."""
  out = {}
  for r in rows:
    for q, value in r.values.items():
      tol = r.limits.get(q, math.inf)
      ratio = value / tol if tol > 0 else (math.inf if value > 0 else 0.0)
      if q not in out or ratio > out[q][0]:
        out[q] = (ratio, r)
  return out


def plot(rows, yardstick, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  steps = [r for r in rows if r.kind == 'step']
  fig, ax = plt.subplots(figsize=(9, 5))
  floor = 1e-12
  for q in PLOT_QUANTITIES:
    xs = [r.index for r in steps if q in r.values]
    if not xs:
      continue
    ys = [max(r.values[q], floor) for r in steps if q in r.values]
    line, = ax.semilogy(xs, ys, marker='o', ms=3, label=q)
    if yardstick is not None:
      yard = [max(_yard(yardstick, r, q) or floor, floor) for r in steps if q in r.values]
      ax.semilogy(xs, yard, ls=':', lw=1.0, color=line.get_color())
  for r in rows:
    if r.kind == 'epoch':
      first = [s.index for s in steps if s.epoch == r.index]
      if first:
        ax.axvline(min(first) - 0.5, color='0.85', lw=0.8, zorder=0)
  ax.set_xlabel('step (grey lines: epoch starts)')
  ax.set_ylabel('largest relative difference (0 drawn at 1e-12)')
  note = ('solid: ours vs their float32; dotted: their float32 vs their float64'
          if yardstick is not None else 'ours vs theirs')
  ax.set_title(f'{title}\n({note})', fontsize=10)
  ax.legend(fontsize=8, ncol=4)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(out_dir: str, settings, timing: Optional[dict] = None) -> Tuple[bool, str]:
  """Writes lockstep.md and lockstep.png into `out_dir`; (passed, a few summary lines)."""
  rows, yardstick, error = load(out_dir)
  steps = [r for r in rows if r.kind == 'step']
  failures = [f'{_label(r)}: {f}' for r in rows for f in r.failures]
  notes = [f'{_label(r)}: {n}' for r in rows for n in r.notes]
  ok = compare.passed(rows, settings.steps) and error is None
  s = settings
  judged = ('against their float32 run, each tolerance 4 x what float32 rounding alone does '
            'to their code (their float32 run against their float64 run, in parentheses)'
            if yardstick is not None else 'against fixed tolerances (no float64 yardstick run)')
  lines = [f'# Lockstep: {s.method.upper()} against the authors\' training loop', '',
           f'Verdict: **{"PASS" if ok else "FAIL"}** ({len(steps)} of {s.steps} steps '
           f'compared; ours {judged}).', '',
           f'Settings: `{json.dumps(dataclasses.asdict(s))}`', '']
  if timing:
    lines += ['Time: ' + ', '.join(f'{k[:-2]} {v / 60:.1f} min' for k, v in timing.items()),
              '']
  if error:
    lines += ['The reference stopped with:', '', '```', error.strip()[-3000:], '```', '']
  lines += ['## Largest differences (relative to their tolerance)', '',
            '| quantity | difference | where | yardstick | tolerance | at |',
            '|---|---|---|---|---|---|']
  for q, (_, r) in sorted(largest(rows).items()):
    lines.append(f'| {q} | {_fmt(r.values[q])} | {r.where.get(q, "-")} | '
                 f'{_fmt(_yard(yardstick, r, q))} | {_fmt(r.limits.get(q))} | {_label(r)} |')
  lines += ['', '## Every epoch', ''] + epoch_table(rows, yardstick)
  lines += ['', '## Every step', ''] + step_table(rows, yardstick)
  if notes:
    lines += ['', '## Notes', ''] + [f'- {n}' for n in notes]
  if failures:
    lines += ['', '## Failures', ''] + [f'- {f}' for f in failures]
  lines.append('')
  with open(os.path.join(out_dir, 'lockstep.md'), 'w') as f:
    f.write('\n'.join(lines))
  plot(rows, yardstick, os.path.join(out_dir, 'lockstep.png'),
       f'{s.method.upper()}: ours against the authors\' code, every step')
  summary = [f'{s.method}: {"PASS" if ok else "FAIL"}, {len(steps)} of {s.steps} steps; '
             f'{os.path.join(out_dir, "lockstep.md")}']
  summary += failures[:10]
  if error:
    summary.append('the reference stopped: ' + error.strip().splitlines()[-1])
  return ok, '\n'.join(summary)
