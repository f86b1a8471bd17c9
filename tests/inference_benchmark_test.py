"""benchmarks/embed.py runs end to end at a tiny size and measures what it says: --mode embed
beside benchmarks/extract.py, on the same images, in one run (no timing is asserted)."""

import pytest

from benchmarks_test import TINY_MODEL, assert_positive_finite, run_script  # pylint: disable=unused-import


@pytest.mark.slow
def test_embed_script_measures_embedding_beside_extraction(run_script):  # pylint: disable=redefined-outer-name
  records = run_script('embed.py', *TINY_MODEL, '--num-images', '48', '--batch-size', '16',
                       '--repeats', '2')
  by_what = {}
  for record in records:
    by_what.setdefault(record['what'], []).append(record)
  assert len(by_what['extract/visible']) == 2 and len(by_what['embed/visible']) == 2
  for record in by_what['embed/visible'] + by_what['extract/visible']:
    assert record['num_images'] == 48
    assert_positive_finite(record, ['images_per_s', 'seconds'])
  summary, = by_what['embed_vs_extract']
  assert summary['image_size'] == [32, 16] and summary['source'] == 'JPEG 64x32'
  assert summary['extract_images_per_s_each'] == [r['images_per_s']
                                                  for r in by_what['extract/visible']]
  assert summary['ratio'] == pytest.approx(summary['embed_images_per_s'] /
                                           summary['extract_images_per_s'])
  assert_positive_finite(summary, ['ratio', 'embed_cpu_ms_per_image',
                                   'extraction_from_host_arrays_cpu_ms_per_image'])
