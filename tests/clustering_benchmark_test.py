"""The clustering benchmark runs end to end at a tiny size and reports sane numbers."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_tiny_size():
  script = os.path.join(ROOT, 'benchmarks', 'clustering.py')
  output = subprocess.run(
      [sys.executable, script, '--sizes', '400', '--dim', '32', '--noise', '0.6'],
      check=True, capture_output=True, text=True, timeout=300).stdout
  header, row = output.strip().splitlines()[-2:]
  assert header.split()[0] == 'N'
  fields = row.split()
  assert fields[0] == '400'
  search_s, rest_s, jaccard_s, dbscan_s, total_s, peak_mb = map(float, fields[1:7])
  assert abs(search_s + rest_s - jaccard_s) < 0.02 and total_s >= jaccard_s
  assert 0 < peak_mb < 4000
  clusters, outliers = int(fields[8]), int(fields[9])
  assert clusters >= 10 and 0 <= outliers < 400  # 20 planted clusters of about 20 members
