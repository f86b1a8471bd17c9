r"""PGM on SYSU-MM01, its authors' settings (docs/pgm.md, "Hyperparameters").

  python main.py --config configs/pgm_sysu.py --workdir runs/pgm_sysu --config.data.root /data
  python main.py --config configs/pgm_sysu.py --workdir runs/pgm_sysu --config.data.root /data \
      --mode eval

`/data` holds `SYSU-MM01/` (raw or the Market-1501-style conversion). Two stages of 50 epochs x
200 steps of 128 visible (x2 views) + 256 infrared images, stage 2 restarting from stage 1's
best checkpoint with a new optimiser; ImageNet ResNet-50 weights as for MBCCM (found or fetched,
see docs/usage.md). Published (all-search single-shot, mean of 10 gallery draws): Rank-1 57.27,
mAP 51.78; indoor 56.23 / 62.74. Switches for the authors' later code: --config.memory.
stage2_update=hard (HEAD's hard memory update in stage 2), --config.augment.ir_jitter_stage1=True
(HEAD's infrared ColorJitter in stage 1), --config.pgm.more_infrared=skip (train_sysu.py drops
the cross term when the infrared side has more clusters).
"""

from vireid_jax.methods.pgm import config as pgm_config


def get_config():
  return pgm_config.pgm_config('sysu')
