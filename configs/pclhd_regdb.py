r"""PCLHD on RegDB, one trial (XiangboYin/PCLHD at 8a376cd; docs/pclhd.md); the standard report
averages trials 1-10.

  python main.py --config configs/pclhd_regdb.py --workdir runs/pclhd_regdb/1 \
      --config.data.root /data --config.data.trial 1
  python main.py --mode aggregate --workdir runs/pclhd_regdb   # after trials 1-10

`/data` holds `RegDB/` (Visible/, Thermal/, idx/). Two stages of 50 epochs x 100 steps, DBSCAN
eps 0.3, stage 1 with 64 visible images per step (128 in stage 2), RegDB's two-round matching
(no cross term in an epoch with more infrared than visible clusters, as the authors' code).
Published (a third-party table, not confirmed; docs/pclhd.md): visible-to-thermal Rank-1 84.3,
mAP 80.7; thermal-to-visible 82.7 / 78.4. They need the real data.
"""

from vireid_jax.methods.pclhd import config as pclhd_config


def get_config():
  return pclhd_config.pclhd_config('regdb')
