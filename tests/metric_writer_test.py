"""A run's machine-readable files: metrics.jsonl rows equal the history, TensorBoard gets the
same scalars, and every file is written whole (local paths here; gs:// goes the same way)."""

import json
import os
import struct

import matplotlib
import numpy as np
from tensorboardX.proto import event_pb2

from vireid_jax.runtime import files
from vireid_jax.reporting import metric_writer

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def history(epochs):
  entries = [{'epoch': -1, 'eval': {'big': 'results'}, 'headline': {'mAP': 10.0, 'rank1': 5.0}}]
  for epoch in range(epochs):
    entries.append({'epoch': epoch, 'stage': 1 + (epoch > 0), 'loss/total': 10.0 - epoch,
                    'visible/purity': float('nan'), 'note': 'a string',
                    'headline': {'mAP': 20.0 + epoch, 'rank1': 15.0}})
  return entries


def read_events(directory):
  """(tag, step, value) of every scalar in the event files under `directory`."""
  scalars = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord: length, its CRC, the record, its CRC
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


def test_metrics_jsonl_and_tensorboard_follow_the_history(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  entries = history(2)
  for end in range(1, len(entries) + 1):
    writer.write(entries[:end])
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows == [{'epoch': 0, 'eval/mAP': 10.0, 'eval/rank1': 5.0},
                  {'epoch': 1, 'stage': 1, 'loss/total': 10.0, 'eval/mAP': 20.0,
                   'eval/rank1': 15.0},
                  {'epoch': 2, 'stage': 2, 'loss/total': 9.0, 'eval/mAP': 21.0,
                   'eval/rank1': 15.0}]  # NaN, strings and the full results are left out
  scalars = read_events(tmp_path / 'tensorboard')
  assert ('loss/total', 2, 9.0) in scalars and ('eval/mAP', 0, 10.0) in scalars
  assert len([s for s in scalars if s[0] == 'eval/mAP']) == 3  # one per epoch, not rewritten


def test_a_disabled_writer_writes_nothing(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path), enabled=False)
  writer.write(history(1))
  writer.close()
  assert os.listdir(tmp_path) == []


def test_files_are_replaced_whole_and_figures_are_png(tmp_path):
  target = tmp_path / 'sub' / 'report.md'
  files.write_text(target, 'first')
  files.write_text(target, 'second')
  assert files.read_text(target) == 'second'
  assert sorted(os.listdir(tmp_path / 'sub')) == ['report.md']  # no temporary left behind
  figure = plt.figure()
  plt.plot(np.arange(3))
  files.save_figure(figure, tmp_path / 'curves.png')
  plt.close(figure)
  assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert str(files.path('gs://bucket/run')) == 'gs://bucket/run'  # URLs kept as they are
  assert files.path('relative').is_absolute()
