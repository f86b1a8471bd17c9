r"""PGM on LLCM (Zhang and Wang, CVPR 2023); PGM publishes no LLCM result.

  python main.py --config configs/pgm_llcm.py --workdir runs/pgm_llcm --config.data.root /data
  python main.py --config configs/pgm_llcm.py --workdir runs/pgm_llcm --config.data.root /data \
      --mode eval

The values are PGM's SYSU-MM01 settings throughout (DBSCAN eps 0.6, 200 steps per epoch, two
stages of 50 epochs, StepLR at 20 and 40), for the reason configs/llcm.py gives for MBCCM:
LLCM's training set (713 identities, 9 cameras, about 30k images) is far closer to SYSU-MM01's
(395 identities, 6 cameras, 34k images) than to RegDB's 4k images of one camera pair, and the
camera-aware sampler has LLCM's nine cameras to draw across. Selection is on infrared-to-visible
mAP over gallery draw 0, as configs/llcm.py (the LLCM authors' default; PGM's SYSU-MM01 code
averages draws 0-9, which LLCM's larger galleries make ten times dearer every epoch); both
directions are reported by --mode eval over draws 0-9.
"""

from vireid_jax.methods.pgm import config as pgm_config


def get_config():
  config = pgm_config.pgm_config('llcm')
  config.eval.llcm_setting = 'infrared_to_visible'
  config.eval.train_trials = (0,)
  return config
