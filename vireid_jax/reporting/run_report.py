"""What a person reads about a training run: one line per epoch, report.md and curves.png.

Everything is derived from the run's history (a list of per-epoch dicts kept in the
checkpoint), so the report of a resumed run is the same as that of an uninterrupted one.
"""

import math

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from vireid_jax.runtime import files  # noqa: E402

HEADLINE_KEYS = ('rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP')


def _fmt(value, spec='.3f') -> str:
  return '-' if value is None else format(value, spec)


def epoch_line(entry: dict, epochs: int, reporting=None) -> str:
  """One line per epoch with the numbers that matter; `reporting` adds the method's own part
  (its association: a `methods.Reporting`)."""
  parts = [f'epoch {entry["epoch"] + 1:3d}/{epochs} stage {entry["stage"]}']
  if 'skipped' in entry:
    parts.append('skipped (no clusters)')
  else:
    parts.append(f'lr {entry["lr"]:.1e} loss {entry["loss/total"]:.3f}')
    parts.append(f'clusters V/I {entry.get("visible/clusters", 0):.0f}/'
                 f'{entry.get("infrared/clusters", 0):.0f}')
    parts.append(f'outliers V/I {entry.get("visible/outliers", 0):.0f}/'
                 f'{entry.get("infrared/outliers", 0):.0f}')
    if not math.isnan(entry.get('visible/purity', math.nan)):  # NaN: no true identities known
      parts.append(f'purity V/I {entry["visible/purity"]:.2f}/{entry["infrared/purity"]:.2f}')
    method_part = reporting.epoch_line(entry) if reporting is not None else ''
    if method_part:
      parts.append(method_part)
  if 'headline' in entry:
    h = entry['headline']
    parts.append(f'| R1 {h["rank1"]:.2f} mAP {h["mAP"]:.2f} mINP {h["mINP"]:.2f}')
  parts.append(f'({entry["time/extract"] + entry["time/cluster"] + entry["time/train"]:.0f}s)')
  return '  '.join(parts)


def _evaluation_table(history) -> list[str]:
  rows = ['| epoch | ' + ' | '.join(HEADLINE_KEYS) + ' |',
          '|---' * (len(HEADLINE_KEYS) + 1) + '|']
  for entry in history:
    if 'headline' in entry:
      name = 'untrained' if entry['epoch'] < 0 else str(entry['epoch'] + 1)
      rows.append(f'| {name} | ' + ' | '.join(_fmt(entry['headline'][k], '.2f')
                                             for k in HEADLINE_KEYS) + ' |')
  return rows


_CLUSTER_COLUMNS = (
    ('clusters V', 'visible/clusters', '.0f'), ('clusters I', 'infrared/clusters', '.0f'),
    ('outliers V', 'visible/outliers', '.0f'), ('outliers I', 'infrared/outliers', '.0f'),
    ('purity V', 'visible/purity', '.3f'), ('purity I', 'infrared/purity', '.3f'),
    ('NMI V', 'visible/nmi', '.3f'), ('NMI I', 'infrared/nmi', '.3f'),
)


def _epoch_columns(reporting) -> tuple:
  """(title, history key, format) of the epoch table: the core's and the method's columns."""
  loss_terms = tuple((label, f'loss/{key}', '.3f') for key, label in reporting.loss_terms)
  return ((('stage', 'stage', 'd'), ('lr', 'lr', '.1e'), ('loss', 'loss/total', '.3f'))
          + loss_terms + _CLUSTER_COLUMNS + tuple(reporting.association_columns)
          + (('seconds', None, '.0f'),))


def _epoch_table(history, reporting) -> list[str]:
  entries = [e for e in history if e['epoch'] >= 0]
  columns = [c for c in _epoch_columns(reporting)
             if c[1] is None or any(c[1] in e for e in entries)]
  rows = ['| epoch | ' + ' | '.join(c[0] for c in columns) + ' |',
          '|---' * (len(columns) + 1) + '|']
  for e in entries:
    cells = []
    for _, key, spec in columns:
      value = (e['time/extract'] + e['time/cluster'] + e['time/train']) if key is None else e.get(key)
      cells.append(_fmt(value, spec))
    rows.append(f'| {e["epoch"] + 1} | ' + ' | '.join(cells) + ' |')
  return rows


def _legend(ax, **kwargs) -> None:
  if ax.get_legend_handles_labels()[0]:
    ax.legend(**kwargs)


def _plot_series(ax, entries, series, **style) -> None:
  """One line per (history key, label) present in the entries, against the 1-based epoch."""
  for key, label in series:
    points = [(e['epoch'] + 1, e[key]) for e in entries if key in e]
    if points:
      ax.plot(*zip(*points), label=label, **style)


def plot_curves(history, path: str, reporting) -> None:
  entries = [e for e in history if e['epoch'] >= 0 and 'skipped' not in e]
  evals = [dict(e['headline'], epoch=e['epoch']) for e in history if 'headline' in e]
  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  ax = axes[0, 0]
  _plot_series(ax, entries, (('loss/total', 'total'),) + tuple(
      (f'loss/{key}', label) for key, label in reporting.loss_terms), marker='.')
  ax.set(title='training loss (mean per epoch)', xlabel='epoch')
  _legend(ax)
  ax = axes[0, 1]
  _plot_series(ax, evals, (('mAP', 'mAP'), ('rank1', 'Rank-1'), ('mINP', 'mINP')), marker='o')
  ax.set(title='evaluation (epoch 0 = untrained)', xlabel='epoch', ylabel='%')
  _legend(ax)
  ax = axes[1, 0]
  _plot_series(ax, entries, (('visible/clusters', 'visible clusters'),
                             ('infrared/clusters', 'infrared clusters'),
                             ('visible/outliers', 'visible outliers'),
                             ('infrared/outliers', 'infrared outliers')), marker='.')
  ax.set(title='clustering', xlabel='epoch')
  _legend(ax)
  ax = axes[1, 1]
  _plot_series(ax, entries, (('visible/purity', 'visible purity'),
                             ('infrared/purity', 'infrared purity'))
               + tuple(reporting.association_quality), marker='.')
  ax.set(title='cluster and association quality (true ids)', xlabel='epoch', ylim=(0, 1.05))
  _legend(ax, fontsize=8, loc='upper left')
  if reporting.association_counts:
    counts_ax = ax.twinx()  # counts, on their own scale
    for series, linestyle in zip(reporting.association_counts, (':', '--', '-.', '-')):
      _plot_series(counts_ax, entries, (series,), linestyle=linestyle, color='grey')
    counts_ax.set_ylabel('mean per cluster')
    _legend(counts_ax, fontsize=8, loc='upper right')
  fig.tight_layout()
  files.save_figure(fig, path, dpi=90)
  plt.close(fig)


def write_report(workdir: str, history, best: dict, config) -> None:
  """Writes report.md and curves.png into `workdir` (atomically, each)."""
  from vireid_jax import methods  # pylint: disable=import-outside-toplevel
  reporting = methods.for_config(config).reporting
  if config.data.dataset == 'sysu':
    protocol = (f'SYSU-MM01 {config.eval.sysu_mode}-search, gallery draws '
                f'{list(config.eval.train_trials)}')
  elif config.data.dataset == 'llcm':
    protocol = (f'LLCM {config.eval.llcm_setting.replace("_", "-")}, gallery draws '
                f'{list(config.eval.train_trials)}')
  else:
    protocol = f'RegDB visible-to-thermal, split {config.data.trial}'
  lines = [f'# Training report: {config.method} on {config.data.dataset}', '',
           f'Workdir `{files.path(workdir)}`. Evaluation during training: {protocol}; '
           f'values in %.', '']
  for entry in history:  # a stage that restarted from the previous stage's best checkpoint
    previous = entry.get('restarted_from')
    if previous is not None and previous.get('epoch', -1) >= 0:
      lines += [f'Stage {previous["stage"]}: best mAP {previous["mAP"]:.2f}, Rank-1 '
                f'{previous["rank1"]:.2f} after epoch {previous["epoch"] + 1}; stage '
                f'{entry["stage"]} started from it with a new optimiser (epoch '
                f'{entry["epoch"] + 1}).', '']
  if best['epoch'] >= 0:
    lines += [f'Best: mAP {best["mAP"]:.2f}, Rank-1 {best["rank1"]:.2f} after epoch '
              f'{best["epoch"] + 1} (checkpoints/best; chosen on the test set, as the authors\' '
              f'code does).', '']
  lines += ['## Evaluations', ''] + _evaluation_table(history) + ['']
  lines += ['## Epochs', ''] + _epoch_table(history, reporting) + ['', '![curves](curves.png)', '']
  files.write_text(files.path(workdir) / 'report.md', '\n'.join(lines))
  plot_curves(history, files.path(workdir) / 'curves.png', reporting)
