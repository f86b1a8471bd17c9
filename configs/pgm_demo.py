r"""The synthetic, CPU-sized version of PGM's SYSU-MM01 experiment.

  python main.py --config configs/pgm_demo.py --workdir runs/pgm_demo

The same synthetic SYSU-MM01 (data/synthetic) and the same pretrained start as configs/demo.py
(the synthetic ImageNet stand-in, made on first use), then PGM at configs/pgm_sysu.py's
settings except what a 2-core CPU needs (each listed in docs/pgm.md, "The demo"):
  * sizes: 64x32 images, the demo network (basic blocks, one per layer, width 16; its one
    block per layer takes the non-local blocks PGM puts after the last blocks of layer2 and
    layer3, see vireid_jax/models/resnet.py), 32 visible (x2 views) and 64 infrared images per
    step (4 per cluster), 30 steps per epoch;
  * two stages of 12 epochs (stage 2 restarting from stage 1's best, as PGM does): the budget
    of configs/demo.py (24 epochs of 30 steps), evaluating every epoch from each stage's
    epoch 3;
  * cluster.k1/k2 = 10/3, augment.pad = 2 and learning rate 1e-3 decayed at stage epoch 10, as
    configs/demo.py (the synthetic set has 10 infrared images per identity).
What it reaches, as means over training seeds: docs/pgm.md, "The demo".
"""

from vireid_jax.methods.pgm import config as pgm_config


def get_config():
  config = pgm_config.pgm_config('sysu')
  config.data.root = 'data/synthetic'
  config.data.synthetic = True
  config.data.image_height = 64
  config.data.image_width = 32

  config.model.block = 'basic'
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.width = 16
  config.model.dtype = 'float32'
  config.model.pretrained = 'synthetic_imagenet'

  config.cluster.k1 = 10
  config.cluster.k2 = 3
  config.sampler.instances_per_cluster = 4
  config.sampler.visible_images = 32
  config.sampler.infrared_images = 64
  config.sampler.steps_per_epoch = 30
  config.augment.pad = 2

  config.optim.learning_rate = 1e-3
  config.optim.lr_boundaries = (10, 100)
  config.schedule.stage2_start = 12
  config.schedule.epochs = 24
  config.schedule.eval_from = 3
  config.eval.batch_size = 128
  return config
