"""Images per second of `--mode embed` beside benchmarks/extract.py's, in one run.

  python benchmarks/embed.py                   # the paper's network and sizes (a GPU/TPU host)
  python benchmarks/embed.py --workdir runs/demo --num-images 4096 --repeats 3   # the demo run
  python benchmarks/embed.py --image-size 64 32 --width 16 --block basic --stage-sizes 1 1 1 1 \
      --dtype float32 --batch-size 128 --num-images 4096 --repeats 3   # the demo's network

`--mode embed` reads image files, decodes and resizes them (threads, ahead of the device),
extracts their features and writes them to an embeddings file. benchmarks/extract.py times the
extraction alone, on uint8 images already resident on the device: the upper bound of what
embedding can reach. Each repeat runs both on the same machine, one after the other (extract.py
as a fresh call with its own compile, excluded; embedding after one warm-up call that compiles
and reads the files once, so both read from memory, not disk), and the summary line gives the
mean images per second of each over the repeats and their ratio (the target: at least 0.8).
It also times the same extraction on the decoded pixels in host memory, and the CPU time per
image (all threads of the process) of that and of embedding: where the device is the CPU (or
the cores are shared), their ratio bounds what overlapping can reach.

Without --workdir, a run is made as training makes its first checkpoint
(`train_state.create_train_state`, `checkpoint.save` with the trainer's record) with the
flags' sizes and random weights (speed does not depend on their values). The image files are
JPEGs of smooth random pictures at twice the network's input size (`--source-size`), like the
datasets' crops; `--images DIR` uses files of your own (cycled to --num-images).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import extract as extract_benchmark  # pylint: disable=g-import-not-at-top


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_model_flags(parser)
  parser.add_argument('--workdir', default='',
                      help="a trained run to embed with (its config gives every size); "
                           "default: a fresh run of the flags' sizes")
  parser.add_argument('--batch-size', type=int, default=0,
                      help="images per device call (0: a run's eval.batch_size, 256 for a "
                           "fresh run)")
  parser.add_argument('--num-images', type=int, default=8192, help='images per timed pass')
  parser.add_argument('--modality', choices=('visible', 'infrared'), default='visible')
  parser.add_argument('--flip', action='store_true', help='eval.flip (a run: its own)')
  parser.add_argument('--source-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                      help='size of the image files written (default: twice --image-size)')
  parser.add_argument('--images', default='', help='a folder of image files to use instead')
  parser.add_argument('--workers', type=int, default=0, help='decoding threads (0: a core each)')
  return parser.parse_args(argv)


def _fresh_run(args, workdir: str):
  """A run folder holding checkpoint latest/1 of the flags' config, as training writes it."""
  from vireid_jax import models
  from vireid_jax import train_state
  from vireid_jax.runtime import checkpoint
  from vireid_jax.runtime import files
  from vireid_jax.runtime import sharding
  config = common.make_config(args)
  config.eval.batch_size = args.batch_size or 256
  config.eval.flip = args.flip
  state = train_state.create_train_state(config, models.build_model(config.model),
                                         sharding.make_mesh(), say=common.log)
  record = {'epoch': 1, 'history': [], 'best': {'mAP': -1.0, 'epoch': -1},
            'config': config.to_json_best_effort()}
  checkpoint.save(workdir, checkpoint.LATEST, 1, state, record)
  files.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))


def _write_images(folder: str, count: int, height: int, width: int, seed: int) -> list:
  """`count` JPEGs of smooth random pictures (photographs compress like them, noise does not)."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    path = os.path.join(folder, f'{i // 1000:03d}', f'{i:06d}.jpg')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, quality=90)
    paths.append(path)
  return paths


def _extract_argv(args, config, batch_size: int) -> list:
  """benchmarks/extract.py's flags for the run's network, batch, precision and flip."""
  m = config.model
  argv = ['--image-size', str(config.data.image_height), str(config.data.image_width),
          '--width', str(m.width), '--block', m.block, '--stage-sizes',
          *[str(n) for n in m.stage_sizes], '--dtype', m.extract_dtype if
          m.extract_dtype != 'compute' else m.dtype,
          '--extract-precision', m.extract_precision, '--batch-size',
          str(batch_size), '--num-images', str(args.num_images), '--modality',
          args.modality, '--repeats', '1', '--seed', str(args.seed)]
  return argv + (['--flip'] if config.eval.flip else [])


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  scratch = tempfile.mkdtemp(prefix='embed_benchmark_')
  try:
    return _measure(args, scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _measure(args, scratch: str) -> list[dict]:
  from vireid_jax.inference import images as images_lib
  from vireid_jax.inference import model as model_lib

  workdir = args.workdir
  if not workdir:
    workdir = os.path.join(scratch, 'run')
    _fresh_run(args, workdir)
  model = model_lib.Model.from_workdir(workdir, checkpoint='latest' if not args.workdir
                                       else 'best',
                                       batch_size=args.batch_size or None)
  config = model.config
  height, width = model.image_size
  source = args.source_size or (2 * height, 2 * width)
  if args.images:
    found = images_lib.list_images(args.images)
    paths = [found[i % len(found)] for i in range(args.num_images)]
  else:
    paths = _write_images(os.path.join(scratch, 'images'), args.num_images, *source, args.seed)
  context = dict(common.device_description(), precision=common.precision(config),
                 batch=model._embedder.batch_size)  # pylint: disable=protected-access
  out = os.path.join(scratch, 'embeddings.npz')

  def embed():
    summary = model._embedder.to_file(paths, args.modality, out, workers=args.workers,  # pylint: disable=protected-access
                                      progress=False)
    if summary.embedded != len(paths):
      raise RuntimeError(f'embedded {summary.embedded} of {len(paths)}: {summary.skipped[:3]}')

  first_s, _ = common.timed(embed)  # compiles, and brings the files into the page cache
  records = [common.emit({'what': f'embed/{args.modality}/first_pass', 'seconds': first_s,
                          'note': 'compilation + one pass'}, context)]
  # The same extraction on the decoded pixels from host memory: what embedding adds is the
  # reading. Its CPU time per image (every thread of this process) beside embedding's says how
  # far apart they can be where the cores are the device, or shared with other work.
  pixels = images_lib.read_all(paths, height, width, workers=args.workers)[0]
  model._embedder.arrays(pixels, args.modality)  # pylint: disable=protected-access
  extract_rates, embed_rates, embed_cpu, alone_rates, alone_cpu = [], [], [], [], []
  for repeat in range(args.repeats):
    # extract.py prints its own JSON lines (stdout) and returns them.
    measured = extract_benchmark.main(_extract_argv(args, config, context['batch']))
    rate = [r for r in measured if r['what'] == f'extract/{args.modality}'][0]['images_per_s']
    extract_rates.append(rate)
    cpu = time.process_time()
    seconds, _ = common.timed(embed)
    embed_cpu.append(1e3 * (time.process_time() - cpu) / len(paths))
    embed_rates.append(len(paths) / seconds)
    common.log(f'repeat {repeat + 1}/{args.repeats}: extract {rate:,.0f} images/s, embed '
               f'{embed_rates[-1]:,.0f} images/s')
    records.append(common.emit({'what': f'embed/{args.modality}', 'seconds': seconds,
                                'images_per_s': len(paths) / seconds,
                                'cpu_ms_per_image': embed_cpu[-1],
                                'num_images': len(paths), 'repeat': repeat + 1}, context))
    cpu = time.process_time()
    seconds, _ = common.timed(lambda: model._embedder.arrays(pixels, args.modality))  # pylint: disable=protected-access
    alone_cpu.append(1e3 * (time.process_time() - cpu) / len(paths))
    alone_rates.append(len(paths) / seconds)
    records.append(common.emit({'what': f'embed/{args.modality}/extraction_from_host_arrays',
                                'seconds': seconds, 'images_per_s': len(paths) / seconds,
                                'cpu_ms_per_image': alone_cpu[-1], 'num_images': len(paths),
                                'repeat': repeat + 1}, context))

  summary = {
      'what': 'embed_vs_extract', 'modality': args.modality, 'num_images': len(paths),
      'repeats': args.repeats, 'workdir': args.workdir or '(fresh, random weights)',
      'image_size': [height, width], 'source': args.images or f'JPEG {source[0]}x{source[1]}',
      'flip': bool(config.eval.flip), 'decode_workers': args.workers or os.cpu_count(),
      'extract_images_per_s': statistics.mean(extract_rates),
      'embed_images_per_s': statistics.mean(embed_rates),
      'extract_images_per_s_each': extract_rates, 'embed_images_per_s_each': embed_rates,
      'embed_cpu_ms_per_image': statistics.mean(embed_cpu),
      'extraction_from_host_arrays_images_per_s': statistics.mean(alone_rates),
      'extraction_from_host_arrays_cpu_ms_per_image': statistics.mean(alone_cpu),
  }
  summary['ratio'] = summary['embed_images_per_s'] / summary['extract_images_per_s']
  records.append(common.emit(summary, context))
  return records


if __name__ == '__main__':
  main()
