r"""PCLHD on SYSU-MM01, its authors' settings (XiangboYin/PCLHD at 8a376cd; docs/pclhd.md).

  python main.py --config configs/pclhd_sysu.py --workdir runs/pclhd_sysu --config.data.root /data
  python main.py --config configs/pclhd_sysu.py --workdir runs/pclhd_sysu \
      --config.data.root /data --mode eval

`/data` holds `SYSU-MM01/` (raw or the Market-1501-style conversion). Two stages of 50 epochs x
200 steps; stage 1: 128 visible (x2 views) + 128 infrared images per step against hybrid
memories; stage 2 restarts from stage 1's best checkpoint (by Rank-1) with a fresh Adam and an
EMA teacher, adds PCLHD's matching, a joint clustering of both modalities and a second Adam
step per iteration on batches of the joint clusters; the teacher is evaluated and kept. ImageNet
ResNet-50 weights as for MBCCM (found or fetched, see docs/usage.md). Published (a third-party
table, not confirmed against the paper; docs/pclhd.md): all-search single-shot Rank-1 64.4,
mAP 58.7; indoor 69.5 / 74.4. They need the real data and an accelerator.
Switches (docs/pclhd.md): --config.pclhd.dynamic_term=off (skip the constant teacher term:
identical training), --config.memory.stage1=centroid (the paper's centroid-only stage 1, the
authors' `-mb CM`), --config.pclhd.rounds=3 (the authors' three rounds, which stop the run where
their code dies), --config.pclhd.more_infrared=stop (their crash with more infrared clusters).
"""

from vireid_jax.methods.pclhd import config as pclhd_config


def get_config():
  return pclhd_config.pclhd_config('sysu')
