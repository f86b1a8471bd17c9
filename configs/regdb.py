r"""MBCCM on RegDB, one trial (docs/mbccm.md, "Settings"); the standard report averages trials 1-10.

  python main.py --config configs/regdb.py --workdir runs/regdb_t1 \
      --config.data.root /data --config.data.trial 1

`/data` holds `RegDB/` with Visible/, Thermal/ and idx/. Each trial is its own training run;
`python main.py --mode aggregate --workdir runs` (see docs/usage.md, "RegDB: ten trials") pools
the trials' results: trial 1 beside the mean over trials.
Published (ResNet-50, ImageNet init, visible-to-thermal): Rank-1 83.79, mAP 77.87, mINP 65.04.
Starts, as the paper, from torchvision's ImageNet ResNet-50: found in PyTorch's cache
(~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth or resnet50-19c8e357.pth; $TORCH_HOME
moves it) or downloaded there (98 MB) before any data is read. Offline and without it, the run
stops at once and names the two ways out: --config.model.pretrained=/path/to/resnet50.pth, or
--config.model.pretrained=none (random weights, far from the published numbers).
"""

from vireid_jax.methods.mbccm import config as mbccm_config


def get_config():
  return mbccm_config.mbccm_config('regdb')
