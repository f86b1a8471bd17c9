"""The data layer for runs of several processes: process 0 prepares, every process reads.

`prepare_on_main` runs `prepare` on process 0 alone (a shared disk must not see N writers) while
the others wait; then each process loads the prepared copy into its own memory. With one
process these are `prepare`, `load_train` and `load_test`.
"""

from vireid_jax import multihost
from vireid_jax.data.prepare import load_split
from vireid_jax.data.prepare import prepare
from vireid_jax.data.types import ImageSet


def prepare_on_main(data_cfg) -> str | None:
  """`prepare` on process 0 (its result there, None elsewhere); every process waits for it."""
  return multihost.run_on_main(lambda: prepare(data_cfg), 'preparing the dataset')


def load_on_every_process(data_cfg, split: str) -> tuple[ImageSet, ImageSet]:
  """(visible, infrared) of 'train' or 'test' in this process's memory, prepared once."""
  prepare_on_main(data_cfg)
  return load_split(data_cfg, split, prepare_missing=multihost.is_main())


def load_train_on_every_process(data_cfg) -> tuple[ImageSet, ImageSet]:
  return load_on_every_process(data_cfg, 'train')


def load_test_on_every_process(data_cfg) -> tuple[ImageSet, ImageSet]:
  return load_on_every_process(data_cfg, 'test')
