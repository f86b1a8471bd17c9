"""The data layer for runs of several processes: process 0 prepares, every process reads.

`prepare_on_main` runs `prepare` on process 0 alone (a shared disk must not see N writers) while
the others wait; then each process loads the prepared copy into its own memory. A copy that
turns out damaged while loading (on any process) is prepared again by process 0 alone, once,
while the others wait, and every process loads it again. With one process these are `prepare`,
`load_train` and `load_test`.
"""

from vireid_jax.runtime import multihost
from vireid_jax.data.errors import DamagedPreparedCopy
from vireid_jax.data.errors import DatasetError
from vireid_jax.data.prepare import load_split
from vireid_jax.data.prepare import prepare
from vireid_jax.data.prepare import prepare_again
from vireid_jax.data.types import ImageSet


def prepare_on_main(data_cfg) -> str | None:
  """`prepare` on process 0 (its result there, None elsewhere); every process waits for it."""
  return multihost.run_on_main(lambda: prepare(data_cfg), 'preparing the dataset')


def load_on_every_process(data_cfg, split: str) -> tuple[ImageSet, ImageSet]:
  """(visible, infrared) of 'train' or 'test' in this process's memory, prepared once."""
  prepare_on_main(data_cfg)
  sets, damage = None, None
  try:
    # Prepared just now: no process writes from here on, unless a read finds damage.
    sets = load_split(data_cfg, split, prepare_missing=False)
  except DamagedPreparedCopy as error:
    damage = error
  if multihost.all_true(damage is None):
    return sets
  seen_on_main = damage if multihost.is_main() else None

  def mend():
    if seen_on_main is None:  # then process 0 does not see the files the others see
      raise DatasetError(
          f'the prepared copy of {data_cfg.dataset} reads on process 0 but not on every '
          f'process: with several hosts, put config.data.cache_dir on a path every host sees')
    prepare_again(data_cfg, seen_on_main)

  multihost.run_on_main(mend, 'preparing the damaged dataset again')
  return load_split(data_cfg, split, prepare_missing=False)


def load_train_on_every_process(data_cfg) -> tuple[ImageSet, ImageSet]:
  return load_on_every_process(data_cfg, 'train')


def load_test_on_every_process(data_cfg) -> tuple[ImageSet, ImageSet]:
  return load_on_every_process(data_cfg, 'test')
