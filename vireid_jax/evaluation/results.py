"""Results people read: a JSON file, a Markdown table to paste into a paper, a CMC plot.

All take the result dicts of `protocols` (numbers in percent).
"""

import json
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vireid_jax.runtime import files

_COLUMNS = (('rank1', 'Rank-1'), ('rank5', 'Rank-5'), ('rank10', 'Rank-10'),
            ('rank20', 'Rank-20'), ('mAP', 'mAP'), ('mINP', 'mINP'))


def display_name(result: dict) -> str:
  """'SYSU-MM01 all-search single-shot', 'RegDB visible-to-thermal', 'LLCM infrared-to-visible',
  ..."""
  if result['dataset'] == 'sysu':
    shots = {1: 'single-shot', 10: 'multi-shot'}.get(result['shots'], f'{result["shots"]}-shot')
    return f'SYSU-MM01 {result["mode"]}-search {shots}'
  if result['dataset'] == 'regdb':
    return f'RegDB {result["query_modality"]}-to-{result["gallery_modality"]}'
  if result['dataset'] == 'llcm':
    return f'LLCM {result["query_modality"]}-to-{result["gallery_modality"]}'
  return f'{result["dataset"]} {result["setting"]}'


def markdown_table(results: Dict[str, dict]) -> str:
  """A Markdown table, one row per setting: mean ± std over trials, in percent."""
  columns = [(key, title) for key, title in _COLUMNS
             if any(key in result['mean'] for result in results.values())]
  lines = ['| Setting | Trials | ' + ' | '.join(title for _, title in columns) + ' |',
           '|---|---|' + '---|' * len(columns)]
  for result in results.values():
    trials = len(result['per_trial'])
    cells = []
    for key, _ in columns:
      if key not in result['mean']:
        cells.append('-')
      elif trials > 1:
        cells.append(f'{result["mean"][key]:.2f} ± {result["std"][key]:.2f}')
      else:
        cells.append(f'{result["mean"][key]:.2f}')
    lines.append(f'| {display_name(result)} | {_trial_list(result["trials"])} | '
                 + ' | '.join(cells) + ' |')
  lines.append('')
  lines.append('Percent. With several trials: mean ± sample standard deviation over them '
               '(SYSU-MM01, LLCM: random gallery draws; RegDB: separate training runs on each '
               'split).')
  return '\n'.join(lines) + '\n'


SIDE_BY_SIDE_KEYS = ('rank1', 'mAP', 'mINP')


def _cell(result: dict, key: str) -> str:
  if key not in result['mean']:
    return '-'
  if len(result['per_trial']) > 1:
    return f'{result["mean"][key]:.2f} ± {result["std"][key]:.2f}'
  return f'{result["mean"][key]:.2f}'


def side_by_side_table(columns: Sequence[Tuple[str, Dict[str, dict]]],
                       keys: Sequence[str] = SIDE_BY_SIDE_KEYS) -> str:
  """A Markdown table comparing several results of the same settings (e.g. two checkpoints):
  one row per setting, one group of `keys` columns per (label, results), mean ± std over
  trials, in percent. Settings missing from a result get '-'."""
  titles = dict(_COLUMNS)
  settings = list(dict.fromkeys(name for _, results in columns for name in results))
  header = ['Setting', 'Trials'] + [f'{label}: {titles[key]}' if i == 0 else titles[key]
                                    for label, _ in columns for i, key in enumerate(keys)]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name in settings:
    first = next(results[name] for _, results in columns if name in results)
    cells = [display_name(first), _trial_list(first['trials'])]
    for _, results in columns:
      cells += [_cell(results[name], key) if name in results else '-' for key in keys]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def trial_and_mean_table(pooled: Sequence[Tuple[str, Dict[str, dict]]], trial: int = 1,
                         keys: Sequence[str] = SIDE_BY_SIDE_KEYS) -> str:
  """RegDB across its splits: for each setting and each (label, pooled result), split `trial`
  alone beside the mean ± std over every split pooled (`aggregate_trials`' output)."""
  titles = dict(_COLUMNS)
  settings = list(dict.fromkeys(name for _, results in pooled for name in results))
  header = (['Setting', 'Checkpoint'] +
            [f'trial {trial}: {titles[key]}' if i == 0 else titles[key]
             for i, key in enumerate(keys)] +
            ['Trials'] + [f'mean: {titles[key]}' if i == 0 else titles[key]
                          for i, key in enumerate(keys)])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name in settings:
    for label, results in pooled:
      if name not in results:
        continue
      result = results[name]
      alone: Optional[dict] = next(
          (entry for entry in result['per_trial'] if entry['trial'] == trial), None)
      cells = [display_name(result), label]
      cells += [f'{alone[key]:.2f}' if alone and key in alone else '-' for key in keys]
      cells += [_trial_list(result['trials'])] + [_cell(result, key) for key in keys]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_results(results: Dict[str, dict], out_dir: str, name: str) -> Tuple[str, str]:
  """Writes `<out_dir>/<name>.json` (everything) and `<out_dir>/<name>.md` (the table).

  Returns:
    (json_path, markdown_path).
  """
  json_path = files.write_text(files.path(out_dir) / f'{name}.json',
                               json.dumps(results, indent=2) + '\n')
  markdown_path = files.write_text(files.path(out_dir) / f'{name}.md', markdown_table(results))
  return str(json_path), str(markdown_path)


def plot_cmc(results: Dict[str, dict], path: str) -> str:
  """Writes a PNG of every setting's CMC curve (mean over trials, ± std band if several)."""
  figure = Figure(figsize=(6.4, 4.4), dpi=120)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot(1, 1, 1)
  for result in results.values():
    ranks = np.arange(1, len(result['cmc']) + 1)
    label = (f'{display_name(result)} (R1 {result["mean"]["rank1"]:.1f}, '
             f'mAP {result["mean"]["mAP"]:.1f})')
    line, = axes.plot(ranks, result['cmc'], marker='o', markersize=3, label=label)
    if len(result['per_trial']) > 1:
      curves = np.array([entry['cmc'] for entry in result['per_trial']])
      spread = curves.std(axis=0, ddof=1)
      axes.fill_between(ranks, curves.mean(axis=0) - spread, curves.mean(axis=0) + spread,
                        color=line.get_color(), alpha=0.2, linewidth=0)
  axes.set_xlabel('Rank')
  axes.set_ylabel('Matching rate (%)')
  axes.set_title('CMC')
  max_rank = max(len(result['cmc']) for result in results.values())
  axes.set_xlim(1, max_rank)
  axes.set_xticks([1] + list(range(5, max_rank + 1, 5)))
  axes.grid(True, alpha=0.3)
  axes.legend(fontsize=7, loc='lower right')
  figure.tight_layout()
  files.save_figure(figure, path)
  return path


def _trial_list(trials) -> str:
  """'10 (0-9)', '2 (1, 3)', or just the count when trials are unnamed."""
  numbers = [trial for trial in trials if trial is not None]
  if len(numbers) < len(trials):
    return str(len(trials))
  if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
    return f'{len(numbers)} ({numbers[0]}-{numbers[-1]})'
  return f'{len(numbers)} ({", ".join(str(trial) for trial in numbers)})'
