r"""MBCCM on SYSU-MM01, the paper's settings (docs/mbccm.md, "Settings").

  python main.py --config configs/sysu.py --workdir runs/sysu --config.data.root /data
  python main.py --config configs/sysu.py --workdir runs/sysu --mode eval

`/data` holds `SYSU-MM01/` (raw cam1..cam6 + exp/, or the Market-1501-style conversion).
`--mode prepare` (or the first training run) decodes and resizes the 34k training images once.
Published (ResNet-50, ImageNet init, all-search single-shot): Rank-1 53.14, mAP 48.16,
mINP 32.41. 80 epochs x 300 steps of 432 images.
Starts, as the paper, from torchvision's ImageNet ResNet-50: found in PyTorch's cache
(~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth or resnet50-19c8e357.pth; $TORCH_HOME
moves it) or downloaded there (98 MB) before any data is read. Offline and without it, the run
stops at once and names the two ways out: --config.model.pretrained=/path/to/resnet50.pth, or
--config.model.pretrained=none (random weights, far from the published numbers).
"""

from vireid_jax.methods.mbccm import config as mbccm_config


def get_config():
  return mbccm_config.mbccm_config('sysu')
