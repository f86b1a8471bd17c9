"""The sizes and settings of a lockstep run, shared by both sides (no vireid_jax, no torch).

Both implementations are configured from one `RunSettings`: `ours.py` turns it into the
project's config, `reference_<method>.py` into the authors' `args`. The defaults are the
papers' settings shrunk to what a 2-core CPU runs in minutes with the authors' ResNet-50
(their code builds ResNet-50 whatever it is told): the synthetic SYSU-MM01 with 24 identities
(16 for training: 320 visible, 160 infrared images) at 64x32, batches reduced in proportion,
3 steps per epoch, a learning rate of 3.5e-6. docs/verification.md says why each value was
chosen.
"""

import dataclasses
from typing import Optional, Tuple

METHODS = ('mbccm', 'pgm')


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """What both sides run. Attributes not used by a method are ignored by it.

  Attributes:
    method: 'mbccm' or 'pgm'.
    image_size: (H, W) of every network input.
    synthetic_ids: identities of the synthetic SYSU-MM01 (a third are test identities).
    stage1_epochs, stage2_epochs: epochs of each stage (PGM: each stage's own count).
    steps_per_epoch: optimiser steps per epoch (MBCCM `--train-iter`, PGM `--iters`).
    k1, k2, eps, min_samples: Jaccard + DBSCAN.
    clusters_per_step, instances_per_cluster: MBCCM's sampler (`--batch-size`, `--num_pos`).
    visible_images, infrared_images: PGM's images per step (the visible ones give 2 views).
    bn_groups: the GPUs of the authors' `nn.DataParallel` (emulated on the reference side).
    learning_rate: the initial learning rate: the papers' 3.5e-4 / 100. From a random start,
      Adam's first steps move every parameter by about the learning rate whatever the size of
      its gradient, so entries whose gradient is at float32-noise level move in a direction
      rounding decides; at 3.5e-4 that alone moves the features clustered after one epoch by
      about 5% (the authors' code in float32 against itself in float64), and the partitions
      no longer compare. At 3.5e-6 the same is about 1e-3 (docs/verification.md).
    lr_step: PGM's StepLR step size in epochs (ours: `optim.lr_boundaries`); MBCCM's schedule
      is hard-coded in its code (x0.1 at epochs 20, 50, 70), so a short run keeps one rate.
    pad: augmentation zero padding (10 at 288x144 scales to 2 at 64x32).
    linear_transform_prob: MBCCM view A's multiplicative rectangles.
    network: 'resnet50' (the authors' network, the only one their code builds) or 'tiny'
      (basic blocks, width 8: only for the self-test, where both sides are the project).
    seed: the project's seed (sampling, augmentation, initial weights).
    eval_batch: extraction batch on our side.
  """
  method: str = 'mbccm'
  image_size: Tuple[int, int] = (64, 32)
  synthetic_ids: int = 24
  stage1_epochs: int = 2
  stage2_epochs: int = 2
  steps_per_epoch: int = 3
  k1: int = 10
  k2: int = 3
  eps: float = 0.6
  min_samples: int = 4
  clusters_per_step: int = 4
  instances_per_cluster: int = 4
  visible_images: int = 8
  infrared_images: int = 16
  bn_groups: Optional[int] = None
  learning_rate: float = 3.5e-6
  lr_step: int = 1
  pad: int = 2
  linear_transform_prob: float = 0.8
  network: str = 'resnet50'
  seed: int = 0
  eval_batch: int = 80

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
    if self.network not in ('resnet50', 'tiny'):
      raise ValueError(f"network must be 'resnet50' or 'tiny', got {self.network!r}")

  @property
  def groups(self) -> int:
    """The BatchNorm groups: MBCCM 1 (the project's default; the authors' GPU count is
    unknown), PGM 4 (its scripts' 4 GPUs)."""
    if self.bn_groups is not None:
      return self.bn_groups
    return 4 if self.method == 'pgm' else 1

  @property
  def epochs(self) -> int:
    return self.stage1_epochs + self.stage2_epochs

  @property
  def steps(self) -> int:
    return self.epochs * self.steps_per_epoch


def defaults(method: str, **overrides) -> RunSettings:
  """The lockstep run of `method` (docs/verification.md), with `overrides`."""
  return RunSettings(method=method, **overrides)
