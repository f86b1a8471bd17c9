"""Per-epoch numbers for machines, beside the report for people: `<workdir>/metrics.jsonl` and
TensorBoard event files in `<workdir>/tensorboard/`, so a long (pod) run can be watched live.

One row per history entry: the epoch (1-based; 0 is the evaluation before training), the
stage, every scalar the epoch logged (losses, clusters, purity, matching, seconds) and the
evaluation headline as `eval/<metric>`. metrics.jsonl is rewritten from the run's history each
epoch, so a resumed run's file equals an uninterrupted run's. TensorBoard gets each epoch's
scalars once; a resumed run starts a new event file that tells TensorBoard to drop what the
interrupted one wrote after the resume point.
"""

import json
import math
import numbers

from vireid_jax.runtime import files


def epoch_scalars(entry: dict) -> dict:
  """The flat scalars of one history entry (JSON-ready; NaN dropped)."""
  row = {'epoch': entry['epoch'] + 1}
  for key, value in entry.items():
    if key in ('epoch', 'eval', 'headline') or isinstance(value, bool):
      continue
    if isinstance(value, numbers.Number) and math.isfinite(value):
      row[key] = float(value) if not isinstance(value, int) else value
  for key, value in entry.get('headline', {}).items():
    row[f'eval/{key}'] = float(value)
  return row


class MetricWriter:
  """Writes metrics.jsonl and TensorBoard events under `workdir` (no-op when not enabled)."""

  def __init__(self, workdir: str, enabled: bool = True, resume_epoch: int = 0):
    self._enabled = enabled
    self._jsonl = files.path(workdir) / 'metrics.jsonl'
    self._tensorboard = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tensorboard = SummaryWriter(
          str(files.path(workdir) / 'tensorboard'),
          purge_step=resume_epoch + 1 if resume_epoch else None)

  def write(self, history: list[dict]) -> None:
    """Rewrites metrics.jsonl from `history` and sends the newest entry to TensorBoard."""
    if not self._enabled or not history:
      return
    rows = [epoch_scalars(entry) for entry in history]
    files.write_text(self._jsonl, ''.join(json.dumps(row) + '\n' for row in rows))
    newest = rows[-1]
    for key, value in newest.items():
      if key != 'epoch':
        self._tensorboard.add_scalar(key, value, global_step=newest['epoch'])
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None
