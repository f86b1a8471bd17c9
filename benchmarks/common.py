"""Shared pieces of the benchmark scripts: flags, the config they build, measuring, printing.

Every script prints one JSON line per measurement on stdout (progress goes to stderr), so a run
can be piped into a file and read back with `json.loads` line by line. Each line carries what
was measured, the device and the compute precision, the peak host memory so far and, where the
backend reports it, the peak accelerator memory:

  {"what": "train_step/stage2", "median_ms": ..., "images_per_s": ..., "batch": 432, ...}

Import as `from benchmarks import common` after putting the repository root on sys.path (each
script does that first, so `python benchmarks/x.py` works from anywhere).
"""

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# SYSU-MM01 training split (docs/mbccm.md, "Data"): images per modality, identities.
SYSU_VISIBLE = 22258
SYSU_INFRARED = 11909
SYSU_IDENTITIES = 395


def add_model_flags(parser: argparse.ArgumentParser) -> None:
  """Flags shared by the scripts; defaults are the paper's sizes (config.base_config())."""
  group = parser.add_argument_group('sizes (defaults: the paper; small values for CPU smoke runs)')
  group.add_argument('--image-size', type=int, nargs=2, default=(288, 144),
                     metavar=('H', 'W'), help='image height and width (288 144)')
  group.add_argument('--clusters', type=int, default=12,
                     help='clusters per modality per step (12)')
  group.add_argument('--instances', type=int, default=None,
                     help="images per cluster (the method's: MBCCM 12, PGM 16)")
  group.add_argument('--visible-images', type=int, default=None,
                     help="PGM / PCLHD: visible images per step (their papers' 128, each "
                          "giving 2 views)")
  group.add_argument('--infrared-images', type=int, default=None,
                     help="PGM / PCLHD: infrared images per step (PGM's 256, PCLHD's 128)")
  parser.add_argument('--method', choices=('mbccm', 'cluster_contrast', 'pgm', 'pclhd'),
                      default='mbccm',
                      help="the method whose step runs, at its paper's settings (PGM: "
                           "vireid_jax/methods/pgm/config.py, PCLHD: methods/pclhd/config.py)")
  group.add_argument('--width', type=int, default=64, help='stem channels (64: ResNet-50)')
  group.add_argument('--block', choices=('bottleneck', 'basic'), default='bottleneck')
  group.add_argument('--stage-sizes', type=int, nargs=4, default=(3, 4, 6, 3),
                     metavar='N', help='blocks of layer1..layer4 (3 4 6 3: ResNet-50)')
  group.add_argument('--pad', type=int, default=None,
                     help='augmentation zero padding (default: config, 10)')
  parser.add_argument('--dtype', choices=('auto', 'float32', 'bfloat16'), default='auto',
                      help='compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU')
  parser.add_argument('--repeats', type=int, default=5,
                      help='timed repeats; the median is reported')
  parser.add_argument('--seed', type=int, default=0)


def make_config(args: argparse.Namespace):
  """The method's paper config with the sizes of the flags; everything else stays the paper's."""
  from vireid_jax.methods.mbccm import config as mbccm_config
  method = getattr(args, 'method', 'mbccm')
  if method in ('pgm', 'pclhd'):
    if method == 'pgm':
      from vireid_jax.methods.pgm import config as pgm_config
      config = pgm_config.pgm_config('sysu')
    else:
      from vireid_jax.methods.pclhd import config as pclhd_config
      config = pclhd_config.pclhd_config('sysu')
      if args.visible_images is not None:
        config.sampler.visible_images_stage1 = args.visible_images
      config.pclhd.dynamic_instances = 2  # the instance tables' size does not change the step
    if args.visible_images is not None:
      config.sampler.visible_images = args.visible_images
    if args.infrared_images is not None:
      config.sampler.infrared_images = args.infrared_images
  else:
    config = mbccm_config.mbccm_config()
    config.method = getattr(args, 'method', 'mbccm')
  config.seed = args.seed
  config.data.image_height, config.data.image_width = args.image_size
  config.model.width = args.width
  config.model.block = args.block
  config.model.stage_sizes = tuple(args.stage_sizes)
  config.model.dtype = args.dtype
  config.model.pretrained = 'none'  # timings do not depend on the weights
  config.sampler.clusters_per_step = args.clusters
  if args.instances is not None:
    config.sampler.instances_per_cluster = args.instances
  if args.pad is not None:
    config.augment.pad = args.pad
  return config


def step_inputs(config) -> tuple[int, int]:
  """(images per step, network inputs per step) of the configured method's step."""
  from vireid_jax import methods
  batch = methods.for_config(config).batch_sizes(config)
  return (batch.visible_images + batch.infrared_images,
          batch.visible_inputs + batch.infrared_inputs)


def precision(config) -> str:
  """The compute dtype the convolutions run in ('bfloat16' / 'float32')."""
  from vireid_jax import models
  return str(np.dtype(models.compute_dtype(config.model.dtype)))


def device_description() -> dict:
  import jax
  devices = jax.local_devices()
  return {'device': devices[0].device_kind, 'platform': devices[0].platform,
          'num_devices': len(devices)}


def peak_host_mb() -> float:
  """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_memory_mb() -> dict:
  """Peak and current accelerator memory (MiB, the largest over local devices), if reported.

  GPU and TPU backends report `memory_stats()`; the CPU backend returns None, and then this is
  {}.
  """
  import jax
  peaks, in_use = [], []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(stats['peak_bytes_in_use'])
      in_use.append(stats.get('bytes_in_use', 0))
  if not peaks:
    return {}
  return {'device_peak_mb': max(peaks) / 2**20, 'device_in_use_mb': max(in_use) / 2**20}


def emit(record: dict, context: dict) -> dict:
  """Prints `record` as one JSON line, after `context` (device, precision, ...) and memory."""
  line = dict(record)
  line.update(context)
  line['host_peak_mb'] = peak_host_mb()
  line.update(device_memory_mb())
  print(json.dumps(_finite_or_none(line)), flush=True)
  return line


def _finite_or_none(record: dict) -> dict:
  """NaN / inf are not JSON: they become null (a measurement that failed, visibly)."""
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
          for k, v in record.items()}


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
  """(seconds, result) of fn(); fn must block on what it computes (jax.block_until_ready)."""
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


@contextlib.contextmanager
def profile(root: str, name: str, summary: Optional[dict] = None):
  """A jax.profiler trace of the enclosed code in root/name; does nothing when root is ''.

  When `summary` is a dict, it is filled with `summarize_trace` of the trace afterwards.
  """
  if not root:
    yield
    return
  import jax
  directory = os.path.join(root, name)
  os.makedirs(directory, exist_ok=True)
  # A profiler that fails (a backend without tracing, an unreadable trace) costs the profile
  # only, never the measurements around it.
  try:
    jax.profiler.start_trace(directory)
  except Exception as e:  # pylint: disable=broad-except
    log(f'{name}: no profile: {e!r}')
    yield
    return
  try:
    yield
  finally:
    try:
      jax.profiler.stop_trace()
    except Exception as e:  # pylint: disable=broad-except
      log(f'{name}: the profile could not be written: {e!r}')
  log(f'{name}: profile written to {directory} (view: pip install xprof; xprof --logdir '
      f'{root}, or TensorBoard with its profile plugin)')
  if summary is not None:
    try:
      summary.update(summarize_trace(directory))
    except Exception as e:  # pylint: disable=broad-except
      log(f'{name}: the trace could not be summarised: {e!r}')


def _interval_union(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, -math.inf
  for start, stop in sorted(intervals):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarize_trace(directory: str, top: int = 10) -> dict:
  """How busy the device was in a trace, and where its time went.

  Reads the newest `*.trace.json.gz` that jax.profiler wrote under `directory`. Device work is
  the kernels on a GPU's streams or a TPU's 'XLA Ops' line; on the CPU backend, the XLA ops run
  by its worker threads. `device_busy_fraction` is the union of those intervals over the
  traced window (first to last event of any kind): 1 - it is the time the device sat idle,
  waiting on the host or on nothing. `top_ops` sums each op's time (fusions etc. by name, the
  numeric suffix dropped), the largest first, in ms. `d2h_copies` counts the device-to-host
  copies on the device's lines (CUPTI names them 'MemcpyD2H'): XLA:GPU makes one for every
  iteration of a while loop whose trip count it does not know, and for every conditional,
  besides the fetches the caller makes. A convenience for quick reads; xprof shows the full
  trace.
  """
  import glob
  import gzip
  import re
  paths = sorted(glob.glob(os.path.join(directory, '**', '*.trace.json.gz'), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    return {}
  with gzip.open(paths[-1]) as f:
    events = json.load(f)['traceEvents']
  processes = {e['pid']: e['args']['name'] for e in events
               if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  threads = {(e['pid'], e['tid']): e['args']['name'] for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  spans = [e for e in events if e.get('ph') == 'X' and 'dur' in e]
  if not spans:
    return {}
  device_pids = {pid for pid, name in processes.items() if name.startswith('/device:')}
  d2h_copies = sum(1 for e in spans if e['pid'] in device_pids and (
      'MemcpyD2H' in e['name'] or 'MemcpyD2H' in threads.get((e['pid'], e['tid']), '')))
  if device_pids:
    on_device = [e for e in spans if e['pid'] in device_pids]
    op_lines = [e for e in on_device
                if threads.get((e['pid'], e['tid']), '').startswith(('Stream', 'XLA Ops'))]
    ops = op_lines or on_device
  else:  # CPU backend: XLA's worker threads, without the executor's wrapper events
    ops = [e for e in spans if threads.get((e['pid'], e['tid']), '').startswith('tf_XLA')
           and not e['name'].startswith(('ThunkExecutor', 'end:'))]
  window = (max(e['ts'] + e['dur'] for e in spans) - min(e['ts'] for e in spans))
  busy = _interval_union([(e['ts'], e['ts'] + e['dur']) for e in ops])
  per_op: dict[str, float] = {}
  for e in ops:
    name = re.sub(r'\.\d+$', '', e['name'])
    per_op[name] = per_op.get(name, 0.0) + e['dur']
  # Trace timestamps and durations are in microseconds.
  return {'trace_window_ms': window / 1e3, 'device_busy_fraction': busy / window if window else 0.0,
          'd2h_copies': d2h_copies,
          'top_ops': [[name, round(us / 1e3, 3)] for name, us in
                      sorted(per_op.items(), key=lambda item: -item[1])[:top]]}


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def memory_analysis_mb(compiled) -> dict:
  """What XLA planned for a compiled step: arguments, outputs, temporaries (MiB).

  Available on every backend (CPU included), so it shows the step's memory need where no
  accelerator is at hand; an accelerator's real peak (`device_peak_mb`) also counts allocator
  slack and the arrays that live outside the step.
  """
  try:
    analysis = compiled.memory_analysis()
  except Exception:
    analysis = None
  if analysis is None:
    return {}
  fields = {'argument_size_in_bytes': 'step_arguments_mb', 'output_size_in_bytes':
            'step_outputs_mb', 'temp_size_in_bytes': 'step_temporaries_mb',
            'alias_size_in_bytes': 'step_aliased_mb'}
  record = {name: getattr(analysis, field) / 2**20 for field, name in fields.items()
            if getattr(analysis, field, None) is not None}
  if len(record) == len(fields):
    # Live at once at worst: inputs, temporaries, and the outputs not written over donated inputs.
    record['step_peak_estimate_mb'] = (record['step_arguments_mb'] + record['step_outputs_mb']
                                       - record['step_aliased_mb']
                                       + record['step_temporaries_mb'])
  return record


def random_images(num: int, height: int, width: int, seed: int) -> np.ndarray:
  """(num, height, width, 3) uint8 noise; ~1 GB/s, so the SYSU sizes (4.3 GB) take seconds."""
  rng = np.random.default_rng(seed)
  return np.frombuffer(rng.bytes(num * height * width * 3), np.uint8).reshape(
      num, height, width, 3)


def sphere_clusters(n: int, dim: int, noise: float, seed: int,
                    num_centers: Optional[int] = None,
                    return_assignment: bool = False):
  """(n, dim) float32 unit rows around `num_centers` random directions (default n // 20).

  `noise` is the norm of the Gaussian noise added to a unit centre before renormalising.
  Generated in row blocks so the temporaries stay small. With `return_assignment`, also the
  (n,) int centre of each row (a stand-in for identities).
  """
  rng = np.random.default_rng(seed)
  num_centers = max(1, n // 20) if num_centers is None else num_centers
  centers = rng.standard_normal((num_centers, dim), dtype=np.float32)
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  assignment = rng.integers(0, len(centers), n)
  features = np.empty((n, dim), np.float32)
  for start in range(0, n, 4096):
    rows = slice(start, min(start + 4096, n))
    block = centers[assignment[rows]] + (noise / np.sqrt(dim)) * rng.standard_normal(
        (len(assignment[rows]), dim), dtype=np.float32)
    features[rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
  return (features, assignment) if return_assignment else features


def dispatch_steps(step_fn, state, memories, batches, inputs, num_steps: int):
  """Runs `num_steps` train steps the way `Trainer.train_epoch` does, without blocking.

  `batches` yields each step's images argument: the resident arrays ({modality: array}), or the
  host-fed batches of `host_feed.step_batches` ({stream: batch}). The step reads its plan row, key and learning
  rate from `inputs` and the state's step counter; metrics stay on the device (fetched once by
  the caller), so the host only dispatches and the device queue never drains while there are
  steps left.

  Returns:
    (state, memories, per-step metrics as device arrays).
  """
  per_step = []
  for _, images in zip(range(num_steps), batches):
    state, memories, metrics = step_fn(state, memories, images, inputs)
    per_step.append(metrics)
  return state, memories, per_step


def load_config(path: str):
  """`get_config()` of a config file (configs/*.py)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def first_epoch_of_stage(config, stage: int) -> int:
  """The first epoch the configured method's schedule puts in `stage`."""
  from vireid_jax import methods
  method = methods.for_config(config)
  for epoch in range(config.schedule.epochs):
    if method.schedule(config, epoch).stage == stage:
      return epoch
  raise ValueError(f'{config.method} runs no stage {stage} in {config.schedule.epochs} epochs')


def associate(config, clusters, epoch: int, pids=None):
  """Fills `clusters.association` with the configured method's association of `epoch`."""
  from vireid_jax import methods
  method = methods.for_config(config)
  if pids is None:  # the clusters stand for identities
    pids = (clusters.visible_labels, clusters.infrared_labels)
  arrays, _ = method.associate(config, method.schedule(config, epoch), clusters, pids)
  clusters.association = dict(arrays)
  return clusters


def method_plan(config, clusters, epoch: int, train_sets=None):
  """(schedule, plan) of the configured method for `epoch`, as the trainer builds them
  (train.Trainer.train_epoch)."""
  from vireid_jax import methods
  from vireid_jax.data.types import INFRARED, VISIBLE, ImageSet
  method = methods.for_config(config)
  schedule = method.schedule(config, epoch)
  if train_sets is None:  # every image of cluster k is from camera k mod 2 (no images needed)
    train_sets = tuple(
        ImageSet(images=np.zeros((len(labels), 0, 0, 3), np.uint8), pids=labels,
                 cams=labels % 2, paths=np.array([''] * len(labels)), modality=modality)
        for labels, modality in ((clusters.visible_labels, VISIBLE),
                                 (clusters.infrared_labels, INFRARED)))
  plan = method.plan_epoch(config, schedule, clusters, clusters.association, train_sets,
                           np.random.default_rng([config.seed, epoch]))
  return schedule, plan


def method_memories(config, clusters, schedule, mesh):
  """The configured method's memories of the epoch, replicated on `mesh` (as the trainer; the
  hooks that ask for the epoch's features get each image's cluster centre)."""
  import jax
  from vireid_jax import methods
  from vireid_jax.runtime import sharding
  features = methods.EpochFeatures(
      *(2 * (clusters.visible_centers[clusters.visible_labels],
             clusters.infrared_centers[clusters.infrared_labels])))
  features = features._replace(eval_visible=features.visible, eval_infrared=features.infrared)
  memories = methods.call_with_extras(
      methods.for_config(config).build_memories, config, schedule, clusters,
      clusters.association, previous=None, features=features,
      rng=np.random.default_rng([config.seed, schedule.epoch, 1]))
  return sharding.put_replicated(jax.device_get(memories), mesh)


def synthetic_clusters(num_visible: int, num_infrared: int, visible_clusters: int,
                       infrared_clusters: int, dim: int, seed: int, config=None):
  """An `EpochClusters` as clustering would hand the trainer, without running clustering.

  Image i of a modality belongs to cluster i mod K (every cluster non-empty, no outliers);
  centres are random unit rows; with `config`, the association is the configured method's
  real one (stage 2's) on them.
  """
  from vireid_jax.clustering import epoch as epoch_clustering
  if num_visible < visible_clusters or num_infrared < infrared_clusters:
    raise ValueError(f'{num_visible} visible / {num_infrared} infrared images cannot fill '
                     f'{visible_clusters} / {infrared_clusters} clusters: pass fewer '
                     '--memory-clusters or more --num-images')
  rng = np.random.default_rng(seed)

  def unit_rows(k):
    rows = rng.standard_normal((k, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)

  visible_centers, infrared_centers = unit_rows(visible_clusters), unit_rows(infrared_clusters)
  clusters = epoch_clustering.EpochClusters(
      visible_labels=np.arange(num_visible) % visible_clusters,
      infrared_labels=np.arange(num_infrared) % infrared_clusters,
      visible_centers=visible_centers, infrared_centers=infrared_centers)
  # A joint clustering for the methods that cluster both modalities together (PCLHD): cluster
  # i mod K of both modalities, K the smaller side's count, every joint cluster mixed.
  joint = min(visible_clusters, infrared_clusters)
  clusters.joint_labels = np.concatenate([np.arange(num_visible) % joint,
                                          np.arange(num_infrared) % joint])
  clusters.joint_centers = unit_rows(joint)
  if config is not None:
    associate(config, clusters, first_epoch_of_stage(config, 2))
  return clusters
