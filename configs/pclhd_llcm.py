r"""PCLHD on LLCM (Zhang and Wang, CVPR 2023); PCLHD publishes no LLCM result.

  python main.py --config configs/pclhd_llcm.py --workdir runs/pclhd_llcm --config.data.root /data

The values are PCLHD's SYSU-MM01 settings throughout (DBSCAN eps 0.6 per modality and joint,
200 steps per epoch, two stages of 50 epochs, StepLR at 20 and 40, SYSU-MM01's three-round
matching), for the reason configs/llcm.py gives for MBCCM: LLCM's training set (713
identities, 9 cameras, about 30k images) is far closer to SYSU-MM01's (395 identities, 6
cameras, 34k images) than to RegDB's 4k images of one camera pair, and the camera-aware sampler
has LLCM's nine cameras to draw across. Selection is on infrared-to-visible Rank-1 over gallery
draw 0 (the LLCM authors' default direction; PCLHD selects by Rank-1 of one draw); both
directions are reported by --mode eval over draws 0-9.
"""

from vireid_jax.methods.pclhd import config as pclhd_config


def get_config():
  config = pclhd_config.pclhd_config('llcm')
  config.eval.llcm_setting = 'infrared_to_visible'
  return config
