"""MBCCM's settings, per dataset (docs/mbccm.md, "Settings").

`mbccm_config(dataset)` is the core's `config.base_config()` plus the groups MBCCM reads
(`memory`, `loss`, `sampler`, `augment`, `schedule`), each value the one that produced the
published numbers; configs/sysu.py, regdb.py, llcm.py and demo.py call it. ClusterContrast
(`--config.method=cluster_contrast`) reads the same settings.
"""

import ml_collections

from vireid_jax import augment
from vireid_jax import config as config_lib

# Per dataset: DBSCAN eps and steps per epoch (the paper's SYSU-MM01 and RegDB values; LLCM
# takes SYSU-MM01's, as configs/llcm.py explains).
_DATASET = {
    'sysu': dict(eps=0.6, steps=300),
    'regdb': dict(eps=0.3, steps=100),
    'llcm': dict(eps=0.6, steps=300),
}


def mbccm_config(dataset: str = 'sysu') -> ml_collections.ConfigDict:
  """The base config with MBCCM's settings for `dataset` ('sysu', 'regdb' or 'llcm')."""
  if dataset not in _DATASET:
    raise ValueError(f'MBCCM settings exist for {sorted(_DATASET)}, not {dataset!r}')
  d = _DATASET[dataset]
  config = config_lib.base_config()
  config.method = 'mbccm'
  config.data.dataset = dataset
  config.cluster.eps = d['eps']
  # Each modality is clustered in the order of its training list sorted by path, as
  # dbscan_cluster's `sorted(trainset)` (train_mbccm.py:79-80): on SYSU-MM01's raw layout
  # camX/<id>/<file>, camera first. DBSCAN's border points and the cluster numbering (which the
  # sampler draws by) follow it.
  config.cluster.order = 'path'

  # --- cluster memories (M_v, M_i, M_vi, M_iv) ---
  config.memory.temperature = 0.05  # logits = normalise(f) . M^T / 0.05
  config.memory.momentum = 0.1  # m <- 0.1 m + 0.9 f, then renormalise

  # --- losses ---
  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 0.9  # weight of the modality-agnostic terms L_ma
  config.loss.beta = 0.5  # weight of the consistency terms L_cc
  config.loss.kl_clamp = 1e-12  # probabilities clamped here inside the symmetric KL
  # Reference quirk: X_i(f), X_v(f) in L_cc use the UN-normalised feature. False normalises it.
  config.loss.unnormalized_cross_logits = True
  # Reference quirk: memories are updated in place inside its backward pass, so a memory's later
  # backward calls take feature gradients from the partly updated table. False: plain autodiff.
  config.loss.reference_memory_gradients = True

  # --- sampling ---
  config.sampler = ml_collections.ConfigDict()
  config.sampler.clusters_per_step = 12  # clusters per modality per step
  config.sampler.instances_per_cluster = 12  # images per cluster (with replacement if <= 12 members)
  config.sampler.steps_per_epoch = d['steps']  # 300 SYSU, 100 RegDB

  # --- augmentation: the three views of methods/mbccm/views.py ---
  config.augment = augment.default_config()

  # --- schedule: one run, one optimiser state, two stages ---
  config.schedule.stage2_start = 40  # epochs 0-39 stage 1, 40-79 stage 2
  config.schedule.eval_every = 5  # evaluate every 5 epochs, keep best by mAP
  if dataset == 'llcm':
    # The LLCM authors' default direction selects the best checkpoint (configs/llcm.py).
    config.eval.llcm_setting = 'infrared_to_visible'
  return config
