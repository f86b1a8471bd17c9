r"""MBCCM on LLCM (the low-light visible-infrared benchmark of Zhang and Wang, CVPR 2023).

  python main.py --mode prepare --config configs/llcm.py --config.data.root /data  # optional
  python main.py --config configs/llcm.py --workdir runs/llcm --config.data.root /data
  python main.py --config configs/llcm.py --workdir runs/llcm --config.data.root /data \
      --mode eval

`/data` holds `LLCM/` as released (idx/, vis/, nir/, test_vis/, test_nir/; see
vireid_jax/data/llcm.py). `--mode eval` writes eval/llcm_best.{json,md} with both directions
(infrared-to-visible, visible-to-infrared) over gallery draws 0-9, a CMC plot and a rank list.
MBCCM publishes no LLCM result, so there is nothing to reproduce; the paper's SYSU-MM01
settings are used throughout, as peer unsupervised codebases do. Where each LLCM value comes
from:
  * data.dataset = 'llcm': the reader of vireid_jax/data/llcm.py (the LLCM authors' layout);
    images resized to MBCCM's 288x144 (docs/mbccm.md, "Data"; the LLCM authors' supervised
    DEEN uses 384x144);
  * cluster.eps = 0.6 and sampler.steps_per_epoch = 300: SYSU-MM01's, unchanged. No MBCCM
    value for LLCM exists; its training set (713 identities, 9 cameras, about two thirds of
    its 46.7k images) is closer in size and camera count to SYSU-MM01's (395 identities, 6
    cameras, 34k images) than to RegDB's, whose eps 0.3 / 100 steps suit 4k images of one
    camera pair;
  * eval.llcm_setting = 'infrared_to_visible': the LLCM authors' default direction selects the
    best checkpoint; eval.train_trials = (0,) during training as for SYSU-MM01 (the authors'
    train.py also evaluates gallery draw 0), eval.trials = 0-9 in --mode eval.
80 epochs x 300 steps of 432 images, as for SYSU-MM01. Like configs/sysu.py it starts from
torchvision's ImageNet ResNet-50 (found in PyTorch's cache or downloaded before any data is
read; offline, --config.model.pretrained=/path/to/resnet50.pth or =none). Without the real data,
`--config.data.synthetic=True --config.data.root=data/synthetic` generates a small synthetic
LLCM there (36 identities, low-light visible images); `configs/demo.py` with
`--config.data.dataset=llcm` runs the CPU-sized experiment on it.
"""

from vireid_jax.methods.mbccm import config as mbccm_config


def get_config():
  return mbccm_config.mbccm_config('llcm')
