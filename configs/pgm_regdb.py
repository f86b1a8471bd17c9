r"""PGM on RegDB, one trial (docs/pgm.md, "Hyperparameters"); the standard report averages 1-10.

  for k in $(seq 1 10); do
    python main.py --config configs/pgm_regdb.py --workdir runs/pgm_regdb/trial$k \
        --config.data.root /data --config.data.trial $k
    python main.py --config configs/pgm_regdb.py --workdir runs/pgm_regdb/trial$k \
        --config.data.root /data --config.data.trial $k --mode eval
  done
  python main.py --mode aggregate --workdir runs/pgm_regdb

Two stages of 30 epochs x 100 steps, DBSCAN eps 0.3, StepLR at stage epochs 10 and 20; the
training selects on visible-to-thermal mAP of the run's trial. Published (mean of 10 trials):
visible-to-thermal Rank-1 69.48, mAP 65.41; thermal-to-visible 69.85 / 65.17.
"""

from vireid_jax.methods.pgm import config as pgm_config


def get_config():
  return pgm_config.pgm_config('regdb')
