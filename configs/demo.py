r"""The synthetic, CPU-sized version of the SYSU-MM01 experiment.

  python main.py --config configs/demo.py --workdir runs/demo

Writes the synthetic visible/infrared set (SYSU-MM01 raw layout) under data/synthetic when it
is missing, then trains both stages with a small ResNet at 64x32 pixels, evaluates, and writes
report.md and curves.png into the workdir. Same code path as configs/sysu.py; only sizes differ.
"""

from vireid_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.root = 'data/synthetic'
  config.data.synthetic = True
  config.data.image_height = 64
  config.data.image_width = 32

  config.model.block = 'basic'
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.width = 16
  config.model.dtype = 'float32'

  config.cluster.eps = 0.6
  config.sampler.clusters_per_step = 8
  config.sampler.instances_per_cluster = 4
  config.sampler.steps_per_epoch = 20
  config.augment.pad = 2  # 10 px at 288x144 scales to ~2 px at 64x32

  config.schedule.epochs = 10
  config.schedule.stage2_start = 5
  config.schedule.eval_every = 5
  config.optim.lr_boundaries = (8, 100, 100)
  config.eval.batch_size = 128
  config.eval.trials = (0, 1, 2)
  return config
