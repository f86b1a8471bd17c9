"""PGM's settings, per dataset (docs/pgm.md, "Hyperparameters", each with its file:line there).

`pgm_config(dataset)` is the core's `config.base_config()` plus the groups PGM reads (`memory`,
`sampler`, `augment`, `schedule`, `pgm`), with every setting PGM's code runs with; the
configs/pgm_*.py files call it. Where PGM's code changed after the published runs, the default
is what produced the published numbers and the example logs (the authors' commit 3448f52), and
a switch gives HEAD's behaviour (docs/pgm.md, "Reference quirks"; "quirk n" below is item n
there).
"""

import ml_collections

from vireid_jax import augment
from vireid_jax import config as config_lib

# Per dataset: DBSCAN eps, steps per epoch, epochs per stage, StepLR boundaries (stage epochs).
_DATASET = {
    'sysu': dict(eps=0.6, steps=200, stage_epochs=50, boundaries=(20, 40)),
    'regdb': dict(eps=0.3, steps=100, stage_epochs=30, boundaries=(10, 20)),
    # PGM publishes no LLCM run; SYSU-MM01's settings, as configs/pgm_llcm.py explains.
    'llcm': dict(eps=0.6, steps=200, stage_epochs=50, boundaries=(20, 40)),
}


def pgm_config(dataset: str = 'sysu') -> ml_collections.ConfigDict:
  """The base config with PGM's settings for `dataset` ('sysu', 'regdb' or 'llcm')."""
  if dataset not in _DATASET:
    raise ValueError(f'PGM settings exist for {sorted(_DATASET)}, not {dataset!r}')
  d = _DATASET[dataset]
  config = config_lib.base_config()
  config.method = 'pgm'
  config.data.dataset = dataset
  # Training and clustering images are resized with PIL bicubic (TS:106,408), test images with
  # Lanczos (TS:138): a bicubic training cache (quirk 13).
  config.data.train_resize = 'bicubic'

  # AGW's two-stream ResNet-50 with five non-local blocks (AGW:154-167,262-267), under 4-GPU
  # DataParallel BatchNorm: statistics per 64 visible + 64 infrared images, running statistics
  # of GPU 0's chunk (run_train_*.sh:1; quirk 5).
  config.model.non_local = True
  config.model.bn_groups = 4

  # Clustering: the flip-averaged features, not renormalised (EV:43-49, quirk 6), neighbours by
  # true L2 (faiss IndexFlatL2, FR:58-62), centres the plain means (TS:482-494).
  config.cluster.k1, config.cluster.k2 = 30, 6  # TS:1076,1078
  config.cluster.eps = d['eps']  # TS:445-450; TR:372-377
  config.cluster.min_samples = 4
  config.cluster.flip = True
  config.cluster.renormalize = False
  config.cluster.rank_by = 'l2'
  config.cluster.normalize_centers = False

  # Two memories, momentum 0.2 (TS:1086), temperature 0.05 (TS:1099).
  config.memory.momentum = 0.2
  config.memory.temperature = 0.05
  # Stage 2's update: 'sequential' as the published runs (3448f52, LOGS:3545) | 'hard' as HEAD's
  # train_sysu.py (TS:793,795; quirk 3). Stage 1 is always sequential.
  config.memory.stage2_update = 'sequential'

  config.sampler = ml_collections.ConfigDict()
  # Camera-aware sampling, unpaired: 16 images per cluster (run_train_*.sh:3), 256 infrared and
  # 128 visible images per step (TS:527-532), steps per epoch 200 SYSU / 100 RegDB (TS:1093).
  config.sampler.instances_per_cluster = 16
  config.sampler.steps_per_epoch = d['steps']
  config.sampler.visible_images = 128
  config.sampler.infrared_images = 256

  config.augment = augment.default_config()
  # Views: no multiplicative rectangles; view B's ColorJitter(0.5, 0.5, 0.5, 0.5) (TS:423).
  config.augment.linear_transform_prob = 0.0
  config.augment.color_jitter = (0.5, 0.5, 0.5, 0.5)
  # The infrared ColorJitter of SYSU-MM01's stage 1 is a 2024 addition (a59a7f6, TS:435;
  # quirk 4): off by default.
  config.augment.ir_jitter_stage1 = False

  # Adam 3.5e-4, weight decay 5e-4 (TS:397-398), StepLR(step_size, 0.1) per stage (TS:399).
  config.optim.learning_rate = 3.5e-4
  config.optim.weight_decay = 5e-4
  config.optim.lr_boundaries = d['boundaries']

  # Two runs in one: stage 1 for `stage2_start` epochs, then stage 2 for the rest, restarting
  # from stage 1's best checkpoint with a fresh Adam and StepLR, epochs counted from 0
  # (TS:703-726). Both stages evaluate every epoch from their epoch 6 and at their last
  # (TS:541,903); the best is chosen on the test set (quirk 11).
  config.schedule.stage2_start = d['stage_epochs']
  config.schedule.epochs = 2 * d['stage_epochs']
  config.schedule.eval_every = 1
  config.schedule.eval_from = 6

  # Test features: l2norm((f(x) + f(flip x)) / 2) (TS:235-242); in-training selection on
  # SYSU-MM01 all-search single-shot over gallery draws 0-9 (TS:561-593), RegDB V->T.
  config.eval.flip = True
  config.eval.batch_size = 256
  config.eval.train_trials = tuple(range(10))

  config.pgm = ml_collections.ConfigDict()
  # 'until_all' repeats round 2 until every cluster has a partner (identical to the authors'
  # two rounds whenever those leave none unmatched); '2' = the authors' two rounds, which stop
  # the run where their code dies with a KeyError (quirk 1); any count of rounds, as a string.
  config.pgm.rounds = 'until_all'
  config.pgm.cross_weight = 0.25  # TRN:101
  # More infrared than visible clusters: 'symmetric' matches with the infrared side as the
  # larger (train_regdb.py's else-branch, TR:716) | 'skip' drops the cross term for the epoch
  # as train_sysu.py does (no such branch, TS:822; quirk 2).
  config.pgm.more_infrared = 'symmetric'
  return config
