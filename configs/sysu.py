r"""MBCCM on SYSU-MM01, the paper's settings (SPEC.md).

  python main.py --config configs/sysu.py --workdir runs/sysu --config.data.root /data
  python main.py --config configs/sysu.py --workdir runs/sysu --mode eval

`/data` holds `SYSU-MM01/` (raw cam1..cam6 + exp/, or the Market-1501-style conversion).
`--mode prepare` (or the first training run) decodes and resizes the 34k training images once.
Published (ResNet-50, ImageNet init, all-search single-shot): Rank-1 53.14, mAP 48.16,
mINP 32.41. 80 epochs x 300 steps of 432 images. Pass ImageNet weights with
`--config.model.pretrained=/path/resnet50-19c8e357.pth` to reproduce the paper.
"""

from vireid_jax import config as config_lib


def get_config():
  return config_lib.base_config()
