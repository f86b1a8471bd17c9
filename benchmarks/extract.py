"""Images per second of eval feature extraction (batch 256), compilation excluded.

  python benchmarks/extract.py                     # 22,258 images of each modality, batch 256
  python benchmarks/extract.py --dtype float32 --extract-precision highest   # the default's cost
  python benchmarks/extract.py --image-size 32 16 --width 8 --block basic \
      --stage-sizes 1 1 1 1 --num-images 96 --batch-size 32 --repeats 2   # CPU smoke size

Runs the trainer's own extraction (`vireid_jax.extract.extract_features` with the jitted
`make_extract_fn`) over uint8 images already resident on the device, as every epoch does:
gather, normalise, the modality's stem, trunk, GeM, neck, L2 normalisation, batches dispatched
back to back and the features copied to the host once at the end (included in the time). One
warm-up pass compiles; its time is reported apart. Parameters are the random initialisation;
speed does not depend on their values.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  common.add_model_flags(parser)
  parser.add_argument('--extract-precision', choices=('default', 'high', 'highest'),
                      default='default', help="matmul precision of float32 extraction "
                      "(config.model.extract_precision; the trainer's default is 'highest')")
  parser.add_argument('--batch-size', type=int, default=256,
                      help='images per call (config.eval.batch_size: 256)')
  parser.add_argument('--num-images', type=int, default=common.SYSU_VISIBLE,
                      help='images per timed pass (22,258: the SYSU visible training set)')
  parser.add_argument('--modality', nargs='+', choices=('visible', 'infrared'),
                      default=('visible', 'infrared'), help='which stems to measure')
  parser.add_argument('--flip', action='store_true',
                      help='also average with the mirror image (config.eval.flip, off)')
  parser.add_argument('--profile', default='',
                      help='also write a jax.profiler trace of one pass per modality under here')
  return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  import numpy as np
  from vireid_jax import extract as extract_lib
  from vireid_jax import models
  from vireid_jax.runtime import sharding
  from vireid_jax import train_state

  config = common.make_config(args)
  mesh = sharding.make_mesh()
  model = models.build_model(config.model)
  height, width = args.image_size
  images = sharding.put_replicated(
      common.random_images(args.num_images, height, width, seed=args.seed), mesh)
  state = train_state.create_train_state(config, model, mesh, say=common.log)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  del state
  extract_batch = extract_lib.make_extract_fn(
      model, tuple(config.data.mean), tuple(config.data.std), args.flip,
      precision=None if args.extract_precision == 'default' else args.extract_precision)
  batch_size = -(-args.batch_size // mesh.size) * mesh.size  # as extract_features rounds it
  context = dict(common.device_description(), precision=common.precision(config),
                 matmul_precision=args.extract_precision, batch=batch_size)

  def extract_all(modality):
    return extract_lib.extract_features(extract_batch, variables, images, modality, batch_size,
                                        mesh, progress=False)

  records = []
  for modality in args.modality:
    # The warm-up pass compiles (one shape: the last batch is padded) and runs once.
    first_s, features = common.timed(lambda: extract_all(modality))
    if features.shape != (args.num_images, model.num_features):
      raise RuntimeError(f'extract_features returned {features.shape}, expected '
                         f'{(args.num_images, model.num_features)}')
    records.append(common.emit({'what': f'extract/{modality}/first_pass', 'seconds': first_s,
                                'note': 'compilation + one pass'}, context))
    seconds = []
    for repeat in range(args.repeats):
      elapsed, features = common.timed(lambda: extract_all(modality))
      seconds.append(elapsed)
      common.log(f'extract {modality}: repeat {repeat + 1}/{args.repeats}: '
                 f'{args.num_images / elapsed:,.0f} images/s')
    norms = np.linalg.norm(features, axis=1)
    pass_s = common.median(seconds)
    records.append(common.emit({
        'what': f'extract/{modality}', 'seconds': pass_s,
        'median_ms': 1e3 * pass_s * batch_size / args.num_images,  # per batch of `batch`
        'images_per_s': args.num_images / pass_s, 'num_images': args.num_images,
        'repeats': args.repeats, 'unit_norm_features': bool(np.allclose(norms, 1, atol=1e-3)),
    }, context))
    if args.profile:
      trace = {}
      with common.profile(args.profile, f'extract_{modality}', trace):
        extract_all(modality)
      records.append(common.emit({'what': f'extract/{modality}/profile',
                                  'num_images': args.num_images, **trace}, context))
  return records


if __name__ == '__main__':
  main()
