"""The benchmark scripts run end to end at tiny sizes and print sane JSON lines.

Each script runs in its own process, as a user runs it, on one CPU device (extraction on two,
so the batch rounding and the sharded index run too; tests/train_test.py covers the sharded
step). No timing is asserted: only that every measurement is
there, parseable, positive and finite, and that what was measured is what was asked for. The
scripts share a persistent compilation cache, so the epoch's step reuses the one train_step.py
compiled (same shapes) and the file stays fast.
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = ['--image-size', '32', '16', '--width', '8', '--block', 'basic',
              '--stage-sizes', '1', '1', '1', '1', '--pad', '2']
TINY_BATCH = ['--clusters', '4', '--instances', '2']
CONTEXT_KEYS = {'what', 'device', 'platform', 'num_devices', 'precision', 'batch',
                'host_peak_mb'}


@pytest.fixture(scope='module')
def run_script(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp('jax_cache'))

  def run(name, *flags, devices=1):
    env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
               # Unoptimised CPU code compiles twice as fast; these runs are tiny anyway.
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
                         '--xla_backend_optimization_level=0')
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', name), *flags],
                            capture_output=True, text=True, timeout=300, env=env, cwd='/')
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    records = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    for record in records:
      assert CONTEXT_KEYS <= set(record), record
      assert record['device'] and record['platform'] == 'cpu'
      assert record['num_devices'] == devices
      assert record['precision'] == 'float32'  # 'auto' is float32 on a CPU
    return records

  return run


def assert_positive_finite(record, keys):
  for key in keys:
    value = record[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, record)


def test_train_step_script_measures_both_stages_both_image_paths(run_script):
  records = run_script('train_step.py', *TINY_MODEL, *TINY_BATCH, '--num-images', '64',
                       '--memory-clusters', '8', '8', '--steps', '3', '--repeats', '2')
  assert [r['what'] for r in records] == [
      'train_step/stage1/compile', 'train_step/stage1',
      'train_step/stage1/host_fed/compile', 'train_step/stage1/host_fed',
      'train_step/stage2/compile', 'train_step/stage2',
      'train_step/stage2/host_fed/compile', 'train_step/stage2/host_fed']
  assert [r['images'] for r in records] == ['device', 'device', 'host', 'host'] * 2
  for record in records:
    assert record['batch'] == 24 and record['pairs'] == 8  # 2 x 8 visible views + 8 infrared
  for compile_record in records[0::2]:
    assert_positive_finite(compile_record, ['seconds', 'step_arguments_mb',
                                            'step_temporaries_mb'])
    # CPU default: sequential memory updates (a scan) and the 'while' rectangles loop, the
    # only loop whose trip count XLA cannot know.
    assert compile_record['label_repeats'] is None
    assert compile_record['unknown_trip_count_loops'] == 1
    assert 'multiply_rectangles' in compile_record['unknown_trip_count_ops'][0]
    assert compile_record['while_loops'] > 1 and compile_record['conditionals'] == 0
  for step in records[1::2]:
    assert_positive_finite(step, ['median_ms', 'min_ms', 'images_per_s', 'dispatch_ms',
                                  'host_peak_mb'])
    assert step['linear_transform_loop'] == 'while' and step['memory_update'] == 'sequential'
    assert step['xla_command_buffer'] == ''
    assert step['min_ms'] <= step['median_ms']
    assert step['images_per_s'] == pytest.approx(24 / (step['median_ms'] / 1e3), rel=1e-6)
    assert step['repeats'] == 2 and step['steps_per_repeat'] == 3
    assert step['finite_losses'] is True and step['last_loss'] > 0


def test_train_step_script_runs_the_loop_variants(run_script, tmp_path):
  records = run_script('train_step.py', *TINY_MODEL, *TINY_BATCH, '--num-images', '64',
                       '--memory-clusters', '8', '8', '--steps', '2', '--repeats', '1',
                       '--stage', '2', '--images', 'device', '--linear-transform-loop', 'fixed',
                       '--memory-update', 'by_rank', '--xla-command-buffer',
                       '+WHILE,+CONDITIONAL', '--profile', str(tmp_path))
  assert [r['what'] for r in records] == ['train_step/stage2/compile', 'train_step/stage2',
                                          'train_step/stage2/profile']
  compile_record, step, profile = records
  # by_rank with the plan's bound and the fixed rectangles: no loop the host must check.
  assert min(compile_record['label_repeats'].values()) >= 2  # {stream: bound}
  assert compile_record['unknown_trip_count_loops'] == 0
  for record in records:
    assert record['linear_transform_loop'] == 'fixed' and record['memory_update'] == 'by_rank'
    assert record['xla_command_buffer'] == '+WHILE,+CONDITIONAL'
  assert step['finite_losses'] is True
  assert profile['d2h_copies_per_step'] == 0  # no device lines in a CPU trace
  assert 0 < profile['device_busy_fraction'] <= 1


def test_summarize_trace_counts_device_to_host_copies(tmp_path):
  sys.path.insert(0, ROOT)
  from benchmarks import common  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  meta = lambda kind, pid, tid, name: {'ph': 'M', 'name': kind, 'pid': pid, 'tid': tid,
                                       'args': {'name': name}}
  span = lambda pid, tid, name, ts, dur: {'ph': 'X', 'pid': pid, 'tid': tid, 'name': name,
                                          'ts': ts, 'dur': dur}
  events = [meta('process_name', 1, 0, '/device:GPU:0'), meta('process_name', 2, 0, '/host:CPU'),
            meta('thread_name', 1, 7, 'Stream #7'), meta('thread_name', 1, 9,
                                                          'Stream #9(MemcpyD2H)'),
            span(1, 7, 'fusion.3', 0, 40), span(1, 7, 'MemcpyD2H', 40, 5),
            span(1, 9, 'copy', 50, 5),  # a D2H line, however the event is named
            span(1, 7, 'fusion.4', 60, 40), span(1, 7, 'MemcpyH2D', 100, 5),
            span(2, 1, 'MemcpyD2H', 0, 200)]  # host-side: not the device's
  trace_dir = tmp_path / 'plugins' / 'profile' / 'run'
  trace_dir.mkdir(parents=True)
  with gzip.open(trace_dir / 'host.trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': events}, f)
  summary = common.summarize_trace(str(tmp_path))
  assert summary['d2h_copies'] == 2
  assert summary['trace_window_ms'] == pytest.approx(0.2)
  assert summary['device_busy_fraction'] == pytest.approx(95 / 200)  # 0-45, 50-55, 60-105
  assert summary['top_ops'][0] == ['fusion', 0.08]


def test_rectangle_loops_script_checks_every_form_against_while(run_script):
  records = run_script('rectangle_loops.py', '--batch', '6', '--image-size', '24', '12',
                       '--calls', '2', '--repeats', '2', '--first-phase', '4',
                       '--straggler-slots', '2')
  assert [r['what'] for r in records] == ['rectangle_loops/while', 'rectangle_loops/fixed',
                                          'rectangle_loops/two_phase']
  for record in records:
    assert_positive_finite(record, ['median_ms', 'min_ms', 'compile_s', 'rectangles_mean'])
    assert record['equal_to_while'] is True and record['max_abs_diff_to_while'] == 0
    assert record['first_phase'] == 4 and record['straggler_slots'] == 2
  assert [r['unknown_trip_count_loops'] for r in records] == [1, 0, 0]
  assert [r['conditionals'] for r in records] == [0, 0, 1]


def test_memory_update_script_times_both_forms_of_both_stages(run_script):
  records = run_script('memory_update.py', '--clusters', '3', '--instances', '2', '--dim', '16',
                       '--memory-clusters', '20', '9', '--calls', '3', '--repeats', '2')
  assert [r['what'] for r in records] == [
      f'memory_update/stage{stage}/{method}' for stage in (1, 2)
      for method in ('sequential', 'by_rank')]
  for record in records:
    assert_positive_finite(record, ['median_ms', 'min_ms', 'compile_s'])
    assert record['min_ms'] <= record['median_ms']
    assert record['batch'] == 6 and record['memory_rows'] == [32, 16]
    assert record['unit_norm_rows'] is True and record['auto_method'] == 'sequential'
    assert record['label_repeats'] == 2  # 3 distinct labels, 2 each: by_rank runs 2 per copy


def test_extract_script_measures_images_per_second(run_script, tmp_path):
  # 31 per call is rounded up to 32 for two devices; the last of 3 calls is padded.
  records = run_script('extract.py', *TINY_MODEL, '--num-images', '72', '--batch-size', '31',
                       '--repeats', '2', '--modality', 'infrared', '--profile',
                       str(tmp_path), devices=2)
  assert [r['what'] for r in records] == ['extract/infrared/first_pass', 'extract/infrared',
                                          'extract/infrared/profile']
  first, timed, profile = records
  assert 0 < profile['device_busy_fraction'] <= 1
  assert_positive_finite(profile, ['trace_window_ms'])
  assert profile['top_ops'] and all(ms > 0 for _, ms in profile['top_ops'])
  assert os.listdir(tmp_path / 'extract_infrared')  # the trace itself, for xprof
  assert_positive_finite(first, ['seconds'])
  assert_positive_finite(timed, ['seconds', 'median_ms', 'images_per_s'])
  assert timed['batch'] == 32 and timed['num_images'] == 72
  assert timed['images_per_s'] == pytest.approx(72 / timed['seconds'], rel=1e-6)
  assert timed['unit_norm_features'] is True


def test_epoch_script_times_every_phase(run_script):
  # The same resident image counts as the train_step test: the step's compilation is cached.
  records = run_script('epoch.py', *TINY_MODEL, *TINY_BATCH, '--num-visible', '64',
                       '--num-infrared', '64', '--identities', '4', '--cluster-noise', '0.5',
                       '--steps', '3')
  assert [r['what'] for r in records] == ['epoch/first', 'epoch']
  for record in records:
    assert record['stage'] == 2 and record['steps'] == 3 and record['batch'] == 24
    assert record['num_visible'] == 64 and record['num_infrared'] == 64
    assert_positive_finite(record, ['seconds', 'extract_s', 'cluster_s', 'match_s', 'plan_s',
                                    'memories_s', 'train_s', 'dispatch_s', 'step_ms',
                                    'images_per_s', 'images_mb'])
    phases = sum(record[f'{p}_s'] for p in ('extract', 'cluster', 'plan', 'memories', 'train'))
    assert record['seconds'] == pytest.approx(phases, rel=1e-6)
    assert record['match_s'] <= record['cluster_s'] + 1e-3
    assert record['dispatch_s'] <= record['train_s']
    # Four well-separated planted identities per modality: clustering finds each of them.
    assert record['visible_clusters'] == 4 and record['infrared_clusters'] == 4
    assert record['finite_losses'] is True
  first, timed = records
  assert first['recompiled'] is True and timed['recompiled'] is False
  assert timed['repeats'] == 1
  assert timed['images_mb'] == pytest.approx((64 + 64) * 32 * 16 * 3 / 2**20)


def test_demo_diagnostics_measures_on_a_hand_built_case():
  sys.path.insert(0, ROOT)
  from benchmarks import demo_diagnostics  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  a = np.array([[1.0, 0.0], [0.0, 1.0]])
  b = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
  sims = demo_diagnostics._similarities(a, np.array([0, 1]), b, np.array([0, 0, 1]))
  # same identity: (0,0)=1, (0,1)=0.6, (1,2)=1; different: (0,2)=0, (1,0)=0, (1,1)=0.8
  assert sims['same'] == pytest.approx(2.6 / 3) and sims['diff'] == pytest.approx(0.8 / 3)
  # Its training-set mAP is evaluation.eval_regdb on negated similarities: query 0 ranks b0
  # (1), b1 (0.6), b2: both hits first -> AP 1; query 1 ranks b2 (1) first -> AP 1; a query
  # whose only hit comes second has AP 1/2.
  from vireid_jax import evaluation  # pylint: disable=import-outside-toplevel
  assert evaluation.eval_regdb(-(a @ b.T), np.array([0, 1]), np.array([0, 0, 1]),
                               max_rank=1)[1] == 1.0
  assert evaluation.eval_regdb(-(a[1:] @ b[1:].T), np.array([0]), np.array([0, 1]),
                               max_rank=1)[1] == 0.5


def test_train_step_script_measures_pgm_steps(run_script):
  records = run_script('train_step.py', '--method', 'pgm', *TINY_MODEL, '--instances', '2',
                       '--visible-images', '8', '--infrared-images', '16', '--num-images', '64',
                       '--memory-clusters', '8', '8', '--steps', '2', '--repeats', '1',
                       '--images', 'device')
  assert [r['what'] for r in records] == ['train_step/stage1/compile', 'train_step/stage1',
                                          'train_step/stage2/compile', 'train_step/stage2']
  for record in records:
    assert record['method'] == 'pgm' and record['batch'] == 2 * 8 + 16
    assert (record['visible_images'], record['infrared_images']) == (8, 16)
  for step in records[1::2]:
    assert_positive_finite(step, ['median_ms', 'images_per_s'])
    assert step['finite_losses'] is True


def test_step_hlo_compare_sees_instructions_not_parameter_numbers(tmp_path):
  """benchmarks/step_hlo.py: a renumbering of the entry parameters is the same program; a
  changed instruction is not."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  'benchmarks'))
  import step_hlo  # pylint: disable=import-outside-toplevel
  header = 'HloModule jit_train_step, input_output_alias={ {0}: (0, {}, may-alias) }'
  program = ['ENTRY %main (param.1: f32[4], param.2: s32[]) -> f32[4] {',
             '  %param.1 = f32[4]{0} parameter(0), sharding={replicated}',
             '  %param.2 = s32[]{:T(256)} parameter(1)',
             '  ROOT %add = f32[4]{0} add(f32[4]{0} %param.1, f32[4]{0} %param.1)', '}']
  renumbered = [program[0].replace('param.1: f32[4], param.2: s32[]', 'param.2: s32[], '
                                   'param.1: f32[4]'),
                program[1].replace('parameter(0)', 'parameter(7)'),
                program[2].replace('parameter(1)', 'parameter(3)'), *program[3:]]
  changed = program[:3] + [program[3].replace('add(', 'multiply(')] + program[4:]
  for name, lines in (('before', program), ('same', renumbered), ('changed', changed)):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'mbccm_1.hlo').write_text('\n'.join([header, 'FileNames', '1 "x.py"',
                                                            *lines]))
  assert step_hlo.compare(str(tmp_path / 'before'), str(tmp_path / 'same')) == 0
  assert step_hlo.compare(str(tmp_path / 'before'), str(tmp_path / 'changed')) == 2
