r"""MBCCM on RegDB, one trial (SPEC.md); the standard report averages trials 1-10.

  python main.py --config configs/regdb.py --workdir runs/regdb_t1 \
      --config.data.root /data --config.data.trial 1

`/data` holds `RegDB/` with Visible/, Thermal/ and idx/. Each trial is its own training run;
`python main.py --mode aggregate --workdir runs` (see README) averages the trials' results.
Published (ResNet-50, ImageNet init, visible-to-thermal): Rank-1 83.79, mAP 77.87, mINP 65.04.
"""

from vireid_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.data.dataset = 'regdb'
  config.cluster.eps = 0.3  # RegDB's DBSCAN eps
  config.sampler.steps_per_epoch = 100  # RegDB: 100 steps per epoch
  return config
