r"""The synthetic, CPU-sized version of PCLHD's SYSU-MM01 experiment.

  python main.py --config configs/pclhd_demo.py --workdir runs/pclhd_demo

The same synthetic SYSU-MM01 (data/synthetic) and the same pretrained start as configs/demo.py
and configs/pgm_demo.py (the synthetic ImageNet stand-in), then PCLHD at configs/pclhd_sysu.py's
settings except what a 2-core CPU needs (docs/pclhd.md, "The demo"):
  * sizes: 64x32 images, the demo network (basic blocks, one per layer, width 16, with PCLHD's
    non-local blocks after the last blocks of layer2 and layer3), 32 visible (x2 views) and 32
    infrared images per step (8 clusters x 4, as PCLHD's 8 x 16), 30 steps per epoch;
  * two stages of 12 epochs (stage 2 restarting from stage 1's best, as PCLHD does): the budget
    of the other demos (24 epochs of 30 steps), evaluating every epoch from each stage's epoch 3
    (PCLHD evaluates every epoch from 0: at this size the first epochs' scores only cost time);
  * cluster.k1/k2 = 10/3 as the other demos (the synthetic set has 10 infrared images per
    identity where SYSU-MM01 has about 30);
  * the joint clustering finds few clusters with both modalities on the synthetic set, whose
    modalities stay far apart after stage 1, so its settings and batches are the demo's own:
    k1/k2 = 20/16 (PCLHD's 40/32 keep k2/k1 = 0.8; a person has 20 visible and 10 infrared
    images here, and k1 = 20 is the smallest neighbourhood that can reach past a person's own
    visible images), eps 0.5 (PCLHD: the dataset's 0.6), and joint batches of 4 clusters x 4
    images (16 + 16; PCLHD's joint batches are its main ones, 8 clusters). Measured on the
    features of stage 1's best checkpoint of a demo run: joint clusters with both modalities
    (purity of all joint clusters) 4 (0.81) at PCLHD's scaled 14/11 and eps 0.6, 4 (0.52) at
    20/16 and 0.6, 7 (0.77) at 20/16 and 0.5, 12 (0.45) at 30/24 and 0.5; fewer than a joint
    batch's clusters stop the run where the authors' loader does;
  * augment.pad = 2 and learning rate 1e-3 decayed at stage epoch 10, as the other demos.
What it reaches, as means over training seeds: docs/pclhd.md, "The demo".
"""

from vireid_jax.methods.pclhd import config as pclhd_config


def get_config():
  config = pclhd_config.pclhd_config('sysu')
  config.seed = 0  # the demos' seed (PCLHD's scripts use 1)
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
  config.pclhd.joint_k1 = 20
  config.pclhd.joint_k2 = 16
  config.pclhd.joint_eps = 0.5
  config.sampler.joint_visible_images = 16
  config.sampler.joint_infrared_images = 16
  config.sampler.instances_per_cluster = 4
  config.sampler.visible_images = 32
  config.sampler.visible_images_stage1 = 32
  config.sampler.infrared_images = 32
  config.sampler.steps_per_epoch = 30
  config.augment.pad = 2

  config.optim.learning_rate = 1e-3
  config.optim.lr_boundaries = (10, 100)
  config.schedule.stage2_start = 12
  config.schedule.epochs = 24
  config.schedule.eval_from = 3
  config.eval.batch_size = 128
  return config
